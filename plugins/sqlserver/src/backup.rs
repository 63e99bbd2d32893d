//! Backups: `BACKUP DATABASE|LOG ... TO URL` streamed through the data path
//! into the vault, and the decisions taken before one runs.
//!
//! Before a backup the plugin reads the database's state
//! ([`DatabaseState`]: statements 2, 5, 6 and 4) and
//!
//! 1. settles the kind ([`settle`], the host's `settle_kind`): a log or
//!    differential backup the vault could not restore becomes a full, as
//!    Azure Backup's auto-heal does ("Troubleshoot SQL Server database
//!    backup": a broken LSN chain, no full backup, a restore over the
//!    database, a recovery model change all trigger a full);
//! 2. refuses what SQL Server would refuse, with a better message
//!    ([`refuse`]): a database that is not online, a log backup in SIMPLE
//!    recovery, the backups an availability group secondary cannot take;
//! 3. chooses the stripes ([`stripes_for`]) and runs the statement while the
//!    data path's device receives every stripe into the vault.
//!
//! After it, the backup's history row (statements 9 and 10) becomes the
//! manifest's `engine_meta.backup_set` ([`crate::chain::backup_outcome`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::{BackupKind, Manifest, StreamRecord};
use strata_core::catalog::planner;
use strata_core::plugin::{BackupOutcome, BackupRequest, BackupSink, KindDecision, parse_options};
use strata_core::{Error, Result};

use crate::chain;
use crate::client::{self, Connection, RowExt, Session, required};
use crate::config::{BYTES_PER_STRIPE, CompressionChoice, InstanceConfig, MAX_STRIPES};
use crate::device::{BackupDevice, DataPath};
use crate::history::{BackupSet, BackupType};
use crate::server::DatabaseState;
use crate::tsql::{self, BackupCompression, BackupStatement};

/// The options of a SQL Server backup (the JSON form of
/// [`BackupRequest::options`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
    /// `COPY_ONLY`: a full that does not become a differential base, or a
    /// log backup outside the log chain (Microsoft's "Copy-only backups").
    #[serde(default)]
    pub copy_only: bool,
}

/// How long a failed stripe waits for SQL Server's `BACKUP` to end by
/// itself (it fails once its device does) before it is cancelled.
const STATEMENT_GRACE: Duration = Duration::from_secs(60);

/// The error for a log backup of a database in SIMPLE recovery: SQL Server
/// keeps no log chain then ("Recovery models (SQL Server)").
pub fn simple_recovery_refusal(database: &str) -> Error {
    Error::engine(format!(
        "database {database} uses the SIMPLE recovery model, which has no log backups: it gets full and diff backups only"
    ))
    .hint(format!(
        "back it up with --kind full or --kind diff, or switch it to FULL recovery (ALTER DATABASE {} SET RECOVERY FULL) and take a full backup, which starts the log chain",
        tsql::quote_ident(database)
    ))
}

/// Refuses what SQL Server would refuse for a `kind` backup (copy-only
/// when `copy_only`) of the database in `state`, with a message that says
/// what to do:
///
/// - a database that is not `ONLINE` ("BACKUP (Transact-SQL)": a database
///   restoring, recovering or offline cannot be backed up);
/// - an incremental backup (SQL Server has differentials) and a copy-only
///   differential (`COPY_ONLY` has no effect with `DIFFERENTIAL`);
/// - a log backup in SIMPLE recovery;
/// - on an availability group secondary, anything but a copy-only full
///   or a regular log backup, and on any replica a log or copy-only full
///   backup where this replica is not the preferred backup replica
///   ("Offload supported backups to secondary replicas of an availability
///   group").
pub fn refuse(kind: BackupKind, copy_only: bool, state: &DatabaseState) -> Result<()> {
    let db = &state.info.name;
    if !state.info.state.eq_ignore_ascii_case("ONLINE") {
        return Err(Error::engine(format!(
            "database {db} is {}, not ONLINE: SQL Server backs up online databases only",
            state.info.state
        ))
        .hint(format!(
            "finish its restore (RESTORE DATABASE {} WITH RECOVERY) or bring it online, then back it up",
            tsql::quote_ident(db)
        )));
    }
    match (kind, copy_only) {
        (BackupKind::Incr, _) => {
            return Err(Error::config(
                "SQL Server has no incremental backups: a differential holds every change since the last full",
            )
            .hint("use --kind diff"));
        }
        (BackupKind::Diff, true) => {
            return Err(Error::config(
                "a differential backup cannot be copy-only (COPY_ONLY has no effect with DIFFERENTIAL)",
            )
            .hint("use --kind copy-only for an out-of-chain full, or --kind diff"));
        }
        (BackupKind::Log, _) if state.info.is_simple() => {
            return Err(simple_recovery_refusal(db));
        }
        _ => {}
    }
    if let Some(role) = state.replica {
        if !role.is_primary {
            let refused = match (kind, copy_only) {
                (BackupKind::Full, false) => Some((
                    "a full backup that is not copy-only",
                    "take it on the primary replica, or use --kind copy-only here",
                )),
                (BackupKind::Diff, _) => Some((
                    "a differential backup",
                    "take differential backups on the primary replica",
                )),
                (BackupKind::Log, true) => Some((
                    "a copy-only log backup",
                    "take a regular log backup (it keeps one log chain across the replicas)",
                )),
                _ => None,
            };
            if let Some((what, fix)) = refused {
                return Err(Error::engine(format!(
                    "database {db} is on a secondary replica of an availability group, where SQL Server does not take {what}"
                ))
                .hint(fix));
            }
        }
        let any_replica = kind == BackupKind::Log || copy_only;
        if any_replica && !role.is_preferred {
            return Err(Error::engine(format!(
                "this replica is not the preferred backup replica of database {db} (the availability group's AUTOMATED_BACKUP_PREFERENCE and BACKUP_PRIORITY choose another)"
            ))
            .hint("run the backup on the preferred replica; `strata sqlserver check NAME` on each replica says which one it is"));
        }
    }
    Ok(())
}

/// The kind a requested `kind` backup of the database in `state` is taken
/// as, given the committed backups of that database in the vault
/// (`backups`, oldest first): the auto-heal rules of Azure Backup ("FAQ -
/// Back up SQL Server databases on Azure VMs", reference section 2.6).
///
/// A full stays a full, and a copy-only backup keeps its kind (it is
/// outside the chain by request). A log or differential becomes a full,
/// with the reason, when
///
/// - the vault holds no full backup of the database;
/// - the database was restored or re-created since the vault's newest
///   backup of it (another `database_guid` or `family_guid`);
/// - for a log: SQL Server has no log chain (`last_log_backup_lsn` is
///   NULL), or the next log backup would start at an LSN the vault's
///   restorable windows on the database's current recovery fork do not
///   reach (another tool took a log backup, the recovery model was SIMPLE
///   for a while, the database was restored in place): the windows come
///   from core's planner over [`chain::chain_of`], the one place the chain
///   rules live;
/// - for a differential: the database's differential base
///   (`sys.master_files.differential_base_guid`) is not a regular full in
///   the vault (another tool took a full backup).
///
/// # Errors
/// A log backup of a database in SIMPLE recovery
/// ([`simple_recovery_refusal`]): converting it would silently take fulls
/// on every log schedule. An unreadable manifest
/// ([`ErrorKind::Integrity`](strata_core::ErrorKind::Integrity)).
pub fn settle(
    kind: BackupKind,
    copy_only: bool,
    state: &DatabaseState,
    backups: &[Manifest],
) -> Result<KindDecision> {
    let db = &state.info.name;
    if kind == BackupKind::Log && state.info.is_simple() {
        return Err(simple_recovery_refusal(db));
    }
    if !matches!(kind, BackupKind::Log | BackupKind::Diff) || copy_only {
        return Ok(KindDecision::keep(kind));
    }
    let full = |reason: String| KindDecision {
        kind: BackupKind::Full,
        reason: Some(reason),
    };
    let mut sets = Vec::new();
    for manifest in backups {
        if let Some(set) = chain::backup_set_of(manifest)? {
            sets.push(set);
        }
    }
    if !sets.iter().any(|s| s.backup_type == BackupType::Database) {
        return Ok(full(format!("no full backup of {db} in the vault")));
    }
    if let Some(newest) = sets.last() {
        let recovery = &state.recovery;
        if let (Some(now), Some(then)) = (recovery.family_guid, newest.family_guid)
            && now != then
        {
            return Ok(full(format!(
                "{db} was re-created since the vault's last backup of it (family_guid {now}, the vault's backups have {then})"
            )));
        }
        if let (Some(now), Some(then)) = (recovery.database_guid, newest.database_guid)
            && now != then
        {
            return Ok(full(format!(
                "{db} was restored or re-created since the vault's last backup of it (database_guid {now}, the vault's last backup has {then})"
            )));
        }
    }
    match kind {
        BackupKind::Log => settle_log(state, backups).map(|reason| match reason {
            Some(reason) => full(reason),
            None => KindDecision::keep(kind),
        }),
        _ => Ok(match state.differential_base() {
            None => full(format!(
                "{db} has no differential base (no full backup since it was created or restored)"
            )),
            Some(base) if sets.iter().any(|s| is_regular_full(s, base)) => KindDecision::keep(kind),
            Some(base) => full(format!(
                "the differential base of {db} is backup set {base}, which is not in the vault (a full backup taken outside Strata)"
            )),
        }),
    }
}

/// Whether `set` is a regular (not copy-only) full backup with backup set id `id`.
fn is_regular_full(set: &BackupSet, id: uuid::Uuid) -> bool {
    set.backup_type == BackupType::Database && !set.is_copy_only && set.backup_set_uuid == Some(id)
}

/// Why the next log backup of the database in `state` would not continue
/// the vault's chain, or `None` when it does.
fn settle_log(state: &DatabaseState, backups: &[Manifest]) -> Result<Option<String>> {
    let db = &state.info.name;
    let Some(next) = state.recovery.last_log_backup_lsn else {
        return Ok(Some(format!(
            "SQL Server has no log chain for {db} (last_log_backup_lsn is NULL: no full backup since the database was created or left SIMPLE recovery)"
        )));
    };
    let chain = chain::chain_of(backups)?;
    let timeline = planner::timeline(&chain.records, chain.rules.as_ref());
    let fork = state.recovery.recovery_fork_guid.map(|g| g.to_string());
    let reach = timeline
        .windows
        .iter()
        .filter(|w| fork.as_deref().is_none_or(|f| w.fork == f))
        .filter_map(|w| w.to_position)
        .max();
    Ok(match reach {
        None => Some(format!(
            "no restorable backup in the vault reaches {db}'s current recovery fork {} (the database was restored since)",
            fork.as_deref().unwrap_or("(unknown)")
        )),
        Some(end) if end < next => Some(format!(
            "the log chain is broken: the next log backup would start at LSN {next} but the vault's chain ends at LSN {end} (a log backup the vault does not hold was taken: by another tool, or by a Strata backup that failed to commit; or the recovery model was SIMPLE)"
        )),
        Some(_) => None,
    })
}

/// Which of `candidates` (fulls, newest first) a differential of the
/// database in `state` builds on: the one whose `backup_set_uuid` is the
/// database's differential base; `None` when none is.
pub fn choose_base(state: &DatabaseState, candidates: &[Manifest]) -> Result<Option<usize>> {
    let Some(base) = state.differential_base() else {
        return Ok(None);
    };
    for (i, manifest) in candidates.iter().enumerate() {
        if let Some(set) = chain::backup_set_of(manifest)?
            && is_regular_full(&set, base)
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// How many stripes (URLs) a backup of about `estimate` bytes writes:
/// `configured` when set, else one per [`BYTES_PER_STRIPE`] (at least one,
/// at most [`MAX_STRIPES`]).
pub fn stripes_for(configured: usize, estimate: u64) -> usize {
    if configured > 0 {
        return configured.min(MAX_STRIPES);
    }
    let n = estimate.div_ceil(BYTES_PER_STRIPE).max(1);
    usize::try_from(n).unwrap_or(MAX_STRIPES).min(MAX_STRIPES)
}

/// The `BACKUP` statement kind of a `kind` backup.
fn statement_of(kind: BackupKind) -> Result<BackupStatement> {
    match kind {
        BackupKind::Full => Ok(BackupStatement::Full),
        BackupKind::Diff => Ok(BackupStatement::Differential),
        BackupKind::Log => Ok(BackupStatement::Log),
        BackupKind::Incr => {
            Err(Error::config("SQL Server has no incremental backups").hint("use --kind diff"))
        }
    }
}

/// The database a request names, or a configuration error.
pub fn database_of(request_database: Option<&str>) -> Result<&str> {
    request_database.ok_or_else(|| {
        Error::config("a SQL Server backup or restore names one database")
            .hint("pass --database DB (`strata sqlserver check NAME` lists them)")
    })
}

/// Runs one backup of `request` on the SQL Server of `config` (instance
/// `instance`) through `data_path` into `sink`. See the module docs.
///
/// # Errors
/// What [`refuse`] refuses; SQL Server's first error when `BACKUP` fails
/// (its number and message, see [`client::sql_error`]); the device's error
/// naming the stripe when a stripe fails; an engine error when the
/// history row cannot be found or a differential's base is not the one the
/// host chose. In every case nothing is committed.
pub async fn backup(
    instance: &str,
    config: &InstanceConfig,
    data_path: &dyn DataPath,
    request: BackupRequest,
    sink: &dyn BackupSink,
) -> Result<BackupOutcome> {
    let options: BackupOptions = parse_options(&request.options, "SQL Server backup options")?;
    let database = database_of(request.database.database.as_deref())?.to_owned();
    let statement = statement_of(request.kind)?;
    let mut catalog = client::connect(instance, config, Session::Catalog).await?;
    let state = DatabaseState::read(&mut catalog, &database).await?;
    refuse(request.kind, options.copy_only, &state)?;
    let base = match request.kind {
        BackupKind::Diff => {
            let base = request.base.as_ref().ok_or_else(|| {
                Error::config(format!(
                    "no full backup of {database} in the vault for a differential to build on"
                ))
                .hint("take a full backup first: --kind full")
            })?;
            Some((base.id.clone(), chain::backup_set_of(base)?))
        }
        _ => None,
    };

    let estimate = match request.kind {
        BackupKind::Log => state.log_bytes(),
        _ => state.data_bytes(),
    };
    let stripes = stripes_for(config.stripes, estimate);
    sink.expect_bytes(estimate);
    let compression = match config.compression {
        CompressionChoice::Sqlserver => BackupCompression::SqlServer,
        CompressionChoice::Strata => BackupCompression::None,
    };
    let mut device = data_path.open_backup(stripes)?;
    let sql = tsql::backup(
        statement,
        &database,
        &device.to_clause(),
        options.copy_only,
        compression,
        &format!("strata {}", request.id),
    );
    let what = format!(
        "backing up {database} ({}{}, {stripes} stripe{})",
        if options.copy_only { "copy-only " } else { "" },
        request.kind,
        if stripes == 1 { "" } else { "s" }
    );
    tracing::info!(database, kind = %request.kind, stripes, id = %request.id, "BACKUP starts");
    let mut long = client::connect(instance, config, Session::LongCommand).await?;
    let streams = run_with_device(&mut long, &sql, &what, device.as_mut(), sink).await?;
    tracing::info!(
        database,
        stripes = streams.len(),
        "BACKUP finished; reading its history row"
    );

    let set = read_backup_set(&mut catalog, &device.first_device()).await?;
    drop(device);
    let expected = match request.kind {
        BackupKind::Full => BackupType::Database,
        BackupKind::Diff => BackupType::Differential,
        _ => BackupType::Log,
    };
    if set.backup_type != expected {
        return Err(Error::engine(format!(
            "SQL Server recorded the backup as a {} backup where a {expected} backup was taken",
            set.backup_type
        )));
    }
    if let Some((base_id, Some(base_set))) = &base
        && base_set.backup_set_uuid.is_some()
        && set.differential_base_guid.is_some()
        && set.differential_base_guid != base_set.backup_set_uuid
    {
        return Err(Error::engine(format!(
            "SQL Server based the differential of {database} on backup set {}, not on the vault's full backup {base_id} (a full backup was taken outside Strata meanwhile)",
            set.differential_base_guid.map(|g| g.to_string()).unwrap_or_default()
        ))
        .hint("take a full backup: --kind full"));
    }
    let mut outcome = chain::backup_outcome(&set, base.map(|(id, _)| id))?;
    if let Some(meta) = outcome.engine_meta.as_object_mut() {
        meta.insert("stripes".into(), streams.len().into());
        meta.insert("compression".into(), config.compression.as_str().into());
        meta.insert(
            "database_files".into(),
            serde_json::to_value(&state.files)
                .map_err(|e| Error::engine(format!("cannot record the database's files: {e}")))?,
        );
    }
    Ok(outcome)
}

/// Runs the `BACKUP` statement `sql` on `conn` while `device` receives its
/// stripes into `sink`; returns the stripes' records.
///
/// - `BACKUP` fails: its error (SQL Server's first) is returned and the
///   device is left (nothing of it is committed).
/// - A stripe fails: `BACKUP` fails by itself once its device does; its
///   end is awaited for up to [`STATEMENT_GRACE`] (then cancelled) and the
///   stripe's error is returned, with SQL Server's message as a hint.
async fn run_with_device(
    conn: &mut Connection,
    sql: &str,
    what: &str,
    device: &mut dyn BackupDevice,
    sink: &dyn BackupSink,
) -> Result<Vec<StreamRecord>> {
    let mut statement = Box::pin(conn.execute(sql, what));
    let mut receive = device.receive(sink);
    let failed_stripe = tokio::select! {
        done = &mut statement => {
            done?;
            return receive.await;
        }
        received = &mut receive => match received {
            Ok(streams) => {
                statement.await?;
                return Ok(streams);
            }
            Err(e) => e,
        },
    };
    drop(receive);
    let ended = tokio::time::timeout(STATEMENT_GRACE, &mut statement).await;
    drop(statement);
    match ended {
        Ok(Err(sql_error)) => {
            Err(failed_stripe.hint(format!("SQL Server reported: {}", sql_error.message())))
        }
        Ok(Ok(())) => Err(failed_stripe),
        Err(_) => {
            let _ = conn.cancel().await;
            Err(failed_stripe)
        }
    }
}

/// The history row of the backup whose first device was `first_device`
/// (statements 9 and 10).
pub async fn read_backup_set(conn: &mut Connection, first_device: &str) -> Result<BackupSet> {
    let rows = conn
        .query(
            &tsql::media_set(first_device),
            "finding the backup in msdb.dbo.backupmediafamily",
        )
        .await?;
    let media_set_id = match rows.first() {
        Some(row) => required(row.int("media_set_id")?, "media_set_id")?,
        None => {
            return Err(Error::engine(format!(
                "SQL Server reported the backup done but msdb.dbo.backupmediafamily has no device {first_device}"
            ))
            .hint("check that msdb's backup history is kept (no job deletes it while backups run)"));
        }
    };
    let media_set_id = i32::try_from(media_set_id)
        .map_err(|_| Error::engine(format!("media_set_id {media_set_id} is out of range")))?;
    let rows = conn
        .query(
            &tsql::backup_set(media_set_id),
            "reading the backup's row of msdb.dbo.backupset",
        )
        .await?;
    let row = rows.first().ok_or_else(|| {
        Error::engine(format!(
            "msdb.dbo.backupset has no row for media set {media_set_id}"
        ))
    })?;
    backup_set_of_row(row)
}

/// A row of statement 10 as a [`BackupSet`], read the way a history export
/// is ([`crate::history`]), so that both sources read the same.
pub fn backup_set_of_row(row: &tiberius::Row) -> Result<BackupSet> {
    let text = serde_json::Value::Object(client::row_json(row)).to_string();
    serde_json::from_str::<BackupSet>(&text).map_err(|e| {
        Error::engine(format!(
            "the backup's row of msdb.dbo.backupset is not readable: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use strata_core::catalog::manifest::Position;

    use super::*;
    use crate::server::{DatabaseFile, DatabaseInfo, RecoveryStatus, ReplicaRole};
    use crate::test_support::{DB_GUID, FAMILY, FORK, guid, manifest};

    fn state(
        model: &str,
        last_log_backup_lsn: Option<u128>,
        diff_base: Option<u128>,
    ) -> DatabaseState {
        DatabaseState {
            info: DatabaseInfo {
                name: "Sales".into(),
                database_id: 5,
                recovery_model: model.into(),
                state: "ONLINE".into(),
                read_only: false,
                in_availability_group: false,
            },
            recovery: RecoveryStatus {
                database_guid: Some(guid(DB_GUID)),
                family_guid: Some(guid(FAMILY)),
                last_log_backup_lsn: last_log_backup_lsn.map(Position),
                recovery_fork_guid: Some(guid(FORK)),
                first_recovery_fork_guid: Some(guid(FORK)),
                fork_point_lsn: None,
            },
            files: vec![
                DatabaseFile {
                    file_id: 1,
                    file_type: 0,
                    name: "Sales".into(),
                    physical_name: "/var/opt/mssql/data/Sales.mdf".into(),
                    size: 1024,
                    differential_base_guid: diff_base.map(guid),
                    differential_base_lsn: None,
                },
                DatabaseFile {
                    file_id: 2,
                    file_type: 1,
                    name: "Sales_log".into(),
                    physical_name: "/var/opt/mssql/data/Sales_log.ldf".into(),
                    size: 256,
                    differential_base_guid: None,
                    differential_base_lsn: None,
                },
            ],
            replica: None,
        }
    }

    /// A full (backup set 0xF1, LSNs 1000..2000) and two logs up to 4000.
    fn vault() -> Vec<Manifest> {
        let none = serde_json::json!({});
        vec![
            manifest(1, "D", 0xF1, 1000, 2000, none.clone()),
            manifest(3, "L", 0x11, 900, 3000, none.clone()),
            manifest(5, "L", 0x12, 3000, 4000, none),
        ]
    }

    fn settled(kind: BackupKind, state: &DatabaseState, backups: &[Manifest]) -> KindDecision {
        settle(kind, false, state, backups).unwrap()
    }

    #[test]
    fn a_log_that_continues_the_vaults_chain_stays_a_log() {
        let d = settled(
            BackupKind::Log,
            &state("FULL", Some(4000), Some(0xF1)),
            &vault(),
        );
        assert_eq!(d, KindDecision::keep(BackupKind::Log));
        // A full stays a full whatever the state.
        let d = settled(BackupKind::Full, &state("FULL", None, None), &[]);
        assert_eq!(d, KindDecision::keep(BackupKind::Full));
    }

    #[test]
    fn without_a_full_in_the_vault_a_log_or_diff_becomes_a_full() {
        for kind in [BackupKind::Log, BackupKind::Diff] {
            let d = settled(kind, &state("FULL", Some(4000), Some(0xF1)), &[]);
            assert_eq!(d.kind, BackupKind::Full);
            assert_eq!(
                d.reason.as_deref(),
                Some("no full backup of Sales in the vault")
            );
        }
    }

    #[test]
    fn a_log_taken_by_another_tool_breaks_the_chain() {
        // SQL Server's next log starts at 5000; the vault's chain ends at 4000.
        let d = settled(
            BackupKind::Log,
            &state("FULL", Some(5000), Some(0xF1)),
            &vault(),
        );
        assert_eq!(d.kind, BackupKind::Full);
        assert_eq!(
            d.reason.as_deref(),
            Some(
                "the log chain is broken: the next log backup would start at LSN 5000 but the vault's chain ends at LSN 4000 (a log backup the vault does not hold was taken: by another tool, or by a Strata backup that failed to commit; or the recovery model was SIMPLE)"
            )
        );
        let d = settled(BackupKind::Log, &state("FULL", None, Some(0xF1)), &vault());
        assert_eq!(d.kind, BackupKind::Full);
        assert!(d.reason.unwrap().contains("last_log_backup_lsn is NULL"));
    }

    #[test]
    fn a_new_recovery_fork_or_database_identity_needs_a_full() {
        let mut s = state("FULL", Some(4000), Some(0xF1));
        s.recovery.recovery_fork_guid = Some(guid(0xf2));
        let d = settled(BackupKind::Log, &s, &vault());
        assert_eq!(d.kind, BackupKind::Full);
        assert!(
            d.reason
                .unwrap()
                .contains("current recovery fork 00000000-0000-0000-0000-0000000000f2")
        );

        let mut s = state("FULL", Some(4000), Some(0xF1));
        s.recovery.database_guid = Some(guid(0xdc));
        let d = settled(BackupKind::Diff, &s, &vault());
        assert_eq!(d.kind, BackupKind::Full);
        assert!(
            d.reason
                .unwrap()
                .starts_with("Sales was restored or re-created")
        );

        let mut s = state("FULL", Some(4000), Some(0xF1));
        s.recovery.family_guid = Some(guid(0xfb));
        let d = settled(BackupKind::Log, &s, &vault());
        assert!(d.reason.unwrap().starts_with("Sales was re-created"));
    }

    #[test]
    fn a_diff_on_an_out_of_band_full_becomes_a_full() {
        let ours = state("FULL", Some(4000), Some(0xF1));
        assert_eq!(
            settled(BackupKind::Diff, &ours, &vault()),
            KindDecision::keep(BackupKind::Diff)
        );
        let theirs = state("FULL", Some(4000), Some(0xE9));
        let d = settled(BackupKind::Diff, &theirs, &vault());
        assert_eq!(d.kind, BackupKind::Full);
        assert_eq!(
            d.reason.as_deref(),
            Some(
                "the differential base of Sales is backup set 00000000-0000-0000-0000-0000000000e9, which is not in the vault (a full backup taken outside Strata)"
            )
        );
        // A copy-only full of the vault is never a base.
        let mut backups = vault();
        backups.push(manifest(
            7,
            "D",
            0xC0,
            4000,
            4500,
            serde_json::json!({"is_copy_only": true}),
        ));
        let d = settled(
            BackupKind::Diff,
            &state("FULL", Some(4000), Some(0xC0)),
            &backups,
        );
        assert_eq!(d.kind, BackupKind::Full);
        // choose_base finds the vault's full that is the server's base.
        assert_eq!(choose_base(&ours, &backups).unwrap(), Some(0));
        assert_eq!(choose_base(&theirs, &backups).unwrap(), None);
    }

    #[test]
    fn simple_recovery_gets_no_log_backups_but_diffs() {
        let s = state("SIMPLE", None, Some(0xF1));
        let err = settle(BackupKind::Log, false, &s, &vault()).unwrap_err();
        assert!(err.to_string().contains("SIMPLE recovery model"), "{err}");
        assert!(
            err.hint_text()
                .unwrap()
                .contains("ALTER DATABASE [Sales] SET RECOVERY FULL")
        );
        assert_eq!(
            settled(BackupKind::Diff, &s, &vault()),
            KindDecision::keep(BackupKind::Diff)
        );
        assert!(refuse(BackupKind::Log, false, &s).is_err());
        refuse(BackupKind::Diff, false, &s).unwrap();
    }

    #[test]
    fn refusals_name_the_state_and_the_way_out() {
        let mut s = state("FULL", Some(4000), Some(0xF1));
        s.info.state = "RESTORING".into();
        let err = refuse(BackupKind::Full, false, &s).unwrap_err();
        assert!(
            err.to_string()
                .contains("database Sales is RESTORING, not ONLINE"),
            "{err}"
        );

        let s = state("FULL", Some(4000), Some(0xF1));
        assert!(
            refuse(BackupKind::Diff, true, &s)
                .unwrap_err()
                .to_string()
                .contains("cannot be copy-only")
        );
        assert!(refuse(BackupKind::Incr, false, &s).is_err());

        let mut secondary = s.clone();
        secondary.replica = Some(ReplicaRole {
            is_primary: false,
            is_preferred: true,
        });
        refuse(BackupKind::Full, true, &secondary).unwrap();
        refuse(BackupKind::Log, false, &secondary).unwrap();
        let err = refuse(BackupKind::Full, false, &secondary).unwrap_err();
        assert!(err.to_string().contains("secondary replica"), "{err}");
        assert!(err.hint_text().unwrap().contains("--kind copy-only"));
        assert!(refuse(BackupKind::Diff, false, &secondary).is_err());
        assert!(refuse(BackupKind::Log, true, &secondary).is_err());

        let mut not_preferred = secondary.clone();
        not_preferred.replica = Some(ReplicaRole {
            is_primary: false,
            is_preferred: false,
        });
        let err = refuse(BackupKind::Log, false, &not_preferred).unwrap_err();
        assert!(
            err.to_string()
                .contains("not the preferred backup replica of database Sales"),
            "{err}"
        );
        // The primary takes fulls and diffs whatever the preference.
        let mut primary = s;
        primary.replica = Some(ReplicaRole {
            is_primary: true,
            is_preferred: false,
        });
        refuse(BackupKind::Diff, false, &primary).unwrap();
        assert!(refuse(BackupKind::Log, false, &primary).is_err());
    }

    #[test]
    fn the_history_row_reads_with_exact_lsns_and_local_times() {
        use tiberius::numeric::Numeric;
        use tiberius::{ColumnData, ColumnType, IntoSql, Row};

        let lsn = |v: i128| ColumnData::Numeric(Some(Numeric::new_with_scale(v, 0)));
        let text = |v: &str| ColumnData::String(Some(v.to_owned().into()));
        let started = crate::test_support::at(5);
        let row = Row::builder()
            .column(
                "backup_set_uuid",
                ColumnType::Guid,
                ColumnData::Guid(Some(guid(0xF1))),
            )
            .column("type", ColumnType::NVarchar, text("I"))
            .column(
                "is_copy_only",
                ColumnType::Bit,
                ColumnData::Bit(Some(false)),
            )
            // 25 digits: more than a double holds.
            .column(
                "first_lsn",
                ColumnType::Numericn,
                lsn(1_234_567_890_123_456_789_012_345),
            )
            .column(
                "last_lsn",
                ColumnType::Numericn,
                lsn(1_234_567_890_123_456_789_099_999),
            )
            .column(
                "differential_base_lsn",
                ColumnType::Numericn,
                ColumnData::Numeric(None),
            )
            .column(
                "differential_base_guid",
                ColumnType::Guid,
                ColumnData::Guid(Some(guid(0xE0))),
            )
            .column(
                "backup_start_date",
                ColumnType::Datetime2,
                started.into_sql(),
            )
            .column(
                "backup_finish_date",
                ColumnType::Datetime2,
                started.into_sql(),
            )
            .column("time_zone", ColumnType::Int2, ColumnData::I16(Some(8)))
            .column(
                "has_backup_checksums",
                ColumnType::Bit,
                ColumnData::Bit(Some(true)),
            )
            .column("backup_size", ColumnType::Numericn, lsn(123_456_789))
            .column("database_name", ColumnType::NVarchar, text("Sales"))
            .build();
        let set = backup_set_of_row(&row).unwrap();
        assert_eq!(set.backup_type, BackupType::Differential);
        assert_eq!(set.first_lsn, Position(1_234_567_890_123_456_789_012_345));
        assert_eq!(set.last_lsn, Position(1_234_567_890_123_456_789_099_999));
        assert_eq!(set.differential_base_lsn, None);
        assert_eq!(set.differential_base_guid, Some(guid(0xE0)));
        assert_eq!(set.backup_start_date, started);
        assert_eq!(set.time_zone, Some(8));
        assert!(set.has_backup_checksums);
        assert_eq!(set.backup_size, Some(123_456_789));
    }

    #[test]
    fn stripes_follow_the_size_or_the_configuration() {
        assert_eq!(stripes_for(0, 0), 1);
        assert_eq!(stripes_for(0, 100 << 30), 1);
        assert_eq!(stripes_for(0, (100 << 30) + 1), 2);
        assert_eq!(stripes_for(0, 1 << 50), MAX_STRIPES);
        assert_eq!(stripes_for(4, 1), 4);
    }

    #[test]
    fn options_are_read_strictly() {
        let o: BackupOptions = parse_options(&serde_json::Value::Null, "o").unwrap();
        assert!(!o.copy_only);
        let o: BackupOptions = parse_options(&serde_json::json!({"copy_only": true}), "o").unwrap();
        assert!(o.copy_only);
        assert!(
            parse_options::<BackupOptions>(&serde_json::json!({"copyonly": true}), "o").is_err()
        );
    }
}

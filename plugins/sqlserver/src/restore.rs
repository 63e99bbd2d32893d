//! Restores: the planned full, differential and log backups applied with
//! `RESTORE ... FROM URL` (statements 12 to 16 of [`crate::tsql`]) while
//! the data path serves their stripes from the vault, or written as files
//! with the script that restores them (`--files-only`).
//!
//! The order is Microsoft's "Restore a database to a point in time (full
//! recovery model)": the full `WITH MOVE` of every file and `NORECOVERY`,
//! the differential, the logs `WITH NORECOVERY` (the last one `WITH
//! STOPAT` for a time target, in the server's local time), then `RESTORE
//! DATABASE ... WITH RECOVERY`. A target outside the recoverable windows
//! never reaches this module: core's planner refuses it, naming the nearest
//! restorable times.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{FixedOffset, NaiveDateTime};
use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::{BackupKind, Manifest, Position};
use strata_core::catalog::planner::{RestorePlan, RestoreTarget};
use strata_core::plugin::{
    RestoreOutcome, RestoreRequest, RestoreSource, parse_options, refuse_protected,
};
use strata_core::{Error, Result};
use tokio::io::AsyncWrite;

use crate::backup::database_of;
use crate::chain;
use crate::client::{self, Connection, RowExt, Session};
use crate::config::InstanceConfig;
use crate::device::{DataPath, ServedBackup};
use crate::history::{BackupSet, BackupType};
use crate::server::{DatabaseFile, DatabaseInfo, ServerInfo};
use crate::tsql::{self, Move};

/// Where and how a SQL Server restore lands (the JSON form of
/// [`RestoreRequest::destination`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDestination {
    /// The restored database's name (default: the source database's).
    #[serde(default)]
    pub database: Option<String>,
    /// The directory on the SQL Server host for every restored file
    /// (default: the server's `InstanceDefaultDataPath` for data files and
    /// `InstanceDefaultLogPath` for log files).
    #[serde(default)]
    pub move_to: Option<String>,
    /// Overwrite an existing database of that name (`WITH REPLACE`); never
    /// one in an availability group.
    #[serde(default)]
    pub replace: bool,
    /// Write the backups as files into this local directory, with
    /// `restore.json` and `restore.sql`, instead of restoring on the server.
    #[serde(default)]
    pub files_only: Option<PathBuf>,
}

/// One file of a backup, from `RESTORE FILELISTONLY` (statement 12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupFile {
    /// `LogicalName`.
    pub logical_name: String,
    /// `PhysicalName`: where the file was on the backed-up server.
    pub physical_name: String,
    /// `Type`: `D` data, `L` log, `S` FILESTREAM or In-Memory container,
    /// `F` full-text catalog.
    pub file_type: char,
    /// `FileId`.
    pub file_id: i64,
}

impl BackupFile {
    /// The files a manifest recorded at backup time
    /// (`engine_meta.database_files`, rows of `sys.master_files`), for a
    /// script written without a server.
    pub fn from_recorded(files: &[DatabaseFile]) -> Vec<BackupFile> {
        files
            .iter()
            .map(|f| BackupFile {
                logical_name: f.name.clone(),
                physical_name: f.physical_name.clone(),
                file_type: match f.file_type {
                    1 => 'L',
                    2 => 'S',
                    4 => 'F',
                    _ => 'D',
                },
                file_id: i64::from(f.file_id),
            })
            .collect()
    }
}

/// The `MOVE` clauses that put every file of `files` under the new name
/// `database`: data files in `data_dir` as `<database>.mdf`, then
/// `<database>_2.ndf`, `<database>_3.ndf`, ... (by `FileId`); log files in
/// `log_dir` as `<database>_log.ldf`, `<database>_log_2.ldf`, ...;
/// FILESTREAM containers and full-text catalogs (directories) in
/// `data_dir` as `<database>_<logical name>`. Names keep the database's
/// spaces; a character no file name may hold (`/`, `\\`, `:`, `*`, `?`,
/// `"`, `<`, `>`, `|`, and control characters) becomes `_`, and a name of
/// dots alone gets a leading `_`, so that every file lands in its directory
/// whatever the database is called. The directory's separator (`/` or `\\`)
/// is the one it uses.
pub fn moves(database: &str, files: &[BackupFile], data_dir: &str, log_dir: &str) -> Vec<Move> {
    let database = &file_stem(database);
    let mut sorted: Vec<&BackupFile> = files.iter().collect();
    sorted.sort_by_key(|f| f.file_id);
    let (mut data, mut log) = (0, 0);
    sorted
        .into_iter()
        .map(|f| {
            let to = match f.file_type {
                'L' => {
                    log += 1;
                    let name = match log {
                        1 => format!("{database}_log.ldf"),
                        n => format!("{database}_log_{n}.ldf"),
                    };
                    join_server_path(log_dir, &name)
                }
                'D' => {
                    data += 1;
                    let name = match data {
                        1 => format!("{database}.mdf"),
                        n => format!("{database}_{n}.ndf"),
                    };
                    join_server_path(data_dir, &name)
                }
                _ => join_server_path(
                    data_dir,
                    &file_stem(&format!("{database}_{}", f.logical_name)),
                ),
            };
            Move {
                logical_name: f.logical_name.clone(),
                to,
            }
        })
        .collect()
}

/// `name` as the stem of a file name on Linux and Windows (see [`moves`]).
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if stem.chars().all(|c| c == '.') {
        format!("_{stem}")
    } else {
        stem
    }
}

/// `dir` and `name` joined with the separator `dir` uses: a Windows path
/// (`D:\Data`, `\\server\share`) gets `\`, anything else `/`.
pub fn join_server_path(dir: &str, name: &str) -> String {
    let windows = dir.contains('\\') || dir.as_bytes().get(1) == Some(&b':');
    let sep = if windows { '\\' } else { '/' };
    let dir = dir.trim_end_matches(['/', '\\']);
    format!("{dir}{sep}{name}")
}

/// The directory part of a server path (`/var/opt/mssql/data/x.mdf` →
/// `/var/opt/mssql/data`, `D:\Data\x.mdf` → `D:\Data`).
fn server_dir(path: &str) -> &str {
    path.rfind(['/', '\\']).map_or(".", |i| &path[..i])
}

/// One planned backup, in apply order, with its history row.
#[derive(Debug, Clone)]
struct Step<'a> {
    manifest: &'a Manifest,
    set: BackupSet,
}

fn steps(request: &RestoreRequest) -> Result<Vec<Step<'_>>> {
    request
        .backups
        .iter()
        .map(|manifest| {
            let set = chain::backup_set_of(manifest)?.ok_or_else(|| {
                Error::integrity(format!(
                    "backup {} records no SQL Server backup set",
                    manifest.id
                ))
                .hint("`strata verify` checks the vault; this backup cannot be restored by the SQL Server plugin")
            })?;
            Ok(Step { manifest, set })
        })
        .collect()
}

/// Where the last log stops: the target time in the server's local time
/// (the log's own `time_zone`, else `server_offset`), for a time target
/// restored with logs; `None` otherwise (the restore runs to the end of
/// the last backup).
fn stop_at(
    plan: &RestorePlan,
    last: Option<&BackupSet>,
    server_offset: Option<FixedOffset>,
) -> Result<Option<NaiveDateTime>> {
    match (&plan.target, last) {
        (RestoreTarget::Time(t), Some(log)) if log.backup_type == BackupType::Log => {
            log.to_server_local(*t, server_offset).map(Some)
        }
        _ => Ok(None),
    }
}

/// The stripes of a backup in device order: (stream name, raw size).
fn stripes_of(manifest: &Manifest) -> Vec<(String, u64)> {
    let mut stripes: Vec<(String, u64)> = manifest
        .streams
        .iter()
        .map(|s| (s.name.clone(), s.raw_size))
        .collect();
    stripes.sort();
    stripes
}

/// Refuses what the plan cannot do on SQL Server, before anything runs.
fn check_plan(plan: &RestorePlan) -> Result<()> {
    if let RestoreTarget::Position { .. } = plan.target {
        return Err(Error::config(
            "the SQL Server plugin restores to a time, to the latest point or to one backup, not to an LSN",
        )
        .hint("use --to-time or --latest"));
    }
    Ok(())
}

/// Checks a database name SQL Server accepts as a `sysname` (1 to 128 characters).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err(Error::config(format!(
            "`{name}` is not a database name (1 to 128 characters)"
        ))
        .hint("choose another name with --as NEWNAME"));
    }
    Ok(())
}

/// Restores `request` on the SQL Server of `server` (its configuration
/// and data path), or writes it as files when the destination says
/// `files_only`, which needs no server: `server` is then not used, and may
/// be the error of a host without the instance's section. See the module
/// docs.
///
/// # Errors
/// `server`'s error when a restore to a server has none;
/// [`ErrorKind::Conflict`](strata_core::ErrorKind::Conflict) when the
/// target database exists and `replace` is not set, or is in an
/// availability group; SQL Server's first error when a statement fails
/// (the database is then left restoring); the data path's error when a
/// stripe cannot be read from the vault.
pub async fn restore(
    instance: &str,
    server: std::result::Result<(&InstanceConfig, &dyn DataPath), Error>,
    request: RestoreRequest,
    source: &dyn RestoreSource,
) -> Result<RestoreOutcome> {
    let destination: RestoreDestination =
        parse_options(&request.destination, "SQL Server restore destination")?;
    let plan = request.plan.clone().ok_or_else(|| {
        Error::config("the SQL Server plugin restores a planned chain of backups, and got no plan")
    })?;
    check_plan(&plan)?;
    let source_db = database_of(request.source.database.as_deref())?.to_owned();
    let target = destination
        .database
        .clone()
        .unwrap_or_else(|| source_db.clone());
    check_name(&target)?;
    let steps = steps(&request)?;
    if steps.is_empty() {
        return Err(Error::config("the restore plan holds no backup"));
    }
    if let Some(dir) = &destination.files_only {
        return files_only(
            &request,
            &plan,
            &steps,
            &destination,
            &source_db,
            &target,
            dir,
            source,
        )
        .await;
    }

    let (config, data_path) = server?;
    let mut catalog = client::connect(instance, config, Session::Catalog).await?;
    let server = ServerInfo::read(&mut catalog).await?;
    let existing = DatabaseInfo::list(&mut catalog)
        .await?
        .into_iter()
        .find(|d| d.name.eq_ignore_ascii_case(&target));
    if let Some(existing) = &existing {
        if existing.in_availability_group {
            return Err(Error::conflict(format!(
                "database {} on {} is in an availability group: Strata never restores over one",
                existing.name, server.server_name
            ))
            .hint("restore under a new name with --as NEWNAME (RESTORE is not allowed on availability databases)"));
        }
        if !destination.replace {
            return Err(Error::conflict(format!(
                "database {} exists on {}",
                existing.name, server.server_name
            ))
            .hint("restore under a new name with --as NEWNAME, or overwrite it on purpose with --replace"));
        }
    }
    let data_dir = destination
        .move_to
        .clone()
        .or_else(|| server.data_path.clone());
    let log_dir = destination
        .move_to
        .clone()
        .or_else(|| server.log_path.clone())
        .or_else(|| data_dir.clone());
    let (Some(data_dir), Some(log_dir)) = (data_dir, log_dir) else {
        return Err(Error::config(format!(
            "{} does not report its default data directory",
            server.server_name
        ))
        .hint("name the directory for the restored files with --move-to DIR"));
    };
    let server_offset = FixedOffset::east_opt(server.utc_offset_minutes * 60);
    let stop = stop_at(&plan, steps.last().map(|s| &s.set), server_offset)?;

    let served: Vec<ServedBackup> = steps
        .iter()
        .map(|s| ServedBackup {
            id: s.manifest.id.clone(),
            stripes: stripes_of(s.manifest),
        })
        .collect();
    let device = data_path.open_restore(served)?;
    let mut long = client::connect(instance, config, Session::LongCommand).await?;
    let replace = existing.is_some() && destination.replace;
    let address = long.address().to_owned();
    let work = apply(
        &mut long,
        device.as_ref(),
        &steps,
        &target,
        &data_dir,
        &log_dir,
        replace,
        stop,
    );
    let serve = device.serve(source);
    tokio::pin!(work, serve);
    let applied = tokio::select! {
        done = &mut work => done,
        served = &mut serve => match served {
            Ok(()) => work.await,
            Err(e) => Err(e),
        },
    };
    let applied = match applied {
        Ok(applied) => applied,
        Err(err) if existing.is_none() => {
            return Err(drop_failed_restore(&mut catalog, &target, err).await);
        }
        Err(err) => {
            let quoted = tsql::quote_ident(&target);
            return Err(err.hint(format!(
                "{quoted} was being overwritten and is left restoring: restore it again with --replace, or drop it (DROP DATABASE {quoted})"
            )));
        }
    };

    let last = steps.last().map(|s| &s.set);
    let position = plan.reaches_position.or(last.map(|s| s.last_lsn));
    let time = match plan.target {
        RestoreTarget::Time(t) => Some(t),
        _ => plan.reaches_time,
    };
    let reached = match (&stop, time) {
        (Some(local), Some(t)) => format!(
            "to {} (STOPAT {} server time)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            tsql::stopat_text(*local)
        ),
        (_, Some(t)) => format!(
            "to {} (LSN {})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            position.map(|p| p.to_string()).unwrap_or_default()
        ),
        _ => "to the end of the last backup".to_owned(),
    };
    let summary = format!(
        "restored database {source_db} as {} on {} ({}) {reached}, from {} backup{}\nconnect with: sqlcmd -S tcp:{} -d {}",
        tsql::quote_ident(&target),
        server.server_name,
        address,
        steps.len(),
        if steps.len() == 1 { "" } else { "s" },
        address
            .rsplit_once(':')
            .map_or(address.clone(), |(host, port)| format!("{host},{port}")),
        target
    );
    Ok(RestoreOutcome {
        position,
        time,
        summary,
        details: serde_json::json!({
            "source_database": source_db,
            "database": target,
            "server": server.server_name,
            "replaced": replace,
            "backups": steps.iter().map(|s| s.manifest.id.to_string()).collect::<Vec<_>>(),
            "stopat": stop.map(tsql::stopat_text),
            "files": applied.iter().map(|m| serde_json::json!({"logical_name": m.logical_name, "to": m.to})).collect::<Vec<_>>(),
        }),
    })
}

/// Runs statements 12 to 16 for `steps` on `conn`, reading through
/// `device`; returns the `MOVE`s of the full.
/// After a failed restore into a database that did not exist before: drops
/// what SQL Server created (a database left restoring holds its name and
/// files, and a second attempt would find it in the way). Returns `err`,
/// with a hint saying whether the drop worked.
async fn drop_failed_restore(catalog: &mut Connection, target: &str, err: Error) -> Error {
    let quoted = tsql::quote_ident(target);
    let created = match DatabaseInfo::list(catalog).await {
        Ok(list) => list.iter().any(|d| d.name.eq_ignore_ascii_case(target)),
        Err(_) => true,
    };
    if !created {
        return err.hint("nothing was restored: SQL Server created no database");
    }
    match catalog
        .execute(
            &tsql::drop_database(target),
            "dropping the partly restored database",
        )
        .await
    {
        Ok(()) => err.hint(format!(
            "the partly restored {quoted} was dropped: nothing is left on the server"
        )),
        Err(drop) => {
            tracing::warn!(database = %target, error = %drop, "the partly restored database could not be dropped");
            err.hint(format!(
                "{quoted} is left restoring: drop it (DROP DATABASE {quoted}) before trying again"
            ))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    conn: &mut Connection,
    device: &dyn crate::device::RestoreDevice,
    steps: &[Step<'_>],
    target: &str,
    data_dir: &str,
    log_dir: &str,
    replace: bool,
    stop: Option<NaiveDateTime>,
) -> Result<Vec<Move>> {
    let full = device.from_clause(0);
    let rows = conn
        .query(
            &tsql::filelistonly(&full),
            &format!("reading the file list of backup {}", steps[0].manifest.id),
        )
        .await?;
    let files = rows
        .iter()
        .map(|row| {
            Ok(BackupFile {
                logical_name: client::required(row.text("LogicalName")?, "LogicalName")?,
                physical_name: row.text("PhysicalName")?.unwrap_or_default(),
                file_type: row
                    .text("Type")?
                    .and_then(|t| t.trim().chars().next())
                    .unwrap_or('D')
                    .to_ascii_uppercase(),
                file_id: row.int("FileId")?.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let moves = moves(target, &files, data_dir, log_dir);
    let last = steps.len() - 1;
    for (i, step) in steps.iter().enumerate() {
        let from = device.from_clause(i);
        let id = &step.manifest.id;
        let (sql, what) = match step.manifest.kind {
            BackupKind::Full => (
                tsql::restore_full(target, &full, &moves, replace),
                format!("restoring full backup {id} as [{target}]"),
            ),
            BackupKind::Diff => (
                tsql::restore_differential(target, &from),
                format!("restoring differential backup {id}"),
            ),
            BackupKind::Log => (
                tsql::restore_log(target, &from, stop.filter(|_| i == last)),
                format!("restoring log backup {id}"),
            ),
            BackupKind::Incr => {
                return Err(Error::integrity(format!(
                    "backup {id} is incremental, which SQL Server does not have"
                )));
            }
        };
        tracing::info!(backup = %id, database = target, "RESTORE starts");
        conn.execute(&sql, &what).await?;
    }
    conn.execute(&tsql::recover(target), &format!("recovering [{target}]"))
        .await?;
    Ok(moves)
}

/// One file `--files-only` wrote, as `restore.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// The backup's place in the restore order (1 = the full).
    pub order: usize,
    /// `full`, `diff` or `log`.
    pub kind: BackupKind,
    /// The backup in the vault.
    pub backup_id: String,
    /// The stripe within the backup (0-based).
    pub stripe: usize,
    /// The file's name in the directory.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// The BLAKE3 digest of its bytes (hex).
    pub blake3: String,
    /// The backup's first LSN.
    pub first_lsn: Option<Position>,
    /// The backup's last LSN (exclusive).
    pub last_lsn: Option<Position>,
}

/// The file name of stripe `stripe` of backup `order` (1-based) of
/// `stripes`: `<order>-<kind>-<id>[_stripe<n>].bak` (`.trn` for logs).
pub fn file_name(
    order: usize,
    kind: BackupKind,
    id: &str,
    stripe: usize,
    stripes: usize,
) -> String {
    let ext = if kind == BackupKind::Log {
        "trn"
    } else {
        "bak"
    };
    let part = if stripes > 1 {
        format!("_stripe{stripe}")
    } else {
        String::new()
    };
    format!("{order:03}-{kind}-{id}{part}.{ext}")
}

/// One backup of a `--files-only` script: its kind and its files' paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptStep {
    /// `full`, `diff` or `log`.
    pub kind: BackupKind,
    /// The paths of its stripes' files, in stripe order.
    pub paths: Vec<String>,
}

/// The `restore.sql` of `--files-only`: statements 12 to 16 reading the
/// files with `FROM DISK`, each batch ended by `GO` (sqlcmd's separator).
pub fn files_only_script(
    source_db: &str,
    target: &str,
    steps: &[ScriptStep],
    moves: &[Move],
    stop: Option<NaiveDateTime>,
) -> String {
    let mut out = format!(
        "-- Restores database {source_db} as {} from the files beside this script\n\
         -- (restore.json lists them with their sizes and BLAKE3 digests).\n\
         -- Run on the SQL Server host after copying the files there: sqlcmd -b -i restore.sql\n\n",
        tsql::quote_ident(target)
    );
    let Some(first) = steps.first() else {
        return out;
    };
    let full = tsql::from_disks(&first.paths);
    out.push_str("-- The files of the full backup; every one needs a MOVE below.\n");
    out.push_str(&tsql::filelistonly(&full));
    out.push_str("\nGO\n");
    if moves.is_empty() {
        out.push_str("-- The backup did not record its files: add MOVE N'<logical name>' TO N'<path>' for each file listed above.\n");
    }
    let last = steps.len() - 1;
    for (i, step) in steps.iter().enumerate() {
        let from = tsql::from_disks(&step.paths);
        out.push_str(&match step.kind {
            BackupKind::Log => tsql::restore_log(target, &from, stop.filter(|_| i == last)),
            BackupKind::Diff => tsql::restore_differential(target, &from),
            _ => tsql::restore_full(target, &from, moves, false),
        });
        out.push_str("\nGO\n");
    }
    out.push_str(&tsql::recover(target));
    out.push_str("\nGO\n");
    out
}

/// `--files-only`: writes every stripe of the plan into `dir`, with
/// `restore.json` and `restore.sql`. No SQL Server is needed.
#[allow(clippy::too_many_arguments)]
async fn files_only(
    request: &RestoreRequest,
    plan: &RestorePlan,
    steps: &[Step<'_>],
    destination: &RestoreDestination,
    source_db: &str,
    target: &str,
    dir: &Path,
    source: &dyn RestoreSource,
) -> Result<RestoreOutcome> {
    refuse_protected(dir, &request.protected)?;
    let dir = std::path::absolute(dir).map_err(|e| Error::io_at(dir, e))?;
    if let Ok(mut entries) = std::fs::read_dir(&dir)
        && entries.next().is_some()
    {
        return Err(Error::conflict(format!("{} is not empty", dir.display()))
            .hint("name a new or empty directory with --files-only DIR"));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io_doing_at("cannot create", &dir, e))?;

    let mut written = Vec::new();
    let mut script_steps = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let manifest = step.manifest;
        let stripes = stripes_of(manifest);
        let mut paths = Vec::new();
        for (k, (stream, _)) in stripes.iter().enumerate() {
            let name = file_name(i + 1, manifest.kind, manifest.id.as_str(), k, stripes.len());
            let path = dir.join(&name);
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::io_doing_at("cannot create", &path, e))?;
            let mut out = HashingWriter::new(file);
            let size = source
                .read_stream(&manifest.id, stream, &mut out)
                .await
                .map_err(|e| e.context(format!("writing {}", path.display())))?;
            tokio::io::AsyncWriteExt::shutdown(&mut out)
                .await
                .map_err(|e| Error::io_doing_at("cannot write", &path, e))?;
            out.inner
                .sync_all()
                .await
                .map_err(|e| Error::io_doing_at("cannot write", &path, e))?;
            written.push(WrittenFile {
                order: i + 1,
                kind: manifest.kind,
                backup_id: manifest.id.to_string(),
                stripe: k,
                file: name,
                size,
                blake3: out.hasher.finalize().to_hex().to_string(),
                first_lsn: Some(step.set.first_lsn),
                last_lsn: Some(step.set.last_lsn),
            });
            paths.push(path.display().to_string());
        }
        script_steps.push(ScriptStep {
            kind: manifest.kind,
            paths,
        });
    }

    // MOVE clauses from the files the full recorded at backup time.
    let recorded: Vec<DatabaseFile> = steps[0]
        .manifest
        .engine_meta
        .get("database_files")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let files = BackupFile::from_recorded(&recorded);
    let first_dir = |t: char| {
        files
            .iter()
            .find(|f| f.file_type == t)
            .map(|f| server_dir(&f.physical_name).to_owned())
    };
    let data_dir = destination
        .move_to
        .clone()
        .or_else(|| first_dir('D'))
        .unwrap_or_else(|| ".".into());
    let log_dir = destination
        .move_to
        .clone()
        .or_else(|| first_dir('L'))
        .unwrap_or_else(|| data_dir.clone());
    let moves = moves(target, &files, &data_dir, &log_dir);
    let stop = stop_at(plan, steps.last().map(|s| &s.set), None)?;
    let script = files_only_script(source_db, target, &script_steps, &moves, stop);
    let sql_path = dir.join("restore.sql");
    std::fs::write(&sql_path, &script)
        .map_err(|e| Error::io_doing_at("cannot write", &sql_path, e))?;
    let listing = serde_json::json!({
        "source_database": source_db,
        "database": target,
        "target": plan.target.to_string(),
        "stopat": stop.map(tsql::stopat_text),
        "files": written,
    });
    let json_path = dir.join("restore.json");
    let text = serde_json::to_string_pretty(&listing)
        .map_err(|e| Error::io(format!("cannot render restore.json: {e}")))?;
    std::fs::write(&json_path, text)
        .map_err(|e| Error::io_doing_at("cannot write", &json_path, e))?;

    let bytes: u64 = written.iter().map(|f| f.size).sum();
    Ok(RestoreOutcome {
        position: steps.last().map(|s| s.set.last_lsn),
        time: match plan.target {
            RestoreTarget::Time(t) => Some(t),
            _ => plan.reaches_time,
        },
        summary: format!(
            "wrote {} file{} ({bytes} bytes) of database {source_db} to {}, with restore.json and restore.sql\n\
             to restore it as {}: copy the directory to the SQL Server host and run sqlcmd -b -i restore.sql there",
            written.len(),
            if written.len() == 1 { "" } else { "s" },
            dir.display(),
            tsql::quote_ident(target)
        ),
        details: listing,
    })
}

/// An `AsyncWrite` that hashes (BLAKE3) what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.hasher.update(&buf[..n]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: i64, t: char, logical: &str) -> BackupFile {
        BackupFile {
            logical_name: logical.into(),
            physical_name: format!("/var/opt/mssql/data/{logical}"),
            file_type: t,
            file_id: id,
        }
    }

    #[test]
    fn every_file_gets_a_move_under_the_new_name() {
        let files = [
            file(3, 'D', "Sales_archive"),
            file(2, 'L', "Sales_log"),
            file(1, 'D', "Sales"),
            file(4, 'D', "Sales_2026"),
            file(5, 'S', "Sales_fs"),
        ];
        let moves = moves("Sales copy", &files, "/srv/data/", "/srv/log");
        let pairs: Vec<(&str, &str)> = moves
            .iter()
            .map(|m| (m.logical_name.as_str(), m.to.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Sales", "/srv/data/Sales copy.mdf"),
                ("Sales_log", "/srv/log/Sales copy_log.ldf"),
                ("Sales_archive", "/srv/data/Sales copy_2.ndf"),
                ("Sales_2026", "/srv/data/Sales copy_3.ndf"),
                ("Sales_fs", "/srv/data/Sales copy_Sales_fs"),
            ]
        );
        let windows = moves_for_windows();
        assert_eq!(windows[0].to, r"D:\Data\db.mdf");
        assert_eq!(windows[1].to, r"L:\Logs\db_log.ldf");
        assert_eq!(
            tsql::restore_full("Sales copy", "FROM URL = N'u'", &moves[..2], false),
            "RESTORE DATABASE [Sales copy] FROM URL = N'u' WITH MOVE N'Sales' TO N'/srv/data/Sales copy.mdf', MOVE N'Sales_log' TO N'/srv/log/Sales copy_log.ldf', NORECOVERY, CHECKSUM, STATS = 10"
        );
    }

    fn moves_for_windows() -> Vec<Move> {
        let files = [file(1, 'D', "db"), file(2, 'L', "db_log")];
        moves("db", &files, r"D:\Data\", r"L:\Logs")
    }

    #[test]
    fn a_time_target_stops_the_last_log_in_the_servers_local_time() {
        // A log taken on a server at +02:00 (time_zone 8 quarter hours).
        let log: BackupSet = serde_json::from_str(
            r#"{"type": "L", "first_lsn": "1", "last_lsn": "2", "time_zone": 8,
                "backup_start_date": "2026-12-01T10:05:00", "backup_finish_date": "2026-12-01T10:05:01",
                "database_name": "Sales"}"#,
        )
        .unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-01T08:00:00.123Z")
            .unwrap()
            .to_utc();
        let record = chain::record(
            &log,
            "20261201T080500.000Z-00000001".parse().unwrap(),
            None,
            None,
        )
        .unwrap();
        let plan = RestorePlan {
            target: RestoreTarget::Time(t),
            fork: record.fork.clone(),
            base: record.clone(),
            diffs: vec![],
            logs: vec![record],
            reaches_time: Some(t),
            reaches_position: None,
        };
        let stop = stop_at(&plan, Some(&log), None).unwrap().unwrap();
        assert_eq!(
            tsql::restore_log("Sales", "FROM URL = N'u'", Some(stop)),
            "RESTORE LOG [Sales] FROM URL = N'u' WITH NORECOVERY, CHECKSUM, STOPAT = N'2026-12-01T10:00:00.123'"
        );
        // Unknown time zone in the row: the server's offset is used.
        let mut unknown = log.clone();
        unknown.time_zone = Some(127);
        let stop = stop_at(&plan, Some(&unknown), FixedOffset::east_opt(-5 * 3600)).unwrap();
        assert_eq!(tsql::stopat_text(stop.unwrap()), "2026-12-01T03:00:00.123");
        // The latest point: no STOPAT.
        let latest = RestorePlan {
            target: RestoreTarget::Latest,
            ..plan
        };
        assert_eq!(stop_at(&latest, Some(&log), None).unwrap(), None);
    }

    #[test]
    fn the_files_only_script_reads_the_files_in_order() {
        let steps = [
            ScriptStep {
                kind: BackupKind::Full,
                paths: vec![
                    "/srv/out/001-full-A_stripe0.bak".into(),
                    "/srv/out/001-full-A_stripe1.bak".into(),
                ],
            },
            ScriptStep {
                kind: BackupKind::Diff,
                paths: vec!["/srv/out/002-diff-B.bak".into()],
            },
            ScriptStep {
                kind: BackupKind::Log,
                paths: vec!["/srv/out/003-log-C.trn".into()],
            },
            ScriptStep {
                kind: BackupKind::Log,
                paths: vec!["/srv/out/004-log-D.trn".into()],
            },
        ];
        let moves = vec![Move {
            logical_name: "Sales".into(),
            to: "/var/opt/mssql/data/Sales'copy.mdf".into(),
        }];
        let stop =
            NaiveDateTime::parse_from_str("2026-12-01 10:00:00.5", "%Y-%m-%d %H:%M:%S%.f").unwrap();
        let script = files_only_script("Sales", "Sales'copy", &steps, &moves, Some(stop));
        let statements: Vec<&str> = script
            .lines()
            .filter(|l| !l.starts_with("--") && !l.is_empty() && *l != "GO")
            .collect();
        assert_eq!(
            statements,
            [
                "RESTORE FILELISTONLY FROM DISK = N'/srv/out/001-full-A_stripe0.bak', DISK = N'/srv/out/001-full-A_stripe1.bak'",
                "RESTORE DATABASE [Sales'copy] FROM DISK = N'/srv/out/001-full-A_stripe0.bak', DISK = N'/srv/out/001-full-A_stripe1.bak' WITH MOVE N'Sales' TO N'/var/opt/mssql/data/Sales''copy.mdf', NORECOVERY, CHECKSUM, STATS = 10",
                "RESTORE DATABASE [Sales'copy] FROM DISK = N'/srv/out/002-diff-B.bak' WITH NORECOVERY, CHECKSUM, STATS = 10",
                "RESTORE LOG [Sales'copy] FROM DISK = N'/srv/out/003-log-C.trn' WITH NORECOVERY, CHECKSUM",
                "RESTORE LOG [Sales'copy] FROM DISK = N'/srv/out/004-log-D.trn' WITH NORECOVERY, CHECKSUM, STOPAT = N'2026-12-01T10:00:00.500'",
                "RESTORE DATABASE [Sales'copy] WITH RECOVERY",
            ]
        );
        assert_eq!(script.matches("\nGO\n").count(), 6);
    }

    /// A full of two stripes (with its database files recorded) and a log,
    /// planned to a time inside the log, restored as files.
    #[tokio::test]
    async fn files_only_writes_the_chain_its_listing_and_its_script() {
        use strata_core::catalog::planner;
        use strata_core::plugin::{DatabaseRef, EnginePlugin};

        use crate::test_support::{MemorySource, manifest};

        let mut source = MemorySource::default();
        let mut full = manifest(1, "D", 0xF1, 1000, 2000, serde_json::json!({}));
        full.engine_meta["database_files"] = serde_json::json!([
            {"file_id": 1, "type": 0, "name": "Sales", "physical_name": "/var/opt/mssql/data/Sales.mdf", "size": 1024},
            {"file_id": 2, "type": 1, "name": "Sales_log", "physical_name": "/var/opt/mssql/log/Sales_log.ldf", "size": 128},
        ]);
        source.add(&mut full, "stripe-000", b"stripe zero of the full".to_vec());
        source.add(&mut full, "stripe-001", b"stripe one".to_vec());
        let mut log = manifest(3, "L", 0x11, 900, 3000, serde_json::json!({}));
        source.add(&mut log, "stripe-000", vec![7u8; 100_000]);
        let backups = vec![full.clone(), log.clone()];

        let target = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:02:30Z")
            .unwrap()
            .to_utc();
        let chain = chain::chain_of(&backups).unwrap();
        let plan = planner::plan(
            &chain.records,
            chain.rules.as_ref(),
            &RestoreTarget::Time(target),
        )
        .unwrap();
        assert_eq!(plan.backup_ids(), [full.id.clone(), log.id.clone()]);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let request = RestoreRequest {
            source: DatabaseRef {
                instance: "main".into(),
                database: Some("Sales".into()),
            },
            target: RestoreTarget::Time(target),
            plan: Some(plan),
            backups,
            destination: serde_json::json!({"database": "Sales copy", "files_only": out}),
            protected: vec![dir.path().join("vault")],
        };
        let engine = crate::SqlServerEngine::new(
            "main",
            InstanceConfig::new(
                "server=tcp:127.0.0.1,1;user=u;password=p",
                "strata-blob.local",
            ),
        )
        .unwrap();
        let outcome = engine.restore(request.clone(), &source).await.unwrap();
        assert!(
            outcome
                .summary
                .starts_with("wrote 3 files (100033 bytes) of database Sales"),
            "{}",
            outcome.summary
        );
        assert_eq!(outcome.time, Some(target));

        let names = [
            format!("001-full-{}_stripe0.bak", full.id),
            format!("001-full-{}_stripe1.bak", full.id),
            format!("002-log-{}.trn", log.id),
        ];
        assert_eq!(
            std::fs::read(out.join(&names[0])).unwrap(),
            b"stripe zero of the full"
        );
        assert_eq!(std::fs::read(out.join(&names[1])).unwrap(), b"stripe one");
        assert_eq!(
            std::fs::read(out.join(&names[2])).unwrap(),
            vec![7u8; 100_000]
        );

        let listing: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("restore.json")).unwrap()).unwrap();
        let files: Vec<WrittenFile> = serde_json::from_value(listing["files"].clone()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            files[2].blake3,
            blake3::hash(&[7u8; 100_000]).to_hex().to_string()
        );
        assert_eq!(
            (files[2].order, files[2].kind, files[2].size),
            (2, BackupKind::Log, 100_000)
        );
        assert_eq!(files[2].first_lsn, Some(Position(900)));
        assert_eq!(listing["stopat"], "2026-12-01T10:02:30.000");

        let script = std::fs::read_to_string(out.join("restore.sql")).unwrap();
        let path = |n: &str| out.join(n).display().to_string();
        assert!(script.contains(&format!(
            "RESTORE DATABASE [Sales copy] FROM DISK = N'{}', DISK = N'{}' WITH MOVE N'Sales' TO N'/var/opt/mssql/data/Sales copy.mdf', MOVE N'Sales_log' TO N'/var/opt/mssql/log/Sales copy_log.ldf', NORECOVERY",
            path(&names[0]),
            path(&names[1])
        )), "{script}");
        assert!(script.contains(&format!(
            "RESTORE LOG [Sales copy] FROM DISK = N'{}' WITH NORECOVERY, CHECKSUM, STOPAT = N'2026-12-01T10:02:30.000'\nGO\nRESTORE DATABASE [Sales copy] WITH RECOVERY",
            path(&names[2])
        )), "{script}");

        // The directory now holds files: a second run is refused.
        let err = engine.restore(request.clone(), &source).await.unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Conflict);
        assert!(err.to_string().contains("is not empty"), "{err}");
        // A directory holding the vault is refused before anything is written.
        let mut protected = request;
        protected.destination = serde_json::json!({"files_only": dir.path()});
        let err = engine.restore(protected, &source).await.unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Conflict);
    }

    #[test]
    fn database_names_never_lead_files_out_of_their_directory() {
        let files = [BackupFile {
            logical_name: "x".into(),
            physical_name: "/var/opt/mssql/data/x.mdf".into(),
            file_type: 'D',
            file_id: 1,
        }];
        let to = |db: &str| moves(db, &files, "/var/opt/mssql/data", "/l")[0].to.clone();
        assert_eq!(
            to("../../../../tmp/evil"),
            "/var/opt/mssql/data/.._.._.._.._tmp_evil.mdf"
        );
        assert_eq!(to("slash/name"), "/var/opt/mssql/data/slash_name.mdf");
        assert_eq!(to(".."), "/var/opt/mssql/data/_...mdf");
        assert_eq!(to("a:b\\c"), "/var/opt/mssql/data/a_b_c.mdf");
        assert_eq!(to("my db"), "/var/opt/mssql/data/my db.mdf");
    }

    #[test]
    fn file_names_and_destinations() {
        assert_eq!(
            file_name(1, BackupKind::Full, "20261201T100000.000Z-0000abcd", 0, 1),
            "001-full-20261201T100000.000Z-0000abcd.bak"
        );
        assert_eq!(
            file_name(12, BackupKind::Log, "x", 3, 4),
            "012-log-x_stripe3.trn"
        );
        let d: RestoreDestination = parse_options(
            &serde_json::json!({"database": "New", "move_to": "/srv", "replace": true}),
            "d",
        )
        .unwrap();
        assert_eq!(d.database.as_deref(), Some("New"));
        assert!(d.replace);
        assert!(parse_options::<RestoreDestination>(&serde_json::json!({"as": "x"}), "d").is_err());
        assert_eq!(server_dir(r"C:\Data\x.mdf"), r"C:\Data");
        assert_eq!(join_server_path("/", "x.mdf"), "/x.mdf");
    }
}

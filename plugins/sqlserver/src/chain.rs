//! SQL Server's restore chain, as core's planner reads it.
//!
//! Every backup set ([`BackupSet`], a row of `msdb.dbo.backupset`) becomes a
//! [`BackupRecord`] ([`record`]); [`SqlServerChainRules`] answer the
//! planner's questions from the sets themselves; core's planner
//! (`strata_core::catalog::planner`) alone decides which windows are
//! restorable and which backups a target needs. The rules follow
//! "Restore and Recovery Overview (SQL Server)", "Copy-Only Backups", "Recovery
//! Paths" and "backupset (Transact-SQL)":
//!
//! - **Kinds.** `D` is a full, `I` a differential, `L` a log backup. File and
//!   partial backups (`F`, `G`, `P`, `Q`) are not restored by Strata and are
//!   left out. A copy-only full can start a restore by itself, but "a
//!   copy-only backup cannot serve as a differential base" ("Copy-Only
//!   Backups"); a copy-only log "preserves the existing log archive point"
//!   and is not part of the log chain: it is left out of the records too.
//! - **Positions.** A backup covers LSNs `[first_lsn, last_lsn)`; `last_lsn`
//!   is "the next log record after the backup set". A data backup is
//!   consistent at its `last_lsn`; the first log after it must hold that LSN
//!   (`first_lsn <= last_lsn(data) < last_lsn(log)`), and each next log
//!   starts where the previous one ended: the planner's default LSN shape.
//!   A full backup neither breaks nor restarts the log chain.
//! - **Differential base.** A differential applies on the full whose
//!   `backup_set_uuid` equals its `differential_base_guid`; an export
//!   without that column falls back to `database_backup_lsn` of the
//!   differential equalling `checkpoint_lsn` of the full (the relation
//!   dbatools' `Test-DbaLsnChain` checks). A copy-only full never is one
//!   ([`is_differential_base`]).
//! - **Forks.** The fork of a backup is its `last_recovery_fork_guid` (an
//!   export without fork GUIDs: the `database_guid` lineage, or one
//!   [`UNKNOWN_FORK`]). A restore `WITH RECOVERY` starts a new recovery
//!   fork; the first log backup after it starts on the old fork and ends on
//!   the new one, and its `fork_point_lsn` is where they part: the new fork
//!   inherits the old one's history up to that LSN
//!   ([`ChainRules::fork_origin`]), and logs must line up across it ("Recovery
//!   Paths"). A new `database_guid` (the database was restored or re-created)
//!   always comes with a new recovery fork, so it starts a new lineage too.
//! - **Times.** `backup_start_date`/`backup_finish_date` are the server's
//!   local time; with `time_zone` they become UTC
//!   ([`BackupSet::start_utc`]). A data backup is restorable at its finish.
//!   For a log backup see [`consistent_at`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest, Position};
use strata_core::catalog::planner::{
    self, BackupRecord, ChainRules, ForkOrigin, RestorePlan, RestoreTarget, Timeline,
};
use strata_core::plugin::{BackupOutcome, Chain};
use strata_core::{Error, Result};
use uuid::Uuid;

use crate::history::{BackupSet, BackupType, local_text};
use crate::lsn;

/// The fork of backups whose export has neither recovery fork GUIDs nor a
/// `database_guid`: all of them are taken to be one history.
pub const UNKNOWN_FORK: &str = "unknown-fork";

/// The fork a backup set belongs to: its `last_recovery_fork_guid`
/// (lowercase hyphenated), else `database-<database_guid>`, else
/// [`UNKNOWN_FORK`].
pub fn fork_of(set: &BackupSet) -> String {
    match (set.last_recovery_fork_guid, set.database_guid) {
        (Some(fork), _) => fork.to_string(),
        (None, Some(database)) => format!("database-{database}"),
        (None, None) => UNKNOWN_FORK.to_owned(),
    }
}

/// The fork a backup set starts on: its `first_recovery_fork_guid`, else
/// [`fork_of`].
fn first_fork_of(set: &BackupSet) -> String {
    set.first_recovery_fork_guid
        .map_or_else(|| fork_of(set), |fork| fork.to_string())
}

/// The newest time a restore can stop at with `set` (the planner's
/// [`BackupRecord::consistent_at`]), given its start and finish in UTC.
///
/// - A data backup: its finish. It is consistent at its `last_lsn`, read at
///   the end of the copy, and a differential that finished after a target
///   cannot be used for it (dbatools issue #3660).
/// - A log backup: its **start**. Every record logged before `BACKUP LOG`
///   began lies below its `last_lsn`, so a restore that ends with this log
///   holds the whole history up to that time. After it, up to the finish,
///   the log holds records only up to the moment the end of the log was
///   read, which the history does not say; a later record belongs to the
///   next log backup. A `STOPAT` after the last record of the log makes SQL
///   Server answer "This backup set contains records that were logged
///   before the designated point in time. The database is being left in the
///   restoring state so that more roll forward can be performed." (the case
///   of dbatools issue #8719, which planned by finish time): the database
///   then holds every change up to the target, and `RESTORE DATABASE ...
///   WITH RECOVERY` finishes the restore at exactly that state. A time
///   between a log's start and its finish is therefore planned with the
///   next log backup, and the newest log's last seconds are not offered.
pub fn consistent_at(
    backup_type: BackupType,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
) -> DateTime<Utc> {
    match backup_type {
        BackupType::Log => started,
        _ => finished,
    }
}

/// The planner's record of `set`, identified by `id`, with the data
/// backup a differential applies on (`base`; the rules check it anyway).
/// `assumed_offset` is the server's UTC offset for a row whose `time_zone`
/// is unknown.
///
/// Fails with [`ErrorKind::Config`](strata_core::ErrorKind::Config) for a
/// file or partial backup, or when the row's times cannot be placed in UTC.
pub fn record(
    set: &BackupSet,
    id: BackupId,
    base: Option<BackupId>,
    assumed_offset: Option<FixedOffset>,
) -> Result<BackupRecord> {
    let (kind, started_at, ended_at) = placed(set, assumed_offset)?;
    Ok(BackupRecord {
        id,
        kind,
        fork: fork_of(set),
        start: Some(set.first_lsn),
        end: Some(set.last_lsn),
        started_at,
        ended_at,
        consistent_at: Some(consistent_at(set.backup_type, started_at, ended_at)),
        base: base.filter(|_| kind == BackupKind::Diff),
    })
}

/// The kind of `set` and its start and finish in UTC.
fn placed(
    set: &BackupSet,
    assumed_offset: Option<FixedOffset>,
) -> Result<(BackupKind, DateTime<Utc>, DateTime<Utc>)> {
    let kind = set.kind().ok_or_else(|| {
        Error::config(format!(
            "{} is a {} backup, which Strata does not restore",
            set.describe(),
            set.backup_type
        ))
    })?;
    Ok((
        kind,
        set.start_utc(assumed_offset)?,
        set.finish_utc(assumed_offset)?,
    ))
}

/// What the plugin keeps in a manifest's `engine_meta`:
/// `{"backup_set": <the row>, "copy_only": <bool>}`.
pub fn engine_meta(set: &BackupSet) -> serde_json::Value {
    serde_json::json!({
        "backup_set": set,
        "copy_only": set.is_copy_only,
    })
}

/// The outcome of a backup SQL Server reported as `set` (its history row,
/// read after the backup), for the host to record in the manifest.
///
/// Fails like [`record`].
pub fn backup_outcome(set: &BackupSet, base: Option<BackupId>) -> Result<BackupOutcome> {
    let (kind, started_at, ended_at) = placed(set, None)?;
    Ok(BackupOutcome {
        fork: fork_of(set),
        start: Some(set.first_lsn),
        end: Some(set.last_lsn),
        consistent_at: Some(consistent_at(set.backup_type, started_at, ended_at)),
        base: base.filter(|_| kind == BackupKind::Diff),
        engine_meta: engine_meta(set),
        labels: BTreeMap::new(),
    })
}

/// The backup set a manifest recorded (`engine_meta.backup_set`), or `None`
/// when it has none. Fails with
/// [`ErrorKind::Integrity`](strata_core::ErrorKind::Integrity) naming the
/// backup when it is there but unreadable.
pub fn backup_set_of(manifest: &Manifest) -> Result<Option<BackupSet>> {
    let Some(value) = manifest.engine_meta.get("backup_set") else {
        return Ok(None);
    };
    serde_json::from_value(value.clone())
        .map(Some)
        .map_err(|e| {
            Error::integrity(format!(
                "backup {}: its manifest's backup set is not readable: {e}",
                manifest.id
            ))
            .hint("`strata verify` checks the vault; a new full backup starts a sound chain")
        })
}

/// Whether `full` is the differential base of `diff`: `full` is a
/// regular (not copy-only) full backup and `diff.differential_base_guid`
/// names its `backup_set_uuid`; when the differential has no
/// `differential_base_guid` (an older export), its `database_backup_lsn`
/// equals the full's `checkpoint_lsn` and the two share their
/// `family_guid` where both are known.
pub fn is_differential_base(full: &BackupSet, diff: &BackupSet) -> bool {
    if full.backup_type != BackupType::Database
        || full.is_copy_only
        || diff.backup_type != BackupType::Differential
    {
        return false;
    }
    match diff.differential_base_guid {
        Some(base) => full.backup_set_uuid == Some(base),
        None => {
            let same_family = match (full.family_guid, diff.family_guid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            same_family
                && diff.database_backup_lsn.is_some()
                && diff.database_backup_lsn == full.checkpoint_lsn
        }
    }
}

/// SQL Server's chain rules for core's planner (see the [module
/// documentation](self)). The planner's records carry only positions and
/// times, so the rules keep each record's backup set by id; a record they
/// do not know is judged by the planner's defaults.
#[derive(Debug, Clone, Default)]
pub struct SqlServerChainRules {
    sets: HashMap<BackupId, BackupSet>,
    origins: HashMap<String, ForkOrigin>,
    began: HashMap<String, DateTime<Utc>>,
}

impl SqlServerChainRules {
    /// The rules over `records` and their backup sets (`sets`, by record id).
    pub fn new(records: &[BackupRecord], sets: HashMap<BackupId, BackupSet>) -> Self {
        let mut origins = HashMap::new();
        for set in sets.values() {
            if let (true, Some(at)) = (set.spans_forks(), set.fork_point_lsn) {
                origins.insert(
                    fork_of(set),
                    ForkOrigin {
                        parent: first_fork_of(set),
                        at,
                    },
                );
            }
        }
        let mut began: HashMap<String, DateTime<Utc>> = HashMap::new();
        for r in records {
            let earliest = began.entry(r.fork.clone()).or_insert(r.started_at);
            *earliest = (*earliest).min(r.started_at);
        }
        SqlServerChainRules {
            sets,
            origins,
            began,
        }
    }

    /// The backup set of record `id`, if the rules know it.
    pub fn backup_set(&self, id: &BackupId) -> Option<&BackupSet> {
        self.sets.get(id)
    }

    /// Whether coverage at `covered` lies on a fork that log `set`
    /// (recorded on `fork`) carries: on the log's own fork at or after the
    /// point where that fork branched off, or, for the log that spans the
    /// branch, on the parent fork it starts on.
    fn lines_up(&self, covered: Position, set: &BackupSet, fork: &str) -> bool {
        match self.origins.get(fork) {
            None => true,
            Some(origin) => {
                covered >= origin.at || (set.spans_forks() && first_fork_of(set) == origin.parent)
            }
        }
    }
}

impl ChainRules for SqlServerChainRules {
    /// SQL Server reaches the times between data backups only through log
    /// backups: a database without log backups restores to its fulls and
    /// differentials alone, and a time between them is a gap.
    fn takes_log_backups(&self) -> bool {
        true
    }

    /// The fork point of a recovery fork, from the log backup that runs
    /// from the old fork into it (`first_recovery_fork_guid` ≠
    /// `last_recovery_fork_guid`, branched at `fork_point_lsn`).
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        self.origins.get(fork).cloned()
    }

    /// The planner's LSN shape (`first_lsn <= covered < last_lsn`), for a
    /// regular (not copy-only) log backup whose forks line up with the
    /// coverage.
    fn log_continues(&self, covered_to: Position, next: &BackupRecord) -> bool {
        let shape = matches!(
            (next.start, next.end),
            (Some(start), Some(end)) if start <= covered_to && covered_to < end
        );
        shape
            && self.sets.get(&next.id).is_none_or(|set| {
                set.backup_type == BackupType::Log
                    && !set.is_copy_only
                    && self.lines_up(covered_to, set, &next.fork)
            })
    }

    /// When a fork is first seen: the start of its earliest backup. The
    /// restore that created it happened before then; the history does not
    /// say when, and before that backup only the parent fork's own backups
    /// can reach a time anyway.
    fn fork_began_at(&self, fork: &str) -> Option<DateTime<Utc>> {
        self.began.get(fork).copied()
    }

    /// [`is_differential_base`] when both sets are known.
    fn applies_on(&self, base: &BackupRecord, diff: &BackupRecord) -> bool {
        match (self.sets.get(&base.id), self.sets.get(&diff.id)) {
            (Some(full), Some(differential)) => is_differential_base(full, differential),
            _ => diff.base.as_ref() == Some(&base.id),
        }
    }

    /// The decimal LSN, as SQL Server's catalog shows it.
    fn position_text(&self, position: Position) -> String {
        lsn::text(position)
    }
}

/// The chain of one database's committed backups (its manifests, oldest
/// first), for the plugin's `EnginePlugin::chain`: each manifest's
/// `engine_meta.backup_set` read under [`SqlServerChainRules`]. Manifests
/// without a backup set are left out with a warning, and so are copy-only
/// logs (not part of the chain).
///
/// Fails with [`ErrorKind::Integrity`](strata_core::ErrorKind::Integrity)
/// when a manifest's backup set is unreadable.
pub fn chain_of(manifests: &[Manifest]) -> Result<Chain> {
    let mut records = Vec::new();
    let mut sets = HashMap::new();
    for manifest in manifests {
        let Some(set) = backup_set_of(manifest)? else {
            tracing::warn!(
                backup = %manifest.id,
                "the manifest records no SQL Server backup set; the backup is left out of the chain"
            );
            continue;
        };
        if set.backup_type == BackupType::Log && set.is_copy_only {
            continue;
        }
        let rec = match record(&set, manifest.id.clone(), manifest.base.clone(), None) {
            Ok(rec) => rec,
            Err(e) if set.kind().is_some() => {
                // Times the row cannot place in UTC: the manifest's own.
                tracing::warn!(backup = %manifest.id, error = %e, "using the manifest's times");
                let mut rec = BackupRecord::from(manifest);
                rec.fork = fork_of(&set);
                rec.start = Some(set.first_lsn);
                rec.end = Some(set.last_lsn);
                rec
            }
            Err(e) => {
                tracing::warn!(backup = %manifest.id, error = %e, "left out of the chain");
                continue;
            }
        };
        sets.insert(rec.id.clone(), set);
        records.push(rec);
    }
    let rules = SqlServerChainRules::new(&records, sets);
    Ok(Chain {
        records,
        rules: Arc::new(rules),
    })
}

/// Where the last log of a plan stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAt {
    /// `STOPAT` at a time: the server's local time SQL Server takes, and
    /// the UTC time it stands for.
    Time {
        /// The `STOPAT` value (server local time).
        local: NaiveDateTime,
        /// The target in UTC.
        utc: DateTime<Utc>,
    },
    /// `STOPATMARK = 'lsn:<decimal>'` at an LSN.
    Lsn(Position),
}

impl fmt::Display for StopAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopAt::Time { local, utc } => write!(
                f,
                "STOPAT {} server local time ({})",
                local_text(*local),
                utc_text(*utc)
            ),
            StopAt::Lsn(p) => write!(f, "STOPATMARK lsn:{}", lsn::text(*p)),
        }
    }
}

/// One backup of a history plan, in apply order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryStep {
    /// The planner's id: the `backup_set_uuid`, or `row-<n>` (1-based).
    pub id: BackupId,
    /// Full, diff or log.
    pub kind: BackupKind,
    /// `backupset.type`.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// `backupset.backup_set_uuid`.
    pub backup_set_uuid: Option<Uuid>,
    /// A copy-only backup.
    pub copy_only: bool,
    /// `backup_start_date` (server local time).
    pub start_local: NaiveDateTime,
    /// `backup_finish_date` (server local time).
    pub finish_local: NaiveDateTime,
    /// The start in UTC.
    pub start_utc: DateTime<Utc>,
    /// The finish in UTC.
    pub finish_utc: DateTime<Utc>,
    /// `first_lsn`.
    pub first_lsn: Position,
    /// `last_lsn`.
    pub last_lsn: Position,
    /// The devices (`physical_device_name`) the export names for it.
    pub devices: Vec<String>,
    /// Whether the plan's stop clause goes on this log: every log that
    /// may hold records past the target gets it, so that SQL Server stops
    /// in whichever of them the target falls ("RESTORE Statements -
    /// Arguments", STOPAT: only records written before the time are applied).
    pub stops: bool,
}

/// What `strata sqlserver plan --history` prints: the restore chain a
/// target needs, from a history export, with the database's recoverable
/// windows and gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryPlan {
    /// The database.
    pub database: String,
    /// What was asked for.
    pub target: RestoreTarget,
    /// The recovery fork the restore follows.
    pub fork: String,
    /// The backups in apply order: the full, the differential, the logs.
    pub steps: Vec<HistoryStep>,
    /// Where the last log stops (none for the latest point or one backup).
    pub stop: Option<StopAt>,
    /// The newest time the chain reaches.
    pub reaches_time: Option<DateTime<Utc>>,
    /// The newest LSN the chain reaches.
    pub reaches_lsn: Option<Position>,
    /// The server's offset from UTC in minutes (from the newest backup),
    /// used to show times in its local time.
    pub utc_offset_minutes: Option<i32>,
    /// The database's recoverable windows and gaps.
    pub timeline: Timeline,
    /// Rows left out, and why.
    pub notes: Vec<String>,
}

/// The restore chain that brings `database` of a history export (`sets`,
/// as [`crate::history::read_history`] returns them) to `target`.
///
/// `database` may be omitted when the export holds one database; names
/// compare without regard to case. `assumed_offset` is the server's UTC
/// offset for rows whose `time_zone` is unknown. Rows of file and partial
/// backups, damaged sets and copy-only logs are left out (with a note);
/// rows repeated for each device of a striped backup are merged.
///
/// Errors: [`ErrorKind::Config`](strata_core::ErrorKind::Config) when the
/// export holds several databases and none is named, or a row's times
/// cannot be placed in UTC; [`ErrorKind::NotFound`](strata_core::ErrorKind::NotFound)
/// when the database is not in the export or the target is not restorable
/// (the planner's message: the gap and the nearest restorable times), or
/// when the stop would fall inside a log with bulk-logged changes.
pub fn plan_history(
    sets: &[BackupSet],
    database: Option<&str>,
    target: RestoreTarget,
    assumed_offset: Option<FixedOffset>,
) -> Result<HistoryPlan> {
    let database = choose_database(sets, database)?;
    let mut notes = Vec::new();
    let mut entries: Vec<(BackupRecord, BackupSet, Vec<String>)> = Vec::new();
    let mut by_uuid: HashMap<Uuid, usize> = HashMap::new();
    for (row, set) in sets.iter().enumerate() {
        if !set.database_name.eq_ignore_ascii_case(&database) {
            continue;
        }
        let device = set.physical_device_name.clone();
        if let Some(&known) = set.backup_set_uuid.as_ref().and_then(|u| by_uuid.get(u)) {
            // One row per device of a striped (or mirrored) backup.
            let devices = &mut entries[known].2;
            if let Some(device) = device.filter(|d| !devices.contains(d)) {
                devices.push(device);
            }
            continue;
        }
        let left_out = if set.kind().is_none() {
            Some("Strata does not restore file or partial backups")
        } else if set.is_damaged {
            Some("SQL Server marked it damaged (is_damaged)")
        } else if set.backup_type == BackupType::Log && set.is_copy_only {
            Some("a copy-only log backup is not part of the log chain")
        } else {
            None
        };
        if let Some(why) = left_out {
            notes.push(format!(
                "row {}: {} left out: {why}",
                row + 1,
                set.describe()
            ));
            continue;
        }
        let id: BackupId = match set.backup_set_uuid {
            Some(uuid) => uuid.to_string().parse()?,
            None => format!("row-{}", row + 1).parse()?,
        };
        let rec = record(set, id, None, assumed_offset)
            .map_err(|e| e.context(format!("row {}", row + 1)))?;
        if let Some(uuid) = set.backup_set_uuid {
            by_uuid.insert(uuid, entries.len());
        }
        entries.push((rec, set.clone(), device.into_iter().collect()));
    }
    // A differential names its base for the planner's messages; the rules
    // check the base themselves.
    for i in 0..entries.len() {
        if entries[i].1.backup_type != BackupType::Differential {
            continue;
        }
        let base = entries
            .iter()
            .filter(|(_, full, _)| is_differential_base(full, &entries[i].1))
            .max_by_key(|(rec, _, _)| rec.point_time())
            .map(|(rec, _, _)| rec.id.clone());
        entries[i].0.base = base;
    }
    let records: Vec<BackupRecord> = entries.iter().map(|(r, _, _)| r.clone()).collect();
    let rules = SqlServerChainRules::new(
        &records,
        entries
            .iter()
            .map(|(r, s, _)| (r.id.clone(), s.clone()))
            .collect(),
    );
    let devices: HashMap<&BackupId, &Vec<String>> =
        entries.iter().map(|(r, _, d)| (&r.id, d)).collect();
    let timeline = planner::timeline(&records, &rules);
    let plan = planner::plan(&records, &rules, &target)
        .map_err(|e| e.context(format!("database {database}")))?;
    check_bulk_logged(&plan, &rules, &database)?;

    let newest = entries
        .iter()
        .max_by_key(|(r, _, _)| r.started_at)
        .map(|(_, s, _)| s);
    let utc_offset_minutes = newest
        .and_then(|s| s.utc_offset(assumed_offset).ok())
        .map(|o| o.local_minus_utc() / 60);
    let last_log = plan.logs.last().and_then(|r| rules.backup_set(&r.id));
    let stop = match (&target, last_log) {
        (RestoreTarget::Time(t), Some(set)) => Some(StopAt::Time {
            local: set.to_server_local(*t, assumed_offset)?,
            utc: *t,
        }),
        (RestoreTarget::Position { position, .. }, Some(_)) => Some(StopAt::Lsn(*position)),
        _ => None,
    };
    let steps = std::iter::once(&plan.base)
        .chain(&plan.diffs)
        .chain(&plan.logs)
        .map(|rec| {
            let set = rules
                .backup_set(&rec.id)
                .ok_or_else(|| Error::integrity(format!("backup {} left the plan", rec.id)))?;
            let stops = rec.kind == BackupKind::Log
                && match &stop {
                    Some(StopAt::Time { utc, .. }) => rec.ended_at >= *utc,
                    Some(StopAt::Lsn(p)) => set.last_lsn > *p,
                    None => false,
                };
            Ok(HistoryStep {
                id: rec.id.clone(),
                kind: rec.kind,
                backup_type: set.backup_type,
                backup_set_uuid: set.backup_set_uuid,
                copy_only: set.is_copy_only,
                start_local: set.backup_start_date,
                finish_local: set.backup_finish_date,
                start_utc: rec.started_at,
                finish_utc: rec.ended_at,
                first_lsn: set.first_lsn,
                last_lsn: set.last_lsn,
                devices: devices.get(&rec.id).map(|d| d.to_vec()).unwrap_or_default(),
                stops,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HistoryPlan {
        database,
        target,
        fork: plan.fork,
        steps,
        stop,
        reaches_time: plan.reaches_time,
        reaches_lsn: plan.reaches_position,
        utc_offset_minutes,
        timeline,
        notes,
    })
}

/// The database a history plan is for: the one named (in the export's
/// spelling), or the only one in the export.
fn choose_database(sets: &[BackupSet], database: Option<&str>) -> Result<String> {
    let mut names: Vec<&str> = Vec::new();
    for set in sets {
        if !names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&set.database_name))
        {
            names.push(&set.database_name);
        }
    }
    names.sort_by_key(|n| n.to_lowercase());
    let list = names.join(", ");
    match (database, names.as_slice()) {
        (_, []) => Err(Error::not_found("the backup history holds no backup sets")
            .hint("export the rows of msdb.dbo.backupset for the database")),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => Err(Error::config(format!(
            "the backup history holds several databases ({list}); name the one to plan"
        ))
        .hint("pass --database NAME")),
        (Some(wanted), _) => names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(wanted))
            .map(|n| (*n).to_owned())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "the backup history holds no backups of database {wanted}"
                ))
                .hint(format!("it holds: {list}"))
            }),
    }
}

/// Refuses a plan whose stop falls inside a log with bulk-logged changes:
/// SQL Server cannot stop inside such a log ("Restore a SQL Server Database
/// to a Point in Time (Full Recovery Model)": point-in-time recovery is not
/// supported in a log backup that contains bulk-logged changes).
fn check_bulk_logged(
    plan: &RestorePlan,
    rules: &SqlServerChainRules,
    database: &str,
) -> Result<()> {
    let Some(last) = plan.logs.last() else {
        return Ok(());
    };
    let inside = match &plan.target {
        RestoreTarget::Time(t) => *t < last.point_time(),
        RestoreTarget::Position { position, .. } => last.end.is_some_and(|end| *position < end),
        RestoreTarget::Latest | RestoreTarget::Backup(_) => false,
    };
    let bulk = rules
        .backup_set(&last.id)
        .is_some_and(|set| set.has_bulk_logged_data);
    if !(inside && bulk) {
        return Ok(());
    }
    let before = std::iter::once(&plan.base)
        .chain(&plan.diffs)
        .chain(&plan.logs[..plan.logs.len() - 1])
        .map(BackupRecord::point_time)
        .max()
        .unwrap_or(plan.base.point_time());
    Err(Error::not_found(format!(
        "database {database}: {} is not restorable: log backup {} (LSN {} to {}) holds bulk-logged \
         changes, and SQL Server cannot stop inside such a log",
        plan.target,
        last.id,
        rules.position_text(last.start.unwrap_or_default()),
        rules.position_text(last.end.unwrap_or_default()),
    ))
    .hint(format!(
        "restore to {} (before that log) or to a time a later log backup covers",
        utc_text(before)
    )))
}

fn utc_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl HistoryPlan {
    fn local(&self, t: DateTime<Utc>) -> String {
        match self
            .utc_offset_minutes
            .and_then(|m| FixedOffset::east_opt(m * 60))
        {
            Some(offset) => local_text(t.with_timezone(&offset).naive_local()),
            None => "?".to_owned(),
        }
    }
}

impl fmt::Display for HistoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Restore of database {} to {} (recovery fork {}):",
            self.database, self.target, self.fork
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            let copy = if step.copy_only { ", copy-only" } else { "" };
            writeln!(
                f,
                "  {}. {} ({}{copy}): {} to {} local, {} to {}; LSN {} to {}",
                i + 1,
                step.kind,
                step.backup_type.code(),
                local_text(step.start_local),
                local_text(step.finish_local),
                utc_text(step.start_utc),
                utc_text(step.finish_utc),
                lsn::text(step.first_lsn),
                lsn::text(step.last_lsn),
            )?;
            writeln!(f, "     backup set {}", step.id)?;
            for device in &step.devices {
                writeln!(f, "     device {device}")?;
            }
            if step.stops
                && let Some(stop) = &self.stop
            {
                writeln!(f, "     {stop}")?;
            }
        }
        if let Some(t) = self.reaches_time {
            write!(
                f,
                "Reaches {} ({} server local time)",
                utc_text(t),
                self.local(t)
            )?;
            match self.reaches_lsn {
                Some(p) => writeln!(f, ", LSN {}", lsn::text(p))?,
                None => writeln!(f)?,
            }
        }
        writeln!(f, "Recoverable windows:")?;
        for w in &self.timeline.windows {
            writeln!(
                f,
                "  {} to {} ({} to {} server local time), LSN {} to {}, fork {}",
                utc_text(w.from_time),
                utc_text(w.to_time),
                self.local(w.from_time),
                self.local(w.to_time),
                w.from_position.map_or("?".to_owned(), lsn::text),
                w.to_position.map_or("?".to_owned(), lsn::text),
                w.fork
            )?;
        }
        if !self.timeline.gaps.is_empty() {
            writeln!(f, "Gaps:")?;
            for g in &self.timeline.gaps {
                writeln!(
                    f,
                    "  {} to {}: {}",
                    utc_text(g.from_time),
                    utc_text(g.to_time),
                    g.reason
                )?;
            }
        }
        if !self.notes.is_empty() {
            writeln!(f, "Notes:")?;
            for note in &self.notes {
                writeln!(f, "  {note}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, NaiveDate};
    use strata_core::ErrorKind;

    const FORK_A: u128 = 0xA0A0;
    const FORK_B: u128 = 0xB0B0;

    /// 2026-11-30 `hm` on the server's clock.
    fn local(hm: &str) -> NaiveDateTime {
        let (h, m) = hm.split_once(':').unwrap();
        NaiveDate::from_ymd_opt(2026, 11, 30)
            .unwrap()
            .and_hms_opt(h.parse().unwrap(), m.parse().unwrap(), 0)
            .unwrap()
    }

    /// The same instant in UTC: the server runs at UTC+8 (time_zone 32).
    fn utc(hm: &str) -> DateTime<Utc> {
        (local(hm) - Duration::hours(8)).and_utc()
    }

    fn at(hm: &str) -> RestoreTarget {
        RestoreTarget::Time(utc(hm))
    }

    fn set(ty: BackupType, id: u128, lsns: (u128, u128), start: &str, finish: &str) -> BackupSet {
        let fork = Some(Uuid::from_u128(FORK_A));
        BackupSet {
            backup_set_uuid: Some(Uuid::from_u128(id)),
            backup_type: ty,
            is_copy_only: false,
            first_lsn: Position(lsns.0),
            last_lsn: Position(lsns.1),
            checkpoint_lsn: Some(Position(lsns.0)),
            database_backup_lsn: None,
            differential_base_lsn: None,
            differential_base_guid: None,
            first_recovery_fork_guid: fork,
            last_recovery_fork_guid: fork,
            fork_point_lsn: None,
            database_guid: Some(Uuid::from_u128(0xDB)),
            family_guid: Some(Uuid::from_u128(0xFA)),
            backup_start_date: local(start),
            backup_finish_date: local(finish),
            time_zone: Some(32),
            recovery_model: Some("FULL".to_owned()),
            begins_log_chain: false,
            has_bulk_logged_data: false,
            has_backup_checksums: true,
            is_damaged: false,
            backup_size: None,
            compressed_backup_size: None,
            database_name: "sales".to_owned(),
            server_name: None,
            physical_device_name: None,
        }
    }

    fn full(id: u128, lsns: (u128, u128), start: &str, finish: &str) -> BackupSet {
        set(BackupType::Database, id, lsns, start, finish)
    }

    fn copy_only(mut set: BackupSet) -> BackupSet {
        set.is_copy_only = true;
        set
    }

    /// A differential on `base`, as SQL Server records one.
    fn diff(
        base: &BackupSet,
        id: u128,
        lsns: (u128, u128),
        start: &str,
        finish: &str,
    ) -> BackupSet {
        let mut d = set(BackupType::Differential, id, lsns, start, finish);
        d.database_backup_lsn = base.checkpoint_lsn;
        d.differential_base_lsn = base.checkpoint_lsn;
        d.differential_base_guid = base.backup_set_uuid;
        d
    }

    /// A log backup that takes a minute.
    fn log(id: u128, lsns: (u128, u128), start: &str) -> BackupSet {
        let mut l = set(BackupType::Log, id, lsns, start, start);
        l.backup_finish_date += Duration::minutes(1);
        l
    }

    fn id(n: u128) -> String {
        Uuid::from_u128(n).to_string()
    }

    /// The plan's backups by the number their uuid was made from.
    fn steps(plan: &HistoryPlan) -> Vec<u128> {
        plan.steps
            .iter()
            .map(|s| s.backup_set_uuid.unwrap().as_u128())
            .collect()
    }

    fn plan(sets: &[BackupSet], target: RestoreTarget) -> Result<HistoryPlan> {
        plan_history(sets, None, target, None)
    }

    /// Full 1; log 2; diff 3; log 4; diff 5; logs 6 and 7.
    fn full_diffs_logs() -> Vec<BackupSet> {
        let f1 = full(1, (100, 200), "10:00", "10:05");
        vec![
            log(2, (150, 300), "10:15"),
            diff(&f1, 3, (280, 350), "10:20", "10:22"),
            log(4, (300, 400), "10:30"),
            diff(&f1, 5, (380, 450), "10:40", "10:42"),
            log(6, (400, 500), "10:45"),
            log(7, (500, 600), "11:00"),
            f1,
        ]
    }

    #[test]
    fn a_time_between_two_logs_uses_the_newest_diff_before_it_and_the_logs_to_it() {
        let sets = full_diffs_logs();
        let p = plan(&sets, at("10:50")).unwrap();
        assert_eq!(steps(&p), [1, 5, 6, 7]);
        assert_eq!(
            p.stop,
            Some(StopAt::Time {
                local: local("10:50"),
                utc: utc("10:50")
            })
        );
        // Only the log that may hold records past 10:50 takes the STOPAT.
        let stops: Vec<bool> = p.steps.iter().map(|s| s.stops).collect();
        assert_eq!(stops, [false, false, false, true]);
        assert_eq!(p.fork, id(FORK_A));

        // Just before log 6 started: diff 5 and log 6.
        assert_eq!(steps(&plan(&sets, at("10:44")).unwrap()), [1, 5, 6]);
        // Before diff 5 finished: diff 3 and the logs from it.
        assert_eq!(steps(&plan(&sets, at("10:35")).unwrap()), [1, 3, 4, 6]);
        let latest = plan(&sets, RestoreTarget::Latest).unwrap();
        assert_eq!(steps(&latest), [1, 5, 6, 7]);
        assert_eq!(latest.stop, None);
        assert_eq!(latest.reaches_lsn, Some(Position(600)));
    }

    #[test]
    fn records_carry_utc_times_and_the_log_rule() {
        let f1 = full(1, (100, 200), "10:00", "10:05");
        let r = record(&f1, "f".parse().unwrap(), None, None).unwrap();
        // Local 10:00 at time_zone 32 (UTC+8) is 02:00 UTC.
        assert_eq!(r.started_at, utc("10:00"));
        assert_eq!(r.started_at.to_rfc3339(), "2026-11-30T02:00:00+00:00");
        assert_eq!(r.consistent_at, Some(utc("10:05")));
        assert_eq!((r.start, r.end), (Some(Position(100)), Some(Position(200))));
        let l = record(
            &log(2, (150, 300), "10:15"),
            "l".parse().unwrap(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(l.kind, BackupKind::Log);
        assert_eq!(l.consistent_at, Some(utc("10:15")));
        assert_eq!(l.ended_at, utc("10:16"));

        let file = set(BackupType::File, 9, (1, 2), "10:00", "10:01");
        let err = record(&file, "x".parse().unwrap(), None, None).unwrap_err();
        assert!(
            err.to_string().contains("file or filegroup backup"),
            "{err}"
        );
    }

    /// Full 1; log 2; copy-only full 3; log 4; diff 5 (of full 1); log 6.
    fn with_copy_only_full() -> Vec<BackupSet> {
        let f1 = full(1, (100, 200), "10:00", "10:05");
        vec![
            log(2, (150, 300), "10:15"),
            copy_only(full(3, (280, 320), "10:20", "10:25")),
            log(4, (300, 400), "10:30"),
            diff(&f1, 5, (380, 420), "10:35", "10:37"),
            log(6, (400, 500), "10:45"),
            f1,
        ]
    }

    #[test]
    fn a_copy_only_full_restores_alone_but_is_never_a_differential_base() {
        let sets = with_copy_only_full();
        // The diff taken after the copy-only full applies on full 1.
        assert_eq!(steps(&plan(&sets, at("10:40")).unwrap()), [1, 5, 6]);
        // Right after it, the copy-only full is the newest starting point.
        let p = plan(&sets, at("10:27")).unwrap();
        assert_eq!(steps(&p), [3, 4]);
        assert!(p.steps[0].copy_only);

        let f1 = &sets[5];
        let copy = &sets[1];
        assert!(is_differential_base(f1, &sets[3]));
        assert!(!is_differential_base(copy, &sets[3]));
        // Even a diff whose LSN points at the copy-only full's checkpoint
        // (no GUID to go by) does not apply on it.
        let mut stray = diff(copy, 8, (380, 420), "10:35", "10:37");
        stray.differential_base_guid = None;
        assert!(!is_differential_base(copy, &stray));
        let mut named = stray.clone();
        named.differential_base_guid = copy.backup_set_uuid;
        assert!(!is_differential_base(copy, &named));
    }

    #[test]
    fn an_old_export_without_base_guid_or_forks_falls_back_to_the_lsns() {
        let rows: Vec<serde_json::Value> = with_copy_only_full()
            .iter()
            .map(|s| {
                let mut row = serde_json::to_value(s).unwrap();
                let object = row.as_object_mut().unwrap();
                for column in [
                    "differential_base_guid",
                    "differential_base_lsn",
                    "first_recovery_fork_guid",
                    "last_recovery_fork_guid",
                    "time_zone",
                ] {
                    object.remove(column);
                }
                row
            })
            .collect();
        let text = serde_json::to_string(&rows).unwrap();
        assert!(!text.contains("differential_base_guid"));
        let sets = crate::history::parse_history(&text, "old.json").unwrap();
        let plus8 = FixedOffset::east_opt(8 * 3600);

        let p = plan_history(&sets, Some("sales"), at("10:40"), plus8).unwrap();
        // diff 5's database_backup_lsn is full 1's checkpoint_lsn.
        assert_eq!(steps(&p), [1, 5, 6]);
        assert_eq!(p.fork, format!("database-{}", id(0xDB)));
        assert_eq!(
            p.stop,
            Some(StopAt::Time {
                local: local("10:40"),
                utc: utc("10:40")
            })
        );
        // Without the server's offset the times cannot be placed.
        let err = plan_history(&sets, None, at("10:40"), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("time_zone is unknown"), "{err}");
    }

    #[test]
    fn a_missing_log_makes_a_gap_that_names_the_lsns_and_the_nearest_time() {
        let sets = vec![
            full(1, (100, 200), "10:00", "10:05"),
            log(2, (150, 300), "10:15"),
            // The log 300..400 of 10:30 is missing.
            log(4, (400, 500), "10:45"),
            log(5, (500, 600), "11:00"),
        ];
        let err = plan(&sets, at("10:50")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let text = err.to_string();
        assert!(text.contains("database sales"), "{text}");
        assert!(text.contains("positions 300..400"), "{text}");
        assert!(
            text.contains(&format!("missing between {} and {}", id(2), id(4))),
            "{text}"
        );
        assert!(
            text.contains("the latest restorable time is 2026-11-30T02:15:00Z"),
            "{text}"
        );

        // Before the gap a restore works, and the plan reports the gap.
        let p = plan(&sets, at("10:10")).unwrap();
        assert_eq!(steps(&p), [1, 2]);
        assert_eq!(p.timeline.windows.len(), 1);
        assert_eq!(p.timeline.windows[0].to_time, utc("10:15"));
        assert!(
            p.timeline.gaps[0].reason.contains("300..400"),
            "{:?}",
            p.timeline.gaps
        );
    }

    /// Fork A: full 1, logs 2, 3, 4. At 10:50 the database was restored in
    /// place to LSN 250 (inside log 2): fork B. Log 5 runs from fork A into
    /// B (fork point 250), log 6 continues B.
    fn with_recovery_fork() -> Vec<BackupSet> {
        let mut spanning = log(5, (240, 320), "11:15");
        spanning.last_recovery_fork_guid = Some(Uuid::from_u128(FORK_B));
        spanning.fork_point_lsn = Some(Position(250));
        let mut on_b = log(6, (320, 380), "11:30");
        on_b.first_recovery_fork_guid = Some(Uuid::from_u128(FORK_B));
        on_b.last_recovery_fork_guid = Some(Uuid::from_u128(FORK_B));
        vec![
            full(1, (100, 200), "10:00", "10:05"),
            log(2, (150, 300), "10:15"),
            log(3, (300, 400), "10:30"),
            log(4, (400, 500), "10:45"),
            spanning,
            on_b,
        ]
    }

    #[test]
    fn a_recovery_fork_inherits_the_old_forks_logs_up_to_the_fork_point() {
        let sets = with_recovery_fork();
        // After the restore: fork B, through log 2 (up to LSN 250 of fork
        // A), then the spanning log and fork B's own.
        let p = plan(&sets, at("11:20")).unwrap();
        assert_eq!(p.fork, id(FORK_B));
        assert_eq!(steps(&p), [1, 2, 5, 6]);
        assert_eq!(
            steps(&plan(&sets, RestoreTarget::Latest).unwrap()),
            [1, 2, 5, 6]
        );
        // Before the restore, 10:40 means the original history: fork A.
        let p = plan(&sets, at("10:40")).unwrap();
        assert_eq!(p.fork, id(FORK_A));
        assert_eq!(steps(&p), [1, 2, 3, 4]);

        let records: Vec<BackupRecord> = sets
            .iter()
            .map(|s| {
                record(
                    s,
                    id(s.backup_set_uuid.unwrap().as_u128()).parse().unwrap(),
                    None,
                    None,
                )
                .unwrap()
            })
            .collect();
        let by_id = records
            .iter()
            .map(|r| r.id.clone())
            .zip(sets.iter().cloned())
            .collect();
        let rules = SqlServerChainRules::new(&records, by_id);
        assert_eq!(
            rules.fork_origin(&id(FORK_B)),
            Some(ForkOrigin {
                parent: id(FORK_A),
                at: Position(250)
            })
        );
        assert_eq!(rules.fork_origin(&id(FORK_A)), None);
        // Log 6 holds only fork B: it cannot continue fork A's coverage
        // below the fork point, only B's above it.
        let mut early_b = records[5].clone();
        early_b.start = Some(Position(200));
        assert!(!rules.log_continues(Position(240), &early_b));
        assert!(rules.log_continues(Position(330), &records[5]));
        // The spanning log continues fork A's coverage below the fork point.
        assert!(rules.log_continues(Position(245), &records[4]));
    }

    #[test]
    fn a_copy_only_log_is_not_part_of_the_chain() {
        let sets = vec![
            full(1, (100, 200), "10:00", "10:05"),
            log(2, (150, 300), "10:15"),
            copy_only(log(3, (300, 350), "10:20")),
        ];
        let p = plan(&sets, RestoreTarget::Latest).unwrap();
        assert_eq!(steps(&p), [1, 2]);
        assert_eq!(p.reaches_time, Some(utc("10:15")));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("row 3: copy-only transaction log backup")),
            "{:?}",
            p.notes
        );

        let records: Vec<BackupRecord> = sets
            .iter()
            .map(|s| {
                record(
                    s,
                    id(s.backup_set_uuid.unwrap().as_u128()).parse().unwrap(),
                    None,
                    None,
                )
                .unwrap()
            })
            .collect();
        let by_id = records
            .iter()
            .map(|r| r.id.clone())
            .zip(sets.iter().cloned())
            .collect();
        let rules = SqlServerChainRules::new(&records, by_id);
        assert!(!rules.log_continues(Position(300), &records[2]));
        let mut regular = records[2].clone();
        regular.id = "unknown-to-the-rules".parse().unwrap();
        assert!(rules.log_continues(Position(300), &regular));
    }

    #[test]
    fn several_databases_need_a_name() {
        let mut sets = full_diffs_logs();
        let mut other = full(20, (100, 200), "09:00", "09:05");
        other.database_name = "hr".to_owned();
        sets.push(other);
        let err = plan(&sets, RestoreTarget::Latest).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("several databases (hr, sales)"),
            "{err}"
        );
        assert!(err.hint_text().unwrap().contains("--database"));

        let p = plan_history(&sets, Some("SALES"), RestoreTarget::Latest, None).unwrap();
        assert_eq!(
            (p.database.as_str(), steps(&p)),
            ("sales", vec![1, 5, 6, 7])
        );
        let err = plan_history(&sets, Some("crm"), RestoreTarget::Latest, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.hint_text().unwrap().contains("hr, sales"));
    }

    #[test]
    fn no_stop_inside_a_log_with_bulk_logged_changes() {
        let mut sets = full_diffs_logs();
        sets[5].has_bulk_logged_data = true; // log 7, 11:00
        let err = plan(&sets, at("10:50")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&format!(
                "log backup {} (LSN 500 to 600) holds bulk-logged",
                id(7)
            )),
            "{err}"
        );
        assert!(
            err.hint_text().unwrap().contains("2026-11-30T02:45:00Z"),
            "{err:?}"
        );
        // Restoring all of it, or stopping before it, works.
        assert_eq!(
            steps(&plan(&sets, RestoreTarget::Latest).unwrap()),
            [1, 5, 6, 7]
        );
        assert_eq!(steps(&plan(&sets, at("10:44")).unwrap()), [1, 5, 6]);
    }

    #[test]
    fn striped_rows_merge_and_the_plan_prints_for_an_operator() {
        let mut sets = full_diffs_logs();
        let device = |n: usize| format!("https://blob.local/strata/t1/stripe-{n:03}.bak");
        sets[6].physical_device_name = Some(device(0));
        let mut second = sets[6].clone();
        second.physical_device_name = Some(device(1));
        sets.push(second);
        sets.push(set(BackupType::File, 30, (100, 150), "09:00", "09:01"));

        let p = plan(&sets, at("10:50")).unwrap();
        assert_eq!(steps(&p), [1, 5, 6, 7]);
        assert_eq!(p.steps[0].devices, [device(0), device(1)]);
        let text = p.to_string();
        assert!(text.contains("1. full (D): 2026-11-30T10:00:00 to 2026-11-30T10:05:00 local, 2026-11-30T02:00:00Z to 2026-11-30T02:05:00Z; LSN 100 to 200"), "{text}");
        assert!(text.contains(&format!("device {}", device(1))), "{text}");
        assert!(
            text.contains("STOPAT 2026-11-30T10:50:00 server local time (2026-11-30T02:50:00Z)"),
            "{text}"
        );
        assert!(text.contains("row 9: file or filegroup backup"), "{text}");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["steps"][0]["first_lsn"], "100");
        assert_eq!(json["stop"]["time"]["local"], "2026-11-30T10:50:00");
    }

    /// A manifest as the host commits it for `set`.
    fn manifest(set: &BackupSet, backup: &str, base: Option<&str>) -> Manifest {
        let base_id = base.map(|b| b.parse().unwrap());
        let outcome = backup_outcome(set, base_id).unwrap();
        serde_json::from_value(serde_json::json!({
            "format": 1,
            "id": backup,
            "engine": "sqlserver",
            "instance": "main",
            "database": "sales",
            "kind": set.kind().unwrap(),
            "started_at": set.start_utc(None).unwrap(),
            "ended_at": set.finish_utc(None).unwrap(),
            "consistent_at": outcome.consistent_at,
            "fork": outcome.fork,
            "start": outcome.start,
            "end": outcome.end,
            "base": outcome.base,
            "compression": {"algorithm": "zstd", "level": 3},
            "streams": [],
            "engine_meta": outcome.engine_meta,
        }))
        .unwrap()
    }

    #[test]
    fn the_chain_of_manifests_reads_their_backup_sets() {
        let sets = full_diffs_logs();
        let f1 = &sets[6];
        let mut manifests = vec![
            manifest(f1, "f1", None),
            manifest(&sets[0], "l2", None),
            manifest(&sets[3], "d5", Some("f1")),
            manifest(&sets[4], "l6", None),
            manifest(&copy_only(log(8, (500, 650), "10:55")), "copy", None),
            manifest(&sets[5], "l7", None),
        ];
        assert_eq!(manifests[4].engine_meta["copy_only"], true);
        let mut bare = manifest(&sets[5], "bare", None);
        bare.engine_meta = serde_json::Value::Null;
        manifests.push(bare);

        let chain = chain_of(&manifests).unwrap();
        let ids: Vec<&str> = chain.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["f1", "l2", "d5", "l6", "l7"]);
        let p =
            planner::plan(&chain.records, chain.rules.as_ref(), &RestoreTarget::Latest).unwrap();
        let planned: Vec<String> = p.backup_ids().iter().map(|i| i.to_string()).collect();
        assert_eq!(planned, ["f1", "d5", "l6", "l7"]);
        assert_eq!(
            chain.rules.position_text(Position(34_000_000_012_300_001)),
            "34000000012300001"
        );

        let mut broken = manifest(f1, "broken", None);
        broken.engine_meta["backup_set"]["first_lsn"] = serde_json::json!("not an lsn");
        let err = chain_of(&[broken]).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains("backup broken"), "{err}");
    }
}

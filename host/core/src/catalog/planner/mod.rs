//! The restore planner: which backups bring a database back to a point, and
//! which points are restorable at all.
//!
//! The planner is pure and engine-agnostic: it works on [`BackupRecord`]s
//! (one per committed backup of one database, usually from the catalog
//! index) and asks the engine's [`ChainRules`] the few questions only the
//! engine can answer. It never does I/O.
//!
//! # The model
//!
//! - **Data backups** (full, diff, incr) are restorable at their consistency
//!   point: position `end`, time `consistent_at` (or `ended_at` when the
//!   engine does not know better). A full stands alone; a diff or incr is
//!   applied on the backup [`ChainRules::applies_on`] accepts (by default the
//!   one its `base` names: the full for a diff, the previous data backup for
//!   an incr), recursively down to a full. A data backup whose chain does not
//!   reach a full is not restorable.
//! - **Log backups** cover positions `[start, end)` on their fork and times up
//!   to `consistent_at` (or `ended_at`): the newest time it is safe to stop
//!   at with that log. From a data backup, the logs that continue the
//!   coverage without a hole ([`ChainRules::log_continues`]) extend it.
//!   Engines whose data backups need log replay to become consistent (the
//!   WAL between PostgreSQL's `pg_backup_start` and `pg_backup_stop`) say
//!   where replay starts with [`ChainRules::log_needed_from`].
//! - A **recoverable window** is `[consistency time of a data backup, time
//!   covered by the last contiguous log]`, positions likewise. Windows from
//!   several data backups of one fork merge when they overlap or touch (in
//!   time and in position). Between two windows of a fork lies a **gap**,
//!   and every gap names its cause and the backups around it, for example
//!   `no log backup covers positions 3000..5000 (missing between <id> and
//!   <id>)` or `no full backup before <time>`. Log backups that nothing
//!   restorable leads to also make gaps (before the first window, after the
//!   last).
//! - **Forks** (PostgreSQL timelines, SQL Server recovery forks): a fork
//!   with an origin ([`ChainRules::fork_origin`]: branched off `parent` at
//!   position `at`) inherits the parent's coverage up to `at`: a data backup
//!   of the parent with `end <= at`, the parent's logs up to `at`, then the
//!   fork's own logs from `at`. Where a parent log runs past `at`, only its
//!   positions are counted, not its times: the planner never claims a time
//!   on the fork that only the parent's history holds. Windows and gaps are
//!   reported per fork.
//! - **Engines without log backups** (the generic `stream` engine): every
//!   restorable data backup is a window of a single instant. No gaps are
//!   reported, and a time target restores the newest data backup at or
//!   before it.
//!
//! # Choosing a plan
//!
//! Forks are ranked newest first by the latest time their windows reach
//! (then by their newest backup, then by name).
//!
//! - [`RestoreTarget::Latest`]: the newest fork's furthest restorable point,
//!   from the newest data backup that reaches it. For engines whose latest
//!   is the end of their archive ([`ChainRules::latest_is_end_of_archive`],
//!   PostgreSQL), that point must be the end of what the vault holds: when
//!   the newest fork (the one holding the newest record, restorable or not)
//!   has records that nothing restorable reaches (a log missing from the
//!   chain, a fork whose origin is unknown), "latest" is refused, naming
//!   why, instead of restoring an earlier point without a word.
//! - [`RestoreTarget::Time`] `T`: the newest fork whose windows contain `T`;
//!   on it, the newest data backup consistent at or before `T` whose logs
//!   reach `T`, its diffs/incrs, and the logs from it up to the first one
//!   whose covered time is at or after `T` (no more: every log in the plan is
//!   needed). For an engine without log backups, the newest data backup
//!   consistent at or before `T`.
//! - [`RestoreTarget::Position`] likewise by position, on the named fork or
//!   the newest fork that reaches it.
//!
//! A target outside every window fails with
//! [`ErrorKind::NotFound`](crate::ErrorKind::NotFound); the message names
//! the gap's cause and the nearest restorable points before and after it.

mod forks;
mod gaps;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::{BackupId, BackupKind, Manifest, Position};
use crate::error::{Error, Result};
use forks::{Chain, ForkAnalysis, analyse_fork, resolve_data_chains};

/// What a restore should reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreTarget {
    /// The newest restorable point.
    Latest,
    /// A point in time.
    Time(DateTime<Utc>),
    /// A log position, on a fork (or the newest fork that contains it).
    Position {
        /// The fork, if the caller names one.
        fork: Option<String>,
        /// The position.
        position: Position,
    },
    /// One data backup, restored to its own consistency point (with the
    /// backups it applies on, and the log it needs to become consistent).
    Backup(BackupId),
}

impl fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreTarget::Latest => f.write_str("the latest point"),
            RestoreTarget::Time(t) => write!(f, "time {}", show_time(*t)),
            RestoreTarget::Position {
                fork: Some(fork),
                position,
            } => write!(f, "position {position} on fork {fork}"),
            RestoreTarget::Position {
                fork: None,
                position,
            } => write!(f, "position {position}"),
            RestoreTarget::Backup(id) => write!(f, "backup {id}"),
        }
    }
}

/// What the planner needs to know about one committed backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's identifier.
    pub id: BackupId,
    /// Full, diff, incr or log.
    pub kind: BackupKind,
    /// The fork the backup belongs to.
    pub fork: String,
    /// Chain position at the start of the backup (first position a log holds).
    pub start: Option<Position>,
    /// Chain position at the end: where a data backup is consistent, or the
    /// position right after the last one a log holds.
    pub end: Option<Position>,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the backup ended.
    pub ended_at: DateTime<Utc>,
    /// When the data is consistent (data backups) or the newest commit the
    /// log holds (log backups), if the engine knows it.
    pub consistent_at: Option<DateTime<Utc>>,
    /// The backup a diff or incr applies on.
    pub base: Option<BackupId>,
}

impl BackupRecord {
    /// The time this backup reaches: a data backup's consistency time, or
    /// the newest time a log backup lets a restore stop at.
    pub fn point_time(&self) -> DateTime<Utc> {
        self.consistent_at.unwrap_or(self.ended_at)
    }
}

impl From<&Manifest> for BackupRecord {
    fn from(m: &Manifest) -> Self {
        BackupRecord {
            id: m.id.clone(),
            kind: m.kind,
            fork: m.fork.clone(),
            start: m.start,
            end: m.end,
            started_at: m.started_at,
            ended_at: m.ended_at,
            consistent_at: m.consistent_at,
            base: m.base.clone(),
        }
    }
}

/// Where a fork branched off its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    /// The fork this one branched from.
    pub parent: String,
    /// The position of the branch: history up to `at` is shared with the parent.
    pub at: Position,
}

/// Per-engine chain rules; the defaults fit most engines.
pub trait ChainRules: Send + Sync {
    /// Where `fork` branched from, if it is not a root fork (PostgreSQL: the
    /// timeline history files; SQL Server: the fork point of a recovery
    /// fork). The default knows no origins: every fork stands alone.
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        let _ = fork;
        None
    }

    /// Whether log backup `next` continues a coverage that currently reaches
    /// position `covered_to` (on `next`'s fork, or on its parent at or
    /// before the fork point).
    ///
    /// The planner only asks about logs that hold positions on both sides
    /// of the coverage, `next.start <= covered_to < next.end`: a log starting
    /// after it would leave a hole, and one ending at or before it adds
    /// nothing. A rule can refuse such a log (one of another recovery fork,
    /// a copy-only log that is not part of the chain); the default accepts
    /// exactly that shape. A log without positions never continues anything.
    fn log_continues(&self, covered_to: Position, next: &BackupRecord) -> bool {
        match (next.start, next.end) {
            (Some(start), Some(end)) => start <= covered_to && covered_to < end,
            _ => false,
        }
    }

    /// When `fork` began (PostgreSQL: its history file was written at
    /// promotion; SQL Server: the restore that created the recovery fork).
    /// A time target is planned on a fork that existed at that time when
    /// one can reach it, so that it means what the database was then, not
    /// the state a later branch inherited. The default: unknown.
    fn fork_began_at(&self, fork: &str) -> Option<DateTime<Utc>> {
        let _ = fork;
        None
    }

    /// Whether the differential or incremental backup `diff` applies on the
    /// data backup `base`. The default: `diff.base == Some(base.id)`.
    fn applies_on(&self, base: &BackupRecord, diff: &BackupRecord) -> bool {
        diff.base.as_ref() == Some(&base.id)
    }

    /// Where log replay must begin for data backup `data` to become
    /// consistent. The default, `None`, means the data backup is consistent
    /// by itself at its `end`. PostgreSQL returns `data.start`: the WAL from
    /// `pg_backup_start` to `pg_backup_stop` is part of the restore, and the
    /// backup is not restorable without it.
    fn log_needed_from(&self, data: &BackupRecord) -> Option<Position> {
        let _ = data;
        None
    }

    /// `position` in the engine's own notation, for the planner's messages
    /// (PostgreSQL: an LSN such as `0/3000060`). The default: the number.
    fn position_text(&self, position: Position) -> String {
        position.to_string()
    }

    /// What is missing from the engine's log archive where coverage of
    /// `fork` stops at `from` and resumes at `to` (PostgreSQL: the names of
    /// the WAL segments that would hold those positions), appended to the
    /// planner's messages so that they name what to look for. The default:
    /// nothing more than the positions.
    fn missing_log_text(&self, fork: &str, from: Position, to: Position) -> Option<String> {
        let _ = (fork, from, to);
        None
    }

    /// Whether [`RestoreTarget::Latest`] means the end of everything the
    /// vault holds of the newest fork (PostgreSQL: `--latest` restores "to
    /// the end of the archived WAL on the newest timeline"), so that it is
    /// refused, naming why, when that end is not restorable, rather than
    /// planned to an earlier point. The default (`false`): the newest
    /// fork's furthest restorable point.
    fn latest_is_end_of_archive(&self) -> bool {
        false
    }

    /// Why `fork`'s origin is unknown although it cannot be a root fork
    /// (PostgreSQL: a timeline above 1 whose history file is missing from
    /// the archive), for the planner's messages. The default: never.
    fn fork_problem(&self, fork: &str) -> Option<String> {
        let _ = fork;
        None
    }

    /// Whether this engine reaches the times between its data backups
    /// through log backups (SQL Server's `BACKUP LOG`): then a database
    /// whose backups hold no log yet restores only to its data backups'
    /// own points, and a time between two of them is refused naming the
    /// gap, as for any database with logs. The default (`false`): an
    /// engine whose records hold no log has no log at all (a plain
    /// stream), and a time restores the newest data backup before it.
    fn takes_log_backups(&self) -> bool {
        false
    }
}

/// The default chain rules (no fork origins, contiguous logs, `base` ids).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultChainRules;

impl ChainRules for DefaultChainRules {}

/// The backups that restore a target, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// What was asked for.
    pub target: RestoreTarget,
    /// The fork the restore follows (the engine's recovery target timeline).
    pub fork: String,
    /// The full backup restored first.
    pub base: BackupRecord,
    /// Differential and incremental backups applied on it, in order.
    pub diffs: Vec<BackupRecord>,
    /// Log backups replayed after them, in order.
    pub logs: Vec<BackupRecord>,
    /// The newest time these backups reach (at or after a time target).
    pub reaches_time: Option<DateTime<Utc>>,
    /// The newest position these backups reach (at or after a position target).
    pub reaches_position: Option<Position>,
}

impl RestorePlan {
    /// The backups in apply order: the base, the diffs, then the logs.
    pub fn backup_ids(&self) -> Vec<BackupId> {
        std::iter::once(&self.base)
            .chain(&self.diffs)
            .chain(&self.logs)
            .map(|r| r.id.clone())
            .collect()
    }
}

/// A range of one fork's history that can be restored to any point inside
/// (bounds included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverableWindow {
    /// The fork.
    pub fork: String,
    /// The earliest restorable time.
    pub from_time: DateTime<Utc>,
    /// The latest restorable time.
    pub to_time: DateTime<Utc>,
    /// The earliest restorable position, when the engine has positions.
    pub from_position: Option<Position>,
    /// The latest restorable position.
    pub to_position: Option<Position>,
}

/// A range of one fork's history that cannot be restored (bounds excluded),
/// with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The fork.
    pub fork: String,
    /// Where the gap starts (the end of the restorable range before it, or
    /// the first backup that cannot be used).
    pub from_time: DateTime<Utc>,
    /// Where the gap ends (the start of the next restorable range, or the
    /// time of the last backup that cannot be used).
    pub to_time: DateTime<Utc>,
    /// Where the gap starts, in positions.
    pub from_position: Option<Position>,
    /// Where the gap ends, in positions.
    pub to_position: Option<Position>,
    /// Why it is not restorable and what is around it, for an operator.
    pub reason: String,
}

/// The restorable windows and the gaps of a database's backups, ordered by
/// time (then fork).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// What can be restored.
    pub windows: Vec<RecoverableWindow>,
    /// What cannot, and why.
    pub gaps: Vec<Gap>,
}

/// The data backups among `records` whose chain reaches a full: each diff
/// or incr applies on a backup [`ChainRules::applies_on`] accepts, down to
/// a full. The others can be neither restored nor built on.
pub fn complete_chains(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
) -> std::collections::HashSet<BackupId> {
    resolve_data_chains(records, rules)
        .into_keys()
        .map(|i| records[i].id.clone())
        .collect()
}

/// The restorable windows and the gaps of `records` (the backups of one
/// database) under `rules`.
pub fn timeline(records: &[BackupRecord], rules: &dyn ChainRules) -> Timeline {
    let analysis = Analysis::new(records, rules);
    let mut windows: Vec<RecoverableWindow> = analysis
        .forks
        .iter()
        .flat_map(|f| f.windows.iter().map(|w| w.window.clone()))
        .collect();
    windows.sort_by(|a, b| (a.from_time, &a.fork).cmp(&(b.from_time, &b.fork)));
    let mut gaps: Vec<Gap> = analysis
        .forks
        .iter()
        .flat_map(|f| f.gaps.iter().cloned())
        .collect();
    gaps.sort_by(|a, b| (a.from_time, &a.fork).cmp(&(b.from_time, &b.fork)));
    Timeline { windows, gaps }
}

/// The backups that restore `target` from `records` (the backups of one
/// database) under `rules`. See the module docs for how they are chosen.
///
/// Fails with [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when the
/// target is not restorable; the message gives the reason and the nearest
/// restorable points.
pub fn plan(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
    target: &RestoreTarget,
) -> Result<RestorePlan> {
    if records.is_empty() {
        return Err(Error::not_found(format!(
            "{target} is not restorable: there are no backups of this database"
        ))
        .hint("take a full backup first; `strata list` shows the backups in the vault"));
    }
    let analysis = Analysis::new(records, rules);
    match target {
        RestoreTarget::Latest => analysis.plan_latest(target),
        RestoreTarget::Time(t) => analysis.plan_time(target, *t),
        RestoreTarget::Position { fork, position } => {
            analysis.plan_position(target, fork.as_deref(), *position)
        }
        RestoreTarget::Backup(id) => plan_backup(records, rules, &analysis, target, id),
    }
}

/// The plan of [`RestoreTarget::Backup`]: the backup, the data backups it
/// applies on down to a full, and for an engine whose data backups need log
/// replay, the plan to the backup's end position on its fork (which starts
/// from this backup or a newer one consistent by then).
fn plan_backup(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
    analysis: &Analysis<'_>,
    target: &RestoreTarget,
    id: &BackupId,
) -> Result<RestorePlan> {
    let record = records.iter().find(|r| &r.id == id).ok_or_else(|| {
        Error::not_found(format!("there is no backup {id} of this database"))
            .hint("`strata list` shows the backups and their ids")
    })?;
    if !record.kind.is_data() {
        return Err(Error::config(format!(
            "backup {id} is a log backup; a restore starts from a full backup"
        ))
        .hint("restore to a time or position instead (--to-time)"));
    }
    if rules.log_needed_from(record).is_some() {
        let position = record
            .end
            .ok_or_else(|| Error::integrity(format!("backup {id} records no end position")))?;
        return analysis.plan_position(target, Some(&record.fork), position);
    }
    let mut chain = vec![record.clone()];
    while chain.last().is_some_and(|r| r.kind != BackupKind::Full) {
        let top = chain.last().expect("not empty");
        let base = records
            .iter()
            .filter(|r| r.kind.is_data() && rules.applies_on(r, top))
            .max_by_key(|r| r.point_time())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "backup {id} is a {} whose base backup is not in the vault",
                    record.kind
                ))
                .hint("restore a full backup instead; `strata list` shows them")
            })?;
        chain.push(base.clone());
    }
    chain.reverse();
    let base = chain.remove(0);
    Ok(RestorePlan {
        target: target.clone(),
        fork: record.fork.clone(),
        base,
        diffs: chain,
        logs: Vec::new(),
        reaches_time: Some(record.point_time()),
        reaches_position: record.end,
    })
}

fn show_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

struct Analysis<'a> {
    records: &'a [BackupRecord],
    /// Ranked newest first.
    forks: Vec<ForkAnalysis<'a>>,
    has_logs: bool,
}

impl<'a> Analysis<'a> {
    fn new(records: &'a [BackupRecord], rules: &'a dyn ChainRules) -> Self {
        let has_logs =
            rules.takes_log_backups() || records.iter().any(|r| r.kind == BackupKind::Log);
        let mut logs_by_fork: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if r.kind == BackupKind::Log && r.start.is_some() && r.end.is_some() {
                logs_by_fork.entry(r.fork.as_str()).or_default().push(i);
            }
        }
        for logs in logs_by_fork.values_mut() {
            logs.sort_by_key(|&l| (records[l].start, records[l].end));
        }
        let data_chains = resolve_data_chains(records, rules);
        let forks: BTreeSet<&str> = records.iter().map(|r| r.fork.as_str()).collect();
        let mut analysed: Vec<ForkAnalysis> = forks
            .into_iter()
            .map(|fork| analyse_fork(records, rules, fork, &logs_by_fork, &data_chains, has_logs))
            .collect();
        analysed.sort_by(|a, b| {
            let key = |f: &ForkAnalysis| {
                (
                    f.windows.iter().map(|w| w.window.to_time).max(),
                    f.newest_record,
                )
            };
            key(b).cmp(&key(a)).then_with(|| b.fork.cmp(&a.fork))
        });
        Analysis {
            records,
            forks: analysed,
            has_logs,
        }
    }

    /// The plan restoring `chain` of `fork` with its logs up to where `stop` holds.
    fn build(
        &self,
        target: &RestoreTarget,
        fork: &ForkAnalysis,
        chain: &Chain,
        stop: impl Fn(Position, DateTime<Utc>) -> bool,
    ) -> RestorePlan {
        let (logs, position, time) = fork.logs_until(chain, stop);
        let record = |i: &usize| self.records[*i].clone();
        RestorePlan {
            target: target.clone(),
            fork: fork.fork.clone(),
            base: record(&chain.data[0]),
            diffs: chain.data[1..].iter().map(record).collect(),
            logs: logs.iter().map(record).collect(),
            reaches_time: Some(time),
            reaches_position: position,
        }
    }

    fn plan_latest(&self, target: &RestoreTarget) -> Result<RestorePlan> {
        // (With nothing restorable at all, the message below says so.)
        let end_of_archive = self
            .forks
            .first()
            .is_some_and(|f| f.walker.rules.latest_is_end_of_archive());
        if self.has_logs
            && end_of_archive
            && self.forks.iter().any(|f| !f.windows.is_empty())
            && let Some(newest) = self
                .forks
                .iter()
                .max_by(|a, b| (a.newest_record, &a.fork).cmp(&(b.newest_record, &b.fork)))
        {
            let reached = newest.windows.iter().map(|w| w.window.to_time).max();
            let unreached = newest
                .gaps
                .iter()
                .filter(|g| reached.is_none_or(|r| g.to_time > r))
                .max_by_key(|g| g.to_time);
            if let Some(gap) = unreached {
                let rules = newest.walker.rules;
                // Coverage may have stopped on a fork it descends from
                // (a log missing before the branch point): say where.
                let mut reasons = vec![gap.reason.clone()];
                for step in &newest.walker.path {
                    let Some(ancestor) = self
                        .forks
                        .iter()
                        .find(|f| f.fork == step.fork && f.fork != newest.fork)
                    else {
                        continue;
                    };
                    let its_reach = ancestor.windows.iter().map(|w| w.window.to_time).max();
                    reasons.extend(
                        ancestor
                            .gaps
                            .iter()
                            .filter(|g| its_reach.is_none_or(|r| g.to_time > r))
                            .filter(|g| {
                                step.limit
                                    .is_none_or(|l| g.from_position.is_none_or(|p| p < l))
                            })
                            .map(|g| format!("on fork {}, {}", ancestor.fork, g.reason)),
                    );
                }
                let furthest = match reached {
                    Some(t) => format!(
                        "; fork {} is restorable up to {}",
                        newest.fork,
                        show_time(t)
                    ),
                    None => String::new(),
                };
                return Err(Error::not_found(format!(
                    "{target} is not restorable: the vault holds records of fork {} up to {}{}, \
                     which nothing restorable reaches: {}{furthest}",
                    newest.fork,
                    show_time(newest.newest_record),
                    gap.to_position
                        .map(|p| format!(" (position {})", rules.position_text(p)))
                        .unwrap_or_default(),
                    reasons.join("; ")
                ))
                .hint(
                    "bring back what is missing, or restore to a time or position that \
                     `strata list --timeline` shows as restorable",
                ));
            }
        }
        for fork in &self.forks {
            let best = fork.chains.iter().max_by_key(|c| {
                (
                    c.to_time,
                    c.to_position,
                    c.from_time,
                    std::cmp::Reverse(c.logs),
                )
            });
            if let Some(chain) = best {
                return Ok(self.build(target, fork, chain, |_, _| false));
            }
        }
        Err(self.not_restorable(target, None))
    }

    fn plan_time(&self, target: &RestoreTarget, t: DateTime<Utc>) -> Result<RestorePlan> {
        if !self.has_logs {
            // Forks are ranked newest first: on equal times the newer fork wins.
            let best = self
                .forks
                .iter()
                .enumerate()
                .flat_map(|(rank, f)| f.chains.iter().map(move |c| (rank, f, c)))
                .filter(|(_, _, c)| c.from_time <= t)
                .max_by_key(|(rank, _, c)| (c.from_time, std::cmp::Reverse(*rank)));
            return match best {
                Some((_, fork, chain)) => Ok(self.build(target, fork, chain, |_, _| true)),
                None => Err(self.not_restorable(target, None)),
            };
        }
        // A fork that began after `t` (a timeline a later restore or
        // promotion created) holds at `t` only what it inherited, while an
        // older fork holds what the database really was then: prefer the
        // forks that existed at `t`, and fall back to the others.
        let existed = |fork: &ForkAnalysis<'_>| {
            fork.walker
                .rules
                .fork_began_at(&fork.fork)
                .is_none_or(|began| began <= t)
        };
        for pass in [true, false] {
            for fork in self.forks.iter().filter(|f| !pass || existed(f)) {
                let best = fork
                    .chains
                    .iter()
                    .filter(|c| c.from_time <= t && c.to_time >= t)
                    .max_by_key(|c| (c.from_time, c.from_position, std::cmp::Reverse(c.logs)));
                if let Some(chain) = best {
                    return Ok(self.build(target, fork, chain, |_, time| time >= t));
                }
            }
        }
        Err(self.not_restorable(target, None))
    }

    fn plan_position(
        &self,
        target: &RestoreTarget,
        fork: Option<&str>,
        p: Position,
    ) -> Result<RestorePlan> {
        if let Some(name) = fork
            && !self.forks.iter().any(|f| f.fork == name)
        {
            let known: Vec<&str> = self.forks.iter().map(|f| f.fork.as_str()).collect();
            return Err(Error::not_found(format!(
                "{target} is not restorable: there are no backups on fork {name}"
            ))
            .hint(format!(
                "the backups of this database are on fork(s) {}",
                known.join(", ")
            )));
        }
        for f in self
            .forks
            .iter()
            .filter(|f| fork.is_none_or(|name| f.fork == name))
        {
            let candidates = f
                .chains
                .iter()
                .filter(|c| c.from_position.is_some_and(|from| from <= p));
            let best = if self.has_logs {
                candidates
                    .filter(|c| c.to_position.is_some_and(|to| to >= p))
                    .max_by_key(|c| (c.from_position, c.from_time, std::cmp::Reverse(c.logs)))
            } else {
                candidates.max_by_key(|c| (c.from_position, c.from_time))
            };
            if let Some(chain) = best {
                return Ok(self.build(target, f, chain, |covered, _| covered >= p));
            }
        }
        Err(self.not_restorable(target, fork))
    }
}

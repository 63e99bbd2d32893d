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
//!   from the newest data backup that reaches it.
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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::{BackupId, BackupKind, Manifest, Position};
use crate::error::{Error, Result};

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

fn show_position(p: Option<Position>) -> String {
    p.map_or_else(|| "?".to_owned(), |p| p.to_string())
}

/// One fork of a fork's ancestry, root first; `limit` is where the next
/// fork of the path branched off this one (`None` for the analysed fork).
#[derive(Debug, Clone)]
struct PathStep {
    fork: String,
    limit: Option<Position>,
}

/// Where a walk along a fork path stands: the path step and the coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    idx: usize,
    covered: Position,
}

/// One log replayed from a state.
#[derive(Debug, Clone, Copy)]
struct Transition {
    log: usize,
    to: State,
    /// The log's time, unless it only counts up to a fork point (its time
    /// belongs to the parent's history after the branch).
    time: Option<DateTime<Utc>>,
}

/// Where the logs from a state lead, as far as they go.
#[derive(Debug, Clone, Copy)]
struct Summary {
    end: State,
    time: Option<DateTime<Utc>>,
    last_log: Option<usize>,
    logs: usize,
}

/// A restore chain: data backups (full first), then the contiguous logs
/// from the last of them, as far as they go (shared with other chains
/// through the walker's memory, so a chain costs O(1) to keep).
#[derive(Debug, Clone)]
struct Chain {
    data: Vec<usize>,
    /// Where log replay starts; `None` for a data backup without positions.
    start: Option<State>,
    /// Logs needed before the data is consistent.
    ready: usize,
    from_time: DateTime<Utc>,
    from_position: Option<Position>,
    to_time: DateTime<Utc>,
    to_position: Option<Position>,
    /// The record the chain ends with: its last log, or its data backup.
    last: usize,
    logs: usize,
}

/// A merged window and what its furthest chain ended with (for gap reasons).
#[derive(Debug, Clone)]
struct WindowInfo {
    window: RecoverableWindow,
    /// The record the furthest chain ends with (its last log, or its data backup).
    last: usize,
    /// The data backup the earliest chain starts from.
    first: usize,
}

struct ForkAnalysis<'a> {
    fork: String,
    walker: Walker<'a>,
    chains: Vec<Chain>,
    windows: Vec<WindowInfo>,
    gaps: Vec<Gap>,
    newest_record: DateTime<Utc>,
}

impl ForkAnalysis<'_> {
    /// The logs of `chain` up to the first point (once the data is
    /// consistent) where `stop(position, time)` holds, or all of them, and
    /// the position and time reached.
    fn logs_until(
        &self,
        chain: &Chain,
        stop: impl Fn(Position, DateTime<Utc>) -> bool,
    ) -> (Vec<usize>, Option<Position>, DateTime<Utc>) {
        let mut logs = Vec::new();
        let mut time = chain.from_time;
        let Some(mut state) = chain.start else {
            return (logs, chain.from_position, time);
        };
        while logs.len() < chain.ready || !stop(state.covered, time) {
            let Some(step) = self.walker.known_transition(state) else {
                break;
            };
            logs.push(step.log);
            if let Some(t) = step.time {
                time = time.max(t);
            }
            state = step.to;
        }
        (logs, Some(state.covered), time)
    }
}

struct Analysis<'a> {
    records: &'a [BackupRecord],
    /// Ranked newest first.
    forks: Vec<ForkAnalysis<'a>>,
    has_logs: bool,
}

/// Follows log coverage along one fork path. Every decision is remembered,
/// so the chains of all data backups of a fork share their common tails:
/// time and memory stay proportional to the number of backups.
struct Walker<'a> {
    records: &'a [BackupRecord],
    rules: &'a dyn ChainRules,
    path: Vec<PathStep>,
    /// Per path step: the fork's logs (with positions), sorted by start.
    logs: Vec<Vec<usize>>,
    /// Per path step: the largest end among `logs[..=i]`.
    reach: Vec<Vec<Position>>,
    transitions: HashMap<State, Option<Transition>>,
    summaries: HashMap<State, Summary>,
}

impl<'a> Walker<'a> {
    fn new(
        records: &'a [BackupRecord],
        rules: &'a dyn ChainRules,
        path: Vec<PathStep>,
        logs_by_fork: &HashMap<&str, Vec<usize>>,
    ) -> Self {
        let logs: Vec<Vec<usize>> = path
            .iter()
            .map(|step| {
                logs_by_fork
                    .get(step.fork.as_str())
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let reach = logs
            .iter()
            .map(|logs| {
                logs.iter()
                    .scan(Position(0), |max, &l| {
                        *max = (*max).max(records[l].end.unwrap_or_default());
                        Some(*max)
                    })
                    .collect()
            })
            .collect();
        Walker {
            records,
            rules,
            path,
            logs,
            reach,
            transitions: HashMap::new(),
            summaries: HashMap::new(),
        }
    }

    fn last(&self) -> usize {
        self.path.len() - 1
    }

    /// Moves down the path while the coverage reached a fork point; returns
    /// the state and whether coverage past the fork point (parent-only
    /// history) was cut off.
    fn normalise(&self, mut idx: usize, mut covered: Position) -> (State, bool) {
        let mut cut = false;
        while idx < self.last() {
            match self.path[idx].limit {
                Some(limit) if covered >= limit => {
                    cut |= covered > limit;
                    covered = limit;
                    idx += 1;
                }
                _ => break,
            }
        }
        (State { idx, covered }, cut)
    }

    /// The best log of path step `k` that continues `covered`: among the
    /// logs with `start <= covered < end` that the rules accept, the one
    /// reaching furthest.
    fn candidate(&self, k: usize, covered: Position) -> Option<usize> {
        let logs = &self.logs[k];
        let started = logs.partition_point(|&l| self.records[l].start <= Some(covered));
        let mut best: Option<usize> = None;
        for i in (0..started).rev() {
            if self.reach[k][i] <= covered {
                break; // no earlier log reaches past the coverage
            }
            let l = logs[i];
            let record = &self.records[l];
            if record.end > Some(covered)
                && self.rules.log_continues(covered, record)
                && best.is_none_or(|b| {
                    (record.end, &record.id) > (self.records[b].end, &self.records[b].id)
                })
            {
                best = Some(l);
            }
        }
        best
    }

    /// The log replayed from `state`: one of the next fork on the path
    /// first (the history the restore follows), else one of this fork.
    fn transition(&mut self, state: State) -> Option<Transition> {
        if let Some(known) = self.transitions.get(&state) {
            return *known;
        }
        let found = [state.idx + 1, state.idx]
            .into_iter()
            .filter(|&k| k <= self.last())
            .find_map(|k| self.candidate(k, state.covered).map(|l| (l, k)))
            .and_then(|(log, k)| {
                let record = &self.records[log];
                let (to, cut) = self.normalise(k, record.end?);
                Some(Transition {
                    log,
                    to,
                    time: (!cut).then(|| record.point_time()),
                })
            });
        self.transitions.insert(state, found);
        found
    }

    /// A transition already computed by [`Walker::summary`].
    fn known_transition(&self, state: State) -> Option<Transition> {
        self.transitions.get(&state).copied().flatten()
    }

    /// Where the logs from `state` lead. Iterative: chains can be long.
    fn summary(&mut self, state: State) -> Summary {
        let mut trail = Vec::new();
        let mut current = state;
        let mut tail = loop {
            if let Some(known) = self.summaries.get(&current) {
                break *known;
            }
            match self.transition(current) {
                // Every transition moves strictly forward (a further
                // position, or a later fork of the path), so this ends.
                Some(step) => {
                    trail.push((current, step));
                    current = step.to;
                }
                None => {
                    let end = Summary {
                        end: current,
                        time: None,
                        last_log: None,
                        logs: 0,
                    };
                    self.summaries.insert(current, end);
                    break end;
                }
            }
        };
        for (from, step) in trail.into_iter().rev() {
            tail = Summary {
                end: tail.end,
                time: tail.time.max(step.time),
                last_log: tail.last_log.or(Some(step.log)),
                logs: tail.logs + 1,
            };
            self.summaries.insert(from, tail);
        }
        tail
    }

    /// The chain from the data backup ending `data_chain`, found at path
    /// step `idx`, if it becomes consistent and reaches the last fork of
    /// the path.
    fn chain(&mut self, data_chain: Vec<usize>, idx: usize) -> Option<Chain> {
        let point_index = *data_chain.last()?;
        let point = &self.records[point_index];
        let from_time = point.point_time();
        let Some(end) = point.end else {
            // No positions: a single restorable instant, on its own fork only.
            return (idx == self.last()).then_some(Chain {
                data: data_chain,
                start: None,
                ready: 0,
                from_time,
                from_position: None,
                to_time: from_time,
                to_position: None,
                last: point_index,
                logs: 0,
            });
        };
        let replay_from = self
            .rules
            .log_needed_from(point)
            .filter(|s| *s < end)
            .unwrap_or(end);
        let (start, _) = self.normalise(idx, replay_from);
        let mut ready = 0;
        let mut state = start;
        while state.covered < end {
            state = self.transition(state)?.to;
            ready += 1;
        }
        let summary = self.summary(start);
        (summary.end.idx == self.last()).then(|| Chain {
            data: data_chain,
            start: Some(start),
            ready,
            from_time,
            from_position: Some(end),
            to_time: summary.time.map_or(from_time, |t| t.max(from_time)),
            to_position: Some(summary.end.covered),
            last: summary.last_log.unwrap_or(point_index),
            logs: summary.logs,
        })
    }
}

impl<'a> Analysis<'a> {
    fn new(records: &'a [BackupRecord], rules: &'a dyn ChainRules) -> Self {
        let has_logs = records.iter().any(|r| r.kind == BackupKind::Log);
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

    /// The error for a target outside every window: the reason (the gap it
    /// falls in) and the nearest restorable points around it.
    fn not_restorable(&self, target: &RestoreTarget, fork: Option<&str>) -> Error {
        let hint =
            "run `strata list --timeline` to see the restorable windows and the gaps between them";
        let forks: Vec<&ForkAnalysis> = self
            .forks
            .iter()
            .filter(|f| fork.is_none_or(|name| f.fork == name))
            .collect();
        let windows: Vec<&RecoverableWindow> = forks
            .iter()
            .flat_map(|f| f.windows.iter().map(|w| &w.window))
            .collect();
        if windows.is_empty() {
            let reason = forks
                .iter()
                .flat_map(|f| &f.gaps)
                .map(|g| g.reason.clone())
                .next()
                .unwrap_or_else(|| "no full backup can be restored".to_owned());
            return Error::not_found(format!(
                "{target} is not restorable: nothing in the catalog can be restored yet: {reason}"
            ))
            .hint(format!("take a full backup; {hint}"));
        }
        let multi_fork = self.forks.len() > 1;
        let on_fork = |fork: &str| {
            if multi_fork {
                format!(" on fork {fork}")
            } else {
                String::new()
            }
        };
        let message = match target {
            RestoreTarget::Time(t) => {
                let reason = forks
                    .iter()
                    .flat_map(|f| &f.gaps)
                    .find(|g| g.from_time < *t && *t < g.to_time)
                    .map(|g| format!(" ({})", g.reason))
                    .unwrap_or_default();
                let before = windows
                    .iter()
                    .filter(|w| w.to_time < *t)
                    .max_by_key(|w| w.to_time)
                    .map(|w| format!("{}{}", show_time(w.to_time), on_fork(&w.fork)));
                let after = windows
                    .iter()
                    .filter(|w| w.from_time > *t)
                    .min_by_key(|w| w.from_time)
                    .map(|w| format!("{}{}", show_time(w.from_time), on_fork(&w.fork)));
                format!(
                    "{target} is not restorable{reason}; {}",
                    nearest(before, after, "time")
                )
            }
            RestoreTarget::Position { position, .. } => {
                let p = *position;
                let reason = forks
                    .iter()
                    .flat_map(|f| &f.gaps)
                    .find(|g| {
                        g.from_position.is_some_and(|from| from < p)
                            && g.to_position.is_some_and(|to| p < to)
                    })
                    .map(|g| format!(" ({})", g.reason))
                    .unwrap_or_default();
                let before = windows
                    .iter()
                    .filter_map(|w| w.to_position.filter(|to| *to < p).map(|to| (to, w)))
                    .max_by_key(|(to, _)| *to)
                    .map(|(to, w)| format!("{to}{}", on_fork(&w.fork)));
                let after = windows
                    .iter()
                    .filter_map(|w| w.from_position.filter(|from| *from > p).map(|f| (f, w)))
                    .min_by_key(|(from, _)| *from)
                    .map(|(from, w)| format!("{from}{}", on_fork(&w.fork)));
                format!(
                    "{target} is not restorable{reason}; {}",
                    nearest(before, after, "position")
                )
            }
            RestoreTarget::Latest | RestoreTarget::Backup(_) => {
                format!("{target} is not restorable")
            }
        };
        Error::not_found(message).hint(hint)
    }
}

fn nearest(before: Option<String>, after: Option<String>, what: &str) -> String {
    match (before, after) {
        (Some(b), Some(a)) => {
            format!("the nearest restorable {what}s are {b} (before) and {a} (after)")
        }
        (Some(b), None) => format!("the latest restorable {what} is {b}"),
        (None, Some(a)) => format!("the earliest restorable {what} is {a}"),
        (None, None) => format!("no restorable {what} is near it"),
    }
}

/// For every data backup, its data chain (full first, itself last), if it
/// reaches a full.
fn resolve_data_chains(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
) -> HashMap<usize, Vec<usize>> {
    fn resolve(
        d: usize,
        records: &[BackupRecord],
        rules: &dyn ChainRules,
        data: &[usize],
        memo: &mut HashMap<usize, Option<Vec<usize>>>,
        visiting: &mut HashSet<usize>,
    ) -> Option<Vec<usize>> {
        if let Some(done) = memo.get(&d) {
            return done.clone();
        }
        let record = &records[d];
        let result = match record.kind {
            BackupKind::Log => None,
            BackupKind::Full => Some(vec![d]),
            BackupKind::Diff | BackupKind::Incr => {
                if !visiting.insert(d) {
                    return None;
                }
                let mut bases: Vec<usize> = data
                    .iter()
                    .copied()
                    .filter(|&b| {
                        b != d
                            && records[b].point_time() <= record.point_time()
                            && rules.applies_on(&records[b], record)
                    })
                    .collect();
                bases
                    .sort_by_key(|&b| std::cmp::Reverse((records[b].point_time(), records[b].end)));
                let found = bases.into_iter().find_map(|b| {
                    resolve(b, records, rules, data, memo, visiting).map(|mut chain| {
                        chain.push(d);
                        chain
                    })
                });
                visiting.remove(&d);
                found
            }
        };
        memo.insert(d, result.clone());
        result
    }
    let data: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].kind.is_data())
        .collect();
    let mut memo = HashMap::new();
    let mut visiting = HashSet::new();
    data.iter()
        .filter_map(|&d| {
            resolve(d, records, rules, &data, &mut memo, &mut visiting).map(|chain| (d, chain))
        })
        .collect()
}

/// The ancestry of `fork`, root first, with each fork point.
fn fork_path(rules: &dyn ChainRules, fork: &str) -> Vec<PathStep> {
    let mut path = vec![PathStep {
        fork: fork.to_owned(),
        limit: None,
    }];
    let mut seen: HashSet<String> = HashSet::from([fork.to_owned()]);
    let mut current = fork.to_owned();
    while let Some(origin) = rules.fork_origin(&current) {
        if !seen.insert(origin.parent.clone()) {
            break; // a cycle in the engine's history: stop at the repeat
        }
        path.push(PathStep {
            fork: origin.parent.clone(),
            limit: Some(origin.at),
        });
        current = origin.parent;
    }
    path.reverse();
    path
}

fn analyse_fork<'a>(
    records: &'a [BackupRecord],
    rules: &'a dyn ChainRules,
    fork: &str,
    logs_by_fork: &HashMap<&str, Vec<usize>>,
    data_chains: &HashMap<usize, Vec<usize>>,
    has_logs: bool,
) -> ForkAnalysis<'a> {
    let path = fork_path(rules, fork);
    let mut walker = Walker::new(records, rules, path.clone(), logs_by_fork);
    let mut data: Vec<usize> = data_chains.keys().copied().collect();
    data.sort_unstable();
    let mut chains = Vec::new();
    for d in data {
        let record = &records[d];
        let Some(idx) = path.iter().position(|s| s.fork == record.fork) else {
            continue;
        };
        let usable = match path[idx].limit {
            None => true,
            Some(limit) => record.end.is_some_and(|end| end <= limit),
        };
        if usable && let Some(chain) = walker.chain(data_chains[&d].clone(), idx) {
            chains.push(chain);
        }
    }
    let windows = merge_windows(fork, &chains);
    let gaps = if has_logs {
        fork_gaps(
            records,
            rules,
            fork,
            &walker,
            &chains,
            &windows,
            data_chains,
        )
    } else {
        Vec::new()
    };
    let newest_record = records
        .iter()
        .filter(|r| r.fork == fork)
        .map(BackupRecord::point_time)
        .max()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    ForkAnalysis {
        fork: fork.to_owned(),
        walker,
        chains,
        windows,
        gaps,
        newest_record,
    }
}

/// Positions touch or overlap (unknown positions never separate windows).
fn positions_meet(to: Option<Position>, from: Option<Position>) -> bool {
    match (to, from) {
        (Some(to), Some(from)) => from <= to,
        _ => true,
    }
}

fn merge_windows(fork: &str, chains: &[Chain]) -> Vec<WindowInfo> {
    let mut spans: Vec<WindowInfo> = chains
        .iter()
        .map(|c| WindowInfo {
            window: RecoverableWindow {
                fork: fork.to_owned(),
                from_time: c.from_time,
                to_time: c.to_time,
                from_position: c.from_position,
                to_position: c.to_position,
            },
            last: c.last,
            first: *c.data.last().unwrap_or(&0),
        })
        .collect();
    spans.sort_by(|a, b| {
        (a.window.from_time, a.window.from_position)
            .cmp(&(b.window.from_time, b.window.from_position))
    });
    let mut merged: Vec<WindowInfo> = Vec::new();
    for span in spans {
        if let Some(current) = merged.last_mut()
            && span.window.from_time <= current.window.to_time
            && positions_meet(current.window.to_position, span.window.from_position)
        {
            let further = (span.window.to_time, span.window.to_position)
                > (current.window.to_time, current.window.to_position);
            if further {
                current.window.to_time = span.window.to_time;
                current.window.to_position = span.window.to_position;
                current.last = span.last;
            }
            continue;
        }
        merged.push(span);
    }
    merged
}

/// The gaps of one fork: before its first window (backups that need a full
/// that does not exist), between windows, and after the last one (logs that
/// nothing restorable reaches).
fn fork_gaps(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
    fork: &str,
    walker: &Walker,
    chains: &[Chain],
    windows: &[WindowInfo],
    data_chains: &HashMap<usize, Vec<usize>>,
) -> Vec<Gap> {
    let path = &walker.path;
    // Every backup some restorable chain uses; chains share their tails,
    // so each state is followed once.
    let mut used: HashSet<usize> = chains.iter().flat_map(|c| c.data.iter().copied()).collect();
    let mut seen: HashSet<State> = HashSet::new();
    for chain in chains {
        let mut state = chain.start;
        while let Some(current) = state.filter(|s| seen.insert(*s)) {
            let step = walker.known_transition(current);
            if let Some(step) = step {
                used.insert(step.log);
            }
            state = step.map(|s| s.to);
        }
    }
    // Backups of this fork that no restorable chain uses.
    let mut orphans: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].fork == fork && !used.contains(&i))
        .collect();
    orphans.sort_by_key(|&i| (records[i].point_time(), &records[i].id));
    let fork_logs: Vec<usize> = (0..records.len())
        .filter(|&i| {
            let r = &records[i];
            r.fork == fork && r.kind == BackupKind::Log && r.start.is_some() && r.end.is_some()
        })
        .collect();
    let mut gaps = Vec::new();
    let gap = |from_time, to_time, from_position, to_position, reason: String| Gap {
        fork: fork.to_owned(),
        from_time,
        to_time,
        from_position,
        to_position,
        reason,
    };

    let Some(first) = windows.first() else {
        if let (Some(&a), Some(&b)) = (orphans.first(), orphans.last()) {
            let origin = path
                .len()
                .checked_sub(2)
                .map(|i| (&path[i].fork, path[i].limit));
            let reason = match origin {
                Some((parent, Some(at))) => format!(
                    "no restorable chain reaches position {at} where fork {fork} branched from fork {parent}, \
                     and there is no usable full backup on fork {fork}: its {} backup(s) from {} to {} \
                     cannot be restored without one",
                    orphans.len(),
                    records[a].id,
                    records[b].id
                ),
                _ => format!(
                    "no full backup on fork {fork}: its {} backup(s) from {} to {} cannot be restored without one",
                    orphans.len(),
                    records[a].id,
                    records[b].id
                ),
            };
            let reason = with_orphan_details(records, &orphans, data_chains, reason);
            let (from_time, from_position) = first_point(records, &orphans);
            let (to_time, to_position) = last_point(records, &orphans);
            gaps.push(gap(from_time, to_time, from_position, to_position, reason));
        }
        return gaps;
    };

    // Before the first window.
    let early: Vec<usize> = orphans
        .iter()
        .copied()
        .filter(|&i| records[i].point_time() < first.window.from_time)
        .collect();
    if let (Some(&a), Some(&b)) = (early.first(), early.last()) {
        let (from_time, from_position) = first_point(records, &early);
        if from_time < first.window.from_time {
            let reason = format!(
                "no full backup before {}: the {} earlier backup(s) on fork {fork}, {} to {}, \
                 cannot be restored without one",
                show_time(first.window.from_time),
                early.len(),
                records[a].id,
                records[b].id
            );
            let reason = with_orphan_details(records, &early, data_chains, reason);
            gaps.push(gap(
                from_time,
                first.window.from_time,
                from_position,
                first.window.from_position,
                reason,
            ));
        }
    }

    // Between windows.
    for pair in windows.windows(2) {
        let (w, next) = (&pair[0], &pair[1]);
        let reason = break_reason(records, rules, &fork_logs, w, Some(next));
        gaps.push(gap(
            w.window.to_time,
            next.window.from_time,
            w.window.to_position,
            next.window.from_position,
            reason,
        ));
    }

    // After the last window: backups nothing restorable reaches.
    let last = windows.last().unwrap_or(first);
    let late: Vec<usize> = orphans
        .iter()
        .copied()
        .filter(|&i| records[i].point_time() > last.window.to_time)
        .collect();
    if !late.is_empty() {
        let (to_time, to_position) = last_point(records, &late);
        let reason = break_reason(records, rules, &fork_logs, last, None);
        let reason = with_orphan_details(records, &late, data_chains, reason);
        gaps.push(gap(
            last.window.to_time,
            to_time,
            last.window.to_position,
            to_position.max(last.window.to_position),
            reason,
        ));
    }
    gaps
}

fn first_point(records: &[BackupRecord], ids: &[usize]) -> (DateTime<Utc>, Option<Position>) {
    let time = ids
        .iter()
        .map(|&i| records[i].started_at.min(records[i].point_time()))
        .min()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let position = ids
        .iter()
        .filter_map(|&i| records[i].start.or(records[i].end))
        .min();
    (time, position)
}

fn last_point(records: &[BackupRecord], ids: &[usize]) -> (DateTime<Utc>, Option<Position>) {
    let time = ids
        .iter()
        .map(|&i| records[i].point_time())
        .max()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let position = ids.iter().filter_map(|&i| records[i].end).max();
    (time, position)
}

/// Adds why unusable data backups among `orphans` are unusable.
fn with_orphan_details(
    records: &[BackupRecord],
    orphans: &[usize],
    data_chains: &HashMap<usize, Vec<usize>>,
    mut reason: String,
) -> String {
    let unresolved: Vec<String> = orphans
        .iter()
        .filter(|&&i| records[i].kind.is_data() && records[i].kind != BackupKind::Full)
        .filter(|&&i| !data_chains.contains_key(&i))
        .map(|&i| {
            let r = &records[i];
            match &r.base {
                Some(base) => format!(
                    "{} {} needs {base}, which is not in the catalog or not restorable",
                    r.kind, r.id
                ),
                None => format!("{} {} names no base backup", r.kind, r.id),
            }
        })
        .collect();
    if !unresolved.is_empty() {
        reason.push_str("; ");
        reason.push_str(&unresolved.join("; "));
    }
    reason
}

/// Why coverage stops at the end of window `w` (and, when `next` is given,
/// does not resume until it).
fn break_reason(
    records: &[BackupRecord],
    rules: &dyn ChainRules,
    fork_logs: &[usize],
    w: &WindowInfo,
    next: Option<&WindowInfo>,
) -> String {
    let last = &records[w.last];
    let until = next.map(|n| {
        format!(
            "; the next restorable point is {} {} at {}",
            records[n.first].kind,
            records[n.first].id,
            show_time(n.window.from_time)
        )
    });
    let until = until.unwrap_or_default();
    let Some(covered) = w.window.to_position else {
        return format!(
            "no log backup continues after {} ({}){until}",
            last.id,
            show_time(w.window.to_time)
        );
    };
    // The first log of the fork that holds anything past the coverage.
    let following = fork_logs
        .iter()
        .copied()
        .filter(|&l| records[l].end > Some(covered))
        .min_by_key(|&l| (records[l].start, records[l].end));
    match following {
        Some(l) if records[l].start > Some(covered) => {
            let to = records[l].start.unwrap_or(covered);
            match next.and_then(|n| n.window.from_position) {
                Some(resume) if resume < to => format!(
                    "no log backup covers positions {covered}..{resume} (none after {} until {} {})",
                    last.id,
                    records[next.map_or(w.first, |n| n.first)].kind,
                    records[next.map_or(w.first, |n| n.first)].id
                ),
                _ => format!(
                    "no log backup covers positions {covered}..{to} (missing between {} and {})",
                    last.id, records[l].id
                ),
            }
        }
        Some(l) if !rules.log_continues(covered, &records[l]) => format!(
            "log backup {} (positions {}..{}) does not continue the chain that ends at position {covered} with {}{until}",
            records[l].id,
            show_position(records[l].start),
            show_position(records[l].end),
            last.id
        ),
        _ => format!(
            "no log backup after {} (position {covered}, {}){until}",
            last.id,
            show_time(w.window.to_time)
        ),
    }
}

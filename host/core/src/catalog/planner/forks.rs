//! Fork paths and the walk along them: each fork's ancestry, the log
//! coverage followed from every data backup, and the restore chains it yields.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::gaps::{WindowInfo, fork_gaps, merge_windows};
use super::{BackupRecord, ChainRules, Gap};
use crate::catalog::manifest::{BackupKind, Position};

/// One fork of a fork's ancestry, root first; `limit` is where the next
/// fork of the path branched off this one (`None` for the analysed fork).
#[derive(Debug, Clone)]
pub(super) struct PathStep {
    pub(super) fork: String,
    pub(super) limit: Option<Position>,
}

/// Where a walk along a fork path stands: the path step and the coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct State {
    idx: usize,
    covered: Position,
}

/// One log replayed from a state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transition {
    pub(super) log: usize,
    pub(super) to: State,
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
pub(super) struct Chain {
    pub(super) data: Vec<usize>,
    /// Where log replay starts; `None` for a data backup without positions.
    pub(super) start: Option<State>,
    /// Logs needed before the data is consistent.
    pub(super) ready: usize,
    pub(super) from_time: DateTime<Utc>,
    pub(super) from_position: Option<Position>,
    pub(super) to_time: DateTime<Utc>,
    pub(super) to_position: Option<Position>,
    /// The record the chain ends with: its last log, or its data backup.
    pub(super) last: usize,
    pub(super) logs: usize,
}

pub(super) struct ForkAnalysis<'a> {
    pub(super) fork: String,
    pub(super) walker: Walker<'a>,
    pub(super) chains: Vec<Chain>,
    pub(super) windows: Vec<WindowInfo>,
    pub(super) gaps: Vec<Gap>,
    pub(super) newest_record: DateTime<Utc>,
}

impl ForkAnalysis<'_> {
    /// The logs of `chain` up to the first point (once the data is
    /// consistent) where `stop(position, time)` holds, or all of them, and
    /// the position and time reached.
    pub(super) fn logs_until(
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

/// Follows log coverage along one fork path. Every decision is remembered,
/// so the chains of all data backups of a fork share their common tails:
/// time and memory stay proportional to the number of backups.
pub(super) struct Walker<'a> {
    records: &'a [BackupRecord],
    pub(super) rules: &'a dyn ChainRules,
    pub(super) path: Vec<PathStep>,
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
    pub(super) fn known_transition(&self, state: State) -> Option<Transition> {
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

/// For every data backup, its data chain (full first, itself last), if it
/// reaches a full.
pub(super) fn resolve_data_chains(
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

pub(super) fn analyse_fork<'a>(
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

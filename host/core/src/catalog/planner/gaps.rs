//! Windows and gaps: chains merged into restorable windows, the gaps
//! between them with their causes, and the messages for a target that is
//! not restorable.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::forks::{Chain, ForkAnalysis, State, Walker};
use super::{Analysis, BackupRecord, ChainRules, Gap, RecoverableWindow, RestoreTarget, show_time};
use crate::catalog::manifest::{BackupKind, Position};
use crate::error::Error;

/// A merged window and what its furthest chain ended with (for gap reasons).
#[derive(Debug, Clone)]
pub(super) struct WindowInfo {
    pub(super) window: RecoverableWindow,
    /// The record the furthest chain ends with (its last log, or its data backup).
    last: usize,
    /// The data backup the earliest chain starts from.
    first: usize,
}

impl Analysis<'_> {
    /// The error for a target outside every window: the reason (the gap it
    /// falls in) and the nearest restorable points around it.
    pub(super) fn not_restorable(&self, target: &RestoreTarget, fork: Option<&str>) -> Error {
        let hint =
            "run `strata list --timeline` to see the restorable windows and the gaps between them";
        let default_rules = super::DefaultChainRules;
        let rules: &dyn ChainRules = self
            .forks
            .first()
            .map_or(&default_rules, |f| f.walker.rules);
        let text = |p: Position| rules.position_text(p);
        let target_text = match target {
            RestoreTarget::Position {
                fork: Some(fork),
                position,
            } => format!("position {} on fork {fork}", text(*position)),
            RestoreTarget::Position {
                fork: None,
                position,
            } => format!("position {}", text(*position)),
            other => other.to_string(),
        };
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
                "{target_text} is not restorable: nothing in the catalog can be restored yet: {reason}"
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
                    "{target_text} is not restorable{reason}; {}",
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
                    .map(|(to, w)| format!("{}{}", text(to), on_fork(&w.fork)));
                let after = windows
                    .iter()
                    .filter_map(|w| w.from_position.filter(|from| *from > p).map(|f| (f, w)))
                    .min_by_key(|(from, _)| *from)
                    .map(|(from, w)| format!("{}{}", text(from), on_fork(&w.fork)));
                format!(
                    "{target_text} is not restorable{reason}; {}",
                    nearest(before, after, "position")
                )
            }
            RestoreTarget::Latest | RestoreTarget::Backup(_) => {
                format!("{target_text} is not restorable")
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

fn show_position(rules: &dyn ChainRules, p: Option<Position>) -> String {
    p.map_or_else(|| "?".to_owned(), |p| rules.position_text(p))
}

/// Positions touch or overlap (unknown positions never separate windows).
fn positions_meet(to: Option<Position>, from: Option<Position>) -> bool {
    match (to, from) {
        (Some(to), Some(from)) => from <= to,
        _ => true,
    }
}

pub(super) fn merge_windows(fork: &str, chains: &[Chain]) -> Vec<WindowInfo> {
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
pub(super) fn fork_gaps(
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
                    "no restorable chain reaches position {} where fork {fork} branched from fork {parent}, \
                     and there is no usable full backup on fork {fork}: its {} backup(s) from {} to {} \
                     cannot be restored without one",
                    rules.position_text(at),
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
            let reason = match rules.fork_problem(fork) {
                Some(problem) => format!("{problem}; {reason}"),
                None => reason,
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
    let Some(covered_at) = w.window.to_position else {
        return format!(
            "no log backup continues after {} ({}){until}",
            last.id,
            show_time(w.window.to_time)
        );
    };
    let covered = covered_at;
    let covered_text = rules.position_text(covered);
    // The first log of the fork that holds anything past the coverage.
    let following = fork_logs
        .iter()
        .copied()
        .filter(|&l| records[l].end > Some(covered))
        .min_by_key(|&l| (records[l].start, records[l].end));
    match following {
        Some(l) if records[l].start > Some(covered) => {
            let to = records[l].start.unwrap_or(covered);
            let missing = |to: Position| {
                rules
                    .missing_log_text(&w.window.fork, covered, to)
                    .map(|text| format!(": {text}"))
                    .unwrap_or_default()
            };
            match next.and_then(|n| n.window.from_position) {
                Some(resume) if resume < to => format!(
                    "no log backup covers positions {covered_text}..{} (none after {} until {} {}){}",
                    rules.position_text(resume),
                    last.id,
                    records[next.map_or(w.first, |n| n.first)].kind,
                    records[next.map_or(w.first, |n| n.first)].id,
                    missing(resume)
                ),
                _ => format!(
                    "no log backup covers positions {covered_text}..{} (missing between {} and {}){}",
                    rules.position_text(to),
                    last.id,
                    records[l].id,
                    missing(to)
                ),
            }
        }
        Some(l) if !rules.log_continues(covered, &records[l]) => format!(
            "log backup {} (positions {}..{}) does not continue the chain that ends at position {covered_text} with {}{until}",
            records[l].id,
            show_position(rules, records[l].start),
            show_position(rules, records[l].end),
            last.id
        ),
        _ => format!(
            "no log backup after {} (position {covered_text}, {}){until}",
            last.id,
            show_time(w.window.to_time)
        ),
    }
}

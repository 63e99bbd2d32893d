//! Property tests of the restore planner against an independent model.
//!
//! Each case builds a history of one to three forks (every fork after the
//! first branches off an earlier one at a log boundary), each with a run of
//! contiguous log segments, some of them lost, and full, differential and
//! incremental backups at random times, some of them lost too. Positions
//! are proportional to time, so the model can say which times are
//! restorable by walking the segments directly; the planner must agree
//! exactly, and every plan it makes must replay without a hole, use only
//! logs it needs, and reach its target.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use strata_core::ErrorKind;
use strata_core::catalog::manifest::{BackupId, BackupKind, Position};
use strata_core::catalog::planner::{
    BackupRecord, ChainRules, DefaultChainRules, ForkOrigin, RestorePlan, RestoreTarget, Timeline,
    plan, timeline,
};

/// Positions advance 10 per second on every fork.
fn pos(sec: i64) -> Position {
    Position(sec as u128 * 10)
}

fn at(sec: i64) -> DateTime<Utc> {
    "2026-11-22T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(sec)
}

fn sec(t: DateTime<Utc>) -> i64 {
    (t - at(0)).num_seconds()
}

#[derive(Debug, Clone)]
struct ForkSpec {
    parent: usize,
    switch: usize,
    /// (minutes, archived)
    segments: Vec<(u8, bool)>,
    /// (offset, kind selector, kept)
    data: Vec<(u32, u8, bool)>,
    /// Extra log backups spanning several segments: (first segment, count).
    spanning: Vec<(usize, u8)>,
}

fn fork_spec() -> impl Strategy<Value = ForkSpec> {
    (
        any::<usize>(),
        any::<usize>(),
        prop::collection::vec((1u8..30, prop::bool::weighted(0.85)), 0..20),
        prop::collection::vec((any::<u32>(), 0u8..6, prop::bool::weighted(0.85)), 0..8),
        prop::collection::vec((any::<usize>(), 2u8..5), 0..3),
    )
        .prop_map(|(parent, switch, segments, data, spanning)| ForkSpec {
            parent,
            switch,
            segments,
            data,
            spanning,
        })
}

#[derive(Debug, Clone)]
struct Segment {
    from: i64,
    to: i64,
    archived: bool,
}

#[derive(Debug, Clone)]
struct Data {
    time: i64,
    /// Restorable by itself or through kept bases down to a kept full.
    resolvable: bool,
}

#[derive(Debug, Clone)]
struct Fork {
    name: String,
    /// (parent fork, switch time)
    origin: Option<(usize, i64)>,
    start: i64,
    segments: Vec<Segment>,
    /// Time ranges of the extra spanning logs.
    spanning: Vec<(i64, i64)>,
    data: Vec<Data>,
}

impl Fork {
    fn boundaries(&self) -> Vec<i64> {
        std::iter::once(self.start)
            .chain(self.segments.iter().map(|s| s.to))
            .collect()
    }

    /// How far the archived logs reach from `t0` without a hole.
    fn reach(&self, t0: i64) -> i64 {
        let logs: Vec<(i64, i64)> = self
            .segments
            .iter()
            .filter(|s| s.archived)
            .map(|s| (s.from, s.to))
            .chain(self.spanning.iter().copied())
            .collect();
        let mut reach = t0;
        while let Some(to) = logs
            .iter()
            .filter(|&&(from, to)| from <= reach && reach < to)
            .map(|&(_, to)| to)
            .max()
        {
            reach = to;
        }
        reach
    }
}

#[derive(Debug)]
struct World {
    forks: Vec<Fork>,
    records: Vec<BackupRecord>,
}

struct Rules {
    origins: HashMap<String, ForkOrigin>,
}

impl ChainRules for Rules {
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        self.origins.get(fork).cloned()
    }
}

fn build(specs: &[ForkSpec]) -> World {
    let mut forks: Vec<Fork> = Vec::new();
    let mut records = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        let name = format!("{}", k + 1);
        let (origin, start) = if k == 0 {
            (None, 0)
        } else {
            let parent = spec.parent % k;
            // Forks branch at a log boundary of the parent (never inside
            // one of its logs).
            let bounds: Vec<i64> = forks[parent]
                .boundaries()
                .into_iter()
                .filter(|&b| {
                    !forks[parent]
                        .spanning
                        .iter()
                        .any(|&(from, to)| from < b && b < to)
                })
                .collect();
            let s = bounds[spec.switch % bounds.len()];
            (Some((parent, s)), s)
        };
        let mut segments = Vec::new();
        let mut t = start;
        for (i, &(minutes, archived)) in spec.segments.iter().enumerate() {
            let to = t + i64::from(minutes) * 60;
            if archived {
                records.push(BackupRecord {
                    id: format!("f{name}-log-{i:03}").parse().unwrap(),
                    kind: BackupKind::Log,
                    fork: name.clone(),
                    start: Some(pos(t)),
                    end: Some(pos(to)),
                    started_at: at(t),
                    ended_at: at(to),
                    consistent_at: None,
                    base: None,
                });
            }
            segments.push(Segment {
                from: t,
                to,
                archived,
            });
            t = to;
        }
        let mut spanning = Vec::new();
        if !segments.is_empty() {
            for (j, &(first, count)) in spec.spanning.iter().enumerate() {
                let first = first % segments.len();
                let last = (first + usize::from(count)).min(segments.len()) - 1;
                let (from, to) = (segments[first].from, segments[last].to);
                records.push(BackupRecord {
                    id: format!("f{name}-span-{j}").parse().unwrap(),
                    kind: BackupKind::Log,
                    fork: name.clone(),
                    start: Some(pos(from)),
                    end: Some(pos(to)),
                    started_at: at(from),
                    ended_at: at(to),
                    consistent_at: None,
                    base: None,
                });
                spanning.push((from, to));
            }
        }
        let span = t - start;
        let mut times: Vec<(i64, u8, bool)> = spec
            .data
            .iter()
            .map(|&(offset, kind, kept)| (start + i64::from(offset) % (span + 1), kind, kept))
            .collect();
        times.sort();
        // (time, kind, kept, resolvable, id) of earlier data backups of this fork
        let mut earlier: Vec<(BackupKind, bool, bool, BackupId)> = Vec::new();
        let mut data = Vec::new();
        for (i, (time, selector, kept)) in times.into_iter().enumerate() {
            let wanted = match selector {
                0..=2 => BackupKind::Full,
                3 | 4 => BackupKind::Diff,
                _ => BackupKind::Incr,
            };
            let base = match wanted {
                BackupKind::Diff => earlier
                    .iter()
                    .rev()
                    .find(|e| e.0 == BackupKind::Full)
                    .cloned(),
                BackupKind::Incr => earlier.last().cloned(),
                _ => None,
            };
            let kind = if base.is_none() {
                BackupKind::Full
            } else {
                wanted
            };
            let resolvable = kept
                && match &base {
                    None => true,
                    Some((_, base_kept, base_resolvable, _)) => *base_kept && *base_resolvable,
                };
            let id: BackupId = format!("f{name}-{kind}-{i:02}").parse().unwrap();
            if kept {
                records.push(BackupRecord {
                    id: id.clone(),
                    kind,
                    fork: name.clone(),
                    start: Some(pos((time - 60).max(0))),
                    end: Some(pos(time)),
                    started_at: at(time - 60),
                    ended_at: at(time),
                    consistent_at: Some(at(time)),
                    base: base.as_ref().map(|b| b.3.clone()),
                });
            }
            earlier.push((kind, kept, resolvable, id));
            data.push(Data { time, resolvable });
        }
        forks.push(Fork {
            name,
            origin,
            start,
            segments,
            spanning,
            data,
        });
    }
    World { forks, records }
}

impl World {
    fn rules(&self) -> Rules {
        Rules {
            origins: self
                .forks
                .iter()
                .filter_map(|f| {
                    f.origin.map(|(parent, s)| {
                        (
                            f.name.clone(),
                            ForkOrigin {
                                parent: self.forks[parent].name.clone(),
                                at: pos(s),
                            },
                        )
                    })
                })
                .collect(),
        }
    }

    /// Root first: (fork, switch time into the next fork of the path).
    fn path(&self, k: usize) -> Vec<(usize, Option<i64>)> {
        let mut path = vec![(k, None)];
        let mut current = k;
        while let Some((parent, s)) = self.forks[current].origin {
            path.push((parent, Some(s)));
            current = parent;
        }
        path.reverse();
        path
    }

    fn fork_index(&self, name: &str) -> usize {
        self.forks.iter().position(|f| f.name == name).unwrap()
    }

    /// The model's restorable intervals of fork `k`, merged.
    fn intervals(&self, k: usize) -> Vec<(i64, i64)> {
        // A fork nothing was backed up on is unknown to the catalog.
        if !self.records.iter().any(|r| r.fork == self.forks[k].name) {
            return Vec::new();
        }
        let path = self.path(k);
        let mut spans = Vec::new();
        for (j, &(f, limit)) in path.iter().enumerate() {
            for d in self.forks[f].data.iter().filter(|d| d.resolvable) {
                if limit.is_some_and(|s| d.time > s) {
                    continue;
                }
                let mut t0 = d.time;
                let mut ok = true;
                for &(g, lim) in &path[j..] {
                    let r = self.forks[g].reach(t0);
                    match lim {
                        Some(s) if r >= s => t0 = s,
                        Some(_) => {
                            ok = false;
                            break;
                        }
                        None => t0 = r,
                    }
                }
                if ok {
                    spans.push((d.time, t0));
                }
            }
        }
        spans.sort();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (from, to) in spans {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        merged
    }

    /// Replays a plan's logs along its fork's path (root first): the
    /// coverage and time reached, or `None` if a log does not continue the
    /// previous one or leaves the path.
    fn replay(&self, plan: &RestorePlan, logs: &[&BackupRecord]) -> Option<(Position, i64)> {
        let path = self.path(self.fork_index(&plan.fork));
        let point = plan.diffs.last().unwrap_or(&plan.base);
        let mut idx = path
            .iter()
            .position(|&(f, _)| self.forks[f].name == point.fork)?;
        let mut covered = point.end?;
        let mut time = sec(point.point_time());
        let settle = |idx: &mut usize, covered: &mut Position| {
            while let Some(s) = path[*idx].1 {
                if *covered < pos(s) {
                    break;
                }
                *covered = pos(s);
                *idx += 1;
            }
        };
        for log in logs {
            settle(&mut idx, &mut covered);
            if log.fork != self.forks[path[idx].0].name {
                return None;
            }
            if !(log.start? <= covered && covered < log.end?) {
                return None;
            }
            covered = log.end?;
            time = time.max(sec(log.point_time()));
        }
        // A target before the fork point may stop on an ancestor's history.
        Some((covered, time))
    }
}

fn inside(intervals: &[(i64, i64)], t: i64) -> bool {
    intervals.iter().any(|&(from, to)| from <= t && t <= to)
}

fn latest_of(line: &Timeline, fork: &str) -> Option<i64> {
    line.windows
        .iter()
        .filter(|w| w.fork == fork)
        .map(|w| sec(w.to_time))
        .max()
}

/// The data chain is well formed: a full, then differentials or
/// incrementals, each applied on the backup before it.
fn check_data_chain(plan: &RestorePlan) -> Result<(), TestCaseError> {
    prop_assert_eq!(plan.base.kind, BackupKind::Full);
    let mut previous = &plan.base;
    for diff in &plan.diffs {
        prop_assert!(diff.kind == BackupKind::Diff || diff.kind == BackupKind::Incr);
        prop_assert_eq!(diff.base.as_ref(), Some(&previous.id));
        previous = diff;
    }
    Ok(())
}

fn check_world(world: &World, extra_targets: &[i64]) -> Result<(), TestCaseError> {
    let rules = world.rules();
    let records = &world.records;
    let line = timeline(records, &rules);
    let model: Vec<Vec<(i64, i64)>> = (0..world.forks.len()).map(|k| world.intervals(k)).collect();

    // The windows are exactly the model's restorable intervals.
    for (k, fork) in world.forks.iter().enumerate() {
        let windows: Vec<(i64, i64)> = line
            .windows
            .iter()
            .filter(|w| w.fork == fork.name)
            .map(|w| {
                assert_eq!(w.from_position, Some(pos(sec(w.from_time))));
                assert_eq!(w.to_position, Some(pos(sec(w.to_time))));
                (sec(w.from_time), sec(w.to_time))
            })
            .collect();
        prop_assert_eq!(&windows, &model[k], "windows of fork {}", fork.name);
    }

    // Gaps are real ranges and never overlap a window of their fork.
    for gap in &line.gaps {
        prop_assert!(gap.from_time < gap.to_time, "empty gap {:?}", gap);
        prop_assert!(!gap.reason.is_empty());
        for w in line.windows.iter().filter(|w| w.fork == gap.fork) {
            let overlaps = w.from_time < gap.to_time && gap.from_time < w.to_time;
            let instant_inside = gap.from_time < w.from_time && w.from_time < gap.to_time;
            prop_assert!(
                !overlaps && !instant_inside,
                "gap {:?} overlaps window {:?}",
                gap,
                w
            );
        }
    }

    // Targets: random ones plus every edge the timeline has.
    let mut targets: Vec<i64> = extra_targets.to_vec();
    for w in &line.windows {
        let (from, to) = (sec(w.from_time), sec(w.to_time));
        targets.extend([from - 1, from, (from + to) / 2, to, to + 1]);
    }
    for g in &line.gaps {
        targets.push((sec(g.from_time) + sec(g.to_time)) / 2);
    }
    for r in records {
        targets.push(sec(r.point_time()));
    }

    let has_logs = records.iter().any(|r| r.kind == BackupKind::Log);
    for &t in &targets {
        if !has_logs {
            // No log backups at all: the newest data backup at or before
            // the time, whatever lies between backups.
            let newest = model
                .iter()
                .flatten()
                .map(|w| w.0)
                .filter(|&from| from <= t)
                .max();
            match plan(records, &rules, &RestoreTarget::Time(at(t))) {
                Ok(p) => {
                    check_data_chain(&p)?;
                    prop_assert!(p.logs.is_empty());
                    let point = p.diffs.last().unwrap_or(&p.base);
                    prop_assert_eq!(Some(sec(point.point_time())), newest);
                }
                Err(err) => prop_assert_eq!(newest, None, "{}", err),
            }
            continue;
        }
        // By time, over all forks.
        let restorable: Vec<usize> = (0..world.forks.len())
            .filter(|&k| inside(&model[k], t))
            .collect();
        match plan(records, &rules, &RestoreTarget::Time(at(t))) {
            Ok(p) => {
                let k = world.fork_index(&p.fork);
                prop_assert!(
                    restorable.contains(&k),
                    "planned {} on fork {} which does not cover it",
                    t,
                    p.fork
                );
                for &other in &restorable {
                    prop_assert!(
                        latest_of(&line, &world.forks[other].name) <= latest_of(&line, &p.fork),
                        "fork {} is newer than the chosen fork {}",
                        world.forks[other].name,
                        p.fork
                    );
                }
                check_data_chain(&p)?;
                let point = p.diffs.last().unwrap_or(&p.base);
                prop_assert!(sec(point.point_time()) <= t);
                let logs: Vec<&BackupRecord> = p.logs.iter().collect();
                let replayed = world.replay(&p, &logs);
                prop_assert!(replayed.is_some(), "plan for {} has a hole: {:?}", t, p);
                let (covered, time) = replayed.unwrap();
                prop_assert!(time >= t);
                prop_assert_eq!(p.reaches_time, Some(at(time)));
                prop_assert_eq!(p.reaches_position, Some(covered));
                for skip in 0..logs.len() {
                    let mut fewer = logs.clone();
                    fewer.remove(skip);
                    let still = world.replay(&p, &fewer);
                    prop_assert!(
                        still.is_none_or(|(_, time)| time < t),
                        "log {} of the plan for {} is not needed",
                        logs[skip].id,
                        t
                    );
                }
            }
            Err(err) => {
                prop_assert!(
                    restorable.is_empty(),
                    "{} is restorable on fork(s) {:?} but: {}",
                    t,
                    restorable,
                    err
                );
                prop_assert_eq!(err.kind(), ErrorKind::NotFound);
                prop_assert!(err.to_string().contains("is not restorable"), "{}", err);
                let hint = err.hint_text().unwrap_or("");
                if records.is_empty() {
                    prop_assert!(err.to_string().contains("no backups"), "{}", err);
                    prop_assert!(hint.contains("full backup"), "{}", hint);
                } else {
                    prop_assert!(hint.contains("strata list --timeline"), "{}", hint);
                }
            }
        }

        // By position, on each fork.
        for (k, fork) in world.forks.iter().enumerate() {
            if t < 0 || !records.iter().any(|r| r.fork == fork.name) {
                continue;
            }
            let p_target = pos(t);
            let target = RestoreTarget::Position {
                fork: Some(fork.name.clone()),
                position: p_target,
            };
            let expected = inside(&model[k], t);
            match plan(records, &rules, &target) {
                Ok(p) => {
                    prop_assert!(expected, "position {} on fork {} was planned", t, fork.name);
                    prop_assert_eq!(&p.fork, &fork.name);
                    check_data_chain(&p)?;
                    let point = p.diffs.last().unwrap_or(&p.base);
                    prop_assert!(point.end.unwrap() <= p_target);
                    let logs: Vec<&BackupRecord> = p.logs.iter().collect();
                    let replayed = world.replay(&p, &logs);
                    prop_assert!(replayed.is_some(), "hole in {:?}", p);
                    let (covered, _) = replayed.unwrap();
                    prop_assert!(covered >= p_target);
                    prop_assert_eq!(p.reaches_position, Some(covered));
                    for skip in 0..logs.len() {
                        let mut fewer = logs.clone();
                        fewer.remove(skip);
                        let still = world.replay(&p, &fewer);
                        prop_assert!(still.is_none_or(|(c, _)| c < p_target));
                    }
                }
                Err(err) => {
                    prop_assert!(!expected, "position {} on fork {}: {}", t, fork.name, err);
                    prop_assert_eq!(err.kind(), ErrorKind::NotFound);
                }
            }
            // Inside the fork's span but not restorable: a gap says why.
            if let (Some(first), Some(last)) = (model[k].first(), model[k].last())
                && first.0 < t
                && t < last.1
                && !expected
            {
                prop_assert!(
                    line.gaps
                        .iter()
                        .any(|g| g.fork == fork.name && sec(g.from_time) < t && t < sec(g.to_time)),
                    "no gap of fork {} explains {}: {:?}",
                    fork.name,
                    t,
                    line.gaps
                );
            }
        }
    }

    // Latest: the furthest point of the newest fork, which the plan's
    // backups really reach when replayed.
    let newest = model.iter().flatten().map(|w| w.1).max();
    match plan(records, &rules, &RestoreTarget::Latest) {
        Ok(p) => {
            let k = world.fork_index(&p.fork);
            prop_assert_eq!(
                model[k].iter().map(|w| w.1).max(),
                newest,
                "fork {} is not the one reaching furthest",
                p.fork
            );
            check_data_chain(&p)?;
            let logs: Vec<&BackupRecord> = p.logs.iter().collect();
            let replayed = world.replay(&p, &logs);
            prop_assert!(replayed.is_some(), "the latest plan has a hole: {:?}", p);
            let (covered, time) = replayed.unwrap();
            prop_assert_eq!(Some(time), newest, "the latest plan stops short: {:?}", p);
            prop_assert_eq!(covered, pos(time));
            prop_assert_eq!(p.reaches_time, Some(at(time)));
            prop_assert_eq!(p.reaches_position, Some(covered));
        }
        Err(err) => {
            prop_assert_eq!(newest, None, "{}", err);
            prop_assert!(line.windows.is_empty(), "{}", err);
            prop_assert_eq!(err.kind(), ErrorKind::NotFound);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn plans_agree_with_the_model(
        specs in prop::collection::vec(fork_spec(), 1..=3),
        random_targets in prop::collection::vec(-100i64..60_000, 12),
    ) {
        let world = build(&specs);
        check_world(&world, &random_targets)?;
    }

    /// Without log backups, a time restores the newest data backup at or
    /// before it, and every restorable data backup is an instant window.
    #[test]
    fn without_logs_the_newest_backup_at_or_before_wins(
        data in prop::collection::vec((0u32..5_000, 0u8..6, prop::bool::weighted(0.8)), 0..12),
        targets in prop::collection::vec(-100i64..6_000, 16),
    ) {
        let spec = ForkSpec { parent: 0, switch: 0, segments: Vec::new(), data, spanning: Vec::new() };
        let mut world = build(&[spec]);
        // A stream engine records no positions.
        for r in &mut world.records {
            r.start = None;
            r.end = None;
        }
        let line = timeline(&world.records, &DefaultChainRules);
        prop_assert!(line.gaps.is_empty());
        let mut instants: Vec<i64> = world.forks[0]
            .data
            .iter()
            .filter(|d| d.resolvable)
            .map(|d| d.time)
            .collect();
        instants.sort();
        instants.dedup();
        let windows: Vec<i64> = line
            .windows
            .iter()
            .map(|w| {
                assert_eq!(w.from_time, w.to_time);
                sec(w.from_time)
            })
            .collect();
        prop_assert_eq!(&windows, &instants);
        for t in targets.into_iter().chain(instants.iter().copied()) {
            let expected = instants.iter().copied().filter(|&i| i <= t).max();
            match plan(&world.records, &DefaultChainRules, &RestoreTarget::Time(at(t))) {
                Ok(p) => {
                    prop_assert!(p.logs.is_empty());
                    check_data_chain(&p)?;
                    let point = p.diffs.last().unwrap_or(&p.base);
                    prop_assert_eq!(Some(sec(point.point_time())), expected);
                    prop_assert_eq!(p.reaches_time, Some(point.point_time()));
                }
                Err(err) => {
                    prop_assert_eq!(expected, None, "{}", err);
                    prop_assert_eq!(err.kind(), ErrorKind::NotFound);
                }
            }
        }
    }
}

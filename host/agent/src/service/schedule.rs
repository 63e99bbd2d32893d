//! What is due: the scheduler's decision for one database, a pure function
//! of the policy, the time and when each kind last ran.
//!
//! - A schedule slot is due when it lies after the kind's last run. The last
//!   run of a kind is the later of the newest committed backup of that kind
//!   (or of a kind that covers it: a full covers a differential's slot, a
//!   full or differential an incremental's) and the slot of the last job the
//!   schedule started for it, whatever its result (a failed slot is retried
//!   inside its job, never re-run by the next pass).
//! - Only the latest slot counts: after a downtime that missed five nightly
//!   differentials, one runs, not five.
//! - A database with no full backup gets one at once (trigger `initial`),
//!   whatever the schedule says.
//! - When several kinds are due, the largest wins: a full due at the same
//!   time as a differential makes the differential unnecessary.

use chrono::{DateTime, Utc};
use strata_core::catalog::manifest::BackupKind;

use super::policy::PolicyConfig;

/// Why a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Its schedule slot came.
    Schedule,
    /// The database had no full backup yet.
    Initial,
    /// A differential or incremental could not build on the chain (the
    /// engine's message).
    ChainBroken(String),
}

impl Trigger {
    /// The name job history records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Initial => "initial",
            Trigger::ChainBroken(_) => "chain-broken",
        }
    }
}

/// A backup the scheduler wants now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The kind.
    pub kind: BackupKind,
    /// Why.
    pub trigger: Trigger,
    /// The schedule slot it runs for (UTC), when a schedule is why.
    pub slot: Option<DateTime<Utc>>,
}

/// When each kind of backup of one database last ran (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRuns {
    /// The newest full backup's start, and the last full slot a job ran for.
    pub full: Option<DateTime<Utc>>,
    /// The same for differentials.
    pub diff: Option<DateTime<Utc>>,
    /// The same for incrementals.
    pub incr: Option<DateTime<Utc>>,
    /// Whether a committed full exists.
    pub has_full: bool,
}

impl LastRuns {
    /// The last run that satisfies a slot of `kind`: its own, or a larger
    /// kind's.
    fn covering(&self, kind: BackupKind) -> Option<DateTime<Utc>> {
        let of = match kind {
            BackupKind::Full => vec![self.full],
            BackupKind::Diff => vec![self.full, self.diff],
            _ => vec![self.full, self.diff, self.incr],
        };
        of.into_iter().flatten().max()
    }
}

/// The backup due for one database at `now` under `policy`, if any.
pub fn due(policy: &PolicyConfig, last: &LastRuns, now: DateTime<Utc>) -> Option<Due> {
    let zone = policy.time_zone.0;
    if !last.has_full && policy.full.is_some() {
        return Some(Due {
            kind: BackupKind::Full,
            trigger: Trigger::Initial,
            slot: policy.full.as_ref().and_then(|s| s.previous(now, zone)),
        });
    }
    for kind in [BackupKind::Full, BackupKind::Diff, BackupKind::Incr] {
        let Some(slot) = policy.schedule(kind).and_then(|s| s.previous(now, zone)) else {
            continue;
        };
        if last.covering(kind).is_none_or(|ran| ran < slot) {
            return Some(Due {
                kind,
                trigger: Trigger::Schedule,
                slot: Some(slot),
            });
        }
    }
    None
}

/// The next slot of every schedule of `policy` after `now`, by kind.
pub fn next_runs(policy: &PolicyConfig, now: DateTime<Utc>) -> Vec<(BackupKind, DateTime<Utc>)> {
    let mut out: Vec<(BackupKind, DateTime<Utc>)> =
        [BackupKind::Full, BackupKind::Diff, BackupKind::Incr]
            .into_iter()
            .filter_map(|kind| {
                let next = policy.schedule(kind)?.next(now, policy.time_zone.0)?;
                Some((kind, next))
            })
            .collect();
    out.sort_by_key(|(_, at)| *at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(extra: &str) -> PolicyConfig {
        let text = format!(
            "[policy.p]\ntime_zone = \"Europe/Berlin\"\nfull = \"0 2 * * SUN\"\ndiff = \"0 2 * * MON-SAT\"\n{extra}"
        );
        Config::parse(&text, "t")
            .unwrap()
            .policy
            .remove("p")
            .unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_week_runs_one_full_and_six_diffs_at_two_in_the_policy_zone() {
        let policy = policy("");
        let mut last = LastRuns::default();
        let mut ran = Vec::new();
        // Every 10 minutes through a week starting Saturday 2026-11-28 (UTC).
        let mut now = t("2026-11-28T00:00:00Z");
        while now < t("2026-12-05T00:00:00Z") {
            if let Some(due) = due(&policy, &last, now) {
                let at = due.slot.unwrap_or(now);
                match due.kind {
                    BackupKind::Full => {
                        last.full = Some(now);
                        last.has_full = true;
                    }
                    BackupKind::Diff => last.diff = Some(now),
                    _ => last.incr = Some(now),
                }
                ran.push((due.kind, due.trigger, at));
            }
            now += chrono::Duration::minutes(10);
        }
        // First: the initial full at once; then Sunday 02:00 Berlin (01:00
        // UTC) a full and 02:00 Berlin each other day a differential.
        assert_eq!(ran[0].0, BackupKind::Full);
        assert_eq!(ran[0].1, Trigger::Initial);
        let scheduled: Vec<(BackupKind, String)> = ran[1..]
            .iter()
            .map(|(k, _, at)| (*k, at.to_rfc3339()))
            .collect();
        // (Saturday's differential builds on the initial full.)
        let mut expected = vec![
            (BackupKind::Diff, "2026-11-28T01:00:00+00:00".to_owned()),
            (BackupKind::Full, "2026-11-29T01:00:00+00:00".to_owned()),
            (BackupKind::Diff, "2026-11-30T01:00:00+00:00".to_owned()),
        ];
        for day in 1..=4 {
            expected.push((BackupKind::Diff, format!("2026-12-0{day}T01:00:00+00:00")));
        }
        assert_eq!(scheduled, expected);
    }

    #[test]
    fn a_downtime_runs_the_missed_work_once() {
        let policy = policy("");
        // The last full on Sunday Nov 22, the last diff on Tuesday Nov 24;
        // the service was down until Friday Nov 27 noon.
        let last = LastRuns {
            full: Some(t("2026-11-22T01:00:05Z")),
            diff: Some(t("2026-11-24T01:00:05Z")),
            incr: None,
            has_full: true,
        };
        let due = due(&policy, &last, t("2026-11-27T12:00:00Z")).unwrap();
        assert_eq!(due.kind, BackupKind::Diff);
        assert_eq!(due.slot, Some(t("2026-11-27T01:00:00Z")));
        // Once it ran, nothing more is due until the next slot.
        let after = LastRuns {
            diff: Some(t("2026-11-27T12:00:01Z")),
            ..last
        };
        assert_eq!(super::due(&policy, &after, t("2026-11-27T23:00:00Z")), None);
    }

    #[test]
    fn a_full_covers_a_diff_slot_and_a_missed_sunday_makes_a_full() {
        let policy = policy("");
        let last = LastRuns {
            full: Some(t("2026-11-22T01:00:05Z")),
            diff: Some(t("2026-11-28T01:00:05Z")),
            incr: None,
            has_full: true,
        };
        // Down over Sunday Nov 29 and Monday: both a full and a diff slot
        // missed; the full runs, and covers Monday's diff.
        let first = due(&policy, &last, t("2026-11-30T09:00:00Z")).unwrap();
        assert_eq!(first.kind, BackupKind::Full);
        let last = LastRuns {
            full: Some(t("2026-11-30T09:00:01Z")),
            ..last
        };
        assert_eq!(due(&policy, &last, t("2026-11-30T10:00:00Z")), None);
    }

    #[test]
    fn next_runs_are_in_order_and_in_utc() {
        let policy = policy("");
        let next = next_runs(&policy, t("2026-11-28T12:00:00Z"));
        assert_eq!(
            next,
            vec![
                (BackupKind::Full, t("2026-11-29T01:00:00Z")),
                (BackupKind::Diff, t("2026-11-30T01:00:00Z")),
            ]
        );
    }
}

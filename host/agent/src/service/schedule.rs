//! What is due: the scheduler's decision for one database, a pure function
//! of the policy, the time and when each kind last ran.
//!
//! - A schedule slot is due when no backup has satisfied it: none of its
//!   kind was taken for it or later (the kind's latest slot: the newest
//!   backup's schedule slot, or its end for a backup taken by hand), and no
//!   larger kind ran since it came (a full covers a differential's slot, a
//!   full or differential an incremental's).
//! - Only the latest slot counts: after a downtime that missed five nightly
//!   differentials, one runs, not five.
//! - A slot whose job failed (or whose process was killed) is taken again
//!   by a later pass, once `retry_pause` has passed since the failure: a
//!   failure never skips a week's full, and a database that keeps failing
//!   is not hammered every minute.
//! - A database with no full backup gets one at once (trigger `initial`),
//!   whatever the schedule says.
//! - When several kinds are due, the largest wins: a full due at the same
//!   time as a differential makes the differential unnecessary.

use std::time::Duration;

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
    /// An operator asked for it (`strata backup ... --now`).
    Manual,
}

impl Trigger {
    /// The name job history records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Initial => "initial",
            Trigger::ChainBroken(_) => "chain-broken",
            Trigger::Manual => "manual",
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

/// What the scheduler knows of one kind of backup of one database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindRuns {
    /// The latest schedule slot a backup of this kind satisfied.
    pub slot: Option<DateTime<Utc>>,
    /// When the newest backup of this kind ran.
    pub ran: Option<DateTime<Utc>>,
    /// When the newest attempt failed, if it is newer than every success.
    pub failed_at: Option<DateTime<Utc>>,
}

/// When each kind of backup of one database last ran (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRuns {
    /// Fulls.
    pub full: KindRuns,
    /// Differentials.
    pub diff: KindRuns,
    /// Incrementals.
    pub incr: KindRuns,
    /// Log backups Strata takes itself (SQL Server's `BACKUP LOG`).
    pub log: KindRuns,
    /// Whether a committed full exists.
    pub has_full: bool,
    /// Whether the engine takes log backups that Strata drives (not
    /// PostgreSQL, which archives its WAL itself, nor HANA, which runs its
    /// own log backups through Backint).
    pub takes_logs: bool,
}

impl LastRuns {
    fn of(&self, kind: BackupKind) -> &KindRuns {
        match kind {
            BackupKind::Full => &self.full,
            BackupKind::Diff => &self.diff,
            BackupKind::Incr => &self.incr,
            BackupKind::Log => &self.log,
        }
    }

    /// When the newest backup of any kind Strata runs ran: where the
    /// restorable window ends unless a log backup extends it.
    fn newest_run(&self) -> Option<DateTime<Utc>> {
        [&self.full, &self.diff, &self.incr, &self.log]
            .iter()
            .filter_map(|k| k.ran)
            .max()
    }

    /// Whether `slot` of `kind` is satisfied: by a backup of its kind taken
    /// for it or later, or by a larger kind run since.
    fn satisfied(&self, kind: BackupKind, slot: DateTime<Utc>) -> bool {
        let larger: &[BackupKind] = match kind {
            BackupKind::Full => &[],
            BackupKind::Diff => &[BackupKind::Full],
            _ => &[BackupKind::Full, BackupKind::Diff],
        };
        self.of(kind).slot.is_some_and(|s| s >= slot)
            || larger
                .iter()
                .any(|k| self.of(*k).ran.is_some_and(|ran| ran >= slot))
    }

    /// Whether a failure of `kind` is too recent to try again at `now`.
    fn pausing(&self, kind: BackupKind, now: DateTime<Utc>, pause: Duration) -> bool {
        let pause = chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
        // A pause that ends past the last date there is lasts forever
        // (unchecked, the sum panicked: found by fuzzing the configuration).
        self.of(kind).failed_at.is_some_and(|failed| {
            failed
                .checked_add_signed(pause)
                .is_none_or(|until| now < until)
        })
    }
}

/// The backup due for one database at `now` under `policy`, if any; a kind
/// whose last attempt failed less than `retry_pause` ago waits.
pub fn due(
    policy: &PolicyConfig,
    last: &LastRuns,
    now: DateTime<Utc>,
    retry_pause: Duration,
) -> Option<Due> {
    let zone = policy.time_zone.0;
    if !last.has_full && policy.full.is_some() {
        if last.pausing(BackupKind::Full, now, retry_pause) {
            return None;
        }
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
        if last.satisfied(kind, slot) {
            continue;
        }
        // The largest kind due waits out its pause; a smaller kind does
        // not run instead (it would build on what the larger one replaces).
        if last.pausing(kind, now, retry_pause) {
            return None;
        }
        return Some(Due {
            kind,
            trigger: Trigger::Schedule,
            slot: Some(slot),
        });
    }
    log_due(policy, last, now, retry_pause)
}

/// A log backup, when the policy asks for them every `log_interval`, the
/// engine takes them, a full exists, and the newest backup of any kind is
/// at least that old: the log window then never lags more than the interval
/// (plus the time a backup takes) behind the database, which is what a
/// 15-minute RPO needs.
fn log_due(
    policy: &PolicyConfig,
    last: &LastRuns,
    now: DateTime<Utc>,
    retry_pause: Duration,
) -> Option<Due> {
    let interval = policy.log_interval.as_ref()?.get_ref().0;
    if !last.takes_logs || !last.has_full || last.pausing(BackupKind::Log, now, retry_pause) {
        return None;
    }
    let interval = chrono::Duration::from_std(interval).ok()?;
    // An interval that ends past the last date there is never comes round
    // (unchecked, the sum panicked: found by fuzzing the configuration).
    let due_at = match last.newest_run() {
        Some(ran) => ran.checked_add_signed(interval)?,
        None => now,
    };
    (due_at <= now).then_some(Due {
        kind: BackupKind::Log,
        trigger: Trigger::Schedule,
        slot: Some(due_at),
    })
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

    const PAUSE: Duration = Duration::from_secs(8 * 60);

    /// Records a successful run of `due` at `now`.
    fn ran(last: &mut LastRuns, due: &Due, now: DateTime<Utc>) {
        let runs = match due.kind {
            BackupKind::Full => {
                last.has_full = true;
                &mut last.full
            }
            BackupKind::Diff => &mut last.diff,
            BackupKind::Incr => &mut last.incr,
            BackupKind::Log => &mut last.log,
        };
        runs.slot = Some(
            due.slot
                .filter(|_| due.trigger == Trigger::Schedule)
                .unwrap_or(now),
        );
        runs.ran = Some(now);
        runs.failed_at = None;
    }

    #[test]
    fn a_week_runs_one_full_and_six_diffs_at_two_in_the_policy_zone() {
        let policy = policy("");
        let mut last = LastRuns::default();
        let mut runs = Vec::new();
        // Every 10 minutes through a week starting Saturday 2026-11-28 (UTC).
        let mut now = t("2026-11-28T00:00:00Z");
        while now < t("2026-12-05T00:00:00Z") {
            if let Some(due) = due(&policy, &last, now, PAUSE) {
                ran(&mut last, &due, now);
                runs.push((due.kind, due.trigger.clone(), due.slot.unwrap_or(now)));
            }
            now += chrono::Duration::minutes(10);
        }
        // First: the initial full at once; then Sunday 02:00 Berlin (01:00
        // UTC) a full and 02:00 Berlin each other day a differential.
        assert_eq!(runs[0].0, BackupKind::Full);
        assert_eq!(runs[0].1, Trigger::Initial);
        assert!(
            runs[1..]
                .iter()
                .all(|(_, trigger, _)| *trigger == Trigger::Schedule),
            "{runs:?}"
        );
        let scheduled: Vec<(BackupKind, String)> = runs[1..]
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

    fn runs(slot: &str) -> KindRuns {
        KindRuns {
            slot: Some(t(slot)),
            ran: Some(t(slot) + chrono::Duration::seconds(5)),
            failed_at: None,
        }
    }

    /// Found by fuzzing the configuration (fuzz/corpus/config/huge-*):
    /// intervals the configuration accepts but no date can be that far
    /// panicked the service: `retry_delay` multiplying into the retry
    /// pause, the pause added to a failure's time, and `log_interval`
    /// added to the last run. They now wait forever instead.
    #[test]
    fn intervals_past_the_last_date_wait_forever() {
        let config = Config::parse(
            "[service]\nretry_delay = \"100000000000years\"\n\
             [policy.p]\nfull = \"0 2 * * SUN\"\nlog_interval = \"1000000years\"\n",
            "t",
        )
        .unwrap();
        let pause = crate::service::run::retry_pause(&config.service);
        assert_eq!(pause, Duration::MAX);
        let policy = &config.policy["p"];
        let now = t("2026-12-01T02:30:00Z");
        // The full failed a minute ago: it waits out the pause, forever.
        let failed = LastRuns {
            full: KindRuns {
                failed_at: Some(now - chrono::Duration::minutes(1)),
                ..KindRuns::default()
            },
            ..LastRuns::default()
        };
        assert_eq!(due(policy, &failed, now, pause), None);
        // Every slot is taken and log backups are due every million
        // years: none is due now.
        let ran = KindRuns {
            slot: Some(now),
            ran: Some(now - chrono::Duration::days(365)),
            failed_at: None,
        };
        let idle = LastRuns {
            full: ran,
            log: ran,
            has_full: true,
            takes_logs: true,
            ..LastRuns::default()
        };
        assert_eq!(due(policy, &idle, now, pause), None);
    }

    #[test]
    fn a_downtime_runs_the_missed_work_once() {
        let policy = policy("");
        // The last full on Sunday Nov 22, the last diff on Tuesday Nov 24;
        // the service was down until Friday Nov 27 noon.
        let mut last = LastRuns {
            full: runs("2026-11-22T01:00:00Z"),
            diff: runs("2026-11-24T01:00:00Z"),
            has_full: true,
            ..LastRuns::default()
        };
        let now = t("2026-11-27T12:00:00Z");
        let due = due(&policy, &last, now, PAUSE).unwrap();
        assert_eq!(due.kind, BackupKind::Diff);
        assert_eq!(due.slot, Some(t("2026-11-27T01:00:00Z")));
        // Once it ran, nothing more is due until the next slot.
        ran(&mut last, &due, now);
        assert_eq!(
            super::due(&policy, &last, t("2026-11-27T23:00:00Z"), PAUSE),
            None
        );
    }

    #[test]
    fn a_catch_up_full_covers_the_diff_slots_before_it_ran() {
        let policy = policy("");
        let mut last = LastRuns {
            full: runs("2026-11-22T01:00:00Z"),
            diff: runs("2026-11-28T01:00:00Z"),
            has_full: true,
            ..LastRuns::default()
        };
        // Down over Sunday Nov 29 and Monday: both a full and a diff slot
        // missed; the full runs (for Sunday's slot) and covers Monday's diff.
        let now = t("2026-11-30T09:00:00Z");
        let first = due(&policy, &last, now, PAUSE).unwrap();
        assert_eq!(first.kind, BackupKind::Full);
        assert_eq!(first.slot, Some(t("2026-11-29T01:00:00Z")));
        ran(&mut last, &first, now);
        assert_eq!(due(&policy, &last, t("2026-11-30T10:00:00Z"), PAUSE), None);
    }

    #[test]
    fn a_failed_slot_is_taken_again_after_the_pause_and_never_skipped() {
        let policy = policy("");
        let mut last = LastRuns {
            full: runs("2026-11-22T01:00:00Z"),
            diff: runs("2026-11-28T01:00:00Z"),
            has_full: true,
            ..LastRuns::default()
        };
        // Sunday's full failed (or its process was killed) at 01:02.
        last.full.failed_at = Some(t("2026-11-29T01:02:00Z"));
        assert_eq!(
            due(&policy, &last, t("2026-11-29T01:05:00Z"), PAUSE),
            None,
            "paused"
        );
        let again = due(&policy, &last, t("2026-11-29T01:11:00Z"), PAUSE).unwrap();
        assert_eq!(again.kind, BackupKind::Full);
        assert_eq!(again.slot, Some(t("2026-11-29T01:00:00Z")));
        // Still failing on Monday: the full is still owed, and no diff
        // builds on last week's full instead.
        last.full.failed_at = Some(t("2026-11-30T01:30:00Z"));
        assert_eq!(due(&policy, &last, t("2026-11-30T01:35:00Z"), PAUSE), None);
        let monday = due(&policy, &last, t("2026-11-30T02:00:00Z"), PAUSE).unwrap();
        assert_eq!(monday.kind, BackupKind::Full);
        assert_eq!(
            monday.slot,
            Some(t("2026-11-29T01:00:00Z")),
            "Sunday's slot"
        );
        // A first full that keeps failing is retried after each pause too.
        let fresh = LastRuns {
            full: KindRuns {
                failed_at: Some(t("2026-11-30T01:30:00Z")),
                ..KindRuns::default()
            },
            ..LastRuns::default()
        };
        assert_eq!(due(&policy, &fresh, t("2026-11-30T01:31:00Z"), PAUSE), None);
        assert_eq!(
            due(&policy, &fresh, t("2026-11-30T01:40:00Z"), PAUSE).map(|d| d.trigger),
            Some(Trigger::Initial)
        );
    }

    /// A day of a policy with nightly fulls and `log_interval = "15m"`,
    /// checked every minute: a log backup every 15 minutes after the
    /// initial full, none while the full of the night is due (the full runs
    /// instead), and no log backup at all for an engine that takes none.
    #[test]
    fn log_backups_run_every_interval_and_never_before_a_full() {
        let policy = policy("log_interval = \"15m\"");
        let mut last = LastRuns {
            takes_logs: true,
            ..LastRuns::default()
        };
        let mut runs = Vec::new();
        let mut now = t("2026-11-28T00:00:00Z");
        while now < t("2026-11-28T02:00:00Z") {
            if let Some(due) = due(&policy, &last, now, PAUSE) {
                ran(&mut last, &due, now);
                runs.push((due.kind, now.format("%H:%M").to_string()));
            }
            now += chrono::Duration::minutes(1);
        }
        let expected: Vec<(BackupKind, String)> = [
            (BackupKind::Full, "00:00"),
            (BackupKind::Log, "00:15"),
            (BackupKind::Log, "00:30"),
            (BackupKind::Log, "00:45"),
            // 02:00 Berlin is 01:00 UTC: Saturday's differential slot.
            (BackupKind::Diff, "01:00"),
            (BackupKind::Log, "01:15"),
            (BackupKind::Log, "01:30"),
            (BackupKind::Log, "01:45"),
        ]
        .into_iter()
        .map(|(k, at)| (k, at.to_owned()))
        .collect();
        assert_eq!(runs, expected);
        // A log backup that failed waits out the pause like any other kind.
        last.log.failed_at = Some(t("2026-11-28T02:01:00Z"));
        assert_eq!(due(&policy, &last, t("2026-11-28T02:05:00Z"), PAUSE), None);
        assert_eq!(
            due(&policy, &last, t("2026-11-28T02:10:00Z"), PAUSE).map(|d| d.kind),
            Some(BackupKind::Log)
        );
        // An engine whose log Strata does not drive never gets one.
        last.takes_logs = false;
        assert_eq!(due(&policy, &last, t("2026-11-28T02:10:00Z"), PAUSE), None);
    }

    #[test]
    fn next_runs_are_in_order_and_in_utc() {
        let policy = policy("");
        // On a Saturday the full comes first, on a Thursday the differential:
        // the order is by time, not by kind.
        let next = next_runs(&policy, t("2026-11-28T12:00:00Z"));
        assert_eq!(
            next,
            vec![
                (BackupKind::Full, t("2026-11-29T01:00:00Z")),
                (BackupKind::Diff, t("2026-11-30T01:00:00Z")),
            ]
        );
        let next = next_runs(&policy, t("2026-12-03T12:00:00Z"));
        assert_eq!(
            next,
            vec![
                (BackupKind::Diff, t("2026-12-04T01:00:00Z")),
                (BackupKind::Full, t("2026-12-06T01:00:00Z")),
            ]
        );
    }
}

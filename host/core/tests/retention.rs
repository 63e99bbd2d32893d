//! Retention on the schedules an operator runs: a weekly full, daily
//! differentials and log backups, evaluated on simulated calendars.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use strata_core::catalog::manifest::{BackupId, BackupKind, Compression, Manifest};
use strata_core::catalog::planner::{self, BackupRecord, DefaultChainRules};
use strata_core::catalog::retention::{KeepReason, Retention, RetentionPlan, plan};

fn manifest(
    n: usize,
    kind: BackupKind,
    ended_at: DateTime<Utc>,
    base: Option<&BackupId>,
) -> Manifest {
    Manifest {
        format: 1,
        id: format!("{}-{n:05}", ended_at.format("%Y%m%dT%H%M%SZ"))
            .parse()
            .unwrap(),
        engine: "test".into(),
        instance: "main".into(),
        database: Some("db".into()),
        kind,
        started_at: ended_at - Duration::minutes(5),
        ended_at,
        consistent_at: None,
        fork: "1".into(),
        start: None,
        end: None,
        base: base.cloned(),
        compression: Compression {
            algorithm: "zstd".into(),
            level: 3,
        },
        encryption: None,
        streams: Vec::new(),
        labels: Default::default(),
        engine_meta: serde_json::Value::Null,
    }
}

/// `days` days ending the day before `until`: a full on Sundays at 02:00, a
/// differential on the other days, log backups every `log_minutes`.
fn schedule(until: DateTime<Utc>, days: i64, log_minutes: i64) -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut full: Option<BackupId> = None;
    let start = (until - Duration::days(days)).date_naive();
    for d in 0..days {
        let day = start + Duration::days(d);
        let at = Utc.from_utc_datetime(&day.and_hms_opt(2, 0, 0).unwrap());
        if day.weekday() == chrono::Weekday::Sun || full.is_none() {
            let m = manifest(out.len(), BackupKind::Full, at, None);
            full = Some(m.id.clone());
            out.push(m);
        } else {
            let m = manifest(out.len(), BackupKind::Diff, at, full.as_ref());
            out.push(m);
        }
        if log_minutes > 0 {
            let mut t = at;
            while t < at + Duration::days(1) && t < until {
                t += Duration::minutes(log_minutes);
                out.push(manifest(out.len(), BackupKind::Log, t, None));
            }
        }
    }
    out
}

fn kept(plan: &RetentionPlan, kind: BackupKind) -> Vec<&BackupId> {
    plan.keep
        .iter()
        .filter(|k| k.kind == kind)
        .map(|k| &k.id)
        .collect()
}

/// Every kept diff's base is kept; expiry order deletes a diff before its base.
fn assert_chains_whole(manifests: &[Manifest], plan: &RetentionPlan) {
    for k in &plan.keep {
        let m = manifests.iter().find(|m| m.id == k.id).unwrap();
        if let Some(base) = &m.base {
            assert!(
                plan.keeps(base),
                "{} kept but its base {base} expires",
                m.id
            );
        }
    }
    let order: Vec<&BackupId> = plan.expire.iter().map(|e| &e.id).collect();
    for (i, e) in plan.expire.iter().enumerate() {
        let m = manifests.iter().find(|m| m.id == e.id).unwrap();
        if let Some(base) = &m.base
            && let Some(j) = order.iter().position(|id| *id == base)
        {
            assert!(j > i, "{} is deleted before its base {base}", m.id);
        }
    }
    // Every kept data backup is restorable from what is kept.
    let kept: Vec<BackupRecord> = manifests
        .iter()
        .filter(|m| plan.keeps(&m.id))
        .map(BackupRecord::from)
        .collect();
    let complete = planner::complete_chains(&kept, &DefaultChainRules);
    for k in &plan.keep {
        if k.kind != BackupKind::Log {
            assert!(
                complete.contains(&k.id),
                "{} is kept but not restorable",
                k.id
            );
        }
    }
}

/// Thirteen months of a weekly full and daily differentials under 7 daily,
/// 4 weekly, 12 monthly and 2 yearly points: exactly the days, weeks,
/// months and years the policy names are kept, each the newest full (or,
/// daily, backup) of its period, and everything older goes, the first full
/// included.
#[test]
fn a_simulated_year_keeps_exactly_the_points_the_policy_names() {
    let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
    let manifests = schedule(now, 400, 0);
    let retention = Retention {
        daily: 7,
        weekly: 4,
        monthly: 12,
        yearly: 2,
        log_days: 0,
    };
    let plan = plan(&manifests, &DefaultChainRules, &retention, now, Tz::UTC);
    assert_chains_whole(&manifests, &plan);

    // Daily: the 7 newest days that have a backup (the schedule ends the day
    // before `now`).
    let days: BTreeSet<_> = plan
        .keep
        .iter()
        .flat_map(|k| &k.reasons)
        .filter_map(|r| match r {
            KeepReason::Daily { day } => Some(day.to_string()),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<String> = (1..=7)
        .map(|d| (now.date_naive() - Duration::days(d)).to_string())
        .collect();
    assert_eq!(days, expected);

    // Weekly 4, monthly 12, yearly 2: the Sunday fulls of the newest
    // periods that hold a full. The schedule runs from Monday 2025-10-27
    // (its first full) to Monday 2026-11-30.
    let kept_by = |f: &dyn Fn(&KeepReason) -> bool| -> Vec<String> {
        plan.keep
            .iter()
            .filter(|k| k.reasons.iter().any(f))
            .map(|k| k.ended_at.date_naive().to_string())
            .collect()
    };
    assert_eq!(
        kept_by(&|r| matches!(r, KeepReason::Weekly { .. })),
        ["2026-11-08", "2026-11-15", "2026-11-22", "2026-11-29"]
    );
    assert_eq!(
        kept_by(&|r| matches!(r, KeepReason::Monthly { .. })),
        [
            "2025-12-28",
            "2026-01-25",
            "2026-02-22",
            "2026-03-29",
            "2026-04-26",
            "2026-05-31",
            "2026-06-28",
            "2026-07-26",
            "2026-08-30",
            "2026-09-27",
            "2026-10-25",
            "2026-11-29",
        ]
    );
    assert_eq!(
        kept_by(&|r| matches!(r, KeepReason::Yearly { .. })),
        ["2025-12-28", "2026-11-29"]
    );
    // Each period point is a full, the newest full of the period it names.
    let in_period = |r: &KeepReason, m: &Manifest| -> Option<bool> {
        let t = m.ended_at;
        match r {
            KeepReason::Weekly { year, week } => {
                Some((t.iso_week().year(), t.iso_week().week()) == (*year, *week))
            }
            KeepReason::Monthly { year, month } => Some((t.year(), t.month()) == (*year, *month)),
            KeepReason::Yearly { year } => Some(t.year() == *year),
            _ => None,
        }
    };
    for k in &plan.keep {
        let own = manifests.iter().find(|m| m.id == k.id).unwrap();
        for r in &k.reasons {
            let Some(own_in_period) = in_period(r, own) else {
                continue;
            };
            assert_eq!(k.kind, BackupKind::Full, "{} kept as {r}", k.id);
            assert!(own_in_period, "{} ({}) is kept as {r}", k.id, k.ended_at);
            let later = manifests.iter().any(|m| {
                m.kind == BackupKind::Full
                    && m.ended_at > k.ended_at
                    && in_period(r, m) == Some(true)
            });
            assert!(!later, "{} is not the newest full of its {r}", k.id);
        }
    }
    // Nothing else: exactly the union of the rules' points (the daily
    // differentials of Nov 24 to 28 build on the Nov 22 full, Nov 30's on the
    // Nov 29 full, both kept already).
    let all_kept: Vec<String> = plan
        .keep
        .iter()
        .map(|k| k.ended_at.date_naive().to_string())
        .collect();
    assert_eq!(
        all_kept,
        [
            "2025-12-28",
            "2026-01-25",
            "2026-02-22",
            "2026-03-29",
            "2026-04-26",
            "2026-05-31",
            "2026-06-28",
            "2026-07-26",
            "2026-08-30",
            "2026-09-27",
            "2026-10-25",
            "2026-11-08",
            "2026-11-15",
            "2026-11-22",
            "2026-11-24",
            "2026-11-25",
            "2026-11-26",
            "2026-11-27",
            "2026-11-28",
            "2026-11-29",
            "2026-11-30",
        ]
    );
    assert_eq!(plan.keep.len() + plan.expire.len(), manifests.len());
    // The oldest backup of all, the first full (Monday 2025-10-27), is gone:
    // the yearly full of 2025 is its last Sunday.
    let oldest = &manifests[0];
    assert_eq!(oldest.kind, BackupKind::Full);
    assert_eq!(oldest.ended_at.date_naive().to_string(), "2025-10-27");
    assert!(!plan.keeps(&oldest.id), "the oldest full is kept");
    assert!(plan.expire.iter().any(|e| e.id == oldest.id));
}

#[test]
fn the_point_in_time_window_keeps_its_anchor_and_every_log_after_it() {
    let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
    let manifests = schedule(now, 30, 15);
    let retention = Retention {
        log_days: 3,
        ..Retention::default()
    };
    let plan = plan(&manifests, &DefaultChainRules, &retention, now, Tz::UTC);
    assert_chains_whole(&manifests, &plan);
    let window_start = now - Duration::days(3);
    assert_eq!(plan.window_start, Some(window_start));
    // The anchor: the newest data backup that ended at or before the window
    // start (2026-11-28 02:00, a differential), and so its full.
    let anchor = plan.anchor.clone().unwrap();
    let anchor_m = manifests.iter().find(|m| m.id == anchor).unwrap();
    assert_eq!(anchor_m.ended_at.to_rfc3339(), "2026-11-28T02:00:00+00:00");
    assert!(plan.keeps(anchor_m.base.as_ref().unwrap()));
    // Every log that ends after the anchor started is kept, none before.
    for m in manifests.iter().filter(|m| m.kind == BackupKind::Log) {
        assert_eq!(
            plan.keeps(&m.id),
            m.ended_at > anchor_m.started_at,
            "log {} ended {}",
            m.id,
            m.ended_at
        );
    }
    // Data backups: the anchor and its full, the newest (Nov 30) and its
    // full (Sunday Nov 29); nothing else.
    let mut data: Vec<String> = kept(&plan, BackupKind::Diff)
        .into_iter()
        .chain(kept(&plan, BackupKind::Full))
        .map(|id| id.as_str()[..8].to_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["20261122", "20261128", "20261129", "20261130"]);
}

#[test]
fn a_diff_kept_by_the_daily_rule_keeps_a_full_older_than_every_rule() {
    let now: DateTime<Utc> = "2026-12-05T12:00:00Z".parse().unwrap();
    // A full on Sunday Nov 29, diffs every day to Dec 4.
    let manifests = schedule(now, 6, 0);
    let retention = Retention {
        daily: 2,
        ..Retention::default()
    };
    let plan = plan(&manifests, &DefaultChainRules, &retention, now, Tz::UTC);
    assert_chains_whole(&manifests, &plan);
    let full = &manifests[0];
    assert_eq!(full.kind, BackupKind::Full);
    let why = &plan.keep.iter().find(|k| k.id == full.id).unwrap().reasons;
    assert!(!why.is_empty(), "kept without a reason");
    assert!(
        why.iter()
            .all(|r| matches!(r, KeepReason::BaseOf { backup } if plan.keeps(backup))),
        "kept only as the base of kept differentials: {why:?}"
    );
    assert_eq!(kept(&plan, BackupKind::Diff).len(), 2);
    // The expired diffs go newest first.
    let expired: Vec<_> = plan.expire.iter().map(|e| e.ended_at).collect();
    assert!(expired.windows(2).all(|w| w[0] >= w[1]), "{expired:?}");
    assert!(
        plan.expire[0].reason.contains("2 newest days"),
        "{}",
        plan.expire[0].reason
    );
}

#[test]
fn days_are_counted_in_the_policy_time_zone() {
    // 23:30 UTC on Nov 30 is already Dec 1 in Berlin.
    let now: DateTime<Utc> = "2026-12-01T08:00:00Z".parse().unwrap();
    let late = manifest(
        0,
        BackupKind::Full,
        "2026-11-30T23:30:00Z".parse().unwrap(),
        None,
    );
    let early = manifest(
        1,
        BackupKind::Full,
        "2026-11-30T22:30:00Z".parse().unwrap(),
        None,
    );
    let manifests = vec![early.clone(), late.clone()];
    let daily = Retention {
        daily: 2,
        ..Retention::default()
    };
    let utc = plan(&manifests, &DefaultChainRules, &daily, now, Tz::UTC);
    // In UTC both are on Nov 30: one daily point.
    assert!(!utc.keeps(&early.id));
    let berlin = plan(
        &manifests,
        &DefaultChainRules,
        &daily,
        now,
        Tz::Europe__Berlin,
    );
    // In Berlin one is on Nov 30, the other on Dec 1: both kept.
    assert!(berlin.keeps(&early.id) && berlin.keeps(&late.id));
}

#[test]
fn the_newest_point_survives_any_age_and_a_broken_chain_expires() {
    let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
    let old_full = manifest(
        0,
        BackupKind::Full,
        "2025-01-01T02:00:00Z".parse().unwrap(),
        None,
    );
    let gone: BackupId = "20250101T000000Z-gone".parse().unwrap();
    let orphan = manifest(
        1,
        BackupKind::Diff,
        "2025-01-02T02:00:00Z".parse().unwrap(),
        Some(&gone),
    );
    let manifests = vec![old_full.clone(), orphan.clone()];
    let retention = Retention {
        daily: 7,
        log_days: 7,
        ..Retention::default()
    };
    let plan = plan(&manifests, &DefaultChainRules, &retention, now, Tz::UTC);
    assert!(plan.keeps(&old_full.id));
    assert!(plan.keep[0].reasons.contains(&KeepReason::Newest));
    assert_eq!(plan.expire.len(), 1);
    assert_eq!(plan.expire[0].id, orphan.id);
    assert!(plan.expire[0].reason.contains("does not reach a full"));
}

#[test]
fn the_newest_point_is_the_backup_that_ended_last_even_when_a_later_slot_is_older() {
    // A scheduled full labelled with its slot, and a full taken by hand that
    // ended after it: the one taken by hand is the newest recovery point.
    let now: DateTime<Utc> = "2026-12-20T12:00:00Z".parse().unwrap();
    let mut scheduled = manifest(
        0,
        BackupKind::Full,
        "2026-12-01T11:00:00Z".parse().unwrap(),
        None,
    );
    scheduled.labels.insert(
        strata_core::catalog::retention::SCHEDULED_FOR_LABEL.into(),
        "2026-12-20T03:00:00Z".into(),
    );
    let by_hand = manifest(
        1,
        BackupKind::Full,
        "2026-12-01T11:30:00Z".parse().unwrap(),
        None,
    );
    let manifests = vec![scheduled.clone(), by_hand.clone()];
    let plan = plan(
        &manifests,
        &DefaultChainRules,
        &Retention {
            daily: 1,
            ..Retention::default()
        },
        now,
        Tz::UTC,
    );
    let newest: Vec<_> = plan
        .keep
        .iter()
        .filter(|k| k.reasons.contains(&KeepReason::Newest))
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(newest, [by_hand.id]);
}

//! Retention: which backups of one database a policy keeps, and which
//! expire, with the reason for each.
//!
//! The rules, in the order they are applied ([`plan`]):
//!
//! 1. **The newest recovery point** is always kept: the newest data backup
//!    (full, diff or incr) whose chain reaches a full. A database that stopped
//!    being backed up never loses its last restorable backup to age.
//! 2. **Daily** `N`: the newest data backup of each of the `N` newest
//!    calendar days that have one, in the policy's time zone.
//! 3. **Weekly**, **monthly**, **yearly** `N`: the newest **full** of each of
//!    the `N` newest ISO weeks (Monday to Sunday), calendar months or years
//!    that have one. Long-term points are fulls, as in Azure Backup's
//!    policies: they depend on nothing else. Counting periods that hold a
//!    backup (as restic's and Borg's `--keep-daily` do) rather than
//!    calendar periods back from today means a database whose backups
//!    stopped keeps its last `N` points instead of losing them to age.
//! 4. **Point in time** (`log_days` > 0): every second of the last
//!    `log_days` days stays restorable. The *anchor* is the newest data
//!    backup that ended at or before the window's start (or, when there is
//!    none, the oldest data backup); it is kept, and every log backup that
//!    ends after it starts. Log backups that end after the newest data
//!    backup starts are always kept (they carry the database past its newest
//!    backup).
//! 5. **Bases**: every kept diff or incr keeps the backups its chain applies
//!    on, down to the full ([`ChainRules::applies_on`]), whatever their age.
//!
//! A backup's calendar time is the schedule slot it was taken for (the
//! manifest label [`SCHEDULED_FOR_LABEL`], which the service sets), else
//! when it ended: Sunday's 02:00 full is Sunday's weekly point even when it
//! ends on Monday.
//!
//! Everything else expires. A data backup whose chain does not reach a full
//! (its base is gone) is not a recovery point and expires too.
//!
//! What a retained backup needs beyond the manifests (PostgreSQL's archived
//! WAL from a backup's start to its consistency point) is the engine's to
//! say: [`crate::plugin::EnginePlugin::expired_log`] gets the kept backups
//! and the anchor.
//!
//! Deleting follows [`RetentionPlan::expire`]'s order, newest first, so that
//! an interrupted expiry never leaves a kept backup whose base is gone and
//! never a differential whose base was deleted before it.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::{BackupId, BackupKind, Manifest};
use crate::catalog::planner::{self, BackupRecord, ChainRules};

/// The manifest label holding the schedule slot (RFC 3339, UTC) a backup
/// was taken for.
pub const SCHEDULED_FOR_LABEL: &str = "strata.scheduled_for";

/// A backup's calendar time for retention: its schedule slot, else its end.
pub fn point_time(manifest: &Manifest) -> DateTime<Utc> {
    manifest
        .labels
        .get(SCHEDULED_FOR_LABEL)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(manifest.ended_at, |t| t.to_utc())
}

/// How long a policy keeps recovery points. Every count is a number of
/// calendar periods that hold a backup, newest first; `0` turns a rule off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest data backup of each of the `daily` newest days that have one.
    #[serde(default)]
    pub daily: u32,
    /// Keep the newest full of each of the `weekly` newest ISO weeks that have one.
    #[serde(default)]
    pub weekly: u32,
    /// Keep the newest full of each of the `monthly` newest months that have one.
    #[serde(default)]
    pub monthly: u32,
    /// Keep the newest full of each of the `yearly` newest years that have one.
    #[serde(default)]
    pub yearly: u32,
    /// Keep every point in time of the last `log_days` days restorable.
    #[serde(default)]
    pub log_days: u32,
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum KeepReason {
    /// The newest recovery point of the database.
    Newest,
    /// The newest data backup of this day.
    Daily {
        /// The day, in the policy's time zone.
        day: NaiveDate,
    },
    /// The newest full of this ISO week.
    Weekly {
        /// The ISO year.
        year: i32,
        /// The ISO week number.
        week: u32,
    },
    /// The newest full of this month.
    Monthly {
        /// The year.
        year: i32,
        /// The month, 1 to 12.
        month: u32,
    },
    /// The newest full of this year.
    Yearly {
        /// The year.
        year: i32,
    },
    /// The backup the point-in-time window replays from.
    PointInTimeAnchor,
    /// A log backup inside the point-in-time window.
    PointInTimeLog,
    /// A retained backup builds on it.
    BaseOf {
        /// The retained backup that needs it.
        backup: BackupId,
    },
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Newest => f.write_str("the newest recovery point"),
            KeepReason::Daily { day } => write!(f, "daily point of {day}"),
            KeepReason::Weekly { year, week } => write!(f, "weekly full of {year}-W{week:02}"),
            KeepReason::Monthly { year, month } => write!(f, "monthly full of {year}-{month:02}"),
            KeepReason::Yearly { year } => write!(f, "yearly full of {year}"),
            KeepReason::PointInTimeAnchor => {
                f.write_str("point-in-time restores of the log window start from it")
            }
            KeepReason::PointInTimeLog => f.write_str("log inside the point-in-time window"),
            KeepReason::BaseOf { backup } => write!(f, "base of retained backup {backup}"),
        }
    }
}

/// A backup the policy keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The backup.
    pub id: BackupId,
    /// Its kind.
    pub kind: BackupKind,
    /// When it ended (UTC).
    pub ended_at: DateTime<Utc>,
    /// Every rule that keeps it.
    pub reasons: Vec<KeepReason>,
}

/// A backup that expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// The backup.
    pub id: BackupId,
    /// Its kind.
    pub kind: BackupKind,
    /// When it ended (UTC).
    pub ended_at: DateTime<Utc>,
    /// Bytes it holds in the vault.
    pub stored_bytes: u64,
    /// Why no rule keeps it.
    pub reason: String,
}

/// What a policy does to one database's backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPlan {
    /// The backups kept, oldest first.
    pub keep: Vec<Kept>,
    /// The backups that expire, in the order to delete them: newest first,
    /// so that dependents go before what they depend on.
    pub expire: Vec<Expired>,
    /// The data backup the point-in-time window replays from, when
    /// `log_days` is set and there is one.
    pub anchor: Option<BackupId>,
    /// The start of the point-in-time window (UTC), when `log_days` is set.
    pub window_start: Option<DateTime<Utc>>,
}

impl RetentionPlan {
    /// Whether `id` is kept.
    pub fn keeps(&self, id: &BackupId) -> bool {
        self.keep.iter().any(|k| &k.id == id)
    }
}

/// The retention plan of one database's `manifests` (any order) under
/// `retention` at `now`, with calendar periods in `zone`; `rules` are the
/// engine's chain rules (which backup a diff applies on). See the
/// [module docs](self) for the rules.
pub fn plan(
    manifests: &[Manifest],
    rules: &dyn ChainRules,
    retention: &Retention,
    now: DateTime<Utc>,
    zone: Tz,
) -> RetentionPlan {
    let mut sorted: Vec<&Manifest> = manifests.iter().collect();
    sorted.sort_by(|a, b| (point_time(a), &a.id).cmp(&(point_time(b), &b.id)));
    let records: Vec<BackupRecord> = sorted.iter().map(|m| BackupRecord::from(*m)).collect();
    let complete = planner::complete_chains(&records, rules);
    // Recovery points, oldest first.
    let points: Vec<&Manifest> = sorted
        .iter()
        .copied()
        .filter(|m| m.kind != BackupKind::Log && complete.contains(&m.id))
        .collect();
    let mut reasons: BTreeMap<BackupId, Vec<KeepReason>> = BTreeMap::new();
    let mut keep = |id: &BackupId, reason: KeepReason| {
        reasons.entry(id.clone()).or_default().push(reason);
    };

    // By when it ended, not by its schedule slot: a backup taken by hand
    // after the scheduled ones is the newest.
    if let Some(newest) = points.iter().max_by_key(|m| (m.ended_at, &m.id)) {
        keep(&newest.id, KeepReason::Newest);
    }
    // The newest point of each period (fulls only for the long-term
    // rules), the `count` newest periods that have one.
    type PeriodRule = (u32, bool, fn(NaiveDate) -> KeepReason);
    let rules: [PeriodRule; 4] = [
        (retention.daily, false, |day| KeepReason::Daily { day }),
        (retention.weekly, true, |day| {
            let week = day.iso_week();
            KeepReason::Weekly {
                year: week.year(),
                week: week.week(),
            }
        }),
        (retention.monthly, true, |day| KeepReason::Monthly {
            year: day.year(),
            month: day.month(),
        }),
        (retention.yearly, true, |day| KeepReason::Yearly {
            year: day.year(),
        }),
    ];
    for (count, fulls_only, period_of) in rules {
        let mut newest: BTreeMap<KeepReason, &BackupId> = BTreeMap::new();
        for m in points
            .iter()
            .filter(|m| !fulls_only || m.kind == BackupKind::Full)
        {
            newest.insert(
                period_of(point_time(m).with_timezone(&zone).date_naive()),
                &m.id,
            );
        }
        for (period, id) in newest.into_iter().rev().take(count as usize) {
            keep(id, period);
        }
    }

    let mut window_start = None;
    let mut anchor = None;
    if retention.log_days > 0 {
        let start = now - Duration::days(retention.log_days.into());
        window_start = Some(start);
        let chosen = points
            .iter()
            .rev()
            .find(|m| point_time(m) <= start)
            .or(points.first());
        if let Some(m) = chosen {
            keep(&m.id, KeepReason::PointInTimeAnchor);
            anchor = Some((*m).clone());
        }
    }
    // Logs: inside the window (from the anchor's start), or past the newest
    // data backup's start.
    let logs_from = match (&anchor, points.last()) {
        (Some(anchor), _) => Some(anchor.started_at),
        (None, Some(newest)) => Some(newest.started_at),
        (None, None) => None,
    };
    for m in &sorted {
        if m.kind == BackupKind::Log && logs_from.is_none_or(|from| m.ended_at > from) {
            keep(&m.id, KeepReason::PointInTimeLog);
        }
    }

    // Bases of everything kept, transitively.
    let by_id: BTreeMap<&BackupId, &Manifest> = sorted.iter().map(|m| (&m.id, *m)).collect();
    let mut pending: Vec<BackupId> = reasons.keys().cloned().collect();
    let mut seen: HashSet<BackupId> = pending.iter().cloned().collect();
    while let Some(id) = pending.pop() {
        let Some(base) = by_id.get(&id).and_then(|m| m.base.clone()) else {
            continue;
        };
        if !by_id.contains_key(&base) {
            continue;
        }
        reasons
            .entry(base.clone())
            .or_default()
            .push(KeepReason::BaseOf { backup: id.clone() });
        if seen.insert(base.clone()) {
            pending.push(base);
        }
    }

    let mut plan = RetentionPlan {
        anchor: anchor.map(|m| m.id),
        window_start,
        ..RetentionPlan::default()
    };
    for m in &sorted {
        match reasons.remove(&m.id) {
            Some(mut why) => {
                why.sort();
                why.dedup();
                plan.keep.push(Kept {
                    id: m.id.clone(),
                    kind: m.kind,
                    ended_at: m.ended_at,
                    reasons: why,
                });
            }
            None => plan.expire.push(Expired {
                id: m.id.clone(),
                kind: m.kind,
                ended_at: m.ended_at,
                stored_bytes: m.stored_size(),
                reason: expiry_reason(m, &complete, retention),
            }),
        }
    }
    plan.expire.reverse();
    plan
}

fn expiry_reason(m: &Manifest, complete: &HashSet<BackupId>, retention: &Retention) -> String {
    match m.kind {
        BackupKind::Log => "log older than the point-in-time window".into(),
        _ if !complete.contains(&m.id) => {
            "its chain does not reach a full backup, so it cannot be restored".into()
        }
        kind => {
            let mut rules = Vec::new();
            for (count, unit, fulls) in [
                (retention.daily, "day", false),
                (retention.weekly, "week", true),
                (retention.monthly, "month", true),
                (retention.yearly, "year", true),
            ] {
                if count > 0 && (!fulls || kind == BackupKind::Full) {
                    rules.push(format!(
                        "not the newest {} of one of the {count} newest {unit}s with one",
                        if fulls { "full" } else { "backup" }
                    ));
                }
            }
            if retention.log_days > 0 {
                rules.push(format!(
                    "not needed for point-in-time restores of the last {} days",
                    retention.log_days
                ));
            }
            if rules.is_empty() {
                "older than the newest recovery point, and the policy keeps no other".into()
            } else {
                rules.join("; ")
            }
        }
    }
}

//! The restore planner on chains an operator would recognise: a SQL Server
//! database with a differential and a lost log backup, a PostgreSQL cluster
//! switching timelines, a log-less stream engine, and backups that precede
//! the first full.

use chrono::{DateTime, Utc};
use strata_core::ErrorKind;
use strata_core::catalog::manifest::{BackupId, BackupKind, Position};
use strata_core::catalog::planner::{
    BackupRecord, ChainRules, DefaultChainRules, ForkOrigin, Gap, RecoverableWindow, RestoreTarget,
    plan, timeline,
};

fn t(hm: &str) -> DateTime<Utc> {
    format!("2026-11-22T{hm}:00Z").parse().unwrap()
}

fn id(name: &str) -> BackupId {
    name.parse().unwrap()
}

/// A backup that ran from `from` to `to` (its point time), positions
/// `start..end` when given.
fn rec(
    name: &str,
    kind: BackupKind,
    fork: &str,
    positions: Option<(u128, u128)>,
    from: &str,
    to: &str,
    base: Option<&str>,
) -> BackupRecord {
    BackupRecord {
        id: id(name),
        kind,
        fork: fork.to_owned(),
        start: positions.map(|p| Position(p.0)),
        end: positions.map(|p| Position(p.1)),
        started_at: t(from),
        ended_at: t(to),
        consistent_at: None,
        base: base.map(id),
    }
}

fn ids(ids: &[BackupId]) -> Vec<&str> {
    ids.iter().map(BackupId::as_str).collect()
}

fn window(fork: &str, from: &str, to: &str, positions: Option<(u128, u128)>) -> RecoverableWindow {
    RecoverableWindow {
        fork: fork.to_owned(),
        from_time: t(from),
        to_time: t(to),
        from_position: positions.map(|p| Position(p.0)),
        to_position: positions.map(|p| Position(p.1)),
    }
}

/// SQL Server style: full, logs every 15 minutes, a differential, one log
/// backup lost, then a new full.
fn sqlserver_chain() -> Vec<BackupRecord> {
    use BackupKind::*;
    vec![
        rec(
            "full-1",
            Full,
            "fork-a",
            Some((1000, 1100)),
            "00:00",
            "00:10",
            None,
        ),
        rec(
            "log-1",
            Log,
            "fork-a",
            Some((900, 1500)),
            "00:15",
            "00:15",
            None,
        ),
        rec(
            "log-2",
            Log,
            "fork-a",
            Some((1500, 2000)),
            "00:30",
            "00:30",
            None,
        ),
        rec(
            "diff-1",
            Diff,
            "fork-a",
            Some((2100, 2200)),
            "00:40",
            "00:45",
            Some("full-1"),
        ),
        rec(
            "log-3",
            Log,
            "fork-a",
            Some((2000, 2500)),
            "00:45",
            "00:45",
            None,
        ),
        rec(
            "log-4",
            Log,
            "fork-a",
            Some((2500, 3000)),
            "01:00",
            "01:00",
            None,
        ),
        // log-5 (3000..3500, 01:15) was lost.
        rec(
            "log-6",
            Log,
            "fork-a",
            Some((3500, 4000)),
            "01:30",
            "01:30",
            None,
        ),
        rec(
            "full-2",
            Full,
            "fork-a",
            Some((4050, 4100)),
            "01:35",
            "01:40",
            None,
        ),
        rec(
            "log-7",
            Log,
            "fork-a",
            Some((4000, 4600)),
            "01:45",
            "01:45",
            None,
        ),
    ]
}

#[test]
fn sqlserver_chain_with_a_differential_and_a_lost_log() {
    let records = sqlserver_chain();
    let rules = DefaultChainRules;

    let line = timeline(&records, &rules);
    assert_eq!(
        line.windows,
        vec![
            window("fork-a", "00:10", "01:00", Some((1100, 3000))),
            window("fork-a", "01:40", "01:45", Some((4100, 4600))),
        ]
    );
    assert_eq!(
        line.gaps,
        vec![Gap {
            fork: "fork-a".into(),
            from_time: t("01:00"),
            to_time: t("01:40"),
            from_position: Some(Position(3000)),
            to_position: Some(Position(4100)),
            reason: "no log backup covers positions 3000..3500 (missing between log-4 and log-6)"
                .into(),
        }]
    );

    // After the differential: full, differential, then only the logs from it.
    let p = plan(&records, &rules, &RestoreTarget::Time(t("00:50"))).unwrap();
    assert_eq!(ids(&p.backup_ids()), ["full-1", "diff-1", "log-3", "log-4"]);
    assert_eq!(p.base.id.as_str(), "full-1");
    assert_eq!(p.fork, "fork-a");
    assert_eq!(p.reaches_time, Some(t("01:00")));
    assert_eq!(p.reaches_position, Some(Position(3000)));

    // Before the differential is consistent: the full and its logs.
    let p = plan(&records, &rules, &RestoreTarget::Time(t("00:20"))).unwrap();
    assert_eq!(ids(&p.backup_ids()), ["full-1", "log-1", "log-2"]);
    assert_eq!(p.reaches_time, Some(t("00:30")));

    // Exactly at the differential's consistency point: no log needed.
    let p = plan(&records, &rules, &RestoreTarget::Time(t("00:45"))).unwrap();
    assert_eq!(ids(&p.backup_ids()), ["full-1", "diff-1"]);

    let p = plan(&records, &rules, &RestoreTarget::Latest).unwrap();
    assert_eq!(ids(&p.backup_ids()), ["full-2", "log-7"]);
    assert_eq!(p.reaches_time, Some(t("01:45")));
    assert_eq!(p.reaches_position, Some(Position(4600)));

    let p = plan(
        &records,
        &rules,
        &RestoreTarget::Position {
            fork: None,
            position: Position(2600),
        },
    )
    .unwrap();
    assert_eq!(ids(&p.backup_ids()), ["full-1", "diff-1", "log-3", "log-4"]);
    assert_eq!(p.reaches_position, Some(Position(3000)));

    // Inside the gap: refused, with the reason and the way out.
    let err = plan(&records, &rules, &RestoreTarget::Time(t("01:10"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        "time 2026-11-22T01:10:00Z is not restorable (no log backup covers positions \
         3000..3500 (missing between log-4 and log-6)); the nearest restorable times are \
         2026-11-22T01:00:00Z (before) and 2026-11-22T01:40:00Z (after)"
    );
    assert!(err.hint_text().unwrap().contains("strata list --timeline"));

    let err = plan(
        &records,
        &rules,
        &RestoreTarget::Position {
            fork: Some("fork-a".into()),
            position: Position(3200),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the nearest restorable positions are 3000 (before) and 4100 (after)"),
        "{err}"
    );
    let err = plan(
        &records,
        &rules,
        &RestoreTarget::Position {
            fork: Some("fork-b".into()),
            position: Position(3200),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no backups on fork fork-b"),
        "{err}"
    );
    assert!(err.hint_text().unwrap().contains("fork-a"), "{err:?}");

    // Before the first full backup is consistent.
    let err = plan(&records, &rules, &RestoreTarget::Time(t("00:05"))).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the earliest restorable time is 2026-11-22T00:10:00Z"),
        "{err}"
    );
}

#[test]
fn a_differential_without_its_full_is_not_a_restore_point() {
    let mut records = sqlserver_chain();
    records.retain(|r| r.id.as_str() != "full-1");
    let line = timeline(&records, &DefaultChainRules);
    assert_eq!(
        line.windows,
        vec![window("fork-a", "01:40", "01:45", Some((4100, 4600)))]
    );
    assert_eq!(line.gaps.len(), 1);
    let gap = &line.gaps[0];
    assert_eq!((gap.from_time, gap.to_time), (t("00:15"), t("01:40")));
    assert!(
        gap.reason.starts_with(
            "no full backup before 2026-11-22T01:40:00Z: the 6 earlier backup(s) on fork fork-a, \
             log-1 to log-6, cannot be restored without one"
        ),
        "{}",
        gap.reason
    );
    assert!(
        gap.reason
            .contains("diff diff-1 needs full-1, which is not in the catalog"),
        "{}",
        gap.reason
    );
    let err = plan(
        &records,
        &DefaultChainRules,
        &RestoreTarget::Time(t("00:50")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no full backup before"), "{err}");
}

#[test]
fn logs_after_the_chain_broke_are_reported_until_a_new_full() {
    use BackupKind::*;
    let records = vec![
        rec("log-0", Log, "1", Some((0, 100)), "00:00", "00:05", None),
        rec("full", Full, "1", Some((120, 150)), "00:08", "00:12", None),
        rec("log-1", Log, "1", Some((100, 200)), "00:05", "00:15", None),
        rec("log-2", Log, "1", Some((200, 300)), "00:15", "00:20", None),
        // 300..400 lost
        rec("log-4", Log, "1", Some((400, 500)), "00:25", "00:30", None),
        rec("log-5", Log, "1", Some((500, 600)), "00:30", "00:35", None),
    ];
    let line = timeline(&records, &DefaultChainRules);
    assert_eq!(
        line.windows,
        vec![window("1", "00:12", "00:20", Some((150, 300)))]
    );
    assert_eq!(
        line.gaps,
        vec![
            Gap {
                fork: "1".into(),
                from_time: t("00:00"),
                to_time: t("00:12"),
                from_position: Some(Position(0)),
                to_position: Some(Position(150)),
                reason: "no full backup before 2026-11-22T00:12:00Z: the 1 earlier backup(s) on \
                         fork 1, log-0 to log-0, cannot be restored without one"
                    .into(),
            },
            Gap {
                fork: "1".into(),
                from_time: t("00:20"),
                to_time: t("00:35"),
                from_position: Some(Position(300)),
                to_position: Some(Position(600)),
                reason: "no log backup covers positions 300..400 (missing between log-2 and log-4)"
                    .into(),
            },
        ]
    );
    let err = plan(
        &records,
        &DefaultChainRules,
        &RestoreTarget::Time(t("00:30")),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the latest restorable time is 2026-11-22T00:20:00Z"),
        "{err}"
    );
}

/// PostgreSQL: timelines branch at an LSN recorded in `<tli>.history`, and a
/// base backup needs the WAL from its start LSN to become consistent.
struct PostgresLike {
    history: Vec<(&'static str, &'static str, u128)>,
}

impl ChainRules for PostgresLike {
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        self.history
            .iter()
            .find(|(child, _, _)| *child == fork)
            .map(|(_, parent, at)| ForkOrigin {
                parent: (*parent).to_owned(),
                at: Position(*at),
            })
    }

    fn log_needed_from(&self, data: &BackupRecord) -> Option<Position> {
        data.start
    }
}

const SEG: u128 = 16 << 20;

fn segment(tli: &str, n: u128, at: &str) -> BackupRecord {
    // A WAL file name: timeline, then the segment number in 256-segment units.
    let name = format!(
        "{:08X}{:08X}{:08X}",
        tli.parse::<u32>().unwrap(),
        n >> 8,
        n & 0xff
    );
    rec(
        &name,
        BackupKind::Log,
        tli,
        Some((n * SEG, (n + 1) * SEG)),
        at,
        at,
        None,
    )
}

#[test]
fn postgres_timeline_switch() {
    use BackupKind::*;
    let switch = 5 * SEG + 5000;
    let rules = PostgresLike {
        history: vec![("2", "1", switch)],
    };
    let mut records = vec![
        rec(
            "base-1",
            Full,
            "1",
            Some((2 * SEG + 40, 3 * SEG + 100)),
            "00:01",
            "00:05",
            None,
        ),
        segment("1", 2, "00:03"),
        segment("1", 3, "00:20"),
        segment("1", 4, "00:40"),
        // Segment 5 of timeline 1 was only archived as .partial; timeline 2's
        // segment 5 holds the history up to the switch and what followed.
        segment("2", 5, "01:00"),
        segment("2", 6, "01:20"),
    ];
    let line = timeline(&records, &rules);
    assert_eq!(
        line.windows,
        vec![
            window("1", "00:05", "00:40", Some((3 * SEG + 100, 5 * SEG))),
            window("2", "00:05", "01:20", Some((3 * SEG + 100, 7 * SEG))),
        ]
    );
    assert!(line.gaps.is_empty(), "{:?}", line.gaps);

    let latest = plan(&records, &rules, &RestoreTarget::Latest).unwrap();
    assert_eq!(latest.fork, "2");
    assert_eq!(
        ids(&latest.backup_ids()),
        [
            "base-1",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000020000000000000005",
            "000000020000000000000006",
        ]
    );
    assert_eq!(latest.reaches_position, Some(Position(7 * SEG)));

    // Before the switch: the newest timeline still serves it, from
    // timeline 1's WAL only.
    let p = plan(&records, &rules, &RestoreTarget::Time(t("00:30"))).unwrap();
    assert_eq!(p.fork, "2");
    assert_eq!(
        ids(&p.backup_ids()),
        [
            "base-1",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]
    );
    // Even at the base's consistency point, the WAL written during the
    // backup is needed.
    let p = plan(&records, &rules, &RestoreTarget::Time(t("00:05"))).unwrap();
    assert_eq!(
        ids(&p.backup_ids()),
        [
            "base-1",
            "000000010000000000000002",
            "000000010000000000000003"
        ]
    );
    // Timeline 1 on its own stops where its archive stops.
    let err = plan(
        &records,
        &rules,
        &RestoreTarget::Position {
            fork: Some("1".into()),
            position: Position(5 * SEG + 10),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "the latest restorable position is {} on fork 1",
            5 * SEG
        )),
        "{err}"
    );

    // A base backup taken on timeline 2 becomes the shortest way to the end.
    records.push(rec(
        "base-2",
        Full,
        "2",
        Some((6 * SEG + 10, 6 * SEG + 500)),
        "01:02",
        "01:05",
        None,
    ));
    let latest = plan(&records, &rules, &RestoreTarget::Latest).unwrap();
    assert_eq!(
        ids(&latest.backup_ids()),
        ["base-2", "000000020000000000000006"]
    );

    // Without the WAL written during the base backup, it restores nothing.
    records.retain(|r| r.id.as_str() != "000000010000000000000002");
    records.retain(|r| r.id.as_str() != "base-2");
    let line = timeline(&records, &rules);
    assert!(line.windows.is_empty(), "{:?}", line.windows);
    let err = plan(&records, &rules, &RestoreTarget::Latest).unwrap_err();
    assert!(
        err.to_string()
            .contains("nothing in the catalog can be restored"),
        "{err}"
    );
}

#[test]
fn a_stream_engine_restores_each_full_as_an_instant() {
    use BackupKind::*;
    let records = vec![
        rec("dump-1", Full, "", None, "00:55", "01:00", None),
        rec("dump-2", Full, "", None, "01:55", "02:00", None),
        rec("dump-3", Full, "", None, "02:55", "03:00", None),
    ];
    let line = timeline(&records, &DefaultChainRules);
    assert_eq!(
        line.windows,
        vec![
            window("", "01:00", "01:00", None),
            window("", "02:00", "02:00", None),
            window("", "03:00", "03:00", None),
        ]
    );
    assert!(line.gaps.is_empty());
    let p = plan(
        &records,
        &DefaultChainRules,
        &RestoreTarget::Time(t("02:30")),
    )
    .unwrap();
    assert_eq!(ids(&p.backup_ids()), ["dump-2"]);
    assert_eq!(p.reaches_time, Some(t("02:00")));
    let p = plan(&records, &DefaultChainRules, &RestoreTarget::Latest).unwrap();
    assert_eq!(ids(&p.backup_ids()), ["dump-3"]);
    let err = plan(
        &records,
        &DefaultChainRules,
        &RestoreTarget::Time(t("00:30")),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the earliest restorable time is 2026-11-22T01:00:00Z"),
        "{err}"
    );
    let err = plan(&[], &DefaultChainRules, &RestoreTarget::Latest).unwrap_err();
    assert!(err.to_string().contains("no backups"), "{err}");
}

/// The default chain rules, counting how often the planner asks them
/// anything: a measure of the planner's work that does not depend on the
/// machine's speed.
#[derive(Default)]
struct CountingRules {
    calls: std::sync::atomic::AtomicUsize,
}

impl CountingRules {
    fn ask(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The calls since the last `take`.
    fn take(&self) -> usize {
        self.calls.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl ChainRules for CountingRules {
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        self.ask();
        DefaultChainRules.fork_origin(fork)
    }

    fn log_continues(&self, covered_to: Position, next: &BackupRecord) -> bool {
        self.ask();
        DefaultChainRules.log_continues(covered_to, next)
    }

    fn fork_began_at(&self, fork: &str) -> Option<DateTime<Utc>> {
        self.ask();
        DefaultChainRules.fork_began_at(fork)
    }

    fn applies_on(&self, base: &BackupRecord, diff: &BackupRecord) -> bool {
        self.ask();
        DefaultChainRules.applies_on(base, diff)
    }

    fn log_needed_from(&self, data: &BackupRecord) -> Option<Position> {
        self.ask();
        DefaultChainRules.log_needed_from(data)
    }

    fn position_text(&self, position: Position) -> String {
        self.ask();
        DefaultChainRules.position_text(position)
    }
}

/// 30 days of a WAL segment a minute (43,200 logs), a base backup a day, and
/// one segment lost on day 20: two windows, the gap named by the segments
/// around it, plans by time and latest, and a time in the gap refused with
/// the nearest restorable times. The planner's work grows with the number
/// of backups, not with backups times logs: it asks the chain rules a small
/// multiple of the number of records, although each of the 30 base backups
/// could replay on the order of 20,000 logs.
#[test]
fn a_month_of_one_minute_wal_segments() {
    const MINUTES: u128 = 30 * 24 * 60;
    let lost = 20 * 24 * 60 + 7;
    let start: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    let minute = |m: u128| start + chrono::Duration::minutes(m as i64);
    let mut records = Vec::new();
    for m in 0..MINUTES {
        if m != lost {
            records.push(BackupRecord {
                id: id(&format!("wal-{m:06}")),
                kind: BackupKind::Log,
                fork: "1".into(),
                start: Some(Position(m * SEG)),
                end: Some(Position((m + 1) * SEG)),
                started_at: minute(m),
                ended_at: minute(m + 1),
                consistent_at: None,
                base: None,
            });
        }
        if m % (24 * 60) == 30 {
            records.push(BackupRecord {
                id: id(&format!("base-{m:06}")),
                kind: BackupKind::Full,
                fork: "1".into(),
                start: Some(Position(m * SEG + 1)),
                end: Some(Position(m * SEG + 100)),
                started_at: minute(m),
                ended_at: minute(m),
                consistent_at: None,
                base: None,
            });
        }
    }
    let rules = CountingRules::default();
    // Each phase may ask the rules a few times per record, never once per
    // base backup and log.
    let budget = 4 * records.len();
    let line = timeline(&records, &rules);
    let asked = rules.take();
    assert!(
        asked <= budget,
        "timeline: {asked} calls for {} records",
        records.len()
    );
    assert_eq!(line.windows.len(), 2, "{:?}", line.windows);
    assert_eq!(line.windows[0].to_time, minute(lost));
    assert_eq!(line.windows[1].from_time, minute(20 * 24 * 60 + 30));
    assert_eq!(line.windows[1].to_time, minute(MINUTES));
    assert_eq!(line.gaps.len(), 2, "{:?}", line.gaps);
    assert!(
        line.gaps[0]
            .reason
            .starts_with("no full backup before 2026-10-01T00:30:00Z"),
        "WAL archived before the first base backup: {}",
        line.gaps[0].reason
    );
    let lost_gap = format!(
        "no log backup covers positions {}..{} (missing between wal-{:06} and wal-{:06})",
        lost * SEG,
        (lost + 1) * SEG,
        lost - 1,
        lost + 1
    );
    assert_eq!(line.gaps[1].reason, lost_gap);

    let latest = plan(&records, &rules, &RestoreTarget::Latest).unwrap();
    let asked = rules.take();
    assert!(
        asked <= budget,
        "latest: {asked} calls for {} records",
        records.len()
    );
    assert_eq!(latest.base.id.as_str(), "base-041790");
    assert_eq!(latest.logs.len(), 24 * 60 - 30);
    let p = plan(
        &records,
        &rules,
        &RestoreTarget::Time(minute(10 * 24 * 60 + 45)),
    )
    .unwrap();
    let asked = rules.take();
    assert!(
        asked <= budget,
        "time: {asked} calls for {} records",
        records.len()
    );
    assert_eq!(p.base.id.as_str(), "base-014430");
    assert_eq!(p.logs.len(), 15);

    // Ten minutes after the lost segment (day 20, 00:17): the window before
    // ends where the segment is missing (00:07), the next one begins at
    // day 20's base backup (00:30).
    let err = plan(&records, &rules, &RestoreTarget::Time(minute(lost + 10))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!(
            "time 2026-10-21T00:17:00Z is not restorable ({lost_gap}); the nearest \
             restorable times are 2026-10-21T00:07:00Z (before) and \
             2026-10-21T00:30:00Z (after)"
        )
    );
    assert!(
        err.hint_text().unwrap().contains("strata list --timeline"),
        "{err:?}"
    );
}

#[test]
fn a_parent_log_past_the_fork_point_counts_only_up_to_it() {
    use BackupKind::*;
    let switch = 5 * SEG + 5000;
    let rules = PostgresLike {
        history: vec![("2", "1", switch)],
    };
    let records = vec![
        rec(
            "base-1",
            Full,
            "1",
            Some((2 * SEG + 40, 3 * SEG + 100)),
            "00:01",
            "00:05",
            None,
        ),
        segment("1", 2, "00:03"),
        segment("1", 3, "00:20"),
        segment("1", 4, "00:40"),
        // Timeline 1's segment 5 holds the switch point and, after it, old
        // timeline 1 history up to 00:50; timeline 2's segment 5 is lost.
        segment("1", 5, "00:50"),
        segment("2", 6, "01:20"),
    ];
    let line = timeline(&records, &rules);
    assert_eq!(
        line.windows,
        vec![
            window("1", "00:05", "00:50", Some((3 * SEG + 100, 6 * SEG))),
            window("2", "00:05", "00:40", Some((3 * SEG + 100, switch))),
        ],
        "on timeline 2, segment 5 of timeline 1 only counts up to the switch point"
    );
    assert_eq!(line.gaps.len(), 1);
    assert_eq!(line.gaps[0].fork, "2");
    assert_eq!(
        line.gaps[0].reason,
        format!(
            "no log backup covers positions {switch}..{} (missing between \
             000000010000000000000005 and 000000020000000000000006)",
            6 * SEG
        )
    );
    let err = plan(
        &records,
        &rules,
        &RestoreTarget::Position {
            fork: Some("2".into()),
            position: Position(6 * SEG + 1),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "the latest restorable position is {switch} on fork 2"
        )),
        "{err}"
    );
}

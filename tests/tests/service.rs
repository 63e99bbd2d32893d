//! The service against a real PostgreSQL cluster and a `file://` vault, in
//! compressed time: `strata serve --once --now T` is one pass of the
//! service at the simulated time `T` (the injectable clock), while the
//! backups, the WAL and the restores are real.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_e2e::pg::{PgCluster, PgStrata};

const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

const POLICY: &str = r#"
[policy.week]
time_zone = "UTC"
full = "0 2 * * SUN"
diff = "0 2 * * MON-SAT"
rpo = "15m"

[policy.week.retention]
daily = 3
weekly = 1
log_days = 2

[[protect]]
engine = "postgres"
instance = "main"
policy = "week"
"#;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn now_utc(pg: &PgCluster) -> DateTime<Utc> {
    let at = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    at.parse().unwrap_or_else(|e| panic!("time `{at}`: {e}"))
}

fn pass(env: &PgStrata, now: DateTime<Utc>) -> serde_json::Value {
    let out = env.strata(&["--json", "serve", "--once", "--now", &now.to_rfc3339()]);
    assert_eq!(
        out.code(),
        Some(0),
        "the pass at {now} failed:\n{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out.json()
}

fn wal_files(vault: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let root = vault.join("engines/postgres/main/wal");
    for system in std::fs::read_dir(&root).unwrap().flatten() {
        for timeline in std::fs::read_dir(system.path()).unwrap().flatten() {
            for file in std::fs::read_dir(timeline.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(name);
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_simulated_week_runs_the_schedule_and_retention_keeps_every_chain_restorable() {
    let env = PgStrata::new("service-week");
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(POLICY);
    std::fs::write(&env.config, config).unwrap();
    env.cluster
        .psql("CREATE TABLE steps (step int, at timestamptz DEFAULT clock_timestamp())");

    // `strata config check` validates and shows the next runs.
    let check = env.strata(&["config", "check"]);
    assert_eq!(check.code(), Some(0), "{}", check.stderr_text());
    assert!(
        check.stdout_text().contains("full  \"0 2 * * SUN\""),
        "{}",
        check.stdout_text()
    );

    // Passes at 03:00 and 15:00 from Sunday Nov 22 to Tuesday Dec 1, with
    // the service down from Wednesday 15:00 to Friday 15:00.
    let mut passes = Vec::new();
    let mut at = t("2026-11-22T03:00:00Z");
    while at <= t("2026-12-01T03:00:00Z") {
        let down = at > t("2026-11-25T03:00:00Z") && at < t("2026-11-27T15:00:00Z");
        if !down {
            passes.push(at);
        }
        at += chrono::Duration::hours(12);
    }
    // Rows after each pass, and the real time before the next pass's rows.
    let mut rows_at: BTreeMap<DateTime<Utc>, (i64, DateTime<Utc>)> = BTreeMap::new();
    let mut deleted_wal = 0;
    for (step, now) in passes.iter().enumerate() {
        env.cluster.psql(&format!(
            "INSERT INTO steps (step) SELECT {step} FROM generate_series(1, 100)"
        ));
        let report = pass(&env, *now);
        for expiry in report["expiries"].as_array().unwrap() {
            deleted_wal += expiry["deleted_log"].as_u64().unwrap();
        }
        let rows: i64 = env
            .cluster
            .psql("SELECT count(*) FROM steps")
            .parse()
            .unwrap();
        rows_at.insert(*now, (rows, now_utc(&env.cluster)));
    }

    // The jobs that ran: the initial full at once, then one backup per
    // schedule slot, and one catch-up differential (Friday's slot) for the
    // two days down.
    let jobs = env.strata(&["--json", "jobs", "--limit", "1000"]);
    assert_eq!(jobs.code(), Some(0), "{}", jobs.stderr_text());
    let jobs = jobs.json();
    let mut backups: Vec<(String, String, String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] != "expire")
        .map(|j| {
            assert_eq!(j["result"], "succeeded", "{j}");
            (
                j["scheduled_for"].as_str().unwrap()[..16].to_owned(),
                j["kind"].as_str().unwrap().to_owned(),
                j["trigger"].as_str().unwrap().to_owned(),
                j["backup_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    backups.sort();
    let ran: Vec<(&str, &str, &str)> = backups
        .iter()
        .map(|(slot, kind, trigger, _)| (slot.as_str(), kind.as_str(), trigger.as_str()))
        .collect();
    assert_eq!(
        ran,
        [
            ("2026-11-22T03:00", "full", "initial"),
            ("2026-11-23T02:00", "diff", "schedule"),
            ("2026-11-24T02:00", "diff", "schedule"),
            ("2026-11-25T02:00", "diff", "schedule"),
            ("2026-11-27T02:00", "diff", "schedule"),
            ("2026-11-28T02:00", "diff", "schedule"),
            ("2026-11-29T02:00", "full", "schedule"),
            ("2026-11-30T02:00", "diff", "schedule"),
            ("2026-12-01T02:00", "diff", "schedule"),
        ]
    );
    let id_of = |slot: &str| {
        backups
            .iter()
            .find(|b| b.0.starts_with(slot))
            .map(|b| b.3.clone())
            .unwrap()
    };

    // Retention (daily 3, weekly 1, two days of point in time) kept
    // Sunday's full and the two differentials after it; everything older
    // is gone from the vault, the backups and the WAL before the full.
    let list = env.strata(&["--json", "list", "pg", "main"]);
    assert_eq!(list.code(), Some(0), "{}", list.stderr_text());
    let list = list.json();
    let mut kept: Vec<String> = list["backups"]
        .as_array()
        .or(list.as_array())
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    kept.sort();
    let mut expected = vec![
        id_of("2026-11-29"),
        id_of("2026-11-30"),
        id_of("2026-12-01"),
    ];
    expected.sort();
    assert_eq!(kept, expected, "{list}");
    let full = env.strata(&["--json", "list", "pg", "main"]).json();
    let sunday = full["backups"]
        .as_array()
        .or(full.as_array())
        .unwrap()
        .iter()
        .find(|b| b["id"] == id_of("2026-11-29").as_str())
        .cloned()
        .unwrap();
    let start = sunday["start_lsn"].as_str().expect("list shows start LSNs");
    let wal = wal_files(&env.vault_dir);
    let (high, low) = start.split_once('/').unwrap();
    let lsn =
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap();
    // 16 MiB segments: the segment number is the LSN's top 40 bits.
    let first = format!("00000001{:08X}{:08X}", lsn >> 32, (lsn >> 24) & 0xFF);
    assert!(
        wal.iter().all(|w| *w >= first),
        "WAL before the oldest kept backup's start ({first}) is still there: {wal:?}"
    );
    assert!(wal.contains(&first), "{first} is gone: {wal:?}");
    assert!(deleted_wal > 0, "no WAL was ever expired");

    // The oldest retained point (Sunday's full) and the newest restore with
    // the rows they had.
    let (sunday_rows, after_sunday) = rows_at[&t("2026-11-29T03:00:00Z")];
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let (_, oldest) = env.restore_to_time("oldest", after_sunday, &[]);
    assert_eq!(
        oldest.psql("SELECT count(*) FROM steps"),
        sunday_rows.to_string()
    );
    let newest_rows: i64 = env
        .cluster
        .psql("SELECT count(*) FROM steps")
        .parse()
        .unwrap();
    let now = now_utc(&env.cluster);
    // A commit after the target, so that the archive reaches past it.
    env.cluster.psql("INSERT INTO steps (step) VALUES (-1)");
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let (_, newest) = env.restore_to_time("newest", now, &[]);
    assert_eq!(
        newest.psql("SELECT count(*) FROM steps"),
        newest_rows.to_string()
    );
    oldest.amcheck();
    newest.amcheck();

    // A pass with nothing due runs no backup; retention has nothing left.
    let quiet = pass(&env, t("2026-12-01T09:00:00Z"));
    let kinds: Vec<&str> = quiet["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["expire"]);
    assert_eq!(quiet["expiries"][0]["deleted_backups"], 0);

    // `status` at the real time: the newest point is minutes old, within
    // the 15-minute target.
    let status = env.strata(&["--json", "status"]);
    assert_eq!(status.code(), Some(0), "{}", status.stderr_text());
    let status = status.json();
    assert_eq!(status[0]["database"], "postgres/main");
    assert_eq!(status[0]["health"], "ok", "{status}");
    assert!(
        status[0]["rpo_seconds"].as_i64().unwrap() < 15 * 60,
        "{status}"
    );
}

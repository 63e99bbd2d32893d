//! Every time `strata list pg` shows as restorable restores, and lands
//! exactly on the target: the rows of a restored copy are the rows committed
//! at or before the target time, including after the last commit of the
//! archived WAL (an idle tail) and across a failover to a promoted standby.

use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_e2e::pg::{PgCluster, PgStrata};

const ARCHIVE_WAIT: Duration = Duration::from_secs(90);

/// Inserts marker `i` and returns its commit time (PostgreSQL's own, as
/// `track_commit_timestamp` recorded it).
fn marker(pg: &PgCluster, i: u32) -> DateTime<Utc> {
    pg.psql(&format!(
        "INSERT INTO markers VALUES ({i}, clock_timestamp())"
    ));
    let at = pg.psql(&format!(
        "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM markers WHERE id = {i}"
    ));
    at.parse()
        .unwrap_or_else(|e| panic!("commit time of marker {i} `{at}`: {e}"))
}

fn markers_table(pg: &PgCluster) {
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
}

/// A started cluster archiving into a new vault, commit timestamps on.
fn cluster(label: &str) -> PgStrata {
    let env = PgStrata::new(label);
    env.cluster
        .psql("ALTER SYSTEM SET track_commit_timestamp = on");
    env.cluster.stop();
    env.cluster.start();
    env
}

/// Restores `main` to `target` into a new directory, starts it, and returns
/// the restore report and the copy.
fn restore_to(env: &PgStrata, name: &str, target: DateTime<Utc>) -> (serde_json::Value, PgCluster) {
    let (dir, port) = env.restore_target(name);
    let out = env.strata(&[
        "--json",
        "restore",
        "pg",
        "main",
        "--to-time",
        &target.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "--target-dir",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--start",
    ]);
    let copy = PgCluster::adopt(dir, port, env.cluster.socket_dir.clone());
    assert_eq!(
        out.code(),
        Some(0),
        "restore to {target} failed:\n{}\nserver log:\n{}",
        out.stderr_text(),
        std::fs::read_to_string(copy.data.join("strata-restore.log")).unwrap_or_default()
    );
    (out.json(), copy)
}

fn rows(pg: &PgCluster) -> String {
    pg.psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM markers")
}

/// `(timeline, start, end)` of every window `strata list pg --json` shows.
fn windows(env: &PgStrata) -> Vec<(u64, DateTime<Utc>, DateTime<Utc>)> {
    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    list["windows"]
        .as_array()
        .unwrap_or_else(|| panic!("no windows: {list}"))
        .iter()
        .map(|w| {
            (
                w["timeline"].as_u64().unwrap(),
                w["start_time"].as_str().unwrap().parse().unwrap(),
                w["end_time"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn inside(windows: &[(u64, DateTime<Utc>, DateTime<Utc>)], t: DateTime<Utc>) -> bool {
    windows.iter().any(|(_, from, to)| *from <= t && t <= *to)
}

#[test]
fn a_time_in_the_idle_tail_of_the_archive_restores_the_last_commit_before_it() {
    let env = cluster("pg_idle_tail");
    let pg = &env.cluster;
    markers_table(pg);
    env.strata(&["backup", "pg", "main"]).success();
    let committed = marker(pg, 1);
    std::thread::sleep(Duration::from_secs(3));
    let target = Utc::now();
    std::thread::sleep(Duration::from_secs(3));
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    let shown = windows(&env);
    assert!(
        inside(&shown, target),
        "`list` shows {target} as restorable: {shown:?}"
    );
    let (report, copy) = restore_to(&env, "idle", target);
    assert_eq!(report["started"], true, "{report}");
    assert_eq!(rows(&copy), "1", "{report}");
    let reached: DateTime<Utc> = report["reached_time"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        reached, committed,
        "the copy ends with the last commit: {report}"
    );
}

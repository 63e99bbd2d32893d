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
    let (report, copy) = env.restore_to_time("idle", target, &[]);
    assert_eq!(report["started"], true, "{report}");
    assert_eq!(rows(&copy), "1", "{report}");
    assert!(
        report["target"]
            .as_str()
            .unwrap()
            .contains("after the last transaction before it"),
        "{report}"
    );
    let reached: DateTime<Utc> = report["reached_time"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        reached, committed,
        "the copy ends with the last commit: {report}"
    );
}

/// The primary's current WAL insert position.
fn insert_lsn(pg: &PgCluster) -> String {
    pg.psql("SELECT pg_current_wal_insert_lsn()")
}

/// A primary archiving into the vault with commits on timeline 1 (the last
/// of them in WAL only its standby received), then crashed; its standby
/// promoted (timeline 2, a `.history` and a `.partial` in the archive) with
/// commits of its own and an idle tail. Returns the environment, the new
/// primary, and the commit time of every marker.
///
/// With `check_before_new_commits`, a restore right after the promotion,
/// before timeline 2 has a transaction of its own, is checked too.
fn failover(
    label: &str,
    check_before_new_commits: bool,
) -> (PgStrata, PgCluster, Vec<(u32, DateTime<Utc>)>) {
    let env = cluster(label);
    let primary = &env.cluster;
    markers_table(primary);
    env.strata(&["backup", "pg", "main"]).success();
    let mut commits = vec![(1, marker(primary, 1))];
    std::thread::sleep(Duration::from_millis(400));
    commits.push((2, marker(primary, 2)));
    std::thread::sleep(Duration::from_millis(800));
    // Archived on timeline 1 with an idle tail after marker 2.
    primary.switch_and_wait_archived(ARCHIVE_WAIT);
    let standby = env.standby("standby");
    std::thread::sleep(Duration::from_millis(300));
    // Only in WAL the standby received: the primary never archives it.
    commits.push((3, marker(primary, 3)));
    std::thread::sleep(Duration::from_millis(400));
    commits.push((4, marker(primary, 4)));
    standby.wait_replayed(&insert_lsn(primary), ARCHIVE_WAIT);
    std::thread::sleep(Duration::from_millis(600));
    // A crash: a clean shutdown would switch and archive the last segment.
    primary.stop_mode("immediate");
    standby.promote();
    std::thread::sleep(Duration::from_millis(600));
    if check_before_new_commits {
        // Right after the failover, before a transaction ends on timeline
        // 2: a time after the promotion is the state after marker 4, which
        // only timeline 2's first segment holds (before its switch point).
        standby.switch_and_wait_archived(ARCHIVE_WAIT);
        // The very end of timeline 2's window.
        let target = windows(&env)
            .into_iter()
            .filter(|(tli, _, _)| *tli == 2)
            .map(|(_, _, to)| to)
            .max()
            .expect("a window on timeline 2");
        let (report, copy) = env.restore_to_time("after_promotion", target, &[]);
        assert_eq!(rows(&copy), "1,2,3,4", "{report}");
        assert_eq!(report["recovery_timeline"], 2, "{report}");
        assert!(
            report["target"]
                .as_str()
                .unwrap()
                .contains("after the last transaction before it"),
            "stopped by LSN after marker 4: {report}"
        );
        assert_eq!(report["started"], true, "{report}");
    }
    commits.push((5, marker(&standby, 5)));
    std::thread::sleep(Duration::from_millis(400));
    commits.push((6, marker(&standby, 6)));
    std::thread::sleep(Duration::from_millis(800));
    standby.switch_and_wait_archived(ARCHIVE_WAIT);
    let system_id = standby.psql("SELECT system_identifier FROM pg_control_system()");
    let wal = env
        .vault_dir
        .join(format!("engines/postgres/main/wal/{system_id}"));
    let names: Vec<String> = ["00000001", "00000002"]
        .iter()
        .flat_map(|tli| std::fs::read_dir(wal.join(tli)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "00000002.history")
            && names.iter().any(|n| n.ends_with(".partial")),
        "the archive holds timeline 2's history and timeline 1's partial segment: {names:?}"
    );
    (env, standby, commits)
}

/// The markers committed at or before `t`.
fn expected(commits: &[(u32, DateTime<Utc>)], t: DateTime<Utc>) -> String {
    commits
        .iter()
        .filter(|(_, at)| *at <= t)
        .map(|(i, _)| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn after_a_failover_times_before_and_after_the_last_commit_of_the_old_timeline_restore_exactly() {
    let (env, _primary2, commits) = failover("pg_failover", true);
    let at = |i: u32| commits.iter().find(|(m, _)| *m == i).unwrap().1;
    let shown = windows(&env);
    let ms = chrono::Duration::milliseconds;
    // (target, rows, timeline recovery must end on)
    let cases = [
        // The idle tail of timeline 1's archive: timeline 1 existed then.
        (at(2) + ms(400), "1,2", 1),
        // Just before and just after the last commit of timeline 1, which
        // only timeline 2's first segment holds (and the .partial).
        (at(4) - ms(150), "1,2,3", 2),
        (at(4) + ms(150), "1,2,3,4", 2),
        // After the promotion, after the last commit: the idle tail of timeline 2.
        (at(6) + ms(400), "1,2,3,4,5,6", 2),
    ];
    for (i, (target, rows_then, timeline)) in cases.into_iter().enumerate() {
        assert!(inside(&shown, target), "{target} is restorable: {shown:?}");
        assert_eq!(expected(&commits, target), rows_then);
        let (report, copy) = env.restore_to_time(&format!("copy{i}"), target, &[]);
        assert_eq!(rows(&copy), rows_then, "target {target}: {report}");
        assert_eq!(
            report["recovery_timeline"], timeline,
            "target {target}: {report}"
        );
    }
}

/// A small deterministic generator (SplitMix64): the seed alone replays a run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn random_times_inside_the_listed_windows_restore_the_rows_committed_by_then() {
    let seed: u64 = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with STRATA_TEST_SEED={seed})");
    let mut rng = SplitMix(seed);
    let (env, _primary2, commits) = failover("pg_random_targets", false);
    let shown = windows(&env);
    assert!(!shown.is_empty());
    for i in 0..6 {
        let (timeline, from, to) = shown[(rng.next() % shown.len() as u64) as usize];
        let span = (to - from).num_microseconds().unwrap().max(0) as u64;
        let target = from + chrono::Duration::microseconds((rng.next() % (span + 1)) as i64);
        let (report, copy) = env.restore_to_time(&format!("copy{i}"), target, &[]);
        assert_eq!(
            rows(&copy),
            expected(&commits, target),
            "seed {seed}: target {target} in the window of timeline {timeline} ({from} .. {to}): {report}"
        );
    }
}

/// `restore pg --json` with `args` after `main`, as `config` says.
fn restore_with(env: &PgStrata, config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "restore", "pg", "main"];
    all.extend_from_slice(args);
    env.strata_with(config, &all).success().json()
}

/// Switches `pg` to a new WAL segment and waits until the one it left is
/// archived; returns that segment's name and its bytes as PostgreSQL wrote
/// and archived them (read from `pg_wal` before a checkpoint can recycle it).
fn switch_and_keep_segment(pg: &PgCluster) -> (String, Vec<u8>) {
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    let bytes = std::fs::read(pg.data.join("pg_wal").join(&segment))
        .unwrap_or_else(|e| panic!("{segment} is still in pg_wal: {e}"));
    (segment, bytes)
}

/// `--to-lsn` stops recovery at that LSN: the commit before it is in the
/// copy, the one after it is not. A target directory holding a stopped
/// copy is refused (exit 9, naming it) and left alone, unless `--force`,
/// which replaces what it holds. With a second cluster (another system
/// identifier) archiving under the same name, a restore takes the system
/// of the newest backup, and `--system-id` the one it names, its WAL
/// included. `wal-fetch` without `--system-id` refuses such an archive
/// (exit 126, naming both systems, nothing written); with it, it gives
/// back the segment that system archived.
#[test]
fn to_lsn_stops_there_force_replaces_a_copy_and_system_id_picks_the_cluster() {
    let env = PgStrata::new("pg_lsn_force_system");
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    markers_table(pg);
    env.strata(&["backup", "pg", "main"]).success();
    pg.psql("INSERT INTO markers VALUES (1, now())");
    let lsn = insert_lsn(pg);
    pg.psql("INSERT INTO markers VALUES (2, now())");
    let (segment, archived) = switch_and_keep_segment(pg);

    let (dir, port) = env.restore_target("copy");
    let (dir_text, port_text) = (dir.to_str().unwrap(), port.to_string());
    let target = ["--target-dir", dir_text, "--port", &port_text, "--start"];
    let mut args = vec!["--to-lsn", lsn.as_str()];
    args.extend(target);
    let report = restore_with(&env, &env.config, &args);
    assert_eq!(report["target"], lsn.as_str(), "{report}");
    assert_eq!(report["recovery_timeline"], 1, "{report}");
    let copy = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    assert_eq!(rows(&copy), "1", "{report}");
    copy.stop();

    // The stopped copy is in the way: refused, and left as it was.
    let stray = dir.join("stray-file");
    std::fs::write(&stray, "left by the operator").unwrap();
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir_text,
    ]);
    assert_eq!(out.code(), Some(9), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains(&format!(
            "the target directory {} is not empty",
            dir.display()
        )),
        "{}",
        out.stderr_text()
    );
    assert!(stray.is_file() && dir.join("PG_VERSION").is_file());
    // --force replaces it.
    let mut args = vec!["--latest", "--force"];
    args.extend(target);
    let report = restore_with(&env, &env.config, &args);
    assert_eq!(report["started"], true, "{report}");
    assert_eq!(rows(&copy), "1,2", "{report}");
    assert!(!stray.exists(), "--force emptied the directory first");
    copy.stop();
    drop(copy);

    // The cluster re-created under the same name: another system, whose
    // backup is now the newest.
    let (other, other_config) = env.another_cluster("recreated");
    let other_id = other.psql("SELECT system_identifier FROM pg_control_system()");
    assert_ne!(other_id, system_id);
    markers_table(&other);
    other.psql("INSERT INTO markers VALUES (100, now())");
    env.strata_with(&other_config, &["backup", "pg", "main"])
        .success();
    other.psql("INSERT INTO markers VALUES (101, now())");
    let (other_segment, other_archived) = switch_and_keep_segment(&other);

    // `restore_command` without --system-id cannot tell the systems apart:
    // it refuses with 126, which stops recovery (1 would end it, as if the
    // archive were over), names both systems, and writes nothing.
    let scratch = env.dir.mkdir("scratch");
    let dest = scratch.join("RECOVERYXLOG");
    let fetch = |segment: &str, extra: &[&str]| {
        let mut args = vec![
            "pg",
            "wal-fetch",
            segment,
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ];
        args.extend_from_slice(extra);
        env.strata(&args)
    };
    let out = fetch(&segment, &[]);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "recovery must stop: {err}");
    assert!(
        err.contains(&format!(
            "error: wal-fetch {segment}: the archive of `main` holds several systems"
        )) && err.contains(&system_id)
            && err.contains(&other_id)
            && err.contains("hint: add --system-id to restore_command"),
        "{err}"
    );
    assert!(!dest.exists(), "wal-fetch wrote nothing");
    // With --system-id, each system's segment comes back as PostgreSQL
    // archived it.
    for (segment, id, archived) in [
        (&segment, &system_id, &archived),
        (&other_segment, &other_id, &other_archived),
    ] {
        fetch(segment, &["--system-id", id]).success();
        assert!(
            std::fs::read(&dest).unwrap() == *archived,
            "wal-fetch {segment} --system-id {id} gives back the archived segment"
        );
        std::fs::remove_file(&dest).unwrap();
    }

    let restored = |name: &str, extra: &[&str]| {
        let (dir, port) = env.restore_target(name);
        let port_text = port.to_string();
        let mut args = vec![
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port_text,
            "--start",
        ];
        args.extend_from_slice(extra);
        let report = restore_with(&env, &env.config, &args);
        let copy = PgCluster::adopt(dir, port, pg.socket_dir.clone());
        let system = copy.psql("SELECT system_identifier FROM pg_control_system()");
        (report, system, rows(&copy))
    };
    let (report, system, got) = restored("newest_system", &[]);
    assert_eq!(
        (system.as_str(), got.as_str()),
        (other_id.as_str(), "100,101"),
        "{report}"
    );
    let (report, system, got) = restored("named_system", &["--system-id", &system_id]);
    assert_eq!(
        (system.as_str(), got.as_str()),
        (system_id.as_str(), "1,2"),
        "{report}"
    );
}

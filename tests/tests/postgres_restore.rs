//! Full backups and point-in-time restores of a real PostgreSQL cluster into
//! another data directory and port, checked by starting the copy and reading
//! its rows.

use std::process::{Command, Stdio};
use std::time::Duration;

use strata_e2e::pg::{PgCluster, PgStrata};

const ARCHIVE_WAIT: Duration = Duration::from_secs(90);

/// Inserts marker `i` and returns the time it was inserted (just before its commit).
fn marker(pg: &PgCluster, i: u32) -> chrono::DateTime<chrono::Utc> {
    let at = pg.psql(&format!(
        "INSERT INTO markers VALUES ({i}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ));
    at.parse()
        .unwrap_or_else(|e| panic!("marker time `{at}`: {e}"))
}

fn background_pgbench(pg: &PgCluster, seconds: u32) -> std::process::Child {
    let mut cmd: Command = pg.program("pgbench");
    cmd.args([
        "-U",
        "postgres",
        "-c",
        "2",
        "-j",
        "1",
        "-T",
        &seconds.to_string(),
        "postgres",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd.spawn().expect("pgbench starts")
}

fn restore_json(env: &PgStrata, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "restore", "pg", "main"];
    all.extend_from_slice(args);
    env.strata(&all).success().json()
}

#[test]
fn point_in_time_restore_under_load_holds_exactly_the_markers_before_the_target() {
    let env = PgStrata::new("pg_pitr");
    let pg = &env.cluster;
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let before_backup = marker(pg, 0);
    std::thread::sleep(Duration::from_millis(300));

    let full = env
        .strata(&["--json", "backup", "pg", "main", "--kind", "full"])
        .success()
        .json();

    // `verify` reads the backup back and checks every file in it.
    let verified = env.strata(&["verify", "--json"]).success().json();
    assert_eq!(verified.as_array().map(Vec::len), Some(1), "{verified}");
    assert_eq!(verified[0]["id"], full["id"], "{verified}");
    assert_eq!(verified[0]["engine"], "postgres", "{verified}");
    assert_eq!(verified[0]["ok"], true, "{verified}");
    assert_eq!(verified[0]["problems"], serde_json::json!([]), "{verified}");

    let mut load = background_pgbench(pg, 10);
    let mut times = Vec::new();
    for i in 1..=8 {
        std::thread::sleep(Duration::from_millis(1000));
        times.push(marker(pg, i));
    }
    let status = load.wait().expect("pgbench ends");
    assert!(status.success(), "pgbench under load failed");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    // The engine-neutral listing shows the true window (the backup plus the
    // archived WAL after it), not the backup as a single point.
    let listed: serde_json::Value = serde_json::from_str(
        &env.strata(&["list", "--timeline", "--json"])
            .success()
            .stdout_text(),
    )
    .expect("list --json prints JSON");
    let windows = listed["timelines"][0]["windows"]
        .as_array()
        .expect("windows");
    assert_eq!(windows.len(), 1, "{listed}");
    let window_end: chrono::DateTime<chrono::Utc> =
        windows[0]["to_time"].as_str().unwrap().parse().unwrap();
    assert!(
        window_end >= times[7],
        "the window reaches the last marker: {listed}"
    );
    assert_eq!(windows[0]["fork"], "1", "{listed}");

    // Half a second after marker 4, half a second before marker 5.
    let target = times[3] + chrono::Duration::milliseconds(500);
    assert!(target < times[4]);
    let (dir, port) = env.restore_target("pitr");
    let report = restore_json(
        &env,
        &[
            "--to-time",
            &target.to_rfc3339(),
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--start",
        ],
    );
    let copy = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    assert_eq!(report["started"], true, "{report}");
    assert_eq!(
        report["timeline"], 2,
        "the promoted copy runs on a new timeline: {report}"
    );
    let reached: chrono::DateTime<chrono::Utc> =
        report["reached_time"].as_str().unwrap().parse().unwrap();
    assert!(
        reached <= target && reached >= times[3],
        "reached {reached}, target {target}"
    );

    assert_eq!(
        copy.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers"),
        "0,1,2,3,4"
    );
    assert_eq!(copy.psql("SELECT count(*) FROM pgbench_accounts"), "200000");
    assert_eq!(
        copy.psql("SHOW archive_mode"),
        "off",
        "the copy never archives into the source's vault"
    );
    copy.amcheck();
    // The source is untouched and still archiving.
    assert_eq!(pg.psql("SELECT count(*) FROM markers"), "9");
    drop(copy);

    // Latest: every marker.
    let (dir, port) = env.restore_target("latest");
    let report = restore_json(
        &env,
        &[
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--start",
        ],
    );
    assert_eq!(report["started"], true, "{report}");
    let copy = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    assert_eq!(copy.psql("SELECT count(*) FROM markers"), "9");

    // A non-empty (here: running) target is refused, and left alone.
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
    ]);
    assert_eq!(out.code(), Some(9), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains(&format!(
            "a PostgreSQL server is running in {}",
            dir.display()
        )),
        "{}",
        out.stderr_text()
    );
    assert_eq!(copy.psql("SELECT count(*) FROM markers"), "9");
    drop(copy);

    // Before the first backup ended: refused before anything is written, naming the nearest time.
    let (dir, _) = env.restore_target("too_early");
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--to-time",
        &before_backup.to_rfc3339(),
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(err.contains("is not restorable"), "{err}");
    assert!(err.contains("the earliest restorable time is"), "{err}");
    assert!(!dir.exists(), "nothing was written");

    // The listing shows the backup and a window on timeline 1 that covers the target.
    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    let window = &list["windows"][0];
    assert_eq!(window["timeline"], 1);
    let from: chrono::DateTime<chrono::Utc> =
        window["start_time"].as_str().unwrap().parse().unwrap();
    let to: chrono::DateTime<chrono::Utc> = window["end_time"].as_str().unwrap().parse().unwrap();
    assert!(from < target && target < to, "{window}");
}

#[test]
fn tablespaces_are_remapped_and_an_unmapped_live_tablespace_is_refused() {
    let env = PgStrata::new("pg_tblspc");
    let pg = &env.cluster;
    let space = env.dir.mkdir("space1");
    strata_e2e::pg::give_to_postgres(&space);
    pg.psql(&format!(
        "CREATE TABLESPACE space1 LOCATION '{}'",
        space.display()
    ));
    pg.psql("CREATE TABLE far (id int, note text) TABLESPACE space1");
    pg.psql("INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    env.strata(&["backup", "pg", "main"]).success();
    pg.psql("INSERT INTO far SELECT g, 'after' FROM generate_series(5001, 6000) g");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    // The tablespace's original location is in use here: refused, with the option to use.
    let (dir, port) = env.restore_target("copy");
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(9), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains(&format!("--tablespace-map {}=", space.display())),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.exists(), "nothing was written");

    // --force empties the target directory, never a tablespace the running
    // source cluster uses.
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--force",
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(9), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("which the running cluster"),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.exists(), "nothing was written");
    assert_eq!(pg.psql("SELECT count(*) FROM far"), "6000");

    // A relative new location would be linked inside pg_tblspc: refused.
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--tablespace-map",
        &format!("{}=relative/dir", space.display()),
    ]);
    assert_eq!(out.code(), Some(3), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("is not an absolute path"),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.exists(), "nothing was written");

    // A space and a backslash in the new location: tablespace_map must carry
    // them with PostgreSQL's escaping, or the link points elsewhere.
    let new_space = env.dir.path("space1 restored\\bs");
    let report = restore_json(
        &env,
        &[
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--tablespace-map",
            &format!("{}={}", space.display(), new_space.display()),
            "--start",
        ],
    );
    assert_eq!(report["started"], true, "{report}");
    let copy = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    assert_eq!(
        copy.psql("SELECT count(*), count(*) FILTER (WHERE note = 'after') FROM far"),
        "6000|1000"
    );
    assert_eq!(
        copy.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'space1'"),
        new_space.display().to_string()
    );
    assert_eq!(
        std::fs::read_link(
            dir.join("pg_tblspc")
                .join(copy.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'space1'"))
        )
        .unwrap(),
        new_space
    );
    // The source's tablespace is untouched.
    assert_eq!(pg.psql("SELECT count(*) FROM far"), "6000");
    copy.amcheck();
}

#[test]
fn a_restored_cluster_keeps_archiving_on_its_new_timeline_and_later_restores_follow_it() {
    let env = PgStrata::new("pg_timeline");
    let pg = &env.cluster;
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
    env.strata(&["backup", "pg", "main"]).success();
    marker(pg, 1);
    std::thread::sleep(Duration::from_millis(700));
    let t1 = marker(pg, 2) + chrono::Duration::milliseconds(300);
    std::thread::sleep(Duration::from_millis(700));
    marker(pg, 3);
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    // The operator restores to t1 and makes the copy the new primary: it
    // archives again (archive_mode back on) under the same cluster name.
    let (dir, port) = env.restore_target("primary2");
    let report = restore_json(
        &env,
        &[
            "--to-time",
            &t1.to_rfc3339(),
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--start",
        ],
    );
    assert_eq!(report["timeline"], 2, "{report}");
    pg.stop();
    let primary2 = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    assert_eq!(
        primary2.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers"),
        "1,2"
    );
    primary2.psql("ALTER SYSTEM SET archive_mode = on");
    primary2.stop();
    primary2.start();
    primary2.psql("INSERT INTO markers VALUES (20, now())");
    primary2.switch_and_wait_archived(ARCHIVE_WAIT);
    let system_id = primary2.psql("SELECT system_identifier FROM pg_control_system()");
    assert!(
        env.vault_dir
            .join(format!(
                "engines/postgres/main/wal/{system_id}/00000002/00000002.history"
            ))
            .is_file(),
        "timeline 2's history file is archived"
    );

    // Latest now means timeline 2: marker 3 (abandoned on timeline 1) is absent, 20 present.
    let (dir3, port3) = env.restore_target("latest");
    let report = restore_json(
        &env,
        &[
            "--latest",
            "--target-dir",
            dir3.to_str().unwrap(),
            "--port",
            &port3.to_string(),
            "--start",
        ],
    );
    assert_eq!(report["recovery_timeline"], 2, "{report}");
    assert_eq!(report["timeline"], 3, "{report}");
    let copy = PgCluster::adopt(dir3, port3, pg.socket_dir.clone());
    assert_eq!(
        copy.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers"),
        "1,2,20"
    );

    // The listing shows both timelines and their windows.
    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    let timelines: Vec<u64> = list["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, vec![1, 2], "{list}");
    assert_eq!(list["timelines"][1]["parent"], 1, "{list}");
}

#[test]
fn a_target_in_a_wal_gap_is_refused_with_the_nearest_restorable_times() {
    let env = PgStrata::new("pg_gap");
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
    env.strata(&["backup", "pg", "main"]).success();
    marker(pg, 1);
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    // This segment will be lost from the vault.
    let lost = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    std::thread::sleep(Duration::from_millis(500));
    let in_gap = marker(pg, 2) + chrono::Duration::milliseconds(100);
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    std::thread::sleep(Duration::from_millis(500));
    marker(pg, 3);
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    let object = env.vault_dir.join(format!(
        "engines/postgres/main/wal/{system_id}/00000001/{lost}"
    ));
    std::fs::remove_file(&object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
    std::thread::sleep(Duration::from_millis(500));
    env.strata(&["backup", "pg", "main"]).success();
    marker(pg, 4);
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    let (dir, _) = env.restore_target("in_gap");
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--to-time",
        &in_gap.to_rfc3339(),
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(err.contains("is not restorable"), "{err}");
    assert!(
        err.contains("no log backup covers positions"),
        "names the hole in the archived WAL: {err}"
    );
    assert!(
        err.contains("(before) and ") && err.contains("(after)"),
        "names the restorable times on both sides: {err}"
    );
    assert!(!dir.exists(), "nothing was written");

    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    let windows = list["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "the gap splits the timeline: {list}");
    let first_end: chrono::DateTime<chrono::Utc> =
        windows[0]["end_time"].as_str().unwrap().parse().unwrap();
    let second_start: chrono::DateTime<chrono::Utc> =
        windows[1]["start_time"].as_str().unwrap().parse().unwrap();
    assert!(first_end < in_gap && in_gap < second_start, "{list}");
}

#[test]
fn a_backup_interrupted_by_a_server_restart_fails_and_commits_nothing() {
    let env = PgStrata::new("pg_interrupted");
    let pg = &env.cluster;
    pg.pgbench(&["-i", "-s", "8", "-q"]);
    let config = env.config.clone();
    let backup = std::thread::spawn(move || {
        strata_e2e::cli::Strata::new()
            .arg("--config")
            .arg(&config)
            .args(["backup", "pg", "main"])
            .run()
    });
    // Restart the server while the backup copies files (its session sits idle after pg_backup_start).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let in_backup = pg.try_psql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backup_start%' AND state = 'idle'",
        );
        if in_backup.as_deref() == Ok("1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop();
    pg.start();
    let out = backup.join().unwrap();
    let err = out.stderr_text();
    assert_eq!(
        out.code(),
        Some(5),
        "a lost backup session is an engine failure: {err}"
    );
    assert!(
        err.contains(
            "error: full backup of postgres `main` failed; nothing was committed: pg_backup_stop failed: "
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "hint: the backup session was lost (a server restart or a dropped connection ends backup mode)"
        ),
        "{err}"
    );
    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    assert_eq!(list["backups"], serde_json::json!([]), "{list}");
    let manifests = env.vault_dir.join("manifests/postgres/main");
    let written: Vec<_> = std::fs::read_dir(&manifests)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "no manifest was written: {written:?}");
    let left = files_under(&env.vault_dir.join("data"));
    assert!(
        left.is_empty(),
        "the failed backup deleted its segments: {left:?}"
    );
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_config_naming_another_data_directory_is_refused_before_a_backup() {
    let env = PgStrata::new("pg_wrong_dir");
    // A stale copy of the data directory, named in the config instead of the live one.
    let stale = env.dir.mkdir("stale-copy");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let live = env.cluster.data.display().to_string();
    std::fs::write(
        &env.config,
        text.replace(
            &format!("data_directory = \"{live}\""),
            &format!("data_directory = \"{}\"", stale.display()),
        ),
    )
    .unwrap();
    let out = env.strata(&["backup", "pg", "main"]);
    assert_eq!(out.code(), Some(3), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains(&format!("the server runs from {live}")),
        "{err}"
    );
    assert!(err.contains("nothing was committed"), "{err}");
    let list = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    assert_eq!(
        list["backups"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{list}"
    );
}

/// A tmpfs of `size` mounted at `dir` for the life of the value (root only).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A restore target that fills up: the error names the full disk and the
/// file being written, not the broken pipe it causes between the vault
/// reader and the extractor, and says it is not worth retrying.
#[test]
fn a_restore_onto_a_full_disk_names_the_disk_and_the_file() {
    if !strata_e2e::pg::running_as_root() {
        strata_e2e::skip::skipped(
            "a_restore_onto_a_full_disk_names_the_disk_and_the_file",
            "mounting a small file system needs root",
        );
        return;
    }
    let env = PgStrata::new("pg_enospc");
    let pg = &env.cluster;
    pg.psql(
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS note FROM generate_series(1, 300000) g",
    );
    env.strata(&["backup", "pg", "main"]).success();
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    let small = SmallDisk::mount(&env.dir.path("small"), "12m");
    let target = small.0.join("copy");
    let out = env.strata(&[
        "--json",
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(10), "{}", out.stderr_text());
    let text = out.stderr_text();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!text.to_lowercase().contains("broken pipe"), "{text}");
    let report: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON error: {text}"));
    let error = &report["error"];
    assert_eq!(error["retryable"], false, "{report}");
    let path = error["context"]["path"].as_str().unwrap_or_default();
    assert!(path.starts_with(target.to_str().unwrap()), "{report}");
    assert!(
        error["hints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().starts_with("free space on")),
        "{report}"
    );
    drop(small);
    // The backup is untouched: a restore with room succeeds.
    let (dir, _) = env.restore_target("roomy");
    env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
    ])
    .success();
}

//! WAL archiving through `strata pg wal-push` / `wal-fetch` with a real
//! PostgreSQL: duplicates, conflicts, history files, and a vault that is
//! unreachable for a while.

use std::time::Duration;

use strata_e2e::pg::{PgCluster, PgStrata, give_to_postgres};

const ARCHIVE_WAIT: Duration = Duration::from_secs(60);

/// Runs `strata pg wal-fetch FILE <scratch>/DEST` as PostgreSQL's
/// restore_command would (as the postgres user, in `scratch`), expects
/// success, and returns the fetched bytes.
fn wal_fetch(env: &PgStrata, scratch: &std::path::Path, file: &str, dest: &str) -> Vec<u8> {
    let dest = scratch.join(dest);
    env.strata_as_postgres(
        scratch,
        &[
            "pg",
            "wal-fetch",
            file,
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    )
    .success();
    std::fs::read(&dest).unwrap()
}

fn segment_object(env: &PgStrata, system_id: &str, segment: &str) -> std::path::PathBuf {
    env.vault_dir
        .join("engines/postgres/main/wal")
        .join(system_id)
        .join(&segment[..8])
        .join(segment)
}

#[test]
fn archived_segments_come_back_byte_for_byte_and_duplicates_are_judged_by_content() {
    let env = PgStrata::new("pg_wal_push");
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    assert!(
        segment_object(&env, &system_id, &segment).is_file(),
        "{segment} is in the vault"
    );

    // The segment is still in pg_wal (not recycled yet): fetch it back and compare.
    let original =
        std::fs::read(pg.data.join("pg_wal").join(&segment)).expect("segment still in pg_wal");
    let scratch = env.dir.mkdir("scratch");
    give_to_postgres(&scratch);
    assert_eq!(
        wal_fetch(&env, &scratch, &segment, "RECOVERYXLOG"),
        original,
        "wal-fetch returns the archived bytes"
    );
    let dest = scratch.join("RECOVERYXLOG");
    std::fs::remove_file(&dest).unwrap();

    // A missing file is exit 1 (how recovery finds the end of WAL), and
    // nothing is written.
    let missing = env.strata_as_postgres(
        &scratch,
        &[
            "pg",
            "wal-fetch",
            "0000000100000000000000FF",
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    );
    assert_eq!(missing.code(), Some(1), "{}", missing.stderr_text());
    assert!(!dest.exists(), "nothing was written for a missing file");

    // PostgreSQL re-archiving the same segment after a crash: success.
    let rel = format!("pg_wal/{segment}");
    env.strata_as_postgres(&pg.data, &["pg", "wal-push", &rel, "--cluster", "main"])
        .success();

    // Different bytes under the same name: refused, naming both, and the
    // archived object keeps its bytes.
    let object = segment_object(&env, &system_id, &segment);
    let stored = std::fs::read(&object).unwrap();
    let forged_dir = env.dir.mkdir("forged");
    let mut forged = original.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    let forged_path = forged_dir.join(&segment);
    std::fs::write(&forged_path, &forged).unwrap();
    give_to_postgres(&forged_dir);
    let out = env.strata_as_postgres(
        &pg.data,
        &[
            "pg",
            "wal-push",
            forged_path.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    );
    assert_eq!(
        out.code(),
        Some(9),
        "a conflict exits 9: {}",
        out.stderr_text()
    );
    let err = out.stderr_text();
    assert!(
        err.contains(forged_path.to_str().unwrap()),
        "names the local file: {err}"
    );
    assert!(
        err.contains(&format!(
            "engines/postgres/main/wal/{system_id}/00000001/{segment}"
        )),
        "names the archived object: {err}"
    );
    assert_eq!(
        std::fs::read(&object).unwrap(),
        stored,
        "the archived object is untouched"
    );
    let after = env.dir.mkdir("after-forged");
    give_to_postgres(&after);
    assert_eq!(
        wal_fetch(&env, &after, &segment, "RECOVERYXLOG"),
        original,
        "wal-fetch still returns the bytes PostgreSQL archived"
    );

    // History files are never overwritten.
    let history = forged_dir.join("00000007.history");
    std::fs::write(&history, "6\t0/5000000\tno recovery target specified\n").unwrap();
    give_to_postgres(&forged_dir);
    env.strata_as_postgres(
        &pg.data,
        &[
            "pg",
            "wal-push",
            history.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    )
    .success();
    env.strata_as_postgres(
        &pg.data,
        &[
            "pg",
            "wal-push",
            history.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    )
    .success();
    std::fs::write(&history, "6\t0/6000000\tsomething else\n").unwrap();
    let out = env.strata_as_postgres(
        &pg.data,
        &[
            "pg",
            "wal-push",
            history.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    );
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(9), "a conflict exits 9: {err}");
    assert!(
        err.contains(&format!(
            "{} ({} bytes) differs from the archived file of that name (timeline history files are never overwritten): ",
            history.display(),
            std::fs::metadata(&history).unwrap().len()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "engines/postgres/main/wal/{system_id}/00000007/00000007.history"
        )),
        "names the archived object: {err}"
    );
    assert_eq!(
        String::from_utf8(wal_fetch(
            &env,
            &scratch,
            "00000007.history",
            "RECOVERYHISTORY"
        ))
        .unwrap(),
        "6\t0/5000000\tno recovery target specified\n"
    );
}

#[test]
fn an_unreachable_vault_fails_the_push_and_postgres_retries_until_it_is_back() {
    let env = PgStrata::new("pg_wal_unreachable");
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    let away = env.dir.path("vault.away");
    std::fs::rename(&env.vault_dir, &away).unwrap();

    pg.psql("CREATE TABLE during_outage AS SELECT g FROM generate_series(1, 10000) g");
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    // The archiver reports failures and keeps the segment.
    let deadline = std::time::Instant::now() + ARCHIVE_WAIT;
    loop {
        let failed = pg.psql("SELECT failed_count > 0 FROM pg_stat_archiver");
        if failed == "t" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never reported a failure"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = pg.log();
    assert!(
        log.contains(&format!("{} does not exist", env.vault_dir.display())),
        "the server log shows why:\n{log}"
    );
    assert!(
        pg.data.join("pg_wal").join(&segment).is_file(),
        "PostgreSQL keeps the segment"
    );
    assert!(
        pg.data
            .join(format!("pg_wal/archive_status/{segment}.ready"))
            .is_file(),
        "the segment is still waiting to be archived"
    );

    // The vault comes back; PostgreSQL's retries deliver the segment.
    std::fs::rename(&away, &env.vault_dir).unwrap();
    pg.wait_archived(&segment, ARCHIVE_WAIT);
    assert!(segment_object(&env, &system_id, &segment).is_file());
    let scratch = env.dir.mkdir("scratch");
    give_to_postgres(&scratch);
    assert_eq!(
        wal_fetch(&env, &scratch, &segment, "RECOVERYXLOG"),
        std::fs::read(pg.data.join("pg_wal").join(&segment)).unwrap(),
        "the segment archived after the outage is the one PostgreSQL wrote"
    );
}

/// `backup pg` while PostgreSQL's `archive_command` fails (the outage
/// campaign's finding: a vault that refuses WAL puts): after
/// `archive_wait` the backup fails uncommitted (exit 5), naming the WAL it
/// waited for and what `pg_stat_archiver` says about the archiver's
/// failures; once archiving works again, the next backup succeeds.
#[test]
fn backup_pg_names_a_failing_archiver_after_archive_wait_and_commits_nothing() {
    let env = PgStrata::new("pg_backup_archiver_failing");
    let pg = &env.cluster;
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str("archive_wait = \"3s\"\n");
    std::fs::write(&env.config, config).unwrap();
    let archive_command = pg.psql("SHOW archive_command");
    pg.psql("ALTER SYSTEM SET archive_command = 'exit 1'");
    pg.psql("SELECT pg_reload_conf()");

    let started = std::time::Instant::now();
    let out = env.strata(&["backup", "pg", "main"]);
    let said = out.stderr_text();
    assert_eq!(out.code(), Some(5), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "archive_wait = 3s was not honoured (the default is 2 minutes): {said}"
    );
    assert!(said.contains("is not in the vault: missing 0000"), "{said}");
    assert!(
        said.contains("archive_command is failing: it failed for 0000"),
        "{said}"
    );
    assert!(said.contains("nothing was committed"), "{said}");
    let listed = env.strata(&["--json", "list"]).success().stdout_text();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive_command.replace('\'', "''")
    ));
    pg.psql("SELECT pg_reload_conf()");
    env.strata(&["backup", "pg", "main"]).success();
}

#[test]
fn check_reports_settings_and_the_lines_to_fix() {
    let env = PgStrata::new("pg_check");
    let ok = env.strata(&["pg", "check", "main"]).success();
    let text = ok.stdout_text();
    assert!(text.contains("version          15"), "{text}");
    assert!(
        text.contains("OK: WAL archiving into Strata is configured."),
        "{text}"
    );
    let system_id = env
        .cluster
        .psql("SELECT system_identifier FROM pg_control_system()");
    assert!(text.contains(&system_id), "{text}");

    env.cluster.psql("ALTER SYSTEM SET archive_timeout = 0");
    env.cluster
        .psql("ALTER SYSTEM SET archive_command = 'cp %p /nowhere/%f'");
    env.cluster.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    let out = env.strata(&["pg", "check", "main"]);
    assert_eq!(
        out.code(),
        Some(3),
        "misconfiguration is a config error: {}",
        out.stderr_text()
    );
    let text = out.stdout_text();
    assert!(text.contains("2 problem(s)"), "{text}");
    assert!(text.contains("fix: archive_timeout = 60"), "{text}");
    assert!(
        text.contains("fix: archive_command = '")
            && text.contains(" pg wal-push %p --cluster main'"),
        "{text}"
    );
    assert!(
        text.contains("restore_command = '")
            && text.contains("pg wal-fetch %f \"%p\" --cluster main'"),
        "{text}"
    );
    let report = env.strata(&["--json", "pg", "check", "main"]).json();
    assert_eq!(report["archive_timeout_secs"], 0);
    assert_eq!(report["findings"].as_array().unwrap().len(), 2);
}

/// The attributes of archived segment `segment` of system `system_id`.
fn segment_attributes(
    env: &PgStrata,
    system_id: &str,
    segment: &str,
) -> std::collections::BTreeMap<String, String> {
    use strata_core::plugin::ArchiveStore;
    use strata_core::vault::{Vault, VaultArchive, VaultConfig};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let vault = Vault::open(&VaultConfig::from_url(&env.vault_url))
            .await
            .unwrap();
        let archive = VaultArchive::new(vault, "postgres", "main");
        archive
            .attributes(&format!("wal/{system_id}/{}/{segment}", &segment[..8]))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{segment} is archived"))
    })
}

/// `(start, end, xact_time)` as text.
type XactRecord = (String, String, String);

#[test]
fn archived_segments_record_their_transaction_ends_as_pg_walinspect_reads_them() {
    // 1 MiB segments: many segment boundaries for a small load.
    let env = PgStrata::with_initdb("pg_wal_records", None, &["--wal-segsize=1"]);
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.psql("CREATE EXTENSION pg_walinspect");
    pg.psql("CREATE TABLE filler (id int, pad text)");
    pg.psql("CREATE TABLE small (id int)");
    let first = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    // Many transactions of a few KB (commits land at every place of a
    // page and some cross into the next segment), aborts, and commits
    // spanning pages (a transaction creating tables invalidates a lot).
    let script = env.dir.path("filler.sql");
    std::fs::write(
        &script,
        "INSERT INTO filler SELECT g, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 8)) \
         FROM generate_series(1, 3) g;\n\
         BEGIN; INSERT INTO small VALUES (1); ROLLBACK;\n\
         BEGIN; CREATE TEMP TABLE scratch (a int, b text) ON COMMIT DROP; INSERT INTO scratch VALUES (1, 'x'); COMMIT;\n",
    )
    .unwrap();
    give_to_postgres(&script);
    pg.psql(
        "DO $$ BEGIN FOR i IN 1..60 LOOP EXECUTE format('CREATE TABLE wide_%s (a int, b text, c int)', i); END LOOP; END $$",
    );
    let mut bench = pg.program("pgbench");
    bench
        .args(["-U", "postgres", "-n", "-c", "2", "-t", "1000", "-f"])
        .arg(&script)
        .arg("postgres");
    let out = bench.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql("BEGIN; DROP TABLE wide_1, wide_2, wide_3; COMMIT");
    let last = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    pg.wait_archived(&last, ARCHIVE_WAIT);

    let per_log = 4096; // 1 MiB segments per 4 GiB log id
    let segno = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * per_log
            + u64::from_str_radix(&name[16..24], 16).unwrap()
    };
    let (from, to) = (segno(&first), segno(&last));
    assert!(to >= from + 2, "the load spans segments: {first} .. {last}");
    let seg_size: u64 = 1024 * 1024;
    let lsn = |at: u64| format!("{:X}/{:X}", at >> 32, at & 0xFFFF_FFFF);
    let mut crossings = 0;
    for seg in from..=to {
        let name = format!("00000001{:08X}{:08X}", seg / per_log, seg % per_log);
        // pg_walinspect lists the records that end by its end LSN: read
        // past the segment for the one crossing into the next.
        let (start, end, beyond) = (
            lsn(seg * seg_size),
            lsn((seg + 1) * seg_size),
            lsn((seg + 1) * seg_size + 65536),
        );
        let records: Vec<XactRecord> = pg
            .psql(&format!(
                "SET TimeZone = 'UTC'; \
                 SELECT start_lsn, end_lsn, \
                        to_char(split_part(description, ';', 1)::timestamptz, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM pg_get_wal_records_info('{start}', least('{beyond}', pg_current_wal_flush_lsn())) \
                 WHERE resource_manager = 'Transaction' \
                   AND record_type IN ('COMMIT', 'ABORT', 'COMMIT_PREPARED', 'ABORT_PREPARED') \
                   AND start_lsn >= '{start}' AND start_lsn < '{end}' ORDER BY start_lsn"
            ))
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
            })
            .collect();
        let ends_in = |r: &XactRecord| {
            let (hi, lo) = r.1.split_once('/').unwrap();
            (u64::from_str_radix(hi, 16).unwrap() << 32) + u64::from_str_radix(lo, 16).unwrap()
                <= (seg + 1) * seg_size
        };
        let inside: Vec<&XactRecord> = records.iter().filter(|r| ends_in(r)).collect();
        let crossing: Option<&XactRecord> = records.last().filter(|r| !ends_in(r));
        let attrs = segment_attributes(&env, &system_id, &name);
        let context = format!("{name}: {attrs:?}, pg_walinspect: {records:?}");
        let scan = attrs.get("commit_scan").map(String::as_str);
        assert!(matches!(scan, Some("complete" | "uncertain")), "{context}");
        let times = || inside.iter().map(|r| r.2.clone());
        assert_eq!(
            attrs.get("first_commit_time").cloned(),
            times().min(),
            "{context}"
        );
        assert_eq!(
            attrs.get("last_commit_time").cloned(),
            times().max(),
            "{context}"
        );
        assert_eq!(
            attrs.get("last_commit_lsn"),
            inside.last().map(|r| &r.0),
            "{context}"
        );
        assert_eq!(
            attrs.get("last_commit_end_lsn"),
            inside.last().map(|r| &r.1),
            "{context}"
        );
        if scan == Some("complete") {
            assert_eq!(
                attrs.get("crossing_commit_lsn"),
                crossing.map(|r| &r.0),
                "{context}"
            );
            assert_eq!(
                attrs.get("crossing_commit_time"),
                crossing.map(|r| &r.2),
                "{context}"
            );
        }
        crossings += usize::from(crossing.is_some());
    }
    println!(
        "{} segments, {crossings} with a commit crossing into the next",
        to - from + 1
    );
}

/// `restore_command` must tell "not archived" from "cannot be read":
/// PostgreSQL takes an exit of 1 for the end of the archive (it ends
/// recovery there and promotes), but stops recovery when the command exits
/// above 125. A damaged archived segment and an unreachable vault make
/// `wal-fetch` exit 126 naming the object or the vault, and a restore whose
/// WAL holds a damaged segment fails instead of promoting a copy that lacks
/// the commits after it.
#[test]
fn wal_fetch_exits_126_on_damage_or_an_unreachable_vault_and_recovery_stops_there() {
    let env = PgStrata::new("pg_wal_fetch_failures");
    let pg = &env.cluster;
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY)");
    env.strata(&["backup", "pg", "main"]).success();
    // Marker 1, 2 and 3 each in a segment of its own, after the backup's.
    pg.psql("INSERT INTO markers VALUES (1)");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    pg.psql("INSERT INTO markers VALUES (2)");
    let damaged = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    pg.psql("INSERT INTO markers VALUES (3)");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);

    // One byte of the archived segment flipped, as a bad disk would.
    let object = segment_object(&env, &system_id, &damaged);
    let sound = std::fs::read(&object).unwrap();
    let mut bytes = sound.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();

    let scratch = env.dir.mkdir("scratch");
    give_to_postgres(&scratch);
    let dest = scratch.join("RECOVERYXLOG");
    let fetch = |file: &str| {
        env.strata_as_postgres(
            &scratch,
            &[
                "pg",
                "wal-fetch",
                file,
                dest.to_str().unwrap(),
                "--cluster",
                "main",
            ],
        )
    };
    let out = fetch(&damaged);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "{err}");
    assert!(
        err.contains(&format!("error: wal-fetch {damaged}: ")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "engines/postgres/main/wal/{system_id}/00000001/{damaged}"
        )),
        "names the damaged object: {err}"
    );
    assert!(!dest.exists(), "nothing was written for a damaged segment");

    // Recovery through the damaged segment stops there: the restore fails
    // (an engine failure, exit 5) naming the segment, and the copy was
    // never promoted without markers 2 and 3.
    let (dir, port) = env.restore_target("through_damage");
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--start",
        "--start-timeout",
        "60",
    ]);
    let copy = PgCluster::adopt(dir.clone(), port, pg.socket_dir.clone());
    let err = out.stderr_text();
    let log = std::fs::read_to_string(dir.join("strata-restore.log")).unwrap_or_default();
    assert_eq!(out.code(), Some(5), "{err}\nserver log:\n{log}");
    assert!(
        err.contains("error: the restored cluster did not start: ")
            && err.contains(&format!(
                "could not restore file \"{damaged}\" from archive"
            )),
        "{err}"
    );
    assert!(!copy.is_running(), "the copy stopped: {log}");
    assert!(
        !log.contains("selected new timeline ID") && !log.contains("archive recovery complete"),
        "the copy was promoted:\n{log}"
    );
    drop(copy);

    // The vault unreachable (moved away): 126 too, naming it.
    std::fs::write(&object, &sound).unwrap();
    let away = env.dir.path("vault.away");
    std::fs::rename(&env.vault_dir, &away).unwrap();
    let out = fetch(&damaged);
    std::fs::rename(&away, &env.vault_dir).unwrap();
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "{err}");
    assert!(
        err.contains(&format!("error: wal-fetch {damaged}: "))
            && err.contains(&env.vault_dir.display().to_string()),
        "names the vault: {err}"
    );
    assert!(!dest.exists(), "nothing was written without a vault");

    // With the segment sound again the same restore promotes with every marker.
    let (dir, port) = env.restore_target("sound");
    let report = env
        .strata(&[
            "--json",
            "restore",
            "pg",
            "main",
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--start",
        ])
        .success()
        .json();
    assert_eq!(report["started"], true, "{report}");
    let copy = PgCluster::adopt(dir, port, pg.socket_dir.clone());
    assert_eq!(
        copy.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers"),
        "1,2,3"
    );
}

/// An object store that answers every request with `503 Service
/// Unavailable` (what S3 says when it sheds load) on a loopback port, until
/// the test ends. Returns its endpoint URL and how many requests it refused.
fn store_answering_503() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            // The request head; nothing the client sends matters here.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (endpoint, refused)
}

/// A store that is down (here: every request answered 503) is not "the
/// archive has no such file": `wal-fetch` retries (the store's retries as
/// `[vault.options]` set them, then its own), then exits 126, which stops
/// PostgreSQL's recovery, naming the failure; nothing is written. Exit 1
/// here would end recovery early, as if the archive were over.
#[test]
fn wal_fetch_exits_126_when_the_store_keeps_failing() {
    let dir = strata_e2e::fixture::TestDir::new("wal-fetch-503");
    let (endpoint, refused) = store_answering_503();
    let config = dir.path("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"s3://strata-down/vault\"\n\
             [vault.options]\naws_endpoint = \"{endpoint}\"\naws_region = \"us-east-1\"\n\
             allow_http = \"true\"\nmax_retries = \"1\"\nretry_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let dest = dir.path("RECOVERYXLOG");
    let out = strata_e2e::cli::Strata::new()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .arg("--config")
        .arg(&config)
        .args([
            "pg",
            "wal-fetch",
            "000000010000000000000002",
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ])
        .run();
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "{err}");
    assert!(
        err.lines().any(|l| l
            .starts_with("error: wal-fetch 000000010000000000000002: the vault s3://strata-down/vault could not be reached")
            && l.contains("503 Service Unavailable")),
        "{err}"
    );
    assert_eq!(
        err.matches("wal-fetch failed; retrying").count(),
        5,
        "wal-fetch's own attempts: {err}"
    );
    assert!(!dest.exists(), "nothing was written");
    // The store's retries (max_retries = 1) within each of wal-fetch's own
    // attempts (one and five more): at least twelve requests.
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 12,
        "{} requests",
        refused.load(std::sync::atomic::Ordering::SeqCst)
    );
}

//! WAL archiving through `strata pg wal-push` / `wal-fetch` with a real
//! PostgreSQL: duplicates, conflicts, history files, and a vault that is
//! unreachable for a while.

use std::time::Duration;

use strata_e2e::pg::{PgStrata, give_to_postgres};

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

    // A missing file is exit 1 (how recovery finds the end of WAL).
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

    // PostgreSQL re-archiving the same segment after a crash: success.
    let rel = format!("pg_wal/{segment}");
    env.strata_as_postgres(&pg.data, &["pg", "wal-push", &rel, "--cluster", "main"])
        .success();

    // Different bytes under the same name: refused, naming both.
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
        std::fs::read(&dest).unwrap(),
        original,
        "the archived copy is untouched"
    );
    env.strata_as_postgres(
        &scratch,
        &[
            "pg",
            "wal-fetch",
            &segment,
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ],
    )
    .success();
    assert_eq!(std::fs::read(&dest).unwrap(), original);

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
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr_text()
            .contains("timeline history files are never overwritten"),
        "{}",
        out.stderr_text()
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

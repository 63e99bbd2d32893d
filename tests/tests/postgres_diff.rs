//! PostgreSQL differential and incremental backups against a real cluster:
//! after each kind of change a page-LSN differential could get wrong, a
//! point-in-time restore from full + differential + WAL lands on exactly
//! the rows the source had at the target time, in every table of every
//! database, and `pg_amcheck` finds the heap and every B-tree sound.
//!
//! Which guard of a page-LSN differential (`reference/postgres.md` 4.5)
//! each change exercises:
//! - skewed `pgbench` updates, append-only inserts: pages newer than the
//!   full (the LSN rule) and pages past the full's size (extension);
//! - bulk DELETE without VACUUM on an all-visible table: visibility map
//!   bits cleared without moving the map page's LSN (4.5.6: `_vm` whole),
//!   caught by an index-only scan that would count deleted rows;
//! - DELETE of the tail + VACUUM: the relation truncated (4.5.3: size);
//! - TRUNCATE, REINDEX: new relfilenodes (4.5.3: new files whole);
//! - DROP TABLE: removed files are not resurrected (4.5.3);
//! - an unlogged table: left out, reset from its `_init` fork (4.5.2);
//! - a database dropped and re-created under the same OID with
//!   `STRATEGY FILE_COPY` from a template holding other rows: same paths,
//!   old LSNs, other content (4.5.4: file identity and `pg_database` row);
//! - a tablespace created after the full (new files, a new link);
//! - a relation growing past its first 1 GiB segment (4.5.5: segments and
//!   absolute block numbers in checksums).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_e2e::pg::{PgCluster, PgStrata, as_postgres, give_to_postgres, run_checked};

const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

/// What a table holds: row count and an order-independent digest of its rows.
fn table_digest(pg: &PgCluster, db: &str, table: &str) -> String {
    pg.script(
        db,
        &format!(
            "SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::int8), 0) FROM {table} t"
        ),
    )
}

/// The digest of every user table of every connectable database but
/// `template0`, keyed by `db.schema.table`.
fn cluster_digest(pg: &PgCluster) -> BTreeMap<String, String> {
    let dbs = pg.psql(
        "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database \
         WHERE datallowconn AND datname <> 'template0'",
    );
    let mut all = BTreeMap::new();
    for db in dbs.split_whitespace() {
        let tables = pg.script(
            db,
            "SELECT coalesce(string_agg(quote_ident(schemaname) || '.' || quote_ident(relname), ' ' ORDER BY 1), '') \
             FROM pg_stat_user_tables",
        );
        for table in tables.split_whitespace() {
            all.insert(format!("{db}.{table}"), table_digest(pg, db, table));
        }
    }
    all
}

/// The last line of `psql` output after a `\c` (which prints nothing with `-q`).
fn now_utc(pg: &PgCluster) -> DateTime<Utc> {
    let at = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    at.parse().unwrap_or_else(|e| panic!("time `{at}`: {e}"))
}

/// Takes a backup of `kind` and returns its `--json` report.
fn backup(env: &PgStrata, kind: &str) -> serde_json::Value {
    let out = env.strata(&["--json", "backup", "pg", "main", "--kind", kind]);
    assert_eq!(
        out.code(),
        Some(0),
        "{kind} backup failed: {}",
        out.stderr_text()
    );
    out.json()
}

/// Switches WAL and waits until everything written so far is archived.
fn archive_everything(env: &PgStrata) {
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
}

fn assert_same_tables(
    expected: &BTreeMap<String, String>,
    copy: &PgCluster,
    except_unlogged: &[&str],
) {
    let got = cluster_digest(copy);
    let mut expected = expected.clone();
    for table in except_unlogged {
        // PostgreSQL resets unlogged tables from their init fork at the end
        // of recovery: the copy holds them empty.
        expected.insert((*table).to_owned(), "0:0".to_owned());
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(table, digest)| got.get(*table) != Some(digest))
        .map(|(table, digest)| {
            format!(
                "{table}: source {digest}, restored {}",
                got.get(table).map_or("(missing)", String::as_str)
            )
        })
        .collect();
    assert!(
        wrong.is_empty() && got.len() == expected.len(),
        "the restored tables differ from the source at the target:\n{}\nrestored: {:?}",
        wrong.join("\n"),
        got.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_differential_restores_every_kind_of_change_exactly() {
    let env = PgStrata::new("pg-diff-changes");
    let pg = &env.cluster;
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.script(
        "postgres",
        "CREATE TABLE ivm (id int PRIMARY KEY, pad text);
         INSERT INTO ivm SELECT g, repeat('v', 60) FROM generate_series(1, 40000) g;
         VACUUM (FREEZE, ANALYZE) ivm;
         CREATE TABLE tail (id int PRIMARY KEY, pad text);
         INSERT INTO tail SELECT g, repeat('t', 100) FROM generate_series(1, 40000) g;
         CREATE TABLE appendonly (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), pad text);
         INSERT INTO appendonly (pad) SELECT repeat('a', 50) FROM generate_series(1, 20000);
         CREATE TABLE trunc (id int, pad text);
         INSERT INTO trunc SELECT g, 'before' FROM generate_series(1, 5000) g;
         CREATE TABLE dropped (id int, pad text);
         INSERT INTO dropped SELECT g, 'gone' FROM generate_series(1, 5000) g;
         CREATE UNLOGGED TABLE scratch (id int, pad text);
         INSERT INTO scratch SELECT g, 's' FROM generate_series(1, 5000) g;
         CREATE DATABASE app;",
    );
    pg.script(
        "app",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric);
         INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 10000) g;",
    );
    // Two templates with a table of the same relfilenode and other rows,
    // and a database cloned file by file from the first. Frozen, so that
    // reading the clone later changes none of its pages (a hint bit set
    // with checksums on logs a full-page image, whose replay would repair
    // a wrongly restored page and hide the fault this checks).
    pg.script(
        "postgres",
        "CREATE DATABASE tmpl_a;
         \\c tmpl_a
         CREATE TABLE t (id int, who text);
         INSERT INTO t SELECT g, 'template a' FROM generate_series(1, 3000) g;
         VACUUM (FREEZE) t;
         \\c postgres
         CREATE DATABASE tmpl_b TEMPLATE tmpl_a STRATEGY FILE_COPY;
         \\c tmpl_b
         UPDATE t SET who = 'template b' WHERE id % 3 = 0;
         VACUUM (FREEZE) t;
         \\c postgres
         CREATE DATABASE cloned TEMPLATE tmpl_a STRATEGY FILE_COPY;",
    );
    let cloned_oid = pg.psql("SELECT oid FROM pg_database WHERE datname = 'cloned'");
    let dropped_file = pg.psql("SELECT pg_relation_filepath('dropped')");
    pg.psql("CHECKPOINT");

    let full = backup(&env, "full");
    assert_eq!(full["kind"], "full");

    // The changes between the full and the differential.
    std::fs::write(
        env.dir.path("skewed.sql"),
        "\\set aid random_exponential(1, 200000, 8)\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
    )
    .unwrap();
    give_to_postgres(&env.dir.path("skewed.sql"));
    let script = env.dir.path("skewed.sql");
    pg.pgbench(&[
        "-n",
        "-c",
        "2",
        "-t",
        "1500",
        "-f",
        script.to_str().unwrap(),
    ]);
    let tablespace = env.dir.mkdir("ts-one");
    give_to_postgres(&tablespace);
    pg.script(
        "postgres",
        &format!(
            "DELETE FROM ivm WHERE id % 10 = 0;
         DELETE FROM tail WHERE id > 20000;
         VACUUM tail;
         INSERT INTO appendonly (pad) SELECT repeat('b', 50) FROM generate_series(1, 30000);
         TRUNCATE trunc;
         INSERT INTO trunc SELECT g, 'after' FROM generate_series(1, 100) g;
         DROP TABLE dropped;
         INSERT INTO scratch SELECT g, 'more' FROM generate_series(1, 100) g;
         REINDEX TABLE pgbench_accounts;
         CREATE TABLESPACE ts_one LOCATION '{}';
         CREATE TABLE spaced (id int PRIMARY KEY, pad text) TABLESPACE ts_one;
         INSERT INTO spaced SELECT g, 'in a tablespace' FROM generate_series(1, 5000) g;
         DROP DATABASE cloned;
         CREATE DATABASE cloned OID = {cloned_oid} TEMPLATE tmpl_b STRATEGY FILE_COPY;",
            tablespace.display()
        ),
    );
    let diff = backup(&env, "diff");
    assert_eq!(diff["kind"], "diff");
    assert_eq!(
        diff["base"], full["id"],
        "a differential builds on the newest full"
    );
    let delta = &diff["delta"];
    let stored = delta["pages_stored"].as_u64().unwrap();
    let scanned = delta["pages_scanned"].as_u64().unwrap();
    assert!(
        stored > 0 && stored < scanned / 2,
        "the differential stores the changed pages only: {delta}"
    );
    assert!(delta["removed"].as_u64().unwrap() >= 1, "{delta}");
    assert!(
        diff["stored_bytes"].as_u64().unwrap() < full["stored_bytes"].as_u64().unwrap() / 2,
        "a differential is smaller than its full: {} vs {}",
        diff["stored_bytes"],
        full["stored_bytes"]
    );

    // The listing shows what applies on what; verify reads every page of it.
    let listed = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    let kinds: Vec<(String, String)> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["kind"].to_string(), b["base"].to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("\"full\"".to_owned(), "null".to_owned()),
            ("\"diff\"".to_owned(), full["id"].to_string())
        ]
    );
    let all = env.strata(&["--json", "list"]).success().json();
    let listed_diff = all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == diff["id"])
        .unwrap();
    assert_eq!(listed_diff["base"], full["id"], "{all}");
    let table = env.strata(&["list"]).success().stdout_text();
    assert!(
        table.contains(&format!("diff on {}", full["id"].as_str().unwrap())),
        "{table}"
    );
    let verified = env.strata(&["--json", "verify"]).success().json();
    assert!(
        verified.as_array().unwrap().iter().all(|b| b["ok"] == true)
            && verified.as_array().unwrap().len() == 2,
        "{verified}"
    );

    // Changes after the differential, replayed from WAL, up to the target.
    pg.pgbench(&["-n", "-c", "2", "-t", "300", "-f", script.to_str().unwrap()]);
    pg.psql("INSERT INTO appendonly (pad) SELECT 'after diff' FROM generate_series(1, 500)");
    pg.script("app", "UPDATE orders SET total = total + 1 WHERE id < 100");
    let expected = cluster_digest(pg);
    let target = now_utc(pg);
    std::thread::sleep(Duration::from_millis(50));
    // Changes after the target, which the restore must not show.
    pg.psql("UPDATE ivm SET pad = 'too late'; INSERT INTO trunc VALUES (-1, 'too late')");
    archive_everything(&env);

    let moved = env.dir.path("ts-one-restored");
    let (report, copy) = env.restore_to_time("restored", target, &[(&tablespace, &moved)]);
    assert_eq!(report["backup"], diff["id"], "{report}");
    assert_eq!(
        report["applied_on"],
        serde_json::json!([full["id"]]),
        "{report}"
    );
    assert_same_tables(&expected, &copy, &["postgres.public.scratch"]);
    // The visibility map was not restored stale: an index-only scan
    // (which trusts it) counts what a sequential scan counts.
    let index_only = copy.script(
        "postgres",
        "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM ivm WHERE id > 0",
    );
    assert_eq!(index_only, "36000");
    assert!(
        !copy.data.join(&dropped_file).exists(),
        "the file of the dropped table came back: {dropped_file}"
    );
    assert_eq!(
        copy.script(
            "cloned",
            "SELECT count(*) FILTER (WHERE who = 'template b') FROM t"
        ),
        "1000",
        "the re-created database holds its new template's rows"
    );
    assert!(
        std::fs::read_dir(&moved).unwrap().next().is_some(),
        "the new tablespace was restored at its mapped location"
    );
    copy.amcheck();
}

#[test]
fn incrementals_chain_on_each_other_and_a_time_before_them_uses_the_full() {
    let env = PgStrata::new("pg-incr-chain");
    let pg = &env.cluster;
    pg.script(
        "postgres",
        "CREATE TABLE events (id bigserial PRIMARY KEY, round int, pad text);
         INSERT INTO events (round, pad) SELECT 0, repeat('x', 80) FROM generate_series(1, 20000);",
    );
    let full = backup(&env, "full");
    let mut expected_at = Vec::new();
    let mut ids = vec![full["id"].clone()];
    for round in 1..=2 {
        pg.script(
            "postgres",
            &format!(
                "UPDATE events SET round = {round} WHERE id % 7 = {round};
             INSERT INTO events (round, pad) SELECT {round}, 'r' FROM generate_series(1, 2000);
             DELETE FROM events WHERE id % 11 = {round};"
            ),
        );
        expected_at.push((cluster_digest(pg), now_utc(pg)));
        std::thread::sleep(Duration::from_millis(50));
        let incr = backup(&env, "incr");
        assert_eq!(
            incr["base"],
            *ids.last().unwrap(),
            "an incremental builds on the newest backup"
        );
        ids.push(incr["id"].clone());
    }
    pg.psql("INSERT INTO events (round, pad) VALUES (99, 'after')");
    let expected_latest = cluster_digest(pg);
    let latest = now_utc(pg);
    archive_everything(&env);

    // Between the two incrementals: full + first incremental + WAL.
    let (report, copy) = env.restore_to_time("first", expected_at[1].1, &[]);
    assert_eq!(report["backup"], ids[1], "{report}");
    assert_eq!(report["applied_on"], serde_json::json!([ids[0]]));
    assert_same_tables(&expected_at[1].0, &copy, &[]);
    drop(copy);
    // After both: the whole chain.
    let (report, copy) = env.restore_to_time("both", latest, &[]);
    assert_eq!(report["backup"], ids[2], "{report}");
    assert_eq!(report["applied_on"], serde_json::json!([ids[0], ids[1]]));
    assert_same_tables(&expected_latest, &copy, &[]);
    copy.amcheck();
    drop(copy);
    // Before the first incremental: the full and WAL alone.
    let (report, copy) = env.restore_to_time("before", expected_at[0].1, &[]);
    assert_eq!(report["backup"], ids[0], "{report}");
    assert_same_tables(&expected_at[0].0, &copy, &[]);
    drop(copy);

    // An incremental `verify` found damaged is skipped: the full and more
    // WAL restore the same time (nothing builds on the skipped one then).
    let (report, copy) = env.restore_to_time_with(
        "skipping",
        latest,
        &[],
        &["--skip-backup", ids[1].as_str().unwrap()],
    );
    assert_eq!(report["backup"], ids[0], "{report}");
    assert_same_tables(&expected_latest, &copy, &[]);
    drop(copy);
    // A mistyped id is refused, not ignored (the restore would use the
    // very backup meant to be skipped).
    let (dir, _) = env.restore_target("mistyped");
    let out = env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--skip-backup",
        "20261201T000000.000Z-0123abcd",
    ]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains("--skip-backup 20261201T000000.000Z-0123abcd: there is no such backup"),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.exists());

    // The first incremental's manifest is deleted (by hand, or a retention
    // bug): verify says the second cannot be restored, and a new
    // incremental builds on the full, never on the broken chain.
    remove_from_vault(
        &env.vault_dir,
        &format!("{}.json", ids[1].as_str().unwrap()),
    );
    let out = env.strata(&["--json", "verify"]);
    assert_eq!(out.code(), Some(6), "{}", out.stderr_text());
    let report: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    let second = report
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == ids[2])
        .unwrap();
    assert_eq!(second["ok"], false, "{report}");
    assert_eq!(
        second["problems"][0],
        format!(
            "its base backup {} is not in the vault: it cannot be restored",
            ids[1].as_str().unwrap()
        )
    );
    let next = backup(&env, "incr");
    assert_eq!(next["base"], ids[0], "{next}");
}

#[test]
fn a_differential_without_a_full_of_this_cluster_is_refused() {
    let env = PgStrata::new("pg-diff-refused");
    let out = env.strata(&["backup", "pg", "main", "--kind", "diff"]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains("needs a full backup to build on, and there is none")
            && err.contains("--kind full"),
        "{err}"
    );
    backup(&env, "full");
    // The cluster is re-created under the same name: another system.
    let old_system = env
        .cluster
        .psql("SELECT system_identifier FROM pg_control_system()");
    env.cluster.stop();
    std::fs::remove_dir_all(&env.cluster.data).unwrap();
    let mut cmd = as_postgres(env.cluster.bin.join("initdb"));
    cmd.arg("-D")
        .arg(&env.cluster.data)
        .args(["-k", "-A", "trust", "-U", "postgres", "--no-sync"]);
    run_checked(cmd, "initdb");
    let archive = format!(
        "{} --config {} pg wal-push %p --cluster main",
        strata_e2e::cli::strata_bin().display(),
        env.config.display()
    );
    env.cluster.append_conf(&format!(
        "port = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
         wal_level = replica\narchive_mode = on\narchive_command = '{archive}'\n",
        env.cluster.port,
        env.cluster.socket_dir.display()
    ));
    env.cluster.start();
    let new_system = env
        .cluster
        .psql("SELECT system_identifier FROM pg_control_system()");
    assert_ne!(old_system, new_system);
    let out = env.strata(&["backup", "pg", "main", "--kind", "diff"]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains(&format!(
            "is of system {old_system} but the cluster is now system {new_system}"
        )) && err.contains("take a full backup of this cluster first"),
        "{err}"
    );
    // Nothing was committed: the vault still lists the one full.
    let listed = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    let backups = listed["backups"].as_array().map(Vec::len);
    assert_eq!(backups, Some(1), "{listed}");
}

/// A relation of more than one 1 GiB segment: its second segment's pages
/// carry checksums over their block number counted from the relation's
/// start, which the page scan must use (or it would take every page of it
/// for damaged and store it); growth creates a new segment, stored whole.
#[test]
fn a_relation_past_its_first_gigabyte_is_scanned_segment_by_segment() {
    let env = PgStrata::new("pg-diff-segments");
    let pg = &env.cluster;
    // About 1.05 GiB: seven 1 KiB rows per page, 138,000 pages.
    pg.script(
        "postgres",
        "CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO big SELECT g, repeat(chr(65 + g % 26), 1000) FROM generate_series(1, 966000) g;
         VACUUM (FREEZE) big;
         CHECKPOINT;",
    );
    let file = pg.psql("SELECT pg_relation_filepath('big')");
    let second = pg.cluster_path(&format!("{file}.1"));
    assert!(
        second.is_file(),
        "the table has a second segment: {}",
        second.display()
    );
    let full = backup(&env, "full");

    // Changes in both segments, and growth of the second.
    pg.script(
        "postgres",
        "UPDATE big SET pad = 'first segment' WHERE id BETWEEN 100 AND 120;
         UPDATE big SET pad = 'second segment' WHERE id BETWEEN 930000 AND 930050;
         INSERT INTO big SELECT g, repeat('n', 1000) FROM generate_series(966001, 990000) g;",
    );
    let diff = backup(&env, "diff");
    assert_eq!(diff["base"], full["id"]);
    let delta = &diff["delta"];
    assert_eq!(
        delta["pages_bad_checksum"], 0,
        "no page of the second segment fails its checksum: {delta}"
    );
    let stored = delta["pages_stored"].as_u64().unwrap();
    assert!(
        stored < 10_000,
        "only the changed pages of the 135,000 are stored: {delta}"
    );
    pg.psql("UPDATE big SET pad = 'after diff' WHERE id = 5");
    let expected = cluster_digest(pg);
    let target = now_utc(pg);
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("UPDATE big SET pad = 'too late' WHERE id = 6");
    archive_everything(&env);

    let (report, copy) = env.restore_to_time("restored", target, &[]);
    assert_eq!(report["backup"], diff["id"], "{report}");
    assert_same_tables(&expected, &copy, &[]);
}

/// Without data checksums or `wal_log_hints`, VACUUM marks heap pages
/// all-visible without moving their LSN: a page-LSN differential would
/// restore a visibility map that disagrees with its heap (index-only scans
/// then return deleted rows). Differentials are refused until
/// `wal_log_hints` is on and a full was taken with it; then the same
/// change restores with every all-visible map bit backed by its page's flag.
#[test]
fn without_checksums_differentials_need_wal_log_hints() {
    let env = PgStrata::without_checksums("pg-diff-nochecksums");
    let pg = &env.cluster;
    pg.psql("ALTER SYSTEM SET autovacuum = off");
    pg.stop();
    pg.start();
    let load = "CREATE TABLE v (i int, s text);
                INSERT INTO v SELECT g, 'row' || g FROM generate_series(1, 20000) g;";
    pg.script("postgres", load);
    // Pages without checksums are not checked (PostgreSQL leaves their
    // pd_checksum 0): the backup reports no page check, and so no page as
    // damaged.
    let first = env.strata(&["--json", "backup", "pg", "main", "--kind", "full"]);
    assert_eq!(first.code(), Some(0), "{}", first.stderr_text());
    assert!(
        !first.stderr_text().contains("damaged"),
        "{}",
        first.stderr_text()
    );
    let first = first.json();
    assert!(first["page_check"].is_null(), "{first}");
    let out = env.strata(&["backup", "pg", "main", "--kind", "diff"]);
    assert_eq!(out.code(), Some(3), "{}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains("need data checksums or wal_log_hints = on")
            && err.contains("set wal_log_hints = on"),
        "{err}"
    );
    let check = env.strata(&["pg", "check", "main"]).stdout_text();
    assert!(
        check.contains("need data checksums or `wal_log_hints = on`"),
        "{check}"
    );

    pg.psql("ALTER SYSTEM SET wal_log_hints = on");
    pg.stop();
    pg.start();
    // A full taken before the setting was on cannot be a base either.
    let out = env.strata(&["backup", "pg", "main", "--kind", "diff"]);
    assert_eq!(out.code(), Some(8), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains("was taken with neither data checksums nor wal_log_hints on"),
        "{}",
        out.stderr_text()
    );
    pg.script("postgres", "DROP TABLE v;");
    pg.script("postgres", load);
    let full = backup(&env, "full");
    pg.psql("VACUUM v");
    let diff = backup(&env, "diff");
    assert_eq!(diff["base"], full["id"]);
    pg.psql("INSERT INTO v VALUES (-1, 'after')");
    let expected = cluster_digest(pg);
    let target = now_utc(pg);
    archive_everything(&env);
    let (report, copy) = env.restore_to_time("restored", target, &[]);
    assert_eq!(report["backup"], diff["id"]);
    assert_same_tables(&expected, &copy, &[]);
    copy.psql("CREATE EXTENSION pg_visibility");
    assert_eq!(
        copy.psql(
            "SELECT count(*) FILTER (WHERE all_visible AND NOT pd_all_visible) || '/' || count(*) FILTER (WHERE all_visible) FROM pg_visibility('v')"
        )
        .split('/')
        .next(),
        Some("0"),
        "every page the visibility map calls all-visible carries the flag"
    );
    // And the all-visible pages are really there (the check is not vacuous).
    let visible: u64 = copy
        .psql("SELECT count(*) FROM pg_visibility('v') WHERE all_visible")
        .parse()
        .unwrap();
    assert!(visible > 50, "{visible} all-visible pages");
}

/// Deletes every object of the file vault at `dir` whose name contains `part`.
fn remove_from_vault(dir: &std::path::Path, part: &str) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_from_vault(&path, part);
        } else if path.file_name().unwrap().to_string_lossy().contains(part) {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// After a point-in-time recovery that became the cluster (timeline 2), a
/// differential builds on the newest full the new timeline passed through,
/// not on a newer one the old timeline took past the branch point; the
/// history file comes from the cluster's own `pg_wal` when it was never
/// archived (a restored copy starts with archiving off).
#[test]
fn after_a_recovery_a_differential_builds_on_the_full_its_timeline_came_from() {
    let env = PgStrata::new("pg-diff-timeline");
    let pg = &env.cluster;
    pg.script(
        "postgres",
        "CREATE TABLE t (id int, note text);
         INSERT INTO t SELECT g, 'one' FROM generate_series(1, 5000) g;",
    );
    let first = backup(&env, "full");
    pg.psql("INSERT INTO t SELECT g, 'two' FROM generate_series(5001, 6000) g");
    let branch = now_utc(pg);
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("INSERT INTO t SELECT g, 'three' FROM generate_series(6001, 7000) g");
    let second = backup(&env, "full");
    archive_everything(&env);
    let (report, copy) = env.restore_to_time("branched", branch, &[]);
    assert_eq!(report["timeline"], 2, "{report}");
    env.promote_copy_as_main(&copy);
    copy.psql("UPDATE t SET note = 'on timeline 2' WHERE id % 10 = 0");
    // Whether or not PostgreSQL archived timeline 2's history, the
    // differential relates the timelines through the cluster's pg_wal.
    remove_from_vault(&env.vault_dir, "00000002.history");

    let diff = backup(&env, "diff");
    assert_eq!(
        diff["base"], first["id"],
        "the newest full ({}) ran past the branch point; the one before is timeline 2's past",
        second["id"]
    );
    copy.psql("INSERT INTO t VALUES (-2, 'after the differential')");
    let expected = cluster_digest(&copy);
    let target = now_utc(&copy);
    copy.switch_and_wait_archived(ARCHIVE_WAIT);
    let (report, restored) = env.restore_to_time("again", target, &[]);
    assert_eq!(report["backup"], diff["id"], "{report}");
    assert_same_tables(&expected, &restored, &[]);
}

/// After a failover, the old primary (still running: a split brain) takes
/// a full on timeline 1 past the promotion point. A differential of the new
/// primary, taken at once (before its first checkpoint, while
/// `pg_control_checkpoint()` still says timeline 1), must not build on it:
/// its pages are not the new timeline's.
#[test]
fn after_a_failover_a_differential_never_builds_on_a_full_the_old_primary_took_later() {
    let env = PgStrata::new("pg-diff-failover");
    let pg = &env.cluster;
    pg.script(
        "postgres",
        "CREATE TABLE t (id int, note text);
         INSERT INTO t SELECT g, 'one' FROM generate_series(1, 5000) g;",
    );
    let before = backup(&env, "full");
    let standby = env.standby("standby");
    // Buffers the standby dirtied replaying: the checkpoint that follows
    // the promotion is spread over minutes, and until it ends
    // pg_control_checkpoint() still names timeline 1.
    pg.psql("CREATE TABLE ballast AS SELECT g, repeat('b', 200) AS pad FROM generate_series(1, 100000) g");
    standby.wait_replayed(&pg.psql("SELECT pg_current_wal_lsn()"), ARCHIVE_WAIT);
    standby.promote();
    pg.psql("INSERT INTO t SELECT g, 'old primary' FROM generate_series(5001, 6000) g");
    let split = backup(&env, "full");
    assert_eq!(split["timeline"], 1);

    standby.psql("UPDATE t SET note = 'new primary' WHERE id % 10 = 0");
    let out = strata_e2e::cli::Strata::new()
        .arg("--config")
        .arg(env.dir.path("standby.toml"))
        .args(["--json", "backup", "pg", "main", "--kind", "diff"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    let diff = out.json();
    assert_eq!(diff["timeline"], 2, "{diff}");
    assert_eq!(
        diff["base"], before["id"],
        "the full the old primary took after the promotion ({}) is not timeline 2's past",
        split["id"]
    );
}

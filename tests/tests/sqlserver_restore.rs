//! SQL Server end to end: restores. What a restore refuses (an existing
//! database without `--replace`, a time no backup reaches), what it
//! restores (`--latest`, one differential with `--backup`), and the chain
//! written as files with `--files-only`, whose `restore.sql` restores the
//! same rows by hand. Restores of a striped backup, from an encrypted
//! vault, and of a damaged one.
//!
//! Runs against the emulator in `tests/src/sqlserver`, or against a real
//! SQL Server when `STRATA_TEST_SQLSERVER` names one (see `docker/`).

use std::path::Path;

use chrono::TimeDelta;
use strata_e2e::skip::skipped;
use strata_e2e::sqlserver::blob_client::block_list_xml;
use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlClient, SqlServerFixture};
use strata_e2e::sqlserver::steps::{
    a_moment_between_commits, backup, create_with_rows, database_state, error_of, insert, list,
    restore_run, text, to_time,
};

/// A full, a differential and two logs of `sales`, with rows 1 to 5 (row
/// `n + 1` committed after backup `n`: row 5 after the last log, in no
/// backup); returns the backup reports in order.
async fn four_backups(fx: &SqlServerFixture, sql: &mut SqlClient) -> Vec<serde_json::Value> {
    create_with_rows(sql, "sales", &[1]).await;
    let mut reports = Vec::new();
    for (kind, next) in [("full", 2), ("diff", 3), ("log", 4), ("log", 5)] {
        let report = backup(fx, "sales", kind);
        assert_eq!(report["kind"], kind, "{report}");
        reports.push(report);
        insert(sql, "sales", &[next]).await;
    }
    reports
}

/// Restoring over a database that exists is refused without `--replace`
/// (exit 9, naming the database, hinting `--replace`) and leaves its rows
/// alone; with `--replace` the restore overwrites it. A `--to-time` before
/// the first full or after the last log is refused (exit 8) with the
/// nearest restorable times, and nothing is restored. `--latest` restores
/// every row the last log holds; `--backup ID` of the differential
/// restores the rows as of the differential.
#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_an_existing_database_and_times_outside_the_windows() {
    let fx = SqlServerFixture::start(
        "sqlserver-restore-refusals",
        FixtureOptions::default(),
        |_| {},
    )
    .await;
    let mut sql = fx.client().await;
    let before_first = sql.now().await - TimeDelta::seconds(30);
    let reports = four_backups(&fx, &mut sql).await;
    let after_last = sql.now().await + TimeDelta::seconds(600);

    // Over the source itself: refused, nothing changed.
    let refused = restore_run(&fx, "sales", &["--latest"]).failure(9);
    let error = error_of(&refused);
    assert_eq!(error["kind"], "conflict", "{error}");
    assert!(
        text(&error["message"]).contains("database sales exists"),
        "{error}"
    );
    assert!(text(&error["hint"]).contains("--replace"), "{error}");
    assert_eq!(sql.ids("sales").await, vec![1, 2, 3, 4, 5]);

    // Times outside the windows: exit 8 with the nearest restorable time,
    // the full's consistent point before them, the last log's end after.
    let earliest = &reports[0]["consistent_at"];
    let latest = &reports[3]["consistent_at"];
    for (when, nearest, at) in [
        (before_first, "the earliest restorable time is ", earliest),
        (after_last, "the latest restorable time is ", latest),
    ] {
        let refused = restore_run(
            &fx,
            "sales",
            &["--to-time", &to_time(when), "--as", "sales_never"],
        )
        .failure(8);
        let error = error_of(&refused);
        assert_eq!(error["kind"], "not-found", "{error}");
        let said = text(&error["message"]);
        assert!(
            said.contains(&format!("time {} is not restorable", to_time(when))),
            "{said}"
        );
        let shown = said
            .split_once(nearest)
            .unwrap_or_else(|| panic!("`{nearest}` in: {said}"))
            .1
            .split(|c: char| c.is_whitespace() || c == ';' || c == ')')
            .next()
            .unwrap();
        assert_eq!(time_of(&serde_json::json!(shown)), time_of(at), "{said}");
        assert!(database_state(&mut sql, "sales_never").await.is_none());
    }

    // --latest: every row of the last log.
    let latest = restore_run(&fx, "sales", &["--latest", "--as", "sales_latest"])
        .success()
        .json();
    assert_eq!(
        latest["backups"],
        serde_json::json!([
            reports[0]["id"],
            reports[1]["id"],
            reports[2]["id"],
            reports[3]["id"]
        ]),
        "{latest}"
    );
    assert_eq!(sql.ids("sales_latest").await, vec![1, 2, 3, 4]);

    // --backup of the diff: the rows as of the diff.
    let diff_id = text(&reports[1]["id"]);
    let at_diff = restore_run(&fx, "sales", &["--backup", &diff_id, "--as", "sales_diff"])
        .success()
        .json();
    assert_eq!(
        at_diff["backups"],
        serde_json::json!([reports[0]["id"], reports[1]["id"]]),
        "{at_diff}"
    );
    assert_eq!(sql.ids("sales_diff").await, vec![1, 2]);

    // Over an existing copy: refused without --replace, done with it.
    insert(&mut sql, "sales_diff", &[99]).await;
    let refused = restore_run(&fx, "sales", &["--latest", "--as", "sales_diff"]).failure(9);
    assert!(
        refused.stderr_text().contains("database sales_diff exists"),
        "{}",
        refused.stderr_text()
    );
    assert_eq!(sql.ids("sales_diff").await, vec![1, 2, 99], "untouched");
    let replaced = restore_run(
        &fx,
        "sales",
        &["--latest", "--as", "sales_diff", "--replace"],
    )
    .success()
    .json();
    assert_eq!(replaced["replaced"], true, "{replaced}");
    assert_eq!(sql.ids("sales_diff").await, vec![1, 2, 3, 4]);
}

/// `--files-only DIR` writes every backup of the plan as `.bak`/`.trn`
/// files with `restore.json` (order, kinds, LSNs, sizes and the BLAKE3 of
/// each file, which the test recomputes from the file it reads) and
/// `restore.sql`, which, run statement by statement on the server (reading
/// the files `FROM DISK`), restores a new database with exactly the rows of
/// the point in time.
#[tokio::test(flavor = "multi_thread")]
async fn files_only_writes_the_chain_and_a_script_that_restores_it() {
    let fx =
        SqlServerFixture::start("sqlserver-restore-files", FixtureOptions::default(), |_| {}).await;
    if !fx.emulated() {
        // A real server reads FROM DISK on its own host, not this one.
        skipped(
            "files_only_writes_the_chain_and_a_script_that_restores_it",
            "restore.sql is run by a server that reads this host's files (the emulator)",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let full = backup(&fx, "sales", "full");
    insert(&mut sql, "sales", &[2]).await;
    let diff = backup(&fx, "sales", "diff");
    insert(&mut sql, "sales", &[3]).await;
    let target = a_moment_between_commits(&mut sql).await;
    insert(&mut sql, "sales", &[4]).await;
    let log = backup(&fx, "sales", "log");

    let dir = fx.dir.path("files");
    let out = restore_run(
        &fx,
        "sales",
        &[
            "--to-time",
            &to_time(target),
            "--as",
            "sales_by_hand",
            "--files-only",
            dir.to_str().unwrap(),
        ],
    )
    .success();
    assert!(
        database_state(&mut sql, "sales_by_hand").await.is_none(),
        "--files-only restores nothing on the server: {}",
        out.stdout_text()
    );
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("restore.json")).unwrap()).unwrap();
    let files = listing["files"].as_array().expect("a list of files");
    let expected = [(1, "full", &full), (2, "diff", &diff), (3, "log", &log)];
    assert_eq!(files.len(), expected.len(), "{listing}");
    for (file, (order, kind, report)) in files.iter().zip(expected) {
        assert_eq!(file["order"], order, "{file}");
        assert_eq!(file["kind"], kind, "{file}");
        assert_eq!(file["backup_id"], report["id"], "{file}");
        assert_eq!(file["first_lsn"], report["first_lsn"], "{file}");
        assert_eq!(file["last_lsn"], report["last_lsn"], "{file}");
        let name = text(&file["file"]);
        let ext = if kind == "log" { ".trn" } else { ".bak" };
        assert!(name.ends_with(ext), "{name}");
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        assert_eq!(file["size"], bytes.len(), "{file}");
        assert_eq!(file["size"], report["raw_bytes"], "{file}");
        assert_eq!(
            text(&file["blake3"]),
            blake3::hash(&bytes).to_hex().to_string(),
            "{name}"
        );
    }

    for statement in script_statements(&dir.join("restore.sql")) {
        sql.try_exec(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    assert_eq!(sql.ids("sales_by_hand").await, vec![1, 2, 3]);
    assert_eq!(sql.ids("sales").await, vec![1, 2, 3, 4]);
}

/// A JSON time (RFC 3339) as a UTC instant.
fn time_of(value: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    text(value)
        .parse()
        .unwrap_or_else(|e| panic!("{value} is not a time: {e}"))
}

/// The batches of a sqlcmd script: the text between `GO` lines, without
/// comment lines, empty batches left out.
fn script_statements(path: &Path) -> Vec<String> {
    let script = std::fs::read_to_string(path).unwrap();
    let mut batches = vec![String::new()];
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("GO") {
            batches.push(String::new());
        } else if !line.trim_start().starts_with("--") {
            let batch = batches.last_mut().unwrap();
            batch.push_str(line);
            batch.push('\n');
        }
    }
    batches
        .into_iter()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect()
}

/// With `stripes = 4`, a full backup is written by SQL Server to four URLs
/// at once: each URL gets Put Blob, a lease, its blocks and a block list in
/// UTF-16; the backup has four streams (`strata list --json`), and a
/// restore of it reads the four back into a database with the rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_striped_backup_writes_four_urls_and_restores_from_them() {
    let fx = SqlServerFixture::start(
        "sqlserver-restore-stripes",
        FixtureOptions {
            instance_lines: vec!["stripes = 4".into()],
            ..FixtureOptions::default()
        },
        |_| {},
    )
    .await;
    if !fx.emulated() {
        skipped(
            "a_striped_backup_writes_four_urls_and_restores_from_them",
            "the blob requests are recorded by the emulator",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "wide", &[1, 2, 3]).await;
    // Enough pages for every stripe to get blocks of SQL Server's 4 MiB.
    fx.emulator().set_database_size("wide", 24 << 20, false);
    let full = backup(&fx, "wide", "full");
    let listed = list(&fx);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["streams"], 4, "{}", listed[0]);

    let requests = fx.emulator().blob_requests();
    let mut urls: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.as_str())
        .collect();
    urls.sort_unstable();
    urls.dedup();
    assert_eq!(urls.len(), 4, "{urls:?}");
    let mut stored = 0;
    for url in &urls {
        let of_url: Vec<_> = requests.iter().filter(|r| r.path == *url).collect();
        let first = of_url[0];
        assert!(
            first.method == "PUT" && first.comp.is_none() && first.body_len == 0,
            "{url} starts with Put Blob: {first:?}"
        );
        assert!(
            of_url.iter().any(|r| r.comp.as_deref() == Some("lease")
                && r.lease_action.as_deref() == Some("acquire")
                && r.status == Some(201)),
            "{url} is leased: {of_url:?}"
        );
        let blocks: Vec<String> = of_url
            .iter()
            .filter(|r| r.comp.as_deref() == Some("block"))
            .map(|r| {
                assert_eq!(r.status, Some(201), "{r:?}");
                stored += r.body_len;
                r.block_id.clone().expect("a block id")
            })
            .collect();
        assert!(!blocks.is_empty(), "{url} got blocks");
        let list = of_url
            .iter()
            .find(|r| r.comp.as_deref() == Some("blocklist") && r.method == "PUT")
            .unwrap_or_else(|| panic!("{url} got a block list: {of_url:?}"));
        assert_eq!(list.status, Some(201), "{list:?}");
        assert_eq!(
            list.body_len,
            block_list_xml(&blocks).len() as u64,
            "{url}: the block list of its {} blocks, in UTF-16 with a byte-order mark",
            blocks.len()
        );
    }
    assert_eq!(stored, full["raw_bytes"], "{full}");

    let restored = restore_run(&fx, "wide", &["--latest", "--as", "wide_copy"])
        .success()
        .json();
    assert_eq!(restored["backups"], serde_json::json!([full["id"]]));
    assert_eq!(sql.ids("wide_copy").await, vec![1, 2, 3]);
    let reads: std::collections::BTreeSet<String> = fx
        .emulator()
        .blob_requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.status == Some(206))
        .map(|r| r.path)
        .collect();
    assert_eq!(reads.len(), 4, "the restore read four URLs: {reads:?}");
}

/// An encrypted vault (`vault init --encrypt`, `--key-file`): a full and a
/// log back up into it and a point-in-time restore with the key gives the
/// rows of that time. With another vault's key the restore exits 7 and
/// SQL Server is never asked to restore: the target database does not
/// exist afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_vault_restores_with_its_key_and_nothing_with_another() {
    let fx = SqlServerFixture::start(
        "sqlserver-restore-encrypted",
        FixtureOptions::default(),
        |_| {},
    )
    .await;
    let vault = fx.dir.file_url("sealed");
    let key = fx.dir.path("vault.key");
    let other_key = fx.dir.path("other.key");
    let with_key = |key: &Path, args: &[&str]| {
        fx.command(["--vault", vault.as_str(), "--key-file"])
            .arg(key)
            .args(args)
            .run()
    };
    with_key(&key, &["vault", "init", "--encrypt"]).success();
    fx.command(["--key-file"])
        .arg(&other_key)
        .args(["vault", "init", "--encrypt", &fx.dir.file_url("other")])
        .run()
        .success();

    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let backup_args = |kind: &'static str| {
        [
            "--json",
            "backup",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--kind",
            kind,
        ]
    };
    let full = with_key(&key, &backup_args("full")).success().json();
    insert(&mut sql, "sales", &[2]).await;
    let target = a_moment_between_commits(&mut sql).await;
    insert(&mut sql, "sales", &[3]).await;
    let log = with_key(&key, &backup_args("log")).success().json();
    assert_eq!(log["kind"], "log", "{log}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.dir.path(format!(
            "sealed/manifests/sqlserver/main/{}.json",
            text(&full["id"])
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["encryption"]["algorithm"], "chacha20poly1305",
        "{manifest}"
    );

    let time = to_time(target);
    let restore = |key: &Path, name: &str| {
        with_key(
            key,
            &[
                "--json",
                "restore",
                "sqlserver",
                "main",
                "--database",
                "sales",
                "--to-time",
                &time,
                "--as",
                name,
            ],
        )
    };
    let refused = restore(&other_key, "sales_wrong_key").failure(7);
    let error = error_of(&refused);
    assert!(
        text(&error["message"]).contains("the key does not belong to the vault"),
        "{error}"
    );
    assert!(
        database_state(&mut sql, "sales_wrong_key").await.is_none(),
        "nothing restored with another key: {}",
        refused.stderr_text()
    );
    let restored = restore(&key, "sales_copy").success().json();
    assert_eq!(
        restored["backups"],
        serde_json::json!([full["id"], log["id"]])
    );
    assert_eq!(sql.ids("sales_copy").await, vec![1, 2]);
}

/// A byte flipped in a stored segment of the full: the restore fails with
/// exit 6 naming the damaged object, SQL Server's RESTORE is stopped and
/// the target database is not left ONLINE, and `strata verify` reports the
/// backup damaged (exit 6) naming the same object.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_part_stops_the_restore_and_verify_names_it() {
    let fx = SqlServerFixture::start(
        "sqlserver-restore-damaged",
        FixtureOptions::default(),
        |_| {},
    )
    .await;
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1, 2]).await;
    if fx.emulated() {
        // Several parts, so that SQL Server is restoring the pages when it
        // meets the damage.
        fx.emulator().set_database_size("sales", 40 << 20, false);
    }
    let full = backup(&fx, "sales", "full");
    let id = text(&full["id"]);
    let data = fx.dir.path(format!("vault/data/sqlserver/main/{id}"));
    let mut segments: Vec<String> = std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", data.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let object = format!("data/sqlserver/main/{id}/{last}");
    let path = data.join(last);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let failed = restore_run(&fx, "sales", &["--latest", "--as", "sales_copy"]).failure(6);
    let error = error_of(&failed);
    assert_eq!(error["context"]["object"], object.as_str(), "{error}");
    let said = text(&error["message"]);
    assert!(said.contains(&object), "names the object {object}: {said}");
    let state = database_state(&mut sql, "sales_copy").await;
    assert_ne!(state.as_deref(), Some("ONLINE"), "{said}");

    let verified = fx.strata(["--json", "verify"]).failure(6).json();
    let report = verified
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == full["id"]))
        .unwrap_or_else(|| panic!("{verified}"));
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["problems"].to_string().contains(&object), "{report}");
}

/// A database with two fulls and no log backup between them: a time
/// between the fulls is a gap (no log reaches it), refused with exit 8
/// naming the nearest restorable times, not restored silently to the older
/// full; the fulls' own points restore.
#[tokio::test(flavor = "multi_thread")]
async fn a_time_between_two_fulls_without_logs_is_refused() {
    let fx = SqlServerFixture::start("sqlserver-no-logs", FixtureOptions::default(), |_| {}).await;
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "two", &[1]).await;
    let first = backup(&fx, "two", "full");
    insert(&mut sql, "two", &[2]).await;
    let between = a_moment_between_commits(&mut sql).await;
    let second = backup(&fx, "two", "full");

    let refused = restore_run(
        &fx,
        "two",
        &["--to-time", &to_time(between), "--as", "two_gap"],
    )
    .failure(8);
    let error = error_of(&refused);
    assert_eq!(error["kind"], "not-found", "{error}");
    let message = text(&error["message"]);
    let nearest = |report: &serde_json::Value| {
        let at = text(&report["consistent_at"]);
        at[..19].to_owned()
    };
    assert!(message.contains(&nearest(&first)), "{message}");
    assert!(message.contains(&nearest(&second)), "{message}");
    assert_eq!(database_state(&mut sql, "two_gap").await, None);

    restore_run(
        &fx,
        "two",
        &["--backup", &text(&first["id"]), "--as", "two_first"],
    )
    .success();
    assert_eq!(sql.ids("two_first").await, vec![1]);
}

/// A recovery host with no `[sqlserver.main]` section (only the vault)
/// still writes the chain as files: `--files-only` needs no SQL Server.
#[tokio::test(flavor = "multi_thread")]
async fn files_only_needs_no_instance_section() {
    let fx = SqlServerFixture::start(
        "sqlserver-files-elsewhere",
        FixtureOptions::default(),
        |_| {},
    )
    .await;
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let full = backup(&fx, "sales", "full");
    let dir = fx.dir.path("elsewhere");
    strata_e2e::cli::Strata::new()
        .args(["--vault", &fx.dir.file_url("vault")])
        .arg("--catalog")
        .arg(fx.dir.path("other-host.db"))
        .args([
            "restore",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--latest",
        ])
        .arg("--files-only")
        .arg(&dir)
        .run()
        .success();
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("restore.json")).unwrap()).unwrap();
    let written = listing.to_string();
    assert!(written.contains(&text(&full["id"])), "{written}");
    assert!(dir.join("restore.sql").exists());
}

//! SQL Server end to end: operating it. `strata sqlserver check` on a
//! ready instance and on a login that is not sysadmin; what an
//! availability group secondary may back up; a wrong password; the vault
//! on S3 (moto) and Azure Blob (Azurite); and a backup cancelled with
//! Ctrl-C, which leaves nothing behind in the vault or in SQL Server's
//! history.
//!
//! Runs against the emulator in `tests/src/sqlserver`; the steps that need
//! the emulator's powers are skipped against a real SQL Server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_e2e::backends::{Backend, TestVault};
use strata_e2e::cli::{Strata, strata_bin};
use strata_e2e::skip::skipped;
use strata_e2e::sqlserver::engine::AgRole;
use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlClient, SqlServerFixture};
use strata_e2e::sqlserver::steps::{
    a_moment_between_commits, backup, backup_run, create_with_rows, insert, list, restore_run,
    to_time,
};
use strata_e2e::sqlserver::{Emulator, EmulatorConfig};

/// The fixture's configuration with `from` replaced by `to` (another
/// server, another password), written beside it as `name`.
fn config_variant(fx: &SqlServerFixture, name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config).unwrap();
    assert!(text.contains(from), "`{from}` is in the config:\n{text}");
    fx.dir.write(name, text.replace(from, to))
}

/// `strata sqlserver check main` reports the server's version and edition
/// and each user database with its recovery model and the backups it can
/// get, in text and in `--json`; SIMPLE recovery is said to get no log
/// backups. Check exits 3 when a prerequisite is missing: on a test host
/// the blob host name only (the emulator resolves it, this host's
/// /etc/hosts does not), and for a login that is not sysadmin also the
/// login, with the `ALTER SERVER ROLE` statement that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_server_and_databases_and_the_fix_for_a_login_that_is_not_sysadmin() {
    let fx = SqlServerFixture::start("sqlserver-ops-check", FixtureOptions::default(), |c| {
        c.product_version = "16.0.4135.4".into();
        c.edition = "Developer Edition (64-bit)".into();
    })
    .await;
    if !fx.emulated() {
        skipped(
            "check_reports_the_server_and_databases_and_the_fix_for_a_login_that_is_not_sysadmin",
            "the version, the login's roles and the host's name service are the emulator's",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    create_with_rows(&mut sql, "staging", &[1]).await;
    sql.exec("ALTER DATABASE [staging] SET RECOVERY SIMPLE")
        .await;

    // The one thing missing on a test host: the blob host name is in the
    // emulator's resolver, not in this host's /etc/hosts.
    let report = fx
        .strata(["--json", "sqlserver", "check", "main"])
        .failure(3)
        .json();
    assert_eq!(
        report["server"]["product_version"], "16.0.4135.4",
        "{report}"
    );
    assert_eq!(
        report["server"]["edition"], "Developer Edition (64-bit)",
        "{report}"
    );
    assert_eq!(report["server"]["is_sysadmin"], true, "{report}");
    let databases = report["databases"].as_array().expect("databases");
    let names: Vec<&str> = databases
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["sales", "staging"], "user databases only: {report}");
    assert_eq!(databases[0]["recovery_model"], "FULL", "{report}");
    assert_eq!(
        databases[0]["backups"],
        serde_json::json!(["full", "diff", "log", "copy-only"])
    );
    assert_eq!(databases[1]["recovery_model"], "SIMPLE", "{report}");
    assert_eq!(
        databases[1]["backups"],
        serde_json::json!(["full", "diff", "copy-only"])
    );
    let missing: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["subject"].as_str())
        .collect();
    assert_eq!(
        missing,
        ["host name"],
        "sysadmin with a credential: {report}"
    );
    assert!(
        report["findings"][0]["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1 {}", fx.blob_host)),
        "{report}"
    );

    let text = fx.strata(["sqlserver", "check", "main"]).failure(3);
    let said = text.stdout_text();
    assert!(
        said.contains("SQLEMU (Developer Edition (64-bit) 16.0.4135.4), login is sysadmin"),
        "{said}"
    );
    assert!(
        said.contains("sales: FULL, ONLINE; backups: full, diff, log, copy-only"),
        "{said}"
    );
    assert!(
        said.contains("staging: SIMPLE, ONLINE; backups: full, diff, copy-only"),
        "{said}"
    );
    assert!(said.contains("no log backups"), "{said}");
    assert!(!said.contains("login is not sysadmin"), "{said}");

    // The same host, a server whose login is not sysadmin.
    let limited = Emulator::start(EmulatorConfig {
        sysadmin: false,
        ..EmulatorConfig::default()
    })
    .await;
    let config = config_variant(
        &fx,
        "limited.toml",
        &format!("127.0.0.1,{}", fx.emulator().addr().port()),
        &format!("127.0.0.1,{}", limited.addr().port()),
    );
    let refused = Strata::new()
        .arg("--config")
        .arg(&config)
        .args(["sqlserver", "check", "main"])
        .run()
        .failure(3);
    let said = refused.stdout_text();
    assert!(said.contains("login is not sysadmin"), "{said}");
    assert!(
        said.contains("fix: ALTER SERVER ROLE [sysadmin] ADD MEMBER [strata]"),
        "{said}"
    );
    assert!(
        refused.stderr_text().contains("missing prerequisites"),
        "{}",
        refused.stderr_text()
    );
}

/// On a secondary replica of an availability group SQL Server takes only
/// copy-only fulls and log backups: `--kind full` and `--kind diff` are
/// refused (exit 5) with a message naming the database and the secondary
/// replica, and nothing is committed; `--kind copy-only` works and is
/// listed as a copy-only full.
#[tokio::test(flavor = "multi_thread")]
async fn an_availability_group_secondary_takes_copy_only_fulls_only() {
    let fx = SqlServerFixture::start("sqlserver-ops-ag", FixtureOptions::default(), |_| {}).await;
    if !fx.emulated() {
        skipped(
            "an_availability_group_secondary_takes_copy_only_fulls_only",
            "the replica role is set through the emulator",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "orders", &[1]).await;
    backup(&fx, "orders", "full");
    fx.emulator().set_ag_role(
        "orders",
        Some(AgRole {
            primary: false,
            preferred: true,
        }),
    );
    for kind in ["full", "diff"] {
        let refused = backup_run(&fx, "orders", kind).failure(5);
        let said = refused.stderr_text();
        assert!(
            said.contains("database orders is on a secondary replica of an availability group"),
            "{kind}: {said}"
        );
    }
    assert_eq!(list(&fx).len(), 1, "the refused backups left nothing");
    let copy = backup(&fx, "orders", "copy-only");
    assert_eq!(copy["kind"], "full", "{copy}");
    assert_eq!(copy["copy_only"], true, "{copy}");
    assert_eq!(copy["backup_set"]["is_copy_only"], true, "{copy}");
    assert_eq!(list(&fx).len(), 2);
}

/// A wrong password in `connection`: the backup exits 5 with SQL Server's
/// "Login failed for user" and a hint naming `strata sqlserver check`.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_a_failed_login_that_points_at_check() {
    let fx =
        SqlServerFixture::start("sqlserver-ops-login", FixtureOptions::default(), |_| {}).await;
    if !fx.emulated() {
        skipped(
            "a_wrong_password_is_a_failed_login_that_points_at_check",
            "the password is the emulator's",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let config = config_variant(
        &fx,
        "wrong-password.toml",
        "password=Strata-Emulator-1",
        "password=not-the-password",
    );
    let failed = Strata::new()
        .arg("--config")
        .arg(&config)
        .args(["backup", "sqlserver", "main", "--database", "sales"])
        .run()
        .failure(5);
    let said = failed.stderr_text();
    assert!(said.contains("Login failed for user 'strata'"), "{said}");
    assert!(said.contains("strata sqlserver check main"), "{said}");
    assert!(list(&fx).is_empty());
}

/// A full, a log, and a restore to a time between two commits, with the
/// vault on `backend` (its endpoint and credentials from the environment,
/// as `scripts/emulators.sh` writes them). Skipped with a notice when the
/// backend is not set up, unless `STRATA_REQUIRE_EMULATORS=1`.
async fn full_log_and_point_in_time_on(backend: Backend) {
    let test = format!("sqlserver_{}", backend.name());
    let Some(location) = TestVault::new(backend, &test) else {
        return;
    };
    let fx = SqlServerFixture::start(
        &format!("sqlserver-ops-{}", backend.name()),
        FixtureOptions {
            vault_url: Some(location.url().to_owned()),
            ..FixtureOptions::default()
        },
        |_| {},
    )
    .await;
    fx.strata(["vault", "init"]).success();
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let full = backup(&fx, "sales", "full");
    insert(&mut sql, "sales", &[2]).await;
    let target = a_moment_between_commits(&mut sql).await;
    insert(&mut sql, "sales", &[3]).await;
    let log = backup(&fx, "sales", "log");
    assert_eq!(log["kind"], "log", "{log}");
    let restored = restore_run(
        &fx,
        "sales",
        &["--to-time", &to_time(target), "--as", "sales_copy"],
    )
    .success()
    .json();
    assert_eq!(
        restored["backups"],
        serde_json::json!([full["id"], log["id"]]),
        "{restored}"
    );
    assert_eq!(sql.ids("sales_copy").await, vec![1, 2]);
    location.cleanup().await;
}

/// The vault on S3 (moto): a full and a log backup stream into it, and a
/// point-in-time restore reads them back with the rows of that time.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_on_s3() {
    full_log_and_point_in_time_on(Backend::S3).await;
}

/// The vault on Azure Blob (Azurite): a full and a log backup stream into
/// it, and a point-in-time restore reads them back with the rows of that
/// time.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_on_azure_blob() {
    full_log_and_point_in_time_on(Backend::Azure).await;
}

/// Ctrl-C during the backup of a large database, once SQL Server's first
/// blocks reached the endpoint: `strata` exits 130, the vault has no
/// backup, `msdb.dbo.backupset` has no row of it (the BACKUP ended with
/// its session), and the next backup of the database works and
/// is the only one in the history.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_interrupted_with_ctrl_c_leaves_no_backup_and_no_history() {
    let fx =
        SqlServerFixture::start("sqlserver-ops-cancel", FixtureOptions::default(), |_| {}).await;
    if !fx.emulated() {
        skipped(
            "a_backup_interrupted_with_ctrl_c_leaves_no_backup_and_no_history",
            "the database size is set through the emulator",
        );
        return;
    }
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "big", &[1, 2, 3]).await;
    fx.emulator().set_database_size("big", 512 << 20, false);

    let mut child = Command::new(strata_bin())
        .arg("--config")
        .arg(&fx.config)
        .args([
            "backup",
            "sqlserver",
            "main",
            "--database",
            "big",
            "--kind",
            "full",
        ])
        .env_remove("STRATA_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fx
        .emulator()
        .blob_requests()
        .iter()
        .any(|r| r.comp.as_deref() == Some("block") && r.status == Some(201))
    {
        assert!(
            Instant::now() < deadline,
            "no block of the backup reached the endpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let blocks = fx
        .emulator()
        .blob_requests()
        .iter()
        .filter(|r| r.comp.as_deref() == Some("block"))
        .count();
    assert!(
        blocks < 128,
        "interrupted before the 128 blocks of the database ({blocks} sent)"
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(list(&fx).is_empty(), "no backup in the vault");
    // The BACKUP ended with its session (SQL Server abandons a batch
    // whose client cancels or disconnects) and wrote no history.
    let history = history_rows(&mut sql, "big").await;
    assert!(history.is_empty(), "no history row: {history:?}");

    fx.emulator().set_database_size("big", 4 << 20, true);
    let next = backup(&fx, "big", "full");
    let history = history_rows(&mut sql, "big").await;
    assert_eq!(
        history,
        [next["backup_set"]["backup_set_uuid"]
            .as_str()
            .unwrap()
            .to_owned()],
        "only the backup that finished is in the history"
    );
}

/// The `backup_set_uuid`s of `db`'s rows in `msdb.dbo.backupset`.
async fn history_rows(sql: &mut SqlClient, db: &str) -> Vec<String> {
    sql.rows("SELECT backup_set_uuid, database_name FROM msdb.dbo.backupset")
        .await
        .iter()
        .filter(|r| r.get::<&str, _>("database_name") == Some(db))
        .map(|r| {
            r.get::<tiberius::Uuid, _>("backup_set_uuid")
                .unwrap()
                .to_string()
        })
        .collect()
}

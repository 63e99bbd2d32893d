//! SQL Server end to end: native full, differential and log backups
//! streamed through the plugin's blob endpoint into the vault, and a
//! point-in-time restore into a new database name with exactly the rows
//! committed before the target.
//!
//! Runs against the emulator in `tests/src/sqlserver`, or against a real
//! SQL Server when `STRATA_TEST_SQLSERVER` names one (see `docker/`).

use std::time::Duration;

use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlServerFixture};

/// Full, differential, then two log backups with rows between them; a
/// restore to a time between the two logs, as `sales_copy`, holds the rows
/// committed before that time and none after, and the source is untouched.
#[tokio::test(flavor = "multi_thread")]
async fn full_diff_logs_restore_to_a_time_between_two_logs_as_a_new_name() {
    let fx = SqlServerFixture::start("sqlserver-pitr", FixtureOptions::default(), |c| {
        c.utc_offset_minutes = 120;
    })
    .await;
    let mut sql = fx.client().await;
    sql.exec("CREATE DATABASE [sales]").await;
    sql.exec("CREATE TABLE [sales].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)")
        .await;
    sql.exec("INSERT INTO [sales].[dbo].[t] (id, note) VALUES (1, N'before the full')")
        .await;

    let full = fx
        .strata([
            "--json",
            "backup",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--kind",
            "full",
        ])
        .success()
        .json();
    assert_eq!(full["kind"], "full", "{full}");
    sql.exec("INSERT INTO [sales].[dbo].[t] (id, note) VALUES (2, N'in the diff')")
        .await;
    let diff = fx
        .strata([
            "--json",
            "backup",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--kind",
            "diff",
        ])
        .success()
        .json();
    assert_eq!(diff["kind"], "diff", "{diff}");
    assert_eq!(diff["base"], full["id"], "{diff}");
    sql.exec("INSERT INTO [sales].[dbo].[t] (id, note) VALUES (3, N'in log 1')")
        .await;
    fx.strata([
        "--json",
        "backup",
        "sqlserver",
        "main",
        "--database",
        "sales",
        "--kind",
        "log",
    ])
    .success();
    sql.exec("INSERT INTO [sales].[dbo].[t] (id, note) VALUES (4, N'in log 2, before the target')")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target = sql.now().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sql.exec("INSERT INTO [sales].[dbo].[t] (id, note) VALUES (5, N'in log 2, after the target')")
        .await;
    let log2 = fx
        .strata([
            "--json",
            "backup",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--kind",
            "log",
        ])
        .success()
        .json();
    assert_eq!(log2["kind"], "log", "{log2}");

    let target = format!("{}Z", target.format("%Y-%m-%dT%H:%M:%S%.3f"));
    let restored = fx
        .strata([
            "--json",
            "restore",
            "sqlserver",
            "main",
            "--database",
            "sales",
            "--to-time",
            &target,
            "--as",
            "sales_copy",
        ])
        .success();
    assert_eq!(
        sql.ids("sales_copy").await,
        vec![1, 2, 3, 4],
        "{}",
        restored.stdout_text()
    );
    assert_eq!(sql.ids("sales").await, vec![1, 2, 3, 4, 5]);

    // The timeline a DBA reads names the database it belongs to.
    let listed = fx
        .strata(["list", "sqlserver", "main", "--timeline"])
        .success()
        .stdout_text();
    assert!(
        listed.contains("restorable windows of sqlserver main, database sales:"),
        "{listed}"
    );
}

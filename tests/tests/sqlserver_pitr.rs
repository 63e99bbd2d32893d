//! SQL Server end to end: native full, differential and log backups
//! streamed through the plugin's blob endpoint into the vault, and a
//! point-in-time restore into a new database name with exactly the rows
//! committed before the target.
//!
//! Runs against the emulator in `tests/src/sqlserver`, or against a real
//! SQL Server when `STRATA_TEST_SQLSERVER` names one (see `docker/`).

use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlServerFixture};
use strata_e2e::sqlserver::steps::{
    a_moment_between_commits, backup, create_with_rows, insert, restore_run, to_time,
};

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
    create_with_rows(&mut sql, "sales", &[1]).await;

    let full = backup(&fx, "sales", "full");
    assert_eq!(full["kind"], "full", "{full}");
    insert(&mut sql, "sales", &[2]).await;
    let diff = backup(&fx, "sales", "diff");
    assert_eq!(diff["kind"], "diff", "{diff}");
    assert_eq!(diff["base"], full["id"], "{diff}");
    insert(&mut sql, "sales", &[3]).await;
    backup(&fx, "sales", "log");
    insert(&mut sql, "sales", &[4]).await;
    let target = a_moment_between_commits(&mut sql).await;
    insert(&mut sql, "sales", &[5]).await;
    let log2 = backup(&fx, "sales", "log");
    assert_eq!(log2["kind"], "log", "{log2}");

    let restored = restore_run(
        &fx,
        "sales",
        &["--to-time", &to_time(target), "--as", "sales_copy"],
    )
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

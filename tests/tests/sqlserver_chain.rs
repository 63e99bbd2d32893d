//! SQL Server end to end: the log chain when something outside Strata
//! changes it. A log or full backup another tool takes, or a while in
//! SIMPLE recovery, leaves the vault unable to restore the next log or
//! differential; Strata then takes a full instead, says why in the
//! backup's report and in `strata list`, and the chain goes on from it.
//!
//! Runs against the emulator in `tests/src/sqlserver`, or against a real
//! SQL Server when `STRATA_TEST_SQLSERVER` names one (see `docker/`).

use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlClient, SqlServerFixture};
use strata_e2e::sqlserver::steps::{
    a_moment_between_commits, backup, backup_run, create_with_rows, insert, list, restore_run,
    text, to_time,
};

/// Where the other tool writes its backups on the SQL Server host.
const OTHER_TOOL_DIR: &str = "/var/opt/mssql/backup";

/// A log backup taken by another tool (`BACKUP LOG ... TO DISK`) leaves a
/// gap the vault cannot restore across: the next `--kind log` is taken as
/// a full, its report and `strata list` give the reason with both LSNs (where
/// SQL Server's next log starts, where the vault's chain ends); a log after
/// it continues the new chain and a point-in-time restore after that log
/// has the right rows. A full taken by another tool becomes the database's
/// differential base, so the next `--kind diff` is a full too, naming that
/// backup set as not in the vault.
#[tokio::test(flavor = "multi_thread")]
async fn backups_outside_strata_turn_the_next_log_or_diff_into_a_full_that_says_why() {
    let fx =
        SqlServerFixture::start("sqlserver-chain-oob", FixtureOptions::default(), |_| {}).await;
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1]).await;
    let full = backup(&fx, "sales", "full");
    insert(&mut sql, "sales", &[2]).await;
    let log1 = backup(&fx, "sales", "log");
    assert_eq!(log1["kind"], "log", "{log1}");
    let vault_end = text(&log1["last_lsn"]);

    // Another tool's log backup takes the log from the vault's chain end on.
    insert(&mut sql, "sales", &[3]).await;
    sql.exec(&format!(
        "BACKUP LOG [sales] TO DISK = N'{OTHER_TOOL_DIR}/other-tool.trn'"
    ))
    .await;
    insert(&mut sql, "sales", &[4]).await;
    let healed = backup(&fx, "sales", "log");
    assert_eq!(healed["kind"], "full", "{healed}");
    let reason = text(&healed["kind_reason"]);
    assert!(
        reason.contains("log chain is broken") && reason.contains(&format!("LSN {vault_end}")),
        "the reason names the vault's chain end {vault_end}: {reason}"
    );
    let other_tool_end = other_tool_log_end(&mut sql).await;
    assert!(
        reason.contains(&format!("LSN {other_tool_end}")),
        "the reason names where SQL Server's next log starts ({other_tool_end}): {reason}"
    );
    let listed = list(&fx);
    let shown = listed
        .iter()
        .find(|b| b["id"] == healed["id"])
        .unwrap_or_else(|| panic!("{} is listed: {listed:?}", healed["id"]));
    assert_eq!(shown["kind"], "full", "{shown}");
    assert_eq!(
        shown["labels"]["strata.kind_reason"],
        reason.as_str(),
        "{shown}"
    );
    assert_eq!(shown["labels"]["strata.requested_kind"], "log", "{shown}");
    let first_full = listed.iter().find(|b| b["id"] == full["id"]).unwrap();
    assert!(
        first_full["labels"].get("strata.kind_reason").is_none(),
        "{first_full}"
    );

    // The chain goes on from the healing full.
    insert(&mut sql, "sales", &[5]).await;
    let target = a_moment_between_commits(&mut sql).await;
    insert(&mut sql, "sales", &[6]).await;
    let log2 = backup(&fx, "sales", "log");
    assert_eq!(log2["kind"], "log", "{log2}");
    assert!(log2["kind_reason"].is_null(), "{log2}");
    let restored = restore_run(
        &fx,
        "sales",
        &["--to-time", &to_time(target), "--as", "sales_pitr"],
    )
    .success()
    .json();
    assert_eq!(
        restored["backups"],
        serde_json::json!([healed["id"], log2["id"]]),
        "the restore starts from the healing full: {restored}"
    );
    assert_eq!(sql.ids("sales_pitr").await, vec![1, 2, 3, 4, 5]);

    // Another tool's full becomes the differential base.
    sql.exec(&format!(
        "BACKUP DATABASE [sales] TO DISK = N'{OTHER_TOOL_DIR}/other-tool.bak' WITH CHECKSUM"
    ))
    .await;
    let their_full = sql
        .rows("SELECT differential_base_guid FROM sys.master_files WHERE database_id = DB_ID(N'sales') ORDER BY file_id")
        .await[0]
        .get::<tiberius::Uuid, _>("differential_base_guid")
        .expect("the other tool's full is the differential base");
    insert(&mut sql, "sales", &[7]).await;
    let diff = backup(&fx, "sales", "diff");
    assert_eq!(diff["kind"], "full", "{diff}");
    let reason = text(&diff["kind_reason"]);
    assert!(
        reason.contains(&format!("backup set {their_full}")) && reason.contains("not in the vault"),
        "{reason}"
    );
    // A diff on Strata's own full is a diff again.
    insert(&mut sql, "sales", &[8]).await;
    let next = backup(&fx, "sales", "diff");
    assert_eq!(next["kind"], "diff", "{next}");
    assert_eq!(next["base"], diff["id"], "{next}");
}

/// The last LSN of the other tool's log backup: where SQL Server's next
/// log backup starts (`msdb.dbo.backupset`, found by its device).
async fn other_tool_log_end(sql: &mut SqlClient) -> String {
    let media = sql
        .rows(&format!(
            "SELECT TOP (1) media_set_id FROM msdb.dbo.backupmediafamily WHERE physical_device_name = N'{OTHER_TOOL_DIR}/other-tool.trn' ORDER BY media_set_id DESC"
        ))
        .await;
    let media_set_id: i32 = media[0].get("media_set_id").expect("a media set");
    let rows = sql
        .rows(&format!(
            "SELECT last_lsn FROM msdb.dbo.backupset WHERE media_set_id = {media_set_id}"
        ))
        .await;
    let last: tiberius::numeric::Numeric = rows[0].get("last_lsn").expect("a last LSN");
    last.value().to_string()
}

/// SIMPLE recovery keeps no log chain: a log backup is refused (exit 5,
/// the engine refusing) with a message naming the recovery model and a hint
/// with the statement that switches back; full and differential backups
/// still work. Back in FULL recovery, the next `--kind log` is a full that
/// restarts the chain, with the reason, and the log after it is a log.
#[tokio::test(flavor = "multi_thread")]
async fn simple_recovery_refuses_log_backups_and_the_switch_back_restarts_the_chain() {
    let fx =
        SqlServerFixture::start("sqlserver-chain-simple", FixtureOptions::default(), |_| {}).await;
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "crm", &[1]).await;
    backup(&fx, "crm", "full");
    insert(&mut sql, "crm", &[2]).await;
    backup(&fx, "crm", "log");

    sql.exec("ALTER DATABASE [crm] SET RECOVERY SIMPLE").await;
    insert(&mut sql, "crm", &[3]).await;
    let refused = backup_run(&fx, "crm", "log").failure(5);
    let said = refused.stderr_text();
    assert!(
        said.contains("crm") && said.contains("SIMPLE recovery model"),
        "{said}"
    );
    assert!(
        said.contains("ALTER DATABASE [crm] SET RECOVERY FULL"),
        "the hint gives the statement: {said}"
    );
    let before = list(&fx).len();
    let full = backup(&fx, "crm", "full");
    assert_eq!(full["kind"], "full", "{full}");
    insert(&mut sql, "crm", &[4]).await;
    let diff = backup(&fx, "crm", "diff");
    assert_eq!(diff["kind"], "diff", "{diff}");
    assert_eq!(diff["base"], full["id"], "{diff}");
    assert_eq!(list(&fx).len(), before + 2, "the refused log left nothing");

    sql.exec("ALTER DATABASE [crm] SET RECOVERY FULL").await;
    insert(&mut sql, "crm", &[5]).await;
    let restart = backup(&fx, "crm", "log");
    assert_eq!(restart["kind"], "full", "{restart}");
    let reason = text(&restart["kind_reason"]);
    assert!(
        reason.starts_with("SQL Server has no log chain for crm"),
        "{reason}"
    );
    insert(&mut sql, "crm", &[6]).await;
    let log = backup(&fx, "crm", "log");
    assert_eq!(log["kind"], "log", "{log}");
    restore_run(&fx, "crm", &["--latest", "--as", "crm_latest"]).success();
    assert_eq!(sql.ids("crm_latest").await, vec![1, 2, 3, 4, 5, 6]);
}

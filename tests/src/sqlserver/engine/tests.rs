//! The server model driven through `BatchHandler::batch`, without a network:
//! the chain rules and refusals the Strata plugin depends on.

use std::time::Duration;

use super::*;
use crate::sqlserver::blob_client::{BlobClient, BlobClientConfig};

const OFFSET_MINUTES: i32 = 120;

fn server() -> Server {
    server_with(true)
}

fn server_with(sysadmin: bool) -> Server {
    let blob = BlobClient::new(BlobClientConfig {
        trusted_ca_pem: Vec::new(),
        resolve: Vec::new(),
        sas: "sig=test".into(),
        blocks_in_flight: 2,
    })
    .unwrap_or_else(|e| panic!("{}: {}", e.device, e.os_error));
    Server::new(
        ServerSettings {
            server_name: "SQLEMU".into(),
            product_version: "16.0.4135.4".into(),
            edition: "Developer Edition (64-bit)".into(),
            utc_offset_minutes: OFFSET_MINUTES,
            data_path: "/var/opt/mssql/data".into(),
            sysadmin,
            default_database_size: 1024 * 1024,
        },
        blob,
    )
}

async fn run(server: &Server, sql: &str) -> Vec<Reply> {
    server.batch(&internal_session("strata"), sql).await
}

fn errors_of(replies: &[Reply]) -> Vec<SqlError> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::Error(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Runs a batch that must succeed.
async fn ok(server: &Server, sql: &str) -> Vec<Reply> {
    let replies = run(server, sql).await;
    let errors = errors_of(&replies);
    assert!(errors.is_empty(), "{sql}\n failed: {errors:?}");
    replies
}

/// Runs a batch that must fail; returns its error numbers and messages.
async fn fails(server: &Server, sql: &str) -> Vec<SqlError> {
    let errors = errors_of(&run(server, sql).await);
    assert!(!errors.is_empty(), "{sql}\n succeeded");
    errors
}

fn numbers(errors: &[SqlError]) -> Vec<u32> {
    errors.iter().map(|e| e.number).collect()
}

/// The rows of a one-result-set batch, as column name → value maps.
async fn rows(server: &Server, sql: &str) -> Vec<BTreeMap<String, Value>> {
    let replies = ok(server, sql).await;
    let Some(Reply::Rows { columns, rows }) = replies
        .into_iter()
        .find(|r| matches!(r, Reply::Rows { .. }))
    else {
        panic!("{sql}: no result set")
    };
    rows.into_iter()
        .map(|row| columns.iter().map(|c| c.name.clone()).zip(row).collect())
        .collect()
}

async fn one_row(server: &Server, sql: &str) -> BTreeMap<String, Value> {
    let mut all = rows(server, sql).await;
    assert_eq!(all.len(), 1, "{sql}: {all:?}");
    all.remove(0)
}

fn lsn_in(row: &BTreeMap<String, Value>, column: &str) -> Option<Lsn> {
    match &row[column] {
        Value::Numeric25(n) => Some(*n),
        Value::Null => None,
        other => panic!("{column} is {other:?}"),
    }
}

fn guid_in(row: &BTreeMap<String, Value>, column: &str) -> Option<Uuid> {
    match &row[column] {
        Value::Guid(g) => Some(*g),
        Value::Null => None,
        other => panic!("{column} is {other:?}"),
    }
}

async fn history(server: &Server, database: &str) -> Vec<BTreeMap<String, Value>> {
    rows(
        server,
        &format!(
            "SELECT backup_set_uuid, type, is_copy_only, first_lsn, last_lsn, checkpoint_lsn, database_backup_lsn, \
             differential_base_lsn, differential_base_guid, first_recovery_fork_guid, last_recovery_fork_guid, \
             fork_point_lsn, database_guid, family_guid, backup_start_date, backup_finish_date, time_zone, \
             recovery_model, begins_log_chain, backup_size, compressed_backup_size, media_set_id \
             FROM msdb.dbo.backupset WHERE database_name = N'{database}' ORDER BY media_set_id"
        ),
    )
    .await
}

async fn recovery_status(server: &Server, database: &str) -> BTreeMap<String, Value> {
    one_row(
        server,
        &format!(
            "SELECT database_guid, family_guid, last_log_backup_lsn, recovery_fork_guid, first_recovery_fork_guid, \
             fork_point_lsn FROM sys.database_recovery_status WHERE database_id = DB_ID(N'{database}')"
        ),
    )
    .await
}

async fn ids(server: &Server, table: &str) -> Vec<(i32, Option<String>)> {
    rows(server, &format!("SELECT id, note FROM {table} ORDER BY id"))
        .await
        .into_iter()
        .map(|r| {
            let Value::Int(id) = r["id"] else {
                panic!("{r:?}")
            };
            let note = match &r["note"] {
                Value::NVarChar(s) => Some(s.clone()),
                _ => None,
            };
            (id, note)
        })
        .collect()
}

/// A FULL-recovery database `name` with table `dbo.t (id, note)`.
async fn database(server: &Server, name: &str) {
    ok(server, &format!("CREATE DATABASE [{name}]")).await;
    ok(
        server,
        &format!("CREATE TABLE [{name}].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)"),
    )
    .await;
}

async fn insert(server: &Server, db: &str, id: i32) {
    ok(
        server,
        &format!("INSERT INTO [{db}].[dbo].[t] (id, note) VALUES ({id}, N'row {id}')"),
    )
    .await;
}

/// The server's local time as the plugin computes it: SYSUTCDATETIME plus
/// DATEPART(TZOFFSET, SYSDATETIMEOFFSET()).
async fn server_local_now(server: &Server) -> NaiveDateTime {
    let row = one_row(
        server,
        "SELECT SYSUTCDATETIME() AS now, DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes",
    )
    .await;
    let (Value::DateTime2(now), Value::Int(offset)) = (&row["now"], &row["utc_offset_minutes"])
    else {
        panic!("{row:?}")
    };
    *now + TimeDelta::minutes(i64::from(*offset))
}

fn moves(from: &str, to: &str) -> String {
    format!(
        "MOVE N'{from}' TO N'/var/opt/mssql/data/{to}.mdf', MOVE N'{from}_log' TO N'/var/opt/mssql/data/{to}_log.ldf'"
    )
}

/// full → insert 1 → (point) → insert 2 → log backup, all TO DISK; returns the point.
async fn full_two_inserts_and_a_log(server: &Server) -> NaiveDateTime {
    database(server, "src").await;
    ok(
        server,
        "BACKUP DATABASE [src] TO DISK = N'/b/src_full.bak' WITH CHECKSUM, STATS = 10",
    )
    .await;
    insert(server, "src", 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let point = server_local_now(server).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    insert(server, "src", 2).await;
    ok(
        server,
        "BACKUP LOG [src] TO DISK = N'/b/src_log1.trn' WITH CHECKSUM",
    )
    .await;
    point
}

#[tokio::test]
async fn stopat_between_two_inserts_restores_only_the_rows_committed_before_it() {
    let server = server();
    let point = full_two_inserts_and_a_log(&server).await;
    ok(&server, &format!("RESTORE DATABASE [copy] FROM DISK = N'/b/src_full.bak' WITH {}, NORECOVERY, CHECKSUM, STATS = 10", moves("src", "copy"))).await;
    let stop = point.format("%Y-%m-%dT%H:%M:%S%.3f");
    ok(&server, &format!("RESTORE LOG [copy] FROM DISK = N'/b/src_log1.trn' WITH NORECOVERY, CHECKSUM, STOPAT = N'{stop}'")).await;
    let state = one_row(
        &server,
        "SELECT state_desc FROM sys.databases WHERE name = N'copy'",
    )
    .await;
    assert_eq!(state["state_desc"], Value::NVarChar("RESTORING".into()));
    ok(&server, "RESTORE DATABASE [copy] WITH RECOVERY").await;

    assert_eq!(
        ids(&server, "[copy].[dbo].[t]").await,
        vec![(1, Some("row 1".into()))]
    );
    assert_eq!(ids(&server, "[src].[dbo].[t]").await.len(), 2);
    let src = recovery_status(&server, "src").await;
    let copy = recovery_status(&server, "copy").await;
    assert_eq!(
        copy["family_guid"], src["family_guid"],
        "a restore keeps the family"
    );
    assert_ne!(
        copy["database_guid"], src["database_guid"],
        "a restore makes a new database_guid"
    );
}

#[tokio::test]
async fn stopat_after_the_logs_content_leaves_the_database_restoring() {
    let server = server();
    full_two_inserts_and_a_log(&server).await;
    ok(
        &server,
        &format!(
            "RESTORE DATABASE [copy] FROM DISK = N'/b/src_full.bak' WITH {}, NORECOVERY",
            moves("src", "copy")
        ),
    )
    .await;
    let later = (server_local_now(&server).await + TimeDelta::hours(1)).format("%Y-%m-%dT%H:%M:%S");
    let replies = ok(
        &server,
        &format!(
            "RESTORE LOG [copy] FROM DISK = N'/b/src_log1.trn' WITH RECOVERY, STOPAT = N'{later}'"
        ),
    )
    .await;
    assert!(
        replies.iter().any(|r| matches!(r, Reply::Info { message, .. } if message.contains("left in the restoring state"))),
        "{replies:?}"
    );
    let state = one_row(
        &server,
        "SELECT state_desc FROM sys.databases WHERE name = N'copy'",
    )
    .await;
    assert_eq!(state["state_desc"], Value::NVarChar("RESTORING".into()));
    ok(&server, "RESTORE DATABASE [copy] WITH RECOVERY").await;
    assert_eq!(ids(&server, "[copy].[dbo].[t]").await.len(), 2);
    let status = recovery_status(&server, "copy").await;
    assert_eq!(
        status["fork_point_lsn"],
        Value::Null,
        "recovery at the end of the log starts no fork"
    );
}

#[tokio::test]
async fn stopat_before_the_full_is_refused_with_4338() {
    let server = server();
    let before = server_local_now(&server).await - TimeDelta::hours(1);
    full_two_inserts_and_a_log(&server).await;
    ok(
        &server,
        &format!(
            "RESTORE DATABASE [copy] FROM DISK = N'/b/src_full.bak' WITH {}, NORECOVERY",
            moves("src", "copy")
        ),
    )
    .await;
    let errors = fails(
        &server,
        &format!(
            "RESTORE LOG [copy] FROM DISK = N'/b/src_log1.trn' WITH STOPAT = N'{}'",
            before.format("%Y-%m-%d %H:%M:%S")
        ),
    )
    .await;
    assert_eq!(numbers(&errors), vec![4338, 3013]);
    assert_eq!(errors[1].message, "RESTORE LOG is terminating abnormally.");
}

#[tokio::test]
async fn recovery_after_stopat_starts_a_fork_that_the_next_log_backup_records() {
    let server = server();
    let point = full_two_inserts_and_a_log(&server).await;
    ok(
        &server,
        &format!(
            "RESTORE DATABASE [copy] FROM DISK = N'/b/src_full.bak' WITH {}, NORECOVERY",
            moves("src", "copy")
        ),
    )
    .await;
    ok(
        &server,
        &format!(
            "RESTORE LOG [copy] FROM DISK = N'/b/src_log1.trn' WITH RECOVERY, STOPAT = N'{}'",
            point.format("%Y-%m-%dT%H:%M:%S%.3f")
        ),
    )
    .await;
    let src = recovery_status(&server, "src").await;
    let status = recovery_status(&server, "copy").await;
    assert_eq!(
        status["first_recovery_fork_guid"], src["recovery_fork_guid"],
        "the first fork stays"
    );
    assert_ne!(
        status["recovery_fork_guid"], src["recovery_fork_guid"],
        "a new fork"
    );
    let fork_point = lsn_in(&status, "fork_point_lsn").expect("fork_point_lsn is set");

    insert(&server, "copy", 3).await;
    ok(&server, "BACKUP LOG [copy] TO DISK = N'/b/copy_log.trn'").await;
    let log = history(&server, "copy").await.pop().expect("a history row");
    assert_eq!(log["type"], Value::NVarChar("L".into()));
    assert_eq!(log["first_recovery_fork_guid"], src["recovery_fork_guid"]);
    assert_eq!(log["last_recovery_fork_guid"], status["recovery_fork_guid"]);
    assert_eq!(lsn_in(&log, "fork_point_lsn"), Some(fork_point));
    assert_eq!(
        lsn_in(&log, "first_lsn"),
        Some(fork_point),
        "the log continues where the restore stopped"
    );

    // A log of the old fork past the fork point does not apply to a restore
    // that follows the new fork.
    ok(
        &server,
        "BACKUP DATABASE [copy] TO DISK = N'/b/copy_full.bak'",
    )
    .await;
    ok(
        &server,
        &format!(
            "RESTORE DATABASE [copy2] FROM DISK = N'/b/copy_full.bak' WITH {}, NORECOVERY",
            moves("src", "copy2")
        ),
    )
    .await;
    let errors = fails(
        &server,
        "RESTORE LOG [copy2] FROM DISK = N'/b/src_log1.trn'",
    )
    .await;
    assert_ne!(numbers(&errors)[0], 0);
    assert_eq!(numbers(&errors).last(), Some(&3013));
}

#[tokio::test]
async fn the_log_chain_follows_sql_servers_lsn_rules() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    insert(&server, "db", 1).await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l1.trn'").await;
    insert(&server, "db", 2).await;
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL",
    )
    .await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l2.trn'").await;
    let h = history(&server, "db").await;
    let (full, log1, diff, log2) = (&h[0], &h[1], &h[2], &h[3]);
    let l = |row: &BTreeMap<String, Value>, c: &str| {
        lsn_in(row, c).unwrap_or_else(|| panic!("{c} is NULL"))
    };

    assert_eq!(full["type"], Value::NVarChar("D".into()));
    assert!(
        l(full, "first_lsn") >= 37_000_000_001_600_001,
        "LSNs in SQL Server's decimal form"
    );
    assert_eq!(l(full, "checkpoint_lsn"), l(full, "first_lsn"));
    assert!(
        l(log1, "first_lsn") <= l(full, "last_lsn") && l(full, "last_lsn") < l(log1, "last_lsn")
    );
    assert_eq!(
        l(log2, "first_lsn"),
        l(log1, "last_lsn"),
        "consecutive logs chain"
    );
    assert_eq!(l(log1, "database_backup_lsn"), l(full, "checkpoint_lsn"));
    assert_eq!(log1["begins_log_chain"], Value::Bit(true));
    assert_eq!(log2["begins_log_chain"], Value::Bit(false));
    assert_eq!(diff["type"], Value::NVarChar("I".into()));
    assert_eq!(diff["differential_base_guid"], full["backup_set_uuid"]);
    assert_eq!(l(diff, "differential_base_lsn"), l(full, "checkpoint_lsn"));
    assert_eq!(l(diff, "database_backup_lsn"), l(full, "checkpoint_lsn"));
    assert_eq!(full["differential_base_guid"], Value::Null);
    assert_eq!(
        full["first_recovery_fork_guid"],
        full["last_recovery_fork_guid"]
    );

    let status = recovery_status(&server, "db").await;
    assert_eq!(
        lsn_in(&status, "last_log_backup_lsn"),
        Some(l(log2, "last_lsn"))
    );
    // Local time with the offset in 15-minute units.
    assert_eq!(full["time_zone"], Value::SmallInt(8));
    let Value::DateTime(start) = full["backup_start_date"] else {
        panic!()
    };
    let local_now = Utc::now().naive_utc() + TimeDelta::minutes(120);
    assert!(
        (local_now - start).num_seconds().abs() < 60,
        "{start} is not the server's local time {local_now}"
    );
    // One media family row per device, on success only.
    let families = rows(&server, "SELECT media_set_id, physical_device_name, device_type FROM msdb.dbo.backupmediafamily ORDER BY media_set_id").await;
    assert_eq!(families.len(), 4);
    assert_eq!(
        families[1]["physical_device_name"],
        Value::NVarChar("/b/l1.trn".into())
    );
    assert_eq!(families[1]["device_type"], Value::TinyInt(2));
}

#[tokio::test]
async fn log_backup_without_a_current_database_backup_is_4214() {
    let server = server();
    database(&server, "db").await;
    let errors = fails(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await;
    assert_eq!(numbers(&errors), vec![4214, 3013]);
    assert_eq!(errors[1].message, "BACKUP LOG is terminating abnormally.");
    assert!(
        history(&server, "db").await.is_empty(),
        "no history row for a failed backup"
    );
    assert!(server.disk_device("/b/l.trn").is_none());
}

#[tokio::test]
async fn log_backup_in_simple_recovery_is_4208() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "ALTER DATABASE [db] SET RECOVERY SIMPLE").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    let errors = fails(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await;
    assert_eq!(numbers(&errors), vec![4208, 3013]);
    assert_eq!(
        lsn_in(&recovery_status(&server, "db").await, "last_log_backup_lsn"),
        None
    );
}

#[tokio::test]
async fn differential_without_a_full_is_3035() {
    let server = server();
    database(&server, "db").await;
    let errors = fails(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL",
    )
    .await;
    assert_eq!(numbers(&errors), vec![3035, 3013]);
    assert!(
        errors[0].message.contains("\"db\""),
        "{}",
        errors[0].message
    );
    // A copy-only full is no differential base either.
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/c.bak' WITH COPY_ONLY",
    )
    .await;
    assert_eq!(
        numbers(
            &fails(
                &server,
                "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL"
            )
            .await
        )[0],
        3035
    );
}

#[tokio::test]
async fn switching_to_simple_breaks_the_chain_until_the_next_data_backup() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    assert!(lsn_in(&recovery_status(&server, "db").await, "last_log_backup_lsn").is_some());
    ok(&server, "ALTER DATABASE [db] SET RECOVERY SIMPLE").await;
    assert_eq!(
        lsn_in(&recovery_status(&server, "db").await, "last_log_backup_lsn"),
        None
    );
    ok(&server, "ALTER DATABASE [db] SET RECOVERY FULL").await;
    assert_eq!(
        lsn_in(&recovery_status(&server, "db").await, "last_log_backup_lsn"),
        None
    );
    assert_eq!(
        numbers(&fails(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await),
        vec![4214, 3013]
    );
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL",
    )
    .await;
    insert(&server, "db", 1).await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await;
    let h = history(&server, "db").await;
    let (diff, log) = (&h[1], &h[2]);
    assert_eq!(log["begins_log_chain"], Value::Bit(true));
    assert_eq!(lsn_in(log, "first_lsn"), lsn_in(diff, "first_lsn"));
}

#[tokio::test]
async fn copy_only_full_leaves_the_differential_base_and_the_log_chain() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    let base = "SELECT file_id, type, name, physical_name, size, differential_base_guid, differential_base_lsn FROM sys.master_files WHERE database_id = DB_ID(N'db') ORDER BY file_id";
    let before = rows(&server, base).await;
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/c.bak' WITH COPY_ONLY",
    )
    .await;
    ok(
        &server,
        "BACKUP LOG [db] TO DISK = N'/b/cl.trn' WITH COPY_ONLY",
    )
    .await;
    let after = rows(&server, base).await;
    assert_eq!(before, after);
    let h = history(&server, "db").await;
    assert_eq!(
        guid_in(&before[0], "differential_base_guid"),
        guid_in(&h[0], "backup_set_uuid")
    );
    assert_eq!(
        before[0]["physical_name"],
        Value::NVarChar("/var/opt/mssql/data/db.mdf".into())
    );
    assert_eq!(before[1]["type"], Value::TinyInt(1));
    assert_eq!(before[1]["differential_base_guid"], Value::Null);
    assert_eq!(h[1]["is_copy_only"], Value::Bit(true));
    // The copy-only log did not advance the chain: the next regular log
    // starts where the copy-only one did.
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await;
    let h = history(&server, "db").await;
    assert_eq!(h[3]["first_lsn"], h[2]["first_lsn"]);
}

#[tokio::test]
async fn logs_restored_out_of_order_are_4305_and_4326() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    insert(&server, "db", 1).await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l1.trn'").await;
    insert(&server, "db", 2).await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l2.trn'").await;
    let h = history(&server, "db").await;
    let full_last = lsn_in(&h[0], "last_lsn").unwrap();
    let log2_first = lsn_in(&h[2], "first_lsn").unwrap();
    let log1_last = lsn_in(&h[1], "last_lsn").unwrap();

    ok(
        &server,
        &format!(
            "RESTORE DATABASE [r] FROM DISK = N'/b/f.bak' WITH {}, NORECOVERY",
            moves("db", "r")
        ),
    )
    .await;
    let errors = fails(
        &server,
        "RESTORE LOG [r] FROM DISK = N'/b/l2.trn' WITH NORECOVERY",
    )
    .await;
    assert_eq!(numbers(&errors), vec![4305, 3013]);
    assert_eq!(
        errors[0].message,
        format!(
            "The log in this backup set begins at LSN {log2_first}, which is too recent to apply to the database. \
             An earlier log backup that includes LSN {full_last} can be restored."
        )
    );
    ok(
        &server,
        "RESTORE LOG [r] FROM DISK = N'/b/l1.trn' WITH NORECOVERY",
    )
    .await;
    let errors = fails(
        &server,
        "RESTORE LOG [r] FROM DISK = N'/b/l1.trn' WITH NORECOVERY",
    )
    .await;
    assert_eq!(numbers(&errors), vec![4326, 3013]);
    assert!(
        errors[0]
            .message
            .contains(&format!("includes LSN {log1_last}")),
        "{}",
        errors[0].message
    );
    ok(
        &server,
        "RESTORE LOG [r] FROM DISK = N'/b/l2.trn' WITH RECOVERY",
    )
    .await;
    assert_eq!(ids(&server, "[r].[dbo].[t]").await.len(), 2);
    // A log on an online database: nothing to roll forward.
    assert_eq!(
        numbers(&fails(&server, "RESTORE LOG [r] FROM DISK = N'/b/l2.trn'").await),
        vec![3117, 3013]
    );
}

#[tokio::test]
async fn differential_on_a_database_not_restored_from_its_base_is_3136() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f1.bak'").await;
    insert(&server, "db", 1).await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f2.bak'").await;
    insert(&server, "db", 2).await;
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL",
    )
    .await;

    ok(
        &server,
        &format!(
            "RESTORE DATABASE [r] FROM DISK = N'/b/f1.bak' WITH {}, NORECOVERY",
            moves("db", "r")
        ),
    )
    .await;
    assert_eq!(
        numbers(
            &fails(
                &server,
                "RESTORE DATABASE [r] FROM DISK = N'/b/d.bak' WITH NORECOVERY"
            )
            .await
        ),
        vec![3136, 3013]
    );
    ok(
        &server,
        &format!(
            "RESTORE DATABASE [r] FROM DISK = N'/b/f2.bak' WITH {}, NORECOVERY, REPLACE",
            moves("db", "r")
        ),
    )
    .await;
    ok(
        &server,
        "RESTORE DATABASE [r] FROM DISK = N'/b/d.bak' WITH RECOVERY",
    )
    .await;
    assert_eq!(
        ids(&server, "[r].[dbo].[t]")
            .await
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test]
async fn restoring_over_an_existing_database_needs_replace() {
    let server = server();
    database(&server, "a").await;
    database(&server, "b").await;
    insert(&server, "a", 7).await;
    ok(&server, "BACKUP DATABASE [a] TO DISK = N'/b/a.bak'").await;
    let errors = fails(
        &server,
        &format!(
            "RESTORE DATABASE [b] FROM DISK = N'/b/a.bak' WITH {}",
            moves("a", "b")
        ),
    )
    .await;
    assert_eq!(numbers(&errors), vec![3154, 3013]);
    assert_eq!(
        errors[0].message,
        "The backup set holds a backup of a database other than the existing 'b' database."
    );
    let errors = fails(&server, "RESTORE DATABASE [a] FROM DISK = N'/b/a.bak'").await;
    assert_eq!(numbers(&errors), vec![3159, 3013]);
    assert!(errors[0].message.contains("\"a\""));
    assert!(
        ids(&server, "[b].[dbo].[t]").await.is_empty(),
        "a refused restore changes nothing"
    );

    ok(
        &server,
        &format!(
            "RESTORE DATABASE [b] FROM DISK = N'/b/a.bak' WITH {}, REPLACE",
            moves("a", "b")
        ),
    )
    .await;
    assert_eq!(
        ids(&server, "[b].[dbo].[t]").await,
        vec![(7, Some("row 7".into()))]
    );
    ok(
        &server,
        "RESTORE DATABASE [a] FROM DISK = N'/b/a.bak' WITH REPLACE",
    )
    .await;
}

#[tokio::test]
async fn files_of_another_database_are_not_overwritten_1834() {
    let server = server();
    database(&server, "a").await;
    ok(&server, "BACKUP DATABASE [a] TO DISK = N'/b/a.bak'").await;
    let errors = fails(
        &server,
        "RESTORE DATABASE [c] FROM DISK = N'/b/a.bak' WITH NORECOVERY",
    )
    .await;
    assert_eq!(numbers(&errors), vec![1834, 3156, 1834, 3156, 3119, 3013]);
    assert_eq!(
        errors[0].message,
        "The file '/var/opt/mssql/data/a.mdf' cannot be overwritten.  It is being used by database 'a'."
    );
    let errors = fails(
        &server,
        "RESTORE DATABASE [c] FROM DISK = N'/b/a.bak' WITH MOVE N'nope' TO N'/x.mdf'",
    )
    .await;
    assert_eq!(numbers(&errors), vec![3234, 3013]);
    assert!(errors[0].message.contains("'nope'"));
    let found = rows(&server, "SELECT name FROM sys.databases WHERE name = N'c'").await;
    assert!(found.is_empty());
}

#[tokio::test]
async fn headeronly_and_filelistonly_describe_the_backup_set() {
    let server = server();
    database(&server, "db").await;
    // Large enough for several 4 MiB blocks, spread over both devices.
    server
        .set_database_size("db", 32 * 1024 * 1024, true)
        .unwrap();
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/f1.bak', DISK = N'/b/f2.bak' WITH COMPRESSION",
    )
    .await;
    let files = rows(
        &server,
        "RESTORE FILELISTONLY FROM DISK = N'/b/f1.bak', DISK = N'/b/f2.bak'",
    )
    .await;
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["LogicalName"], Value::NVarChar("db".into()));
    assert_eq!(files[0]["Type"], Value::NVarChar("D".into()));
    assert_eq!(
        files[1]["PhysicalName"],
        Value::NVarChar("/var/opt/mssql/data/db_log.ldf".into())
    );
    let header = one_row(
        &server,
        "RESTORE HEADERONLY FROM DISK = N'/b/f1.bak', DISK = N'/b/f2.bak'",
    )
    .await;
    let h = history(&server, "db").await;
    assert_eq!(header["BackupSetGUID"], h[0]["backup_set_uuid"]);
    assert_eq!(header["FirstLSN"], h[0]["first_lsn"]);
    assert_eq!(header["Compressed"], Value::TinyInt(1));
    // Restoring from one device of a two-device media set fails.
    let errors = fails(
        &server,
        &format!(
            "RESTORE DATABASE [r] FROM DISK = N'/b/f1.bak' WITH {}",
            moves("db", "r")
        ),
    )
    .await;
    assert_eq!(numbers(&errors).last(), Some(&3013), "{errors:?}");
    assert!(
        rows(&server, "SELECT name FROM sys.databases WHERE name = N'r'")
            .await
            .is_empty()
    );
    let errors = fails(
        &server,
        "RESTORE HEADERONLY FROM DISK = N'/nonexistent/x.bak'",
    )
    .await;
    assert_eq!(errors[0].number, 3201);
    assert!(
        errors[0].message.contains("Operating system error 2"),
        "{}",
        errors[0].message
    );
}

#[tokio::test]
async fn compression_makes_table_pages_smaller() {
    let server = server();
    database(&server, "db").await;
    server
        .set_database_size("db", 8 * 1024 * 1024, true)
        .unwrap();
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/plain.bak' WITH NO_COMPRESSION",
    )
    .await;
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/small.bak' WITH COMPRESSION",
    )
    .await;
    let plain = server.disk_device("/b/plain.bak").unwrap().len();
    let small = server.disk_device("/b/small.bak").unwrap().len();
    assert!(plain > 8 * 1024 * 1024, "{plain}");
    assert!(small < plain / 2, "{small} vs {plain}");
    let h = history(&server, "db").await;
    assert_eq!(
        h[1]["compressed_backup_size"],
        Value::Numeric25(small as i128)
    );
}

#[tokio::test]
async fn refusals_before_any_device_is_opened() {
    let server = server();
    database(&server, "db").await;
    let errors = fails(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/f.bak' WITH MAXTRANSFERSIZE = 1000000",
    )
    .await;
    assert_eq!(numbers(&errors), vec![3268, 3013]);
    let url = "https://strata-blob.local:8443/strata/tok/stripe-000.bak";
    let errors = fails(&server, &format!("BACKUP DATABASE [db] TO URL = N'{url}'")).await;
    assert_eq!(numbers(&errors), vec![3201, 3013]);
    assert_eq!(
        errors[0].message,
        format!(
            "Cannot open backup device '{url}'. Operating system error 50(The request is not supported.)."
        )
    );
    assert_eq!(
        numbers(&fails(&server, "BACKUP DATABASE [nope] TO DISK = N'/b/f.bak'").await),
        vec![911, 3013]
    );
    assert_eq!(
        numbers(&fails(&server, "BACKUP DATABASE [tempdb] TO DISK = N'/b/f.bak'").await),
        vec![3147, 3013]
    );
    assert!(history(&server, "db").await.is_empty());
}

#[tokio::test]
async fn a_login_without_sysadmin_cannot_back_up_or_restore() {
    let server = server_with(false);
    database(&server, "db").await;
    let errors = fails(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    assert_eq!(numbers(&errors), vec![262, 3013]);
    assert_eq!(
        errors[0].message,
        "BACKUP DATABASE permission denied in database 'db'."
    );
    assert_eq!(
        numbers(&fails(&server, "RESTORE DATABASE [db] FROM DISK = N'/b/f.bak'").await),
        vec![3110, 3013]
    );
    let row = one_row(
        &server,
        "SELECT CAST(IS_SRVROLEMEMBER('sysadmin') AS int) AS is_sysadmin",
    )
    .await;
    assert_eq!(row["is_sysadmin"], Value::Int(0));
}

#[tokio::test]
async fn an_availability_group_secondary_takes_copy_only_fulls_and_regular_logs() {
    let server = server();
    database(&server, "db").await;
    ok(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f.bak'").await;
    server.set_ag_role(
        "db",
        Some(AgRole {
            primary: false,
            preferred: true,
        }),
    );
    assert_eq!(
        numbers(&fails(&server, "BACKUP DATABASE [db] TO DISK = N'/b/f2.bak'").await),
        vec![3059, 3013]
    );
    assert_eq!(
        numbers(
            &fails(
                &server,
                "BACKUP DATABASE [db] TO DISK = N'/b/d.bak' WITH DIFFERENTIAL"
            )
            .await
        ),
        vec![3059, 3013]
    );
    assert_eq!(
        numbers(
            &fails(
                &server,
                "BACKUP LOG [db] TO DISK = N'/b/l.trn' WITH COPY_ONLY"
            )
            .await
        ),
        vec![3059, 3013]
    );
    ok(
        &server,
        "BACKUP DATABASE [db] TO DISK = N'/b/c.bak' WITH COPY_ONLY",
    )
    .await;
    ok(&server, "BACKUP LOG [db] TO DISK = N'/b/l.trn'").await;
    let row = one_row(&server, "SELECT sys.fn_hadr_backup_is_preferred_replica(N'db') AS is_preferred, sys.fn_hadr_is_primary_replica(N'db') AS is_primary").await;
    assert_eq!(row["is_preferred"], Value::Bit(true));
    assert_eq!(row["is_primary"], Value::Bit(false));
    let db = one_row(
        &server,
        "SELECT name, replica_id FROM sys.databases WHERE name = N'db'",
    )
    .await;
    assert!(guid_in(&db, "replica_id").is_some());
}

#[tokio::test]
async fn discovery_reports_the_server_and_its_local_time_offset() {
    let server = server();
    let row = one_row(
        &server,
        "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version, CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition, CAST(SERVERPROPERTY('ServerName') AS nvarchar(128)) AS server_name, CAST(SERVERPROPERTY('IsHadrEnabled') AS int) AS hadr_enabled, CAST(IS_SRVROLEMEMBER('sysadmin') AS int) AS is_sysadmin, CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(4000)) AS data_path, CAST(SERVERPROPERTY('InstanceDefaultLogPath') AS nvarchar(4000)) AS log_path, DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes",
    )
    .await;
    assert_eq!(
        row["product_version"],
        Value::NVarChar("16.0.4135.4".into())
    );
    assert_eq!(row["server_name"], Value::NVarChar("SQLEMU".into()));
    assert_eq!(row["hadr_enabled"], Value::Int(0));
    assert_eq!(row["is_sysadmin"], Value::Int(1));
    assert_eq!(
        row["data_path"],
        Value::NVarChar("/var/opt/mssql/data/".into())
    );
    assert_eq!(row["utc_offset_minutes"], Value::Int(120));
    let dbs = rows(&server, "SELECT name, database_id, recovery_model_desc, state_desc, is_read_only, replica_id FROM sys.databases ORDER BY name").await;
    let names: Vec<_> = dbs.iter().map(|r| r["name"].clone()).collect();
    assert_eq!(
        names,
        ["master", "model", "msdb", "tempdb"].map(|n| Value::NVarChar(n.into()))
    );
    let spid = one_row(&server, "SELECT @@SPID AS spid").await;
    assert_eq!(spid["spid"], Value::SmallInt(50));
}

#[tokio::test]
async fn queries_outside_the_model_fail_loudly() {
    let server = server();
    database(&server, "db").await;
    insert(&server, "db", 3).await;
    insert(&server, "db", 5).await;
    let row = one_row(
        &server,
        "SELECT COUNT(*) AS n, MIN(id) AS min_id, MAX(id) AS max_id FROM [db].[dbo].[t]",
    )
    .await;
    assert_eq!(
        (&row["n"], &row["min_id"], &row["max_id"]),
        (&Value::Int(2), &Value::Int(3), &Value::Int(5))
    );
    let cases = [
        (
            "SELECT name FROM sys.objects",
            208,
            "Invalid object name 'sys.objects'.",
        ),
        (
            "SELECT id FROM [db].[dbo].[missing]",
            208,
            "Invalid object name 'db.dbo.missing'.",
        ),
        (
            "SELECT nonsense FROM sys.databases",
            207,
            "Invalid column name 'nonsense'.",
        ),
        (
            "SELECT * FROM sys.databases",
            102,
            "Incorrect syntax near '*'.",
        ),
        ("SELECT id, COUNT(*) AS n FROM [db].[dbo].[t]", 8120, ""),
        (
            "INSERT INTO [db].[dbo].[t] (id, note) VALUES (NULL, N'x')",
            515,
            "",
        ),
        (
            "SELECT FOO(1) AS x",
            195,
            "'FOO' is not a recognized built-in function name.",
        ),
    ];
    for (sql, number, message) in cases {
        let errors = fails(&server, sql).await;
        assert_eq!(errors[0].number, number, "{sql}: {errors:?}");
        if !message.is_empty() {
            assert_eq!(errors[0].message, message, "{sql}");
        }
    }
    assert_eq!(ids(&server, "[db].[dbo].[t]").await.len(), 2);
}

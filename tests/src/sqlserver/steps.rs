//! Steps the SQL Server end-to-end tests repeat, written as a DBA would do
//! them: a database with a table of numbered rows, `strata backup
//! sqlserver` of one kind, `strata restore sqlserver` with its target, and
//! times in the form `--to-time` reads.

use std::time::Duration;

use chrono::NaiveDateTime;

use super::fixture::{SqlClient, SqlServerFixture};
use crate::cli::RunOutput;

/// Creates database `db` with the table `[db].[dbo].[t]` and the rows
/// `ids` (each note says which row it is).
pub async fn create_with_rows(sql: &mut SqlClient, db: &str, ids: &[i32]) {
    sql.exec(&format!("CREATE DATABASE [{db}]")).await;
    sql.exec(&format!(
        "CREATE TABLE [{db}].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)"
    ))
    .await;
    insert(sql, db, ids).await;
}

/// Inserts the rows `ids` into `[db].[dbo].[t]`, one transaction.
pub async fn insert(sql: &mut SqlClient, db: &str, ids: &[i32]) {
    if ids.is_empty() {
        return;
    }
    let values: Vec<String> = ids.iter().map(|i| format!("({i}, N'row {i}')")).collect();
    sql.exec(&format!(
        "INSERT INTO [{db}].[dbo].[t] (id, note) VALUES {}",
        values.join(", ")
    ))
    .await;
}

/// `strata --json backup sqlserver main --database DB --kind KIND`, not
/// yet judged.
pub fn backup_run(fx: &SqlServerFixture, db: &str, kind: &str) -> RunOutput {
    fx.strata([
        "--json",
        "backup",
        "sqlserver",
        "main",
        "--database",
        db,
        "--kind",
        kind,
    ])
}

/// A backup that must succeed; its `--json` report (`id`, `kind`,
/// `kind_reason`, `base`, `first_lsn`, `last_lsn`, ...).
pub fn backup(fx: &SqlServerFixture, db: &str, kind: &str) -> serde_json::Value {
    backup_run(fx, db, kind).success().json()
}

/// `strata --json restore sqlserver main --database DB ARGS...`, not yet
/// judged.
pub fn restore_run(fx: &SqlServerFixture, db: &str, args: &[&str]) -> RunOutput {
    let mut all = vec!["--json", "restore", "sqlserver", "main", "--database", db];
    all.extend_from_slice(args);
    fx.strata(all)
}

/// `strata --json list sqlserver main`: the committed backups, as listed.
pub fn list(fx: &SqlServerFixture) -> Vec<serde_json::Value> {
    let listed = fx
        .strata(["--json", "list", "sqlserver", "main"])
        .success()
        .json();
    listed
        .as_array()
        .unwrap_or_else(|| panic!("`strata list --json` prints an array: {listed}"))
        .clone()
}

/// A UTC time as `--to-time` reads it (RFC 3339, milliseconds, `Z`).
pub fn to_time(utc: NaiveDateTime) -> String {
    format!("{}Z", utc.format("%Y-%m-%dT%H:%M:%S%.3f"))
}

/// The server's clock now, taken a little over a second after the last
/// commit and a little over a second before the next one, so that a
/// restore to it tells the rows before from the rows after whatever the
/// resolution of the server's datetime columns.
pub async fn a_moment_between_commits(sql: &mut SqlClient) -> NaiveDateTime {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let at = sql.now().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    at
}

/// The `state_desc` of database `db` in `sys.databases` (`ONLINE`,
/// `RESTORING`, ...), or `None` when it does not exist.
pub async fn database_state(sql: &mut SqlClient, db: &str) -> Option<String> {
    let rows = sql
        .rows("SELECT name, database_id, recovery_model_desc, state_desc, is_read_only, replica_id FROM sys.databases ORDER BY name")
        .await;
    rows.iter().find_map(|r| {
        let name: &str = r.get("name")?;
        name.eq_ignore_ascii_case(db).then(|| {
            r.get::<&str, _>("state_desc")
                .unwrap_or_default()
                .to_owned()
        })
    })
}

/// The text of a JSON value that must be a string.
pub fn text(value: &serde_json::Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
        .to_owned()
}

/// The error a `--json` command printed on standard error (its last line;
/// log lines may come before it): `kind`, `message`, `hint`, `context`.
///
/// # Panics
/// When that line is not the JSON error object.
pub fn error_of(out: &RunOutput) -> serde_json::Value {
    let said = out.stderr_text();
    let last = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    let parsed: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("`{}` printed no JSON error ({e}): {said}", out.command));
    parsed["error"].clone()
}

//! Every T-SQL statement the plugin sends, and the quoting they use.
//!
//! This module is the one place where SQL text is built, so that a DBA can
//! review everything Strata asks of a server here, and so that the
//! emulator the tests use and a real server see exactly the same batches.
//! The numbers in the docs (statement 1, 2, ...) are those of the list in
//! `docs/sqlserver.md`.
//!
//! Statements are plain SQL batches (no RPC, no parameters): identifiers
//! are quoted as `QUOTENAME` does (`[name]`, `]` doubled) and string
//! literals as Unicode literals (`N'text'`, `'` doubled), the quoting rules
//! of Microsoft's "Database identifiers" and "Constants (Transact-SQL)"
//! pages. Nothing else from outside ever enters a statement.

use chrono::NaiveDateTime;

/// `name` as a delimited identifier: `[name]` with every `]` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `text` as a Unicode string literal: `N'text'` with every `'` doubled.
pub fn quote_literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// Statement 1: the server's version, edition, name, whether Always On is
/// enabled, whether the login is sysadmin, the default data and log
/// directories and the server's current offset from UTC in minutes.
pub const SERVER_PROPERTIES: &str = "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version, \
CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition, \
CAST(SERVERPROPERTY('ServerName') AS nvarchar(128)) AS server_name, \
CAST(SERVERPROPERTY('IsHadrEnabled') AS int) AS hadr_enabled, \
CAST(IS_SRVROLEMEMBER('sysadmin') AS int) AS is_sysadmin, \
CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(4000)) AS data_path, \
CAST(SERVERPROPERTY('InstanceDefaultLogPath') AS nvarchar(4000)) AS log_path, \
DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS utc_offset_minutes";

/// Statement 2: every database with its recovery model, state, whether it
/// is read-only and its availability replica (NULL outside an AG).
pub const DATABASES: &str = "SELECT name, database_id, recovery_model_desc, state_desc, is_read_only, replica_id FROM sys.databases ORDER BY name";

/// Statement 3: the credential SQL Server uses for URLs under `prefix`
/// (`https://host[:port]/strata`), if it exists.
pub fn credential(prefix: &str) -> String {
    format!(
        "SELECT name FROM sys.credentials WHERE name = {}",
        quote_literal(prefix)
    )
}

/// Statement 4: whether this replica is the preferred backup replica of
/// `database`, and whether it is the primary (databases in an AG only).
pub fn replica_role(database: &str) -> String {
    let db = quote_literal(database);
    format!(
        "SELECT sys.fn_hadr_backup_is_preferred_replica({db}) AS is_preferred, sys.fn_hadr_is_primary_replica({db}) AS is_primary"
    )
}

/// Statement 5: `database`'s identity and log-chain state.
pub fn recovery_status(database: &str) -> String {
    format!(
        "SELECT database_guid, family_guid, last_log_backup_lsn, recovery_fork_guid, first_recovery_fork_guid, fork_point_lsn FROM sys.database_recovery_status WHERE database_id = DB_ID({})",
        quote_literal(database)
    )
}

/// Statement 6: `database`'s files, their size in 8 KiB pages and the
/// differential base SQL Server will build the next differential on.
pub fn master_files(database: &str) -> String {
    format!(
        "SELECT file_id, type, name, physical_name, size, differential_base_guid, differential_base_lsn FROM sys.master_files WHERE database_id = DB_ID({}) ORDER BY file_id",
        quote_literal(database)
    )
}

/// What a `BACKUP` statement backs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStatement {
    /// `BACKUP DATABASE`: a full backup.
    Full,
    /// `BACKUP DATABASE ... WITH DIFFERENTIAL`.
    Differential,
    /// `BACKUP LOG`.
    Log,
}

/// Who compresses a backup's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupCompression {
    /// SQL Server (`WITH COMPRESSION`).
    SqlServer,
    /// Nobody in SQL Server (`WITH NO_COMPRESSION`): Strata's writer does.
    None,
}

/// Statements 7 and 8: `BACKUP DATABASE|LOG [database] <to_clause> WITH ...`,
/// the options in the documented order; `to_clause` is the device list
/// (`TO URL = N'...', URL = N'...'`). `COPY_ONLY` has no effect with
/// `DIFFERENTIAL` (Microsoft's "Copy-only backups"), so callers never ask
/// for both. `description` names the Strata backup in SQL Server's history.
pub fn backup(
    what: BackupStatement,
    database: &str,
    to_clause: &str,
    copy_only: bool,
    compression: BackupCompression,
    description: &str,
) -> String {
    let verb = match what {
        BackupStatement::Log => "BACKUP LOG",
        BackupStatement::Full | BackupStatement::Differential => "BACKUP DATABASE",
    };
    let mut with = String::new();
    if what == BackupStatement::Differential {
        with.push_str("DIFFERENTIAL, ");
    }
    if copy_only {
        with.push_str("COPY_ONLY, ");
    }
    let compression = match compression {
        BackupCompression::SqlServer => "COMPRESSION",
        BackupCompression::None => "NO_COMPRESSION",
    };
    format!(
        "{verb} {} {to_clause} WITH {with}FORMAT, CHECKSUM, {compression}, MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536, STATS = 10, DESCRIPTION = {}",
        quote_ident(database),
        quote_literal(description)
    )
}

/// Statement 9: the media set whose first device is `device` (the URL of
/// stripe 0, unique to one job).
pub fn media_set(device: &str) -> String {
    format!(
        "SELECT TOP (1) media_set_id FROM msdb.dbo.backupmediafamily WHERE physical_device_name = {} ORDER BY media_set_id DESC",
        quote_literal(device)
    )
}

/// The `msdb.dbo.backupset` columns statement 10 reads, in order: the
/// fields of a backup set Strata records.
pub const BACKUP_SET_COLUMNS: &str = "backup_set_uuid, type, is_copy_only, first_lsn, last_lsn, checkpoint_lsn, database_backup_lsn, differential_base_lsn, differential_base_guid, first_recovery_fork_guid, last_recovery_fork_guid, fork_point_lsn, database_guid, family_guid, backup_start_date, backup_finish_date, time_zone, recovery_model, begins_log_chain, has_bulk_logged_data, has_backup_checksums, backup_size, compressed_backup_size, database_name, server_name";

/// Statement 10: the history row of the backup set on media set `media_set_id`.
pub fn backup_set(media_set_id: i32) -> String {
    format!(
        "SELECT {BACKUP_SET_COLUMNS} FROM msdb.dbo.backupset WHERE media_set_id = {media_set_id}"
    )
}

/// The secret of the credential [`create_credential`] makes. SQL Server
/// appends it to every URL as a SAS token; Strata's endpoint never checks
/// it (it listens on loopback only), but SQL Server wants one.
pub const CREDENTIAL_SECRET: &str = "sv=2020-10-02&sig=strata-local-endpoint";

/// Statement 11: the credential SQL Server finds by the URL prefix `prefix`
/// (`https://host[:port]/strata`) to write block blobs there ("SQL Server
/// backup to URL for Microsoft Azure Blob Storage": a shared access
/// signature credential named after the container URL).
pub fn create_credential(prefix: &str) -> String {
    format!(
        "CREATE CREDENTIAL {} WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = {}",
        quote_ident(prefix),
        quote_literal(CREDENTIAL_SECRET)
    )
}

/// Statement 12: the files a backup holds (`LogicalName`, `PhysicalName`,
/// `Type`, `FileGroupName`, `Size`, `MaxSize`, `FileId`, ...).
pub fn filelistonly(from_clause: &str) -> String {
    format!("RESTORE FILELISTONLY {from_clause}")
}

/// One `MOVE N'logical' TO N'physical'` clause of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The file's logical name in the backup.
    pub logical_name: String,
    /// Where the restored file goes, on the server.
    pub to: String,
}

/// Statement 13: restores a full backup as `database`, every file moved,
/// leaving it restoring; `replace` overwrites an existing database.
pub fn restore_full(database: &str, from_clause: &str, moves: &[Move], replace: bool) -> String {
    let mut with: Vec<String> = moves
        .iter()
        .map(|m| {
            format!(
                "MOVE {} TO {}",
                quote_literal(&m.logical_name),
                quote_literal(&m.to)
            )
        })
        .collect();
    with.extend(["NORECOVERY", "CHECKSUM", "STATS = 10"].map(String::from));
    if replace {
        with.push("REPLACE".to_owned());
    }
    format!(
        "RESTORE DATABASE {} {from_clause} WITH {}",
        quote_ident(database),
        with.join(", ")
    )
}

/// Statement 14: applies a differential backup, leaving the database restoring.
pub fn restore_differential(database: &str, from_clause: &str) -> String {
    format!(
        "RESTORE DATABASE {} {from_clause} WITH NORECOVERY, CHECKSUM, STATS = 10",
        quote_ident(database)
    )
}

/// Statement 15: applies a log backup, leaving the database restoring;
/// `stop_at` (the server's local time) stops inside it.
pub fn restore_log(database: &str, from_clause: &str, stop_at: Option<NaiveDateTime>) -> String {
    let stop = stop_at
        .map(|t| format!(", STOPAT = {}", quote_literal(&stopat_text(t))))
        .unwrap_or_default();
    format!(
        "RESTORE LOG {} {from_clause} WITH NORECOVERY, CHECKSUM{stop}",
        quote_ident(database)
    )
}

/// Statement 16: recovers the restored database and opens it.
pub fn recover(database: &str) -> String {
    format!("RESTORE DATABASE {} WITH RECOVERY", quote_ident(database))
}

/// Statement 18: drops a database a failed restore created (never one
/// that existed before the restore).
pub fn drop_database(database: &str) -> String {
    format!("DROP DATABASE {}", quote_ident(database))
}

/// Statement 17: the server's clock in UTC.
pub const NOW: &str = "SELECT SYSUTCDATETIME() AS now";

/// A local time as `STOPAT` takes it: `YYYY-MM-DDTHH:MM:SS.mmm` (ISO 8601,
/// which SQL Server reads the same under every language and DATEFORMAT
/// setting; `datetime` keeps milliseconds).
pub fn stopat_text(local: NaiveDateTime) -> String {
    local.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// A device list of local files: `FROM DISK = N'a', DISK = N'b'` (the
/// `--files-only` script).
pub fn from_disks<S: AsRef<str>>(paths: &[S]) -> String {
    let disks: Vec<String> = paths
        .iter()
        .map(|p| format!("DISK = {}", quote_literal(p.as_ref())))
        .collect();
    format!("FROM {}", disks.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ODD: &str = "Sales]'Q1 [2026]";

    #[test]
    fn identifiers_and_literals_are_quoted_as_sql_server_reads_them() {
        assert_eq!(quote_ident(ODD), "[Sales]]'Q1 [2026]]]");
        assert_eq!(quote_literal(ODD), "N'Sales]''Q1 [2026]'");
        assert_eq!(quote_ident(""), "[]");
        assert_eq!(quote_literal("it''s"), "N'it''''s'");
    }

    #[test]
    fn catalog_statements_quote_the_database_as_a_literal() {
        assert_eq!(
            recovery_status(ODD),
            "SELECT database_guid, family_guid, last_log_backup_lsn, recovery_fork_guid, first_recovery_fork_guid, fork_point_lsn FROM sys.database_recovery_status WHERE database_id = DB_ID(N'Sales]''Q1 [2026]')"
        );
        assert_eq!(
            master_files("db"),
            "SELECT file_id, type, name, physical_name, size, differential_base_guid, differential_base_lsn FROM sys.master_files WHERE database_id = DB_ID(N'db') ORDER BY file_id"
        );
        assert_eq!(
            replica_role("o'k"),
            "SELECT sys.fn_hadr_backup_is_preferred_replica(N'o''k') AS is_preferred, sys.fn_hadr_is_primary_replica(N'o''k') AS is_primary"
        );
        assert_eq!(
            credential("https://strata-blob.local:8443/strata"),
            "SELECT name FROM sys.credentials WHERE name = N'https://strata-blob.local:8443/strata'"
        );
    }

    #[test]
    fn backup_statements_put_their_options_in_order() {
        let to = "TO URL = N'https://strata-blob.local/strata/t1/stripe-000.bak', URL = N'https://strata-blob.local/strata/t1/stripe-001.bak'";
        assert_eq!(
            backup(
                BackupStatement::Full,
                ODD,
                to,
                false,
                BackupCompression::SqlServer,
                "strata 20261201T100000.000Z-0000abcd"
            ),
            format!(
                "BACKUP DATABASE [Sales]]'Q1 [2026]]] {to} WITH FORMAT, CHECKSUM, COMPRESSION, MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536, STATS = 10, DESCRIPTION = N'strata 20261201T100000.000Z-0000abcd'"
            )
        );
        assert_eq!(
            backup(
                BackupStatement::Differential,
                "db",
                "TO URL = N'u'",
                false,
                BackupCompression::None,
                "strata x"
            ),
            "BACKUP DATABASE [db] TO URL = N'u' WITH DIFFERENTIAL, FORMAT, CHECKSUM, NO_COMPRESSION, MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536, STATS = 10, DESCRIPTION = N'strata x'"
        );
        assert_eq!(
            backup(
                BackupStatement::Log,
                "db",
                "TO URL = N'https://h:1443/strata/t/stripe-000.bak'",
                true,
                BackupCompression::SqlServer,
                "strata y"
            ),
            "BACKUP LOG [db] TO URL = N'https://h:1443/strata/t/stripe-000.bak' WITH COPY_ONLY, FORMAT, CHECKSUM, COMPRESSION, MAXTRANSFERSIZE = 4194304, BLOCKSIZE = 65536, STATS = 10, DESCRIPTION = N'strata y'"
        );
    }

    #[test]
    fn history_and_setup_statements() {
        assert_eq!(
            media_set("https://h/strata/t'1/stripe-000.bak"),
            "SELECT TOP (1) media_set_id FROM msdb.dbo.backupmediafamily WHERE physical_device_name = N'https://h/strata/t''1/stripe-000.bak' ORDER BY media_set_id DESC"
        );
        assert!(backup_set(42).ends_with("FROM msdb.dbo.backupset WHERE media_set_id = 42"));
        assert!(
            backup_set(42).starts_with("SELECT backup_set_uuid, type, is_copy_only, first_lsn")
        );
        assert_eq!(
            create_credential("https://strata-blob.local/strata"),
            "CREATE CREDENTIAL [https://strata-blob.local/strata] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = N'sv=2020-10-02&sig=strata-local-endpoint'"
        );
    }

    #[test]
    fn restore_statements() {
        let from = "FROM URL = N'https://h/strata/r1/b0-stripe-000.bak'";
        let moves = [
            Move {
                logical_name: "Sales".into(),
                to: "/var/opt/mssql/data/Sales copy.mdf".into(),
            },
            Move {
                logical_name: "Sales_log".into(),
                to: "/var/opt/mssql/log/Sales copy_log.ldf".into(),
            },
        ];
        assert_eq!(
            restore_full("Sales copy", from, &moves, false),
            format!(
                "RESTORE DATABASE [Sales copy] {from} WITH MOVE N'Sales' TO N'/var/opt/mssql/data/Sales copy.mdf', MOVE N'Sales_log' TO N'/var/opt/mssql/log/Sales copy_log.ldf', NORECOVERY, CHECKSUM, STATS = 10"
            )
        );
        assert!(restore_full("x", from, &moves, true).ends_with("STATS = 10, REPLACE"));
        assert_eq!(
            restore_differential("x]y", from),
            format!("RESTORE DATABASE [x]]y] {from} WITH NORECOVERY, CHECKSUM, STATS = 10")
        );
        let at = NaiveDateTime::parse_from_str("2026-12-01 10:00:00.123", "%Y-%m-%d %H:%M:%S%.3f")
            .unwrap();
        assert_eq!(
            restore_log("x", from, Some(at)),
            format!(
                "RESTORE LOG [x] {from} WITH NORECOVERY, CHECKSUM, STOPAT = N'2026-12-01T10:00:00.123'"
            )
        );
        assert_eq!(
            restore_log("x", from, None),
            format!("RESTORE LOG [x] {from} WITH NORECOVERY, CHECKSUM")
        );
        assert_eq!(recover("x"), "RESTORE DATABASE [x] WITH RECOVERY");
        assert_eq!(
            filelistonly(&from_disks(&["/srv/r/01-full-a.bak", "/srv/o'k/02.bak"])),
            "RESTORE FILELISTONLY FROM DISK = N'/srv/r/01-full-a.bak', DISK = N'/srv/o''k/02.bak'"
        );
    }

    #[test]
    fn stopat_keeps_milliseconds_and_pads_them() {
        let at = NaiveDateTime::parse_from_str("2026-03-04 05:06:07", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(stopat_text(at), "2026-03-04T05:06:07.000");
    }
}

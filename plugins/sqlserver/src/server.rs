//! What the plugin reads from a server's catalog (statements 1 to 6 of
//! [`crate::tsql`]), as typed values: the server's properties, its
//! databases, and one database's identity, log-chain state and files.

use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::Position;
use strata_core::{Error, Result};
use uuid::Uuid;

use crate::client::{Connection, RowExt, required};
use crate::tsql;

/// The server's identity and defaults (statement 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// `SERVERPROPERTY('ProductVersion')`, such as `16.0.4135.4`.
    pub product_version: String,
    /// `SERVERPROPERTY('Edition')`.
    pub edition: String,
    /// `SERVERPROPERTY('ServerName')` (`host` or `host\instance`).
    pub server_name: String,
    /// Whether Always On availability groups are enabled.
    pub hadr_enabled: bool,
    /// Whether the login is a member of `sysadmin`.
    pub is_sysadmin: bool,
    /// The default directory of data files (`InstanceDefaultDataPath`).
    pub data_path: Option<String>,
    /// The default directory of log files (`InstanceDefaultLogPath`).
    pub log_path: Option<String>,
    /// The server's offset from UTC now, in minutes east of UTC.
    pub utc_offset_minutes: i32,
}

impl ServerInfo {
    /// Reads statement 1.
    pub async fn read(conn: &mut Connection) -> Result<ServerInfo> {
        let rows = conn
            .query(tsql::SERVER_PROPERTIES, "reading the server's properties")
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::engine("SQL Server returned no row for its properties"))?;
        Ok(ServerInfo {
            product_version: row.text("product_version")?.unwrap_or_default(),
            edition: row.text("edition")?.unwrap_or_default(),
            server_name: row.text("server_name")?.unwrap_or_default(),
            hadr_enabled: row.flag("hadr_enabled")?.unwrap_or(false),
            is_sysadmin: row.flag("is_sysadmin")?.unwrap_or(false),
            data_path: row.text("data_path")?.filter(|p| !p.is_empty()),
            log_path: row.text("log_path")?.filter(|p| !p.is_empty()),
            utc_offset_minutes: required(row.int("utc_offset_minutes")?, "utc_offset_minutes")?
                as i32,
        })
    }
}

/// One row of `sys.databases` (statement 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseInfo {
    /// The database's name.
    pub name: String,
    /// `database_id`.
    pub database_id: i32,
    /// `FULL`, `BULK_LOGGED` or `SIMPLE`.
    pub recovery_model: String,
    /// `ONLINE`, `RESTORING`, `RECOVERING`, `OFFLINE`, ...
    pub state: String,
    /// Whether the database is read-only.
    pub read_only: bool,
    /// Whether it belongs to an availability group (`replica_id` is set).
    pub in_availability_group: bool,
}

/// The system databases, which Strata neither discovers nor backs up by default.
pub const SYSTEM_DATABASES: [&str; 4] = ["master", "model", "msdb", "tempdb"];

impl DatabaseInfo {
    /// Reads statement 2: every database, by name.
    pub async fn list(conn: &mut Connection) -> Result<Vec<DatabaseInfo>> {
        let rows = conn.query(tsql::DATABASES, "listing the databases").await?;
        rows.iter()
            .map(|row| {
                Ok(DatabaseInfo {
                    name: required(row.text("name")?, "name")?,
                    database_id: required(row.int("database_id")?, "database_id")? as i32,
                    recovery_model: row.text("recovery_model_desc")?.unwrap_or_default(),
                    state: row.text("state_desc")?.unwrap_or_default(),
                    read_only: row.flag("is_read_only")?.unwrap_or(false),
                    in_availability_group: row.guid("replica_id")?.is_some(),
                })
            })
            .collect()
    }

    /// Whether the database is in the SIMPLE recovery model (no log backups).
    pub fn is_simple(&self) -> bool {
        self.recovery_model.eq_ignore_ascii_case("SIMPLE")
    }

    /// Whether it is a system database.
    pub fn is_system(&self) -> bool {
        SYSTEM_DATABASES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&self.name))
    }
}

/// This replica's role for a database in an availability group (statement 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplicaRole {
    /// `sys.fn_hadr_is_primary_replica`.
    pub is_primary: bool,
    /// `sys.fn_hadr_backup_is_preferred_replica`: the AG's backup
    /// preference chooses this replica.
    pub is_preferred: bool,
}

impl ReplicaRole {
    /// Reads statement 4 for `database`.
    pub async fn read(conn: &mut Connection, database: &str) -> Result<ReplicaRole> {
        let rows = conn
            .query(
                &tsql::replica_role(database),
                &format!("reading the availability replica role of [{database}]"),
            )
            .await?;
        let row = rows.first().ok_or_else(|| {
            Error::engine(format!(
                "SQL Server returned no replica role for {database}"
            ))
        })?;
        Ok(ReplicaRole {
            is_primary: row.flag("is_primary")?.unwrap_or(false),
            is_preferred: row.flag("is_preferred")?.unwrap_or(false),
        })
    }
}

/// Whether the credential for URLs under `prefix` exists (statement 3).
pub async fn credential_exists(conn: &mut Connection, prefix: &str) -> Result<bool> {
    let rows = conn
        .query(&tsql::credential(prefix), "reading sys.credentials")
        .await?;
    Ok(!rows.is_empty())
}

/// `sys.database_recovery_status` of one database (statement 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryStatus {
    /// The database's binding id; changes when the database is restored.
    pub database_guid: Option<Uuid>,
    /// The id of the original database; survives restores.
    pub family_guid: Option<Uuid>,
    /// Where the next log backup starts; NULL when SQL Server takes none
    /// (SIMPLE recovery, or no full backup since the chain began).
    pub last_log_backup_lsn: Option<Position>,
    /// The current recovery fork.
    pub recovery_fork_guid: Option<Uuid>,
    /// The recovery fork the database began on.
    pub first_recovery_fork_guid: Option<Uuid>,
    /// Where the current fork branched off.
    pub fork_point_lsn: Option<Position>,
}

/// One row of `sys.master_files` (statement 6); a backup's manifest keeps
/// them as `engine_meta.database_files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseFile {
    /// `file_id`.
    pub file_id: i32,
    /// `type`: 0 rows (data), 1 log, 2 FILESTREAM, 4 full-text.
    #[serde(rename = "type")]
    pub file_type: u8,
    /// The logical name.
    pub name: String,
    /// The path on the server.
    pub physical_name: String,
    /// The size in 8 KiB pages.
    pub size: i64,
    /// The backup the next differential builds on (data files).
    pub differential_base_guid: Option<Uuid>,
    /// That base's LSN.
    #[serde(default)]
    pub differential_base_lsn: Option<Position>,
}

/// `sys.master_files.type` of a data (rows) file.
pub const FILE_TYPE_ROWS: u8 = 0;
/// `sys.master_files.type` of a log file.
pub const FILE_TYPE_LOG: u8 = 1;

impl DatabaseFile {
    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0) * 8192
    }
}

/// Everything a backup decides from: one database's row in
/// `sys.databases`, its recovery status, its files and, in an
/// availability group, this replica's role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseState {
    /// `sys.databases`.
    pub info: DatabaseInfo,
    /// `sys.database_recovery_status`.
    pub recovery: RecoveryStatus,
    /// `sys.master_files`, by `file_id`.
    pub files: Vec<DatabaseFile>,
    /// This replica's role, for a database in an availability group.
    pub replica: Option<ReplicaRole>,
}

impl DatabaseState {
    /// Reads statements 2, 5, 6 and (in an AG) 4 for `database`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](strata_core::ErrorKind::NotFound) when the
    /// server has no such database.
    pub async fn read(conn: &mut Connection, database: &str) -> Result<DatabaseState> {
        let databases = DatabaseInfo::list(conn).await?;
        let info = databases
            .into_iter()
            .find(|d| d.name == database)
            .ok_or_else(|| {
                Error::not_found(format!(
                    "SQL Server {} has no database named {database}",
                    conn.address()
                ))
                .hint(format!(
                    "`strata sqlserver check {}` lists the databases",
                    conn.instance()
                ))
            })?;
        let what = format!("reading the recovery status of [{database}]");
        let rows = conn.query(&tsql::recovery_status(database), &what).await?;
        let row = rows.first().ok_or_else(|| {
            Error::engine(format!(
                "{what}: sys.database_recovery_status has no row (is the database online?)"
            ))
        })?;
        let recovery = RecoveryStatus {
            database_guid: row.guid("database_guid")?,
            family_guid: row.guid("family_guid")?,
            last_log_backup_lsn: row.lsn("last_log_backup_lsn")?,
            recovery_fork_guid: row.guid("recovery_fork_guid")?,
            first_recovery_fork_guid: row.guid("first_recovery_fork_guid")?,
            fork_point_lsn: row.lsn("fork_point_lsn")?,
        };
        let rows = conn
            .query(
                &tsql::master_files(database),
                &format!("reading the files of [{database}]"),
            )
            .await?;
        let files = rows
            .iter()
            .map(|row| {
                Ok(DatabaseFile {
                    file_id: required(row.int("file_id")?, "file_id")? as i32,
                    file_type: required(row.int("type")?, "type")? as u8,
                    name: row.text("name")?.unwrap_or_default(),
                    physical_name: row.text("physical_name")?.unwrap_or_default(),
                    size: row.int("size")?.unwrap_or(0),
                    differential_base_guid: row.guid("differential_base_guid")?,
                    differential_base_lsn: row.lsn("differential_base_lsn")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let replica = if info.in_availability_group {
            Some(ReplicaRole::read(conn, database).await?)
        } else {
            None
        };
        Ok(DatabaseState {
            info,
            recovery,
            files,
            replica,
        })
    }

    /// The backup set the next differential builds on: the
    /// `differential_base_guid` of the primary data file (every data file
    /// has the same one after a full database backup).
    pub fn differential_base(&self) -> Option<Uuid> {
        self.files
            .iter()
            .find(|f| f.file_type == FILE_TYPE_ROWS)
            .and_then(|f| f.differential_base_guid)
    }

    /// Bytes of the data files (a full backup holds at most this much).
    pub fn data_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.file_type != FILE_TYPE_LOG)
            .map(DatabaseFile::bytes)
            .sum()
    }

    /// Bytes of the log files (a log backup holds at most this much).
    pub fn log_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.file_type == FILE_TYPE_LOG)
            .map(DatabaseFile::bytes)
            .sum()
    }
}

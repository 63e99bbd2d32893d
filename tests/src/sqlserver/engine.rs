//! The emulated SQL Server: databases with a transaction log, recovery
//! models and recovery forks, backups and restores with SQL Server's chain
//! rules and errors, `msdb` history and the catalog views the Strata plugin
//! reads. [`Server`] implements [`BatchHandler`], so the TDS front end runs
//! its batches; tests may also call [`BatchHandler::batch`] directly.
//!
//! # The model
//!
//! - **LSNs** are SQL Server's decimal `numeric(25,0)` form
//!   `VLF·10^15 + block·10^5 + slot` ("Transaction log architecture guide";
//!   the decimal form is the one `msdb.dbo.backupset` stores). Every
//!   transaction starts a new log block, its records take slots 1, 2, ...,
//!   and the block advances by the transaction's size in 512-byte units; a
//!   virtual log file holds 8 MiB. A new database's log starts at VLF 37,
//!   block 16, slot 1 (37000000001600001).
//! - **Transactions**: each `INSERT`, `CREATE TABLE` and recovery-model
//!   change is one transaction, one log record with a commit time. A
//!   backup writes a checkpoint record and a record of its own end, so a
//!   backup's `last_lsn` ("the next log record after the backup set",
//!   backupset (Transact-SQL)) is past everything it holds.
//! - **Data backups** (full, differential) are consistent at the moment they
//!   are prepared: the table snapshot, `checkpoint_lsn == first_lsn` (no
//!   transaction is ever open across a statement) and `last_lsn` are taken
//!   together; `backup_finish_date` is that moment too, so `RESTORE
//!   HEADERONLY` and the `msdb` row agree.
//! - **The log chain** ("Transaction log backups (SQL Server)", "Recovery
//!   models (SQL Server)"): `last_log_backup_lsn` is NULL in SIMPLE and until
//!   the first data backup in FULL/BULK_LOGGED (a new database runs in
//!   pseudo-simple until then); the first data backup sets it to its own
//!   `first_lsn`, and each regular log backup to its `last_lsn`. A switch to
//!   SIMPLE clears it; after a switch back, the next data backup (full or
//!   differential) restarts the chain and the next log backup has
//!   `begins_log_chain`. A full backup taken while the chain runs does not
//!   change it. COPY_ONLY: a copy-only full is not a differential base; a
//!   copy-only log does not advance the chain ("Copy-only backups").
//!   Assumed where the documentation is silent: a copy-only full also ends
//!   pseudo-simple mode of a database never backed up.
//! - **Differential base**: the last non-copy-only full
//!   (`sys.master_files.differential_base_guid` = its `backup_set_uuid`,
//!   `differential_base_lsn` = its `checkpoint_lsn`). A differential carries
//!   the changed pages (a sixteenth of the database plus what was logged
//!   since the base) and the table snapshot.
//! - **Restores** ("RESTORE Statements (Transact-SQL)", "Apply transaction
//!   log backups"): a full creates the database with a new `database_guid`
//!   and the backup's `family_guid`; a differential needs the database
//!   restored from its base; a log must contain the LSN the database has
//!   reached; `STOPAT` applies the transactions committed at or before the
//!   point; `WITH RECOVERY` after a restore that stopped inside a log starts
//!   a new recovery fork at that LSN, which the next log backup records
//!   (`first_recovery_fork_guid` ≠ `last_recovery_fork_guid`,
//!   `fork_point_lsn`).
//! - **Time**: stored in UTC; the catalog's `datetime` columns, `STOPAT` and
//!   the backup headers use the server's local time (UTC plus the configured
//!   offset) with `time_zone` in 15-minute units, as SQL Server does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{NaiveDateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::blob_client::{BlobClient, RecordedRequest};
use super::media::{
    self, BackupType, Decoded, DeviceStream, FileEntry, MAX_TRANSFER_SIZE, MediaBlocks, MediaError,
    Payload, SetHeader,
};
use super::sql::{
    Backup, BackupOption, BackupTarget, ColumnDef, Device, Expr, Literal, ObjectName,
    RecoveryModel, Restore, RestoreOption, Select, Statement, TypeName, parse_batch,
};
use super::tds::{BatchHandler, Column, Reply, Session, SqlError, SqlType, Value};

/// A log sequence number in SQL Server's decimal form.
pub type Lsn = i128;

/// The settings of an emulated server (see `EmulatorConfig`, which builds them).
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// `SERVERPROPERTY('ServerName')`, `backupset.server_name`.
    pub server_name: String,
    /// `SERVERPROPERTY('ProductVersion')`, e.g. `16.0.4135.4`.
    pub product_version: String,
    /// `SERVERPROPERTY('Edition')`.
    pub edition: String,
    /// The server's offset from UTC in minutes (`DATEPART(TZOFFSET, SYSDATETIMEOFFSET())`).
    pub utc_offset_minutes: i32,
    /// `SERVERPROPERTY('InstanceDefaultDataPath')` (and log path), ending in `/`.
    pub data_path: String,
    /// Whether the login is in the `sysadmin` role; when not, BACKUP and
    /// RESTORE are refused (262, 3110).
    pub sysadmin: bool,
    /// The size of a new database's pages in bytes (what a full backup carries).
    pub default_database_size: u64,
}

/// A database's role in an availability group, as this replica sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgRole {
    /// This replica is the primary (`sys.fn_hadr_is_primary_replica`).
    pub primary: bool,
    /// This replica is the preferred backup replica
    /// (`sys.fn_hadr_backup_is_preferred_replica`).
    pub preferred: bool,
}

/// The emulated server: its state behind a lock and the blob client its URL
/// devices use. Cheap to share (`Arc`).
pub struct Server {
    settings: ServerSettings,
    blob: BlobClient,
    state: Mutex<State>,
    /// The replica id of `sys.databases.replica_id` for AG databases.
    replica_id: Uuid,
}

impl Server {
    /// A server with the system databases and no user database.
    pub fn new(settings: ServerSettings, blob: BlobClient) -> Server {
        let mut data_path = settings.data_path.clone();
        if !data_path.ends_with('/') {
            data_path.push('/');
        }
        let settings = ServerSettings {
            data_path,
            ..settings
        };
        let mut state = State::default();
        let now = now_utc();
        for (name, model) in [
            ("master", RecoveryModel::Simple),
            ("tempdb", RecoveryModel::Simple),
            ("model", RecoveryModel::Full),
            ("msdb", RecoveryModel::Simple),
        ] {
            let id = state.next_database_id();
            let db = Database::create(name, id, model, &settings, now);
            state.databases.push(db);
        }
        Server {
            settings,
            blob,
            state: Mutex::new(state),
            replica_id: Uuid::new_v4(),
        }
    }

    /// The server's settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// Sets the size of a database's pages (what a full backup carries) and
    /// whether they compress like table data (`true`) or not at all.
    ///
    /// # Errors
    /// 911 when the database does not exist.
    pub fn set_database_size(
        &self,
        database: &str,
        bytes: u64,
        compressible: bool,
    ) -> Result<(), SqlError> {
        let mut state = self.lock();
        let db = state
            .database_mut(database)
            .ok_or_else(|| errors::database_not_found(database))?;
        db.pages.len = bytes;
        db.pages.compressible = compressible;
        db.resize_files(bytes);
        Ok(())
    }

    /// Puts a database (present or future, by name) in an availability group
    /// with `role`, or takes it out (`None`).
    pub fn set_ag_role(&self, database: &str, role: Option<AgRole>) {
        let mut state = self.lock();
        let key = database.to_lowercase();
        match role {
            Some(role) => {
                state.ag_roles.insert(key, role);
            }
            None => {
                state.ag_roles.remove(&key);
            }
        }
    }

    /// Makes every later backup generate its pages from `seed` (`None`,
    /// the default: a seed of its own per backup set), so that two backups
    /// of one database carry the same page bytes. A benchmark compares two
    /// paths on the same media this way.
    pub fn set_payload_seed(&self, seed: Option<u64>) {
        self.lock().payload_seed = seed;
    }

    /// The media that the `BACKUP` statement `sql` would write, generated
    /// lazily (one block of [`MAX_TRANSFER_SIZE`] in memory at a time),
    /// without writing it to the statement's devices or recording the
    /// backup in `msdb`: the database takes its checkpoint and its LSNs
    /// advance as for a backup, its chain does not change. A benchmark
    /// feeds these bytes to the path it compares against.
    ///
    /// # Errors
    /// SQL Server's errors for the statement, in order (102 syntax, 911
    /// unknown database, 4214 no log backup base...).
    pub fn backup_media(&self, sql: &str) -> Result<MediaBlocks, Vec<SqlError>> {
        let mut statements =
            parse_batch(sql).map_err(|e| vec![SqlError::new(102, 15, e.to_string())])?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(Statement::Backup(backup)), true) => backup,
            _ => return Err(vec![errors::syntax(sql)]),
        };
        let verb = backup_verb(statement.target);
        let prepare = || {
            let options = BackupOptions::read(&statement.options)?;
            if !self.settings.sysadmin {
                return Err(
                    errors::backup_permission(statement.target, &statement.database).into(),
                );
            }
            self.lock().prepare_backup(self, &statement, &options)
        };
        let prepared = prepare().map_err(|f: Failure| f.terminating(verb).0)?;
        Ok(media::encode(
            &prepared.header,
            &prepared.content,
            prepared.payload,
        ))
    }

    /// The bytes a `BACKUP ... TO DISK = N'path'` left under `path`, if any.
    pub fn disk_device(&self, path: &str) -> Option<Bytes> {
        self.lock().disk.get(path).cloned()
    }

    /// Every request the blob client made for URL devices so far.
    pub fn blob_requests(&self) -> Vec<RecordedRequest> {
        self.blob.requests()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn local(&self, utc: NaiveDateTime) -> NaiveDateTime {
        utc + TimeDelta::minutes(i64::from(self.settings.utc_offset_minutes))
    }

    fn time_zone(&self) -> i16 {
        (self.settings.utc_offset_minutes / 15) as i16
    }

    async fn execute(&self, session: &Session, statement: Statement) -> Exec {
        match statement {
            Statement::Select(select) => {
                self.lock().select(self, session, &select).map(|r| vec![r])
            }
            Statement::CreateDatabase(name) => self.lock().create_database(&name, &self.settings),
            Statement::DropDatabase(name) => self.lock().drop_database(&name),
            Statement::SetRecovery { database, model } => {
                self.lock().set_recovery(&database, model)
            }
            Statement::CreateTable { table, columns } => self.lock().create_table(&table, &columns),
            Statement::Insert {
                table,
                columns,
                rows,
            } => self.lock().insert(&table, &columns, &rows),
            Statement::CreateCredential {
                name,
                identity,
                secret,
            } => {
                if !self.settings.sysadmin {
                    return Err(errors::no_permission_for_action().into());
                }
                self.lock().create_credential(name, identity, secret)
            }
            Statement::Backup(backup) => {
                let verb = backup_verb(backup.target);
                self.backup(backup).await.map_err(|f| f.terminating(verb))
            }
            Statement::Restore(restore) => {
                let verb = restore_verb(&restore);
                self.restore(restore).await.map_err(|f| f.terminating(verb))
            }
        }
    }

    // -- BACKUP ----------------------------------------------------------

    async fn backup(&self, statement: Backup) -> Exec {
        let options = BackupOptions::read(&statement.options)?;
        if !self.settings.sysadmin {
            return Err(errors::backup_permission(statement.target, &statement.database).into());
        }
        let started = Instant::now();
        let prepared = {
            let mut state = self.lock();
            state.prepare_backup(self, &statement, &options)?
        };
        let blocks = media::encode(&prepared.header, &prepared.content, prepared.payload);
        let written = self.write_devices(&statement.devices, blocks).await?;
        let (database, files) = {
            let mut state = self.lock();
            state.commit_backup(&prepared, &statement.devices, written, &options)
        };
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let pages = written.div_ceil(media::PAGE_SIZE as u64);
        let mut replies = stats_messages(options.stats);
        for file in &files {
            replies.push(Reply::Info {
                number: 4035,
                message: format!(
                    "Processed {} pages for database '{database}', file '{}' on file 1.",
                    if file.file_type == 'D' { pages } else { 1 },
                    file.logical_name
                ),
            });
        }
        let what = match prepared.header.backup_type {
            BackupType::Full => "BACKUP DATABASE",
            BackupType::Differential => "BACKUP DATABASE WITH DIFFERENTIAL",
            BackupType::Log => "BACKUP LOG",
        };
        replies.push(Reply::Info {
            number: 3014,
            message: format!(
                "{what} successfully processed {pages} pages in {elapsed:.3} seconds ({:.3} MB/sec).",
                written as f64 / 1_048_576.0 / elapsed
            ),
        });
        replies.push(Reply::Done {
            rows_affected: None,
        });
        Ok(replies)
    }

    /// Writes the media to the devices of one statement: URL devices through
    /// the blob client, DISK devices into memory under their paths.
    async fn write_devices(&self, devices: &[Device], blocks: MediaBlocks) -> Result<u64, Failure> {
        let urls: Vec<String> = devices
            .iter()
            .filter_map(|d| match d {
                Device::Url(url) => Some(url.clone()),
                Device::Disk(_) => None,
            })
            .collect();
        if urls.len() == devices.len() {
            return self
                .blob
                .write_media(&urls, blocks)
                .await
                .map_err(|e| errors::cannot_open_device(&e.device, &e.os_error).into());
        }
        if !urls.is_empty() {
            return Err(errors::mixed_devices().into());
        }
        let mut streams = vec![Vec::new(); devices.len()];
        let mut total = 0u64;
        for (i, block) in blocks.enumerate() {
            total += block.len() as u64;
            streams[media::device_of(i as u64, devices.len())].extend_from_slice(&block);
        }
        let mut state = self.lock();
        for (device, bytes) in devices.iter().zip(streams) {
            state
                .disk
                .insert(device.name().to_string(), Bytes::from(bytes));
        }
        Ok(total)
    }

    // -- RESTORE ---------------------------------------------------------

    async fn restore(&self, statement: Restore) -> Exec {
        let started = Instant::now();
        match statement {
            Restore::HeaderOnly { devices } => {
                self.check_restore_permission("master")?;
                let decoded = self.read_devices(&devices, true).await?;
                Ok(vec![header_only_rows(&decoded, devices.first())])
            }
            Restore::FileListOnly { devices } => {
                self.check_restore_permission("master")?;
                let decoded = self.read_devices(&devices, true).await?;
                Ok(vec![file_list_rows(&decoded.header)])
            }
            Restore::Database {
                database,
                devices,
                options,
            } => {
                self.check_restore_permission(&database)?;
                let options = RestoreOptions::read(&options);
                if devices.is_empty() {
                    let mut state = self.lock();
                    return state.recover_only(&database, &options);
                }
                // SQL Server checks the target before it reads the data.
                self.lock().check_restore_target(&database)?;
                let decoded = self.read_devices(&devices, false).await?;
                let first = devices[0].name().to_string();
                let mut replies = {
                    let mut state = self.lock();
                    state.restore_data(&database, decoded.clone(), &options, &first)?
                };
                replies.splice(0..0, stats_messages(options.stats));
                replies.push(restore_done(
                    "RESTORE DATABASE",
                    decoded.payload_len,
                    started,
                ));
                replies.push(Reply::Done {
                    rows_affected: None,
                });
                Ok(replies)
            }
            Restore::Log {
                database,
                devices,
                options,
            } => {
                self.check_restore_permission(&database)?;
                let options = RestoreOptions::read(&options);
                self.lock().check_log_target(&database)?;
                let decoded = self.read_devices(&devices, false).await?;
                let first = devices[0].name().to_string();
                let mut replies = {
                    let mut state = self.lock();
                    state.restore_log(self, &database, &decoded, &options, &first)?
                };
                replies.splice(0..0, stats_messages(options.stats));
                replies.push(restore_done("RESTORE LOG", decoded.payload_len, started));
                replies.push(Reply::Done {
                    rows_affected: None,
                });
                Ok(replies)
            }
        }
    }

    fn check_restore_permission(&self, database: &str) -> Result<(), Failure> {
        if self.settings.sysadmin {
            Ok(())
        } else {
            Err(errors::restore_permission(database).into())
        }
    }

    /// Reads a media set from its devices (URL through the blob client,
    /// DISK from the in-memory devices or else the local file system).
    async fn read_devices(
        &self,
        devices: &[Device],
        header_only: bool,
    ) -> Result<Decoded, Failure> {
        let mut streams: Vec<(String, DeviceStream)> = Vec::new();
        for device in devices {
            let stream: DeviceStream = match device {
                Device::Url(url) => {
                    self.lock().check_credential(url)?;
                    self.blob.read_device(url)
                }
                Device::Disk(path) => {
                    let held = self.lock().disk.get(path).cloned();
                    let bytes = match held {
                        Some(bytes) => bytes,
                        None => match tokio::fs::read(path).await {
                            Ok(bytes) => Bytes::from(bytes),
                            Err(e) => {
                                return Err(
                                    errors::cannot_open_device(path, &os_error_text(&e)).into()
                                );
                            }
                        },
                    };
                    Box::pin(futures::stream::iter(
                        bytes
                            .chunks(MAX_TRANSFER_SIZE)
                            .map(|c| Ok(Bytes::copy_from_slice(c)))
                            .collect::<Vec<Result<Bytes, MediaError>>>(),
                    ))
                }
            };
            streams.push((device.name().to_string(), stream));
        }
        media::decode_named(streams, header_only)
            .await
            .map_err(|e| SqlError::new(e.number, 16, e.message).into())
    }
}

#[async_trait]
impl BatchHandler for Server {
    async fn batch(&self, session: &Session, sql: &str) -> Vec<Reply> {
        let statements = match parse_batch(sql) {
            Ok(statements) => statements,
            Err(e) => return vec![Reply::Error(SqlError::new(102, 15, e.to_string()))],
        };
        let mut replies = Vec::new();
        for statement in statements {
            match self.execute(session, statement).await {
                Ok(mut out) => replies.append(&mut out),
                Err(Failure(errors)) => {
                    replies.extend(errors.into_iter().map(Reply::Error));
                    break;
                }
            }
        }
        replies
    }
}

/// The errors a failed statement raises, in order (the cause first, then
/// e.g. 3013).
#[derive(Debug)]
struct Failure(Vec<SqlError>);

impl Failure {
    fn terminating(mut self, verb: &str) -> Failure {
        self.0.push(SqlError::new(
            3013,
            16,
            format!("{verb} is terminating abnormally."),
        ));
        self
    }
}

impl From<SqlError> for Failure {
    fn from(e: SqlError) -> Failure {
        Failure(vec![e])
    }
}

type Exec = Result<Vec<Reply>, Failure>;

fn backup_verb(target: BackupTarget) -> &'static str {
    match target {
        BackupTarget::Database => "BACKUP DATABASE",
        BackupTarget::Log => "BACKUP LOG",
    }
}

fn restore_verb(restore: &Restore) -> &'static str {
    match restore {
        Restore::FileListOnly { .. } => "RESTORE FILELIST",
        Restore::HeaderOnly { .. } => "RESTORE HEADERONLY",
        Restore::Database { .. } => "RESTORE DATABASE",
        Restore::Log { .. } => "RESTORE LOG",
    }
}

/// SQL Server's messages, one function per error the emulator raises. The
/// numbers and texts are SQL Server's ("Database engine events and errors").
mod errors {
    use super::*;

    fn error(number: u32, message: impl Into<String>) -> SqlError {
        SqlError::new(number, 16, message)
    }

    pub fn database_not_found(db: &str) -> SqlError {
        error(
            911,
            format!(
                "Database '{db}' does not exist. Make sure that the name is entered correctly."
            ),
        )
    }

    pub fn database_exists(db: &str) -> SqlError {
        error(
            1801,
            format!("Database '{db}' already exists. Choose a different database name."),
        )
    }

    pub fn cannot_drop(db: &str) -> SqlError {
        error(
            3701,
            format!(
                "Cannot drop the database '{db}', because it does not exist or you do not have permission."
            ),
        )
    }

    pub fn cannot_alter(db: &str) -> SqlError {
        error(
            5011,
            format!(
                "User does not have permission to alter database '{db}', the database does not exist, \
                 or the database is not in a state that allows access checks."
            ),
        )
    }

    pub fn restoring(db: &str) -> SqlError {
        error(
            927,
            format!("Database '{db}' cannot be opened. It is in the middle of a restore."),
        )
    }

    pub fn read_only(db: &str) -> SqlError {
        error(
            3906,
            format!("Failed to update database \"{db}\" because the database is read-only."),
        )
    }

    pub fn invalid_object(name: &str) -> SqlError {
        error(208, format!("Invalid object name '{name}'."))
    }

    pub fn invalid_column(name: &str) -> SqlError {
        error(207, format!("Invalid column name '{name}'."))
    }

    pub fn not_a_function(name: &str) -> SqlError {
        error(
            195,
            format!("'{name}' is not a recognized built-in function name."),
        )
    }

    pub fn syntax(near: &str) -> SqlError {
        SqlError::new(102, 15, format!("Incorrect syntax near '{near}'."))
    }

    pub fn not_aggregated(column: &str) -> SqlError {
        error(
            8120,
            format!(
                "Column '{column}' is invalid in the select list because it is not contained in either \
                 an aggregate function or the GROUP BY clause."
            ),
        )
    }

    pub fn object_exists(name: &str) -> SqlError {
        error(
            2714,
            format!("There is already an object named '{name}' in the database."),
        )
    }

    pub fn unknown_type(position: usize, name: &str) -> SqlError {
        error(
            2715,
            format!("Column, parameter, or variable #{position}: Cannot find data type {name}."),
        )
    }

    pub fn conversion(value: &str, ty: &str) -> SqlError {
        error(
            245,
            format!(
                "Conversion failed when converting the nvarchar value '{value}' to data type {ty}."
            ),
        )
    }

    pub fn null_not_allowed(column: &str, table: &str) -> SqlError {
        SqlError::new(
            515,
            16,
            format!(
                "Cannot insert the value NULL into column '{column}', table '{table}'; column does not allow nulls. INSERT fails."
            ),
        )
    }

    pub fn truncated(table: &str, column: &str, value: &str) -> SqlError {
        error(
            2628,
            format!(
                "String or binary data would be truncated in table '{table}', column '{column}'. Truncated value: '{value}'."
            ),
        )
    }

    pub fn insert_arity() -> SqlError {
        error(
            110,
            "There are fewer columns in the INSERT statement than values specified in the VALUES clause. \
             The number of values in the VALUES clause must match the number of columns specified in the INSERT statement.",
        )
    }

    pub fn file_exists(path: &str) -> SqlError {
        SqlError::new(
            5170,
            16,
            format!(
                "Cannot create file '{path}' because it already exists. Change the file path or the file name, and retry the operation."
            ),
        )
    }

    pub fn create_failed() -> SqlError {
        error(
            1802,
            "CREATE DATABASE failed. Some file names listed could not be created. Check related errors.",
        )
    }

    pub fn no_permission_for_action() -> SqlError {
        error(
            15247,
            "User does not have permission to perform this action.",
        )
    }

    pub fn backup_permission(target: BackupTarget, db: &str) -> SqlError {
        SqlError::new(
            262,
            14,
            format!(
                "{} permission denied in database '{db}'.",
                backup_verb(target)
            ),
        )
    }

    pub fn restore_permission(db: &str) -> SqlError {
        SqlError::new(
            3110,
            14,
            format!("User does not have permission to RESTORE database '{db}'."),
        )
    }

    pub fn tempdb() -> SqlError {
        error(
            3147,
            "Backup and restore operations are not allowed on database tempdb.",
        )
    }

    pub fn log_in_simple() -> SqlError {
        error(
            4208,
            "The statement BACKUP LOG is not allowed while the recovery model is SIMPLE. \
             Use BACKUP DATABASE or change the recovery model using ALTER DATABASE.",
        )
    }

    pub fn no_current_backup() -> SqlError {
        error(
            4214,
            "BACKUP LOG cannot be performed because there is no current database backup.",
        )
    }

    pub fn no_differential_base(db: &str) -> SqlError {
        error(
            3035,
            format!(
                "Cannot perform a differential backup for database \"{db}\", because a current database backup \
                 does not exist. Perform a full database backup by reissuing BACKUP DATABASE, omitting the WITH DIFFERENTIAL option."
            ),
        )
    }

    pub fn secondary_replica() -> SqlError {
        error(
            3059,
            "This BACKUP or RESTORE command is not supported on a database mirror or secondary replica.",
        )
    }

    pub fn in_availability_group(db: &str) -> SqlError {
        error(
            3104,
            format!(
                "RESTORE cannot operate on database '{db}' because it is configured for database mirroring or has joined an availability group."
            ),
        )
    }

    /// The emulator's number for an invalid `MAXTRANSFERSIZE` (SQL Server
    /// documents the rule, multiples of 65536 up to 4 MiB, not the message).
    pub fn max_transfer_size(value: u64) -> SqlError {
        error(
            3268,
            format!(
                "The value {value} for MAXTRANSFERSIZE is not valid. Specify a multiple of 65536 bytes, at most 4194304."
            ),
        )
    }

    pub fn cannot_open_device(device: &str, os_error: &str) -> SqlError {
        error(
            3201,
            format!("Cannot open backup device '{device}'. Operating system error {os_error}."),
        )
    }

    pub fn mixed_devices() -> SqlError {
        error(
            50000,
            "The emulator takes devices of one kind (URL or DISK) per statement.",
        )
    }

    pub fn wrong_backup_kind(device: &str, made_by: &str) -> SqlError {
        error(
            3135,
            format!(
                "The backup set in file '{device}' was created by {made_by} and cannot be used for this restore operation."
            ),
        )
    }

    pub fn other_database(db: &str) -> SqlError {
        error(
            3154,
            format!(
                "The backup set holds a backup of a database other than the existing '{db}' database."
            ),
        )
    }

    pub fn tail_not_backed_up(db: &str) -> SqlError {
        error(
            3159,
            format!(
                "The tail of the log for the database \"{db}\" has not been backed up. Use BACKUP LOG WITH NORECOVERY \
                 to backup the log if it contains work you do not want to lose. Use the WITH REPLACE or WITH STOPAT \
                 clause of the RESTORE statement to just overwrite the contents of the log."
            ),
        )
    }

    pub fn file_in_use(path: &str, db: &str) -> SqlError {
        error(
            1834,
            format!(
                "The file '{path}' cannot be overwritten.  It is being used by database '{db}'."
            ),
        )
    }

    pub fn file_cannot_be_restored(logical: &str, path: &str) -> SqlError {
        error(
            3156,
            format!(
                "File '{logical}' cannot be restored to '{path}'. Use WITH MOVE to identify a valid location for the file."
            ),
        )
    }

    pub fn not_in_set(logical: &str, db: &str) -> SqlError {
        error(
            3234,
            format!(
                "Logical file '{logical}' is not part of database '{db}'. Use RESTORE FILELISTONLY to list the logical file names."
            ),
        )
    }

    pub fn nothing_to_roll_forward() -> SqlError {
        error(
            3117,
            "The log or differential backup cannot be restored because no files are ready to rollforward.",
        )
    }

    pub fn differential_out_of_place() -> SqlError {
        error(
            3136,
            "This differential backup cannot be restored because the database has not been restored to the correct earlier state.",
        )
    }

    pub fn log_too_recent(first: Lsn, needed: Lsn) -> SqlError {
        error(
            4305,
            format!(
                "The log in this backup set begins at LSN {first}, which is too recent to apply to the database. \
                 An earlier log backup that includes LSN {needed} can be restored."
            ),
        )
    }

    pub fn log_too_early(last: Lsn, needed: Lsn) -> SqlError {
        error(
            4326,
            format!(
                "The log in this backup set terminates at LSN {last}, which is too early to apply to the database. \
                 A more recent log backup that includes LSN {needed} can be restored."
            ),
        )
    }

    pub fn other_recovery_path() -> SqlError {
        error(
            4330,
            "This backup set cannot be applied because it is on a recovery path that is inconsistent with the database. \
             The recovery path is the sequence of data and log backups that have brought the database to a particular \
             recovery point. Find a compatible backup to restore, or restore the rest of the database to match a recovery \
             point within this backup set, which will restore the database to a different point in time.",
        )
    }

    pub fn stop_too_early() -> SqlError {
        error(
            4338,
            "The STOPAT clause specifies a point too early to allow this backup set to be restored. Choose a different \
             stop point or use RESTORE DATABASE WITH RECOVERY to recover at the current point.",
        )
    }

    pub fn bad_datetime() -> SqlError {
        error(
            241,
            "Conversion failed when converting date and/or time from character string.",
        )
    }
}

/// The OS error text SQL Server on Linux prints for a file that cannot be read.
fn os_error_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "2(The system cannot find the file specified.)".into(),
        std::io::ErrorKind::PermissionDenied => "5(Access is denied.)".into(),
        _ => {
            format!("1117(The request could not be performed because of an I/O device error: {e}.)")
        }
    }
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct BackupOptions {
    differential: bool,
    copy_only: bool,
    checksum: bool,
    compression: bool,
    stats: Option<u64>,
    description: Option<String>,
    name: Option<String>,
}

impl BackupOptions {
    /// The options of one statement; `MAXTRANSFERSIZE` must be a multiple of
    /// 65536 up to 4194304 ("BACKUP (Transact-SQL)", Data transfer options).
    fn read(options: &[BackupOption]) -> Result<BackupOptions, Failure> {
        let mut out = BackupOptions {
            differential: false,
            copy_only: false,
            checksum: false,
            compression: false,
            stats: None,
            description: None,
            name: None,
        };
        for option in options {
            match option {
                BackupOption::Differential => out.differential = true,
                BackupOption::CopyOnly => out.copy_only = true,
                BackupOption::Checksum(on) => out.checksum = *on,
                BackupOption::Compression(on) => out.compression = *on,
                BackupOption::Stats(n) => out.stats = Some(n.unwrap_or(10)),
                BackupOption::Description(text) => out.description = Some(text.clone()),
                BackupOption::Name(text) => out.name = Some(text.clone()),
                BackupOption::MaxTransferSize(n) => {
                    if *n == 0 || n % 65536 != 0 || *n > 4_194_304 {
                        return Err(errors::max_transfer_size(*n).into());
                    }
                }
                BackupOption::Format(_)
                | BackupOption::Init(_)
                | BackupOption::BlockSize(_)
                | BackupOption::BufferCount(_) => {}
            }
        }
        Ok(out)
    }
}

struct RestoreOptions {
    moves: Vec<(String, String)>,
    recovery: bool,
    replace: bool,
    stats: Option<u64>,
    stop_at: Option<String>,
}

impl RestoreOptions {
    /// RECOVERY is the default when neither RECOVERY nor NORECOVERY is given.
    fn read(options: &[RestoreOption]) -> RestoreOptions {
        let mut out = RestoreOptions {
            moves: Vec::new(),
            recovery: true,
            replace: false,
            stats: None,
            stop_at: None,
        };
        for option in options {
            match option {
                RestoreOption::Move { logical, physical } => {
                    out.moves.push((logical.clone(), physical.clone()))
                }
                RestoreOption::Recovery => out.recovery = true,
                RestoreOption::NoRecovery => out.recovery = false,
                RestoreOption::Replace => out.replace = true,
                RestoreOption::Stats(n) => out.stats = Some(n.unwrap_or(10)),
                RestoreOption::StopAt(text) => out.stop_at = Some(text.clone()),
                RestoreOption::Checksum(_) | RestoreOption::File(_) => {}
            }
        }
        out
    }
}

/// `STATS = n`: an INFO "n percent processed." every n percent (3211).
fn stats_messages(stats: Option<u64>) -> Vec<Reply> {
    let Some(step) = stats.filter(|s| *s > 0 && *s <= 100) else {
        return Vec::new();
    };
    (1..=100 / step)
        .map(|i| Reply::Info {
            number: 3211,
            message: format!("{} percent processed.", i * step),
        })
        .collect()
}

fn restore_done(what: &str, bytes: u64, started: Instant) -> Reply {
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    Reply::Info {
        number: 3014,
        message: format!(
            "{what} successfully processed {} pages in {elapsed:.3} seconds ({:.3} MB/sec).",
            bytes.div_ceil(media::PAGE_SIZE as u64),
            bytes as f64 / 1_048_576.0 / elapsed
        ),
    }
}

/// Parses a `STOPAT` literal: ISO 8601 (`2026-12-01T10:00:00.123`) or
/// `yyyy-mm-dd hh:mm:ss[.fff]`, in the server's local time.
fn parse_stop_at(text: &str) -> Result<NaiveDateTime, SqlError> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text.trim(), f).ok())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(errors::bad_datetime)
}

fn now_utc() -> NaiveDateTime {
    Utc::now().naive_utc()
}

// ---------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------

const VLF_BLOCKS: i128 = 8 * 1024 * 1024 / 512;
const FIRST_BLOCK: i128 = 16;

/// Where the next transaction's records go: a VLF sequence number and a
/// block offset (512-byte units) in it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct LogWriter {
    vlf: i128,
    block: i128,
}

impl LogWriter {
    fn new() -> LogWriter {
        LogWriter {
            vlf: 37,
            block: FIRST_BLOCK,
        }
    }

    /// A writer that continues after `lsn` (the next block).
    fn after(lsn: Lsn) -> LogWriter {
        let mut writer = LogWriter {
            vlf: lsn / 1_000_000_000_000_000,
            block: (lsn / 100_000) % 10_000_000_000,
        };
        writer.advance(1);
        writer
    }

    fn next_lsn(&self) -> Lsn {
        lsn(self.vlf, self.block, 1)
    }

    fn advance(&mut self, blocks: i128) {
        self.block += blocks.max(1);
        while self.block >= VLF_BLOCKS {
            self.block -= VLF_BLOCKS - FIRST_BLOCK;
            self.vlf += 1;
        }
    }
}

fn lsn(vlf: i128, block: i128, slot: i128) -> Lsn {
    vlf * 1_000_000_000_000_000 + block * 100_000 + slot
}

/// One transaction of a database's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LogRecord {
    /// The LSN of its first record (slot 1 of its block).
    lsn: Lsn,
    /// When it committed (UTC).
    committed: NaiveDateTime,
    /// Its size in bytes (what a log backup carries for it).
    bytes: u64,
    op: LogOp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum LogOp {
    CreateTable(Table),
    Insert {
        table: String,
        rows: Vec<Vec<Cell>>,
    },
    /// A checkpoint (the start of a data backup).
    Checkpoint,
    /// Any other logged work without content (the end of a backup, a
    /// recovery-model change).
    Marker,
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum ColType {
    Int,
    BigInt,
    SmallInt,
    TinyInt,
    Bit,
    NVarChar,
}

impl ColType {
    fn sql_type(self) -> SqlType {
        match self {
            ColType::Int => SqlType::Int,
            ColType::BigInt => SqlType::BigInt,
            ColType::SmallInt => SqlType::SmallInt,
            ColType::TinyInt => SqlType::TinyInt,
            ColType::Bit => SqlType::Bit,
            ColType::NVarChar => SqlType::NVarChar,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ColType::Int => "int",
            ColType::BigInt => "bigint",
            ColType::SmallInt => "smallint",
            ColType::TinyInt => "tinyint",
            ColType::Bit => "bit",
            ColType::NVarChar => "nvarchar",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ColumnSpec {
    name: String,
    ty: ColType,
    /// `nvarchar(n)`: at most n characters.
    max_len: Option<u32>,
    nullable: bool,
}

/// A stored value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Table {
    /// `schema.table` as created.
    name: String,
    columns: Vec<ColumnSpec>,
    rows: Vec<Vec<Cell>>,
}

/// The database pages a data backup carries.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Pages {
    len: u64,
    compressible: bool,
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbState {
    Online,
    Restoring,
}

/// The recovery forks of a database (`sys.database_recovery_status`).
#[derive(Clone, Copy, Debug)]
struct Forks {
    first: Uuid,
    current: Uuid,
    /// Where the current fork left the previous one.
    point: Option<Lsn>,
    previous: Option<Uuid>,
}

#[derive(Clone, Copy, Debug)]
struct DiffBase {
    guid: Uuid,
    lsn: Lsn,
    time: NaiveDateTime,
}

/// Where a database in RESTORING state stands.
#[derive(Clone, Debug)]
struct RestoreProgress {
    /// The LSN the next log must contain (`redo_start_lsn`).
    redo_lsn: Lsn,
    /// The recovery fork at `redo_lsn` (`redo_start_fork_guid`).
    fork: Uuid,
    /// The full backup the restore started from.
    base_set: Uuid,
    /// The point in time reached (UTC).
    reached: NaiveDateTime,
    /// A STOPAT stopped inside a log at this LSN: recovery starts a new fork.
    stopped_at: Option<Lsn>,
}

#[derive(Clone, Debug)]
struct Database {
    name: String,
    id: i32,
    guid: Uuid,
    family_guid: Uuid,
    created: NaiveDateTime,
    recovery: RecoveryModel,
    state: DbState,
    forks: Forks,
    files: Vec<FileEntry>,
    /// Keyed by lowercase `schema.table`.
    tables: BTreeMap<String, Table>,
    log: Vec<LogRecord>,
    writer: LogWriter,
    last_checkpoint: Lsn,
    last_log_backup_lsn: Option<Lsn>,
    /// The next regular log backup begins a log chain.
    chain_begins: bool,
    diff_base: Option<DiffBase>,
    /// Bytes logged since the differential base.
    changed_since_base: u64,
    pages: Pages,
    restoring: Option<RestoreProgress>,
}

impl Database {
    fn create(
        name: &str,
        id: i32,
        recovery: RecoveryModel,
        settings: &ServerSettings,
        now: NaiveDateTime,
    ) -> Database {
        let fork = Uuid::new_v4();
        let mut db = Database {
            name: name.to_string(),
            id,
            guid: Uuid::new_v4(),
            family_guid: Uuid::new_v4(),
            created: now,
            recovery,
            state: DbState::Online,
            forks: Forks {
                first: fork,
                current: fork,
                point: None,
                previous: None,
            },
            files: vec![
                FileEntry {
                    logical_name: name.to_string(),
                    physical_name: format!("{}{name}.mdf", settings.data_path),
                    file_type: 'D',
                    file_id: 1,
                    size_bytes: 0,
                },
                FileEntry {
                    logical_name: format!("{name}_log"),
                    physical_name: format!("{}{name}_log.ldf", settings.data_path),
                    file_type: 'L',
                    file_id: 2,
                    size_bytes: 8 * 1024 * 1024,
                },
            ],
            tables: BTreeMap::new(),
            log: Vec::new(),
            writer: LogWriter::new(),
            last_checkpoint: 0,
            last_log_backup_lsn: None,
            chain_begins: false,
            diff_base: None,
            changed_since_base: 0,
            pages: Pages {
                len: settings.default_database_size,
                compressible: true,
                seed: Uuid::new_v4().as_u64_pair().0,
            },
            restoring: None,
        };
        db.resize_files(settings.default_database_size);
        db.last_checkpoint = db.log_transaction(LogOp::Checkpoint, 1, 0, now);
        db
    }

    /// The data file holds the pages, rounded up to 64 KiB, at least 8 MiB.
    fn resize_files(&mut self, bytes: u64) {
        let size = bytes.div_ceil(65536).max(128) * 65536;
        for file in &mut self.files {
            if file.file_type == 'D' {
                file.size_bytes = size as i64;
            }
        }
    }

    /// Appends one transaction of `records` log records and `bytes` bytes;
    /// returns its LSN.
    fn log_transaction(&mut self, op: LogOp, records: u32, bytes: u64, at: NaiveDateTime) -> Lsn {
        let lsn = self.writer.next_lsn();
        let committed = self.log.last().map_or(at, |r| r.committed.max(at));
        let bytes = bytes + 64 * u64::from(records.max(1));
        self.log.push(LogRecord {
            lsn,
            committed,
            bytes,
            op,
        });
        self.writer.advance(bytes.div_ceil(512) as i128);
        if !matches!(
            self.log.last().map(|r| &r.op),
            Some(LogOp::Checkpoint | LogOp::Marker)
        ) {
            self.changed_since_base += bytes;
        }
        lsn
    }

    fn end_lsn(&self) -> Lsn {
        self.writer.next_lsn()
    }

    /// Whether this database's recovery model keeps a log chain.
    fn keeps_log_chain(&self) -> bool {
        self.recovery != RecoveryModel::Simple
    }

    fn apply(&mut self, op: &LogOp) {
        match op {
            LogOp::CreateTable(table) => {
                self.tables.insert(table.name.to_lowercase(), table.clone());
            }
            LogOp::Insert { table, rows } => {
                if let Some(t) = self.tables.get_mut(table) {
                    t.rows.extend(rows.iter().cloned());
                }
            }
            LogOp::Checkpoint | LogOp::Marker => {}
        }
    }

    /// Brings a restoring database online (`WITH RECOVERY`): a restore that
    /// stopped inside a log starts a new recovery fork at that LSN.
    fn recover(&mut self) {
        let Some(progress) = self.restoring.take() else {
            return;
        };
        self.forks.current = progress.fork;
        if let Some(point) = progress.stopped_at {
            self.forks.previous = Some(self.forks.current);
            self.forks.current = Uuid::new_v4();
            self.forks.point = Some(point);
        }
        self.state = DbState::Online;
        self.writer = LogWriter::after(progress.redo_lsn);
        self.last_log_backup_lsn = self.keeps_log_chain().then_some(progress.redo_lsn);
        self.chain_begins = false;
        self.last_checkpoint = self.log_transaction(LogOp::Checkpoint, 1, 0, now_utc());
    }

    /// The recovery fork at `lsn`.
    fn fork_at(&self, lsn: Lsn) -> Uuid {
        match (self.forks.point, self.forks.previous) {
            (Some(point), Some(previous)) if lsn <= point => previous,
            _ => self.forks.current,
        }
    }
}

/// What a backup set's media carries besides its header (serialised as JSON).
#[derive(Serialize, Deserialize)]
enum Content {
    /// A full or differential backup: the tables as of its consistency point.
    Data {
        tables: Vec<Table>,
        pages: Pages,
        backup_size: u64,
    },
    /// A log backup: the transactions in `[first_lsn, last_lsn)`.
    Log {
        records: Vec<LogRecord>,
        backup_size: u64,
    },
}

impl Content {
    fn backup_size(&self) -> u64 {
        match self {
            Content::Data { backup_size, .. } | Content::Log { backup_size, .. } => *backup_size,
        }
    }

    fn read(decoded: &Decoded) -> Result<Content, SqlError> {
        serde_json::from_slice(&decoded.content)
            .map_err(|_| SqlError::new(3241, 16, "The media family on device is incorrectly formed. SQL Server cannot process this media family."))
    }
}

/// One row of `msdb.dbo.backupset` with its media family rows.
#[derive(Clone, Debug)]
struct HistoryRow {
    backup_set_id: i32,
    media_set_id: i32,
    header: SetHeader,
    name: Option<String>,
    description: Option<String>,
    backup_size: u64,
    compressed_backup_size: u64,
    devices: Vec<Device>,
}

#[derive(Clone, Debug)]
struct Credential {
    id: i32,
    name: String,
    identity: String,
    created: NaiveDateTime,
}

/// A backup prepared under the lock and written without it.
struct PreparedBackup {
    database: String,
    header: SetHeader,
    content: Vec<u8>,
    payload: Payload,
    backup_size: u64,
}

#[derive(Default)]
struct State {
    databases: Vec<Database>,
    last_database_id: i32,
    credentials: Vec<Credential>,
    history: Vec<HistoryRow>,
    disk: HashMap<String, Bytes>,
    ag_roles: HashMap<String, AgRole>,
    /// The seed of every backup's pages, when fixed (benchmarks).
    payload_seed: Option<u64>,
}

impl State {
    fn next_database_id(&mut self) -> i32 {
        self.last_database_id += 1;
        self.last_database_id
    }

    fn database(&self, name: &str) -> Option<&Database> {
        self.databases
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    fn database_mut(&mut self, name: &str) -> Option<&mut Database> {
        self.databases
            .iter_mut()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    fn ag_role(&self, name: &str) -> Option<AgRole> {
        self.ag_roles.get(&name.to_lowercase()).copied()
    }

    /// The database of a statement that changes it: it must exist, be
    /// online and writable.
    fn writable(&mut self, name: &str) -> Result<&mut Database, SqlError> {
        let secondary = self.ag_role(name).is_some_and(|r| !r.primary);
        let db = self
            .database_mut(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        if db.state == DbState::Restoring {
            return Err(errors::restoring(&db.name));
        }
        if secondary {
            return Err(errors::read_only(&db.name));
        }
        Ok(db)
    }

    // -- DDL and DML -----------------------------------------------------

    fn create_database(&mut self, name: &str, settings: &ServerSettings) -> Exec {
        if self.database(name).is_some() {
            return Err(errors::database_exists(name).into());
        }
        let id = self.last_database_id + 1;
        let db = Database::create(name, id, RecoveryModel::Full, settings, now_utc());
        for file in &db.files {
            if self.file_owner(&file.physical_name, None).is_some() {
                return Err(Failure(vec![
                    errors::file_exists(&file.physical_name),
                    errors::create_failed(),
                ]));
            }
        }
        self.last_database_id = id;
        self.databases.push(db);
        Ok(vec![Reply::Done {
            rows_affected: None,
        }])
    }

    fn drop_database(&mut self, name: &str) -> Exec {
        let Some(i) = self
            .databases
            .iter()
            .position(|d| d.name.eq_ignore_ascii_case(name) && d.id > 4)
        else {
            return Err(errors::cannot_drop(name).into());
        };
        self.databases.remove(i);
        Ok(vec![Reply::Done {
            rows_affected: None,
        }])
    }

    fn set_recovery(&mut self, name: &str, model: RecoveryModel) -> Exec {
        let db = self
            .writable(name)
            .map_err(|_| errors::cannot_alter(name))?;
        if db.recovery != model {
            if model == RecoveryModel::Simple {
                // "Switching to SIMPLE breaks the log backup chain."
                db.last_log_backup_lsn = None;
                db.chain_begins = false;
            }
            db.recovery = model;
            db.log_transaction(LogOp::Marker, 1, 0, now_utc());
        }
        Ok(vec![Reply::Done {
            rows_affected: None,
        }])
    }

    /// The database and table key of a user table name (`[db].[schema].[t]`,
    /// `schema.t` or `t` in master).
    fn table_ref(name: &ObjectName) -> Result<(String, String), SqlError> {
        match name.0.as_slice() {
            [db, schema, table] => Ok((db.clone(), format!("{schema}.{table}"))),
            [schema, table] => Ok(("master".into(), format!("{schema}.{table}"))),
            [table] => Ok(("master".into(), format!("dbo.{table}"))),
            _ => Err(errors::invalid_object(&name.to_string())),
        }
    }

    fn create_table(&mut self, name: &ObjectName, columns: &[ColumnDef]) -> Exec {
        let (db_name, key) = Self::table_ref(name)?;
        let mut specs = Vec::new();
        for (i, column) in columns.iter().enumerate() {
            specs.push(column_spec(i + 1, column)?);
        }
        let db = self.writable(&db_name)?;
        if db.tables.contains_key(&key.to_lowercase()) {
            return Err(errors::object_exists(name.object()).into());
        }
        let table = Table {
            name: key,
            columns: specs,
            rows: Vec::new(),
        };
        let op = LogOp::CreateTable(table);
        db.apply(&op);
        db.log_transaction(op, 3, 256, now_utc());
        Ok(vec![Reply::Done {
            rows_affected: None,
        }])
    }

    fn insert(&mut self, name: &ObjectName, columns: &[String], rows: &[Vec<Literal>]) -> Exec {
        let (db_name, key) = Self::table_ref(name)?;
        let db = self.writable(&db_name)?;
        let full_name = format!("{}.{}", db.name, key);
        let table = db
            .tables
            .get(&key.to_lowercase())
            .ok_or_else(|| errors::invalid_object(&name.to_string()))?;
        let mut positions = Vec::new();
        for column in columns {
            let i = table
                .columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(column))
                .ok_or_else(|| errors::invalid_column(column))?;
            positions.push(i);
        }
        let mut new_rows = Vec::new();
        let mut bytes = 0u64;
        for row in rows {
            if row.len() != columns.len() {
                return Err(errors::insert_arity().into());
            }
            let mut cells = vec![Cell::Null; table.columns.len()];
            for (value, &i) in row.iter().zip(&positions) {
                cells[i] = cell_of(&table.columns[i], value, &full_name)?;
            }
            for (spec, cell) in table.columns.iter().zip(&cells) {
                if !spec.nullable && *cell == Cell::Null {
                    return Err(errors::null_not_allowed(&spec.name, &full_name).into());
                }
                bytes += match cell {
                    Cell::Text(t) => 2 * t.chars().count() as u64,
                    _ => 8,
                };
            }
            new_rows.push(cells);
        }
        let count = new_rows.len() as u64;
        let op = LogOp::Insert {
            table: key.to_lowercase(),
            rows: new_rows,
        };
        db.apply(&op);
        db.log_transaction(op, count as u32 + 2, bytes, now_utc());
        Ok(vec![Reply::Done {
            rows_affected: Some(count),
        }])
    }

    fn create_credential(
        &mut self,
        name: String,
        identity: String,
        _secret: Option<String>,
    ) -> Exec {
        if self
            .credentials
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(&name))
        {
            return Err(SqlError::new(
                15025,
                16,
                format!("The server principal '{name}' already exists."),
            )
            .into());
        }
        let id = 65536 + self.credentials.len() as i32 + 1;
        self.credentials.push(Credential {
            id,
            name,
            identity,
            created: now_utc(),
        });
        Ok(vec![Reply::Done {
            rows_affected: None,
        }])
    }

    /// The credential SQL Server uses for a URL device: for block blobs, a
    /// Shared Access Signature credential named as a prefix of the URL up to
    /// a `/` (the container path; "SQL Server backup to URL for Microsoft
    /// Azure Blob Storage"). None: 3201 with operating system error 50.
    fn check_credential(&self, url: &str) -> Result<(), SqlError> {
        let found = self.credentials.iter().any(|c| {
            c.identity.eq_ignore_ascii_case("SHARED ACCESS SIGNATURE")
                && url.len() > c.name.len()
                && url[..c.name.len()].eq_ignore_ascii_case(&c.name)
                && (c.name.ends_with('/') || url[c.name.len()..].starts_with('/'))
        });
        if found {
            Ok(())
        } else {
            Err(errors::cannot_open_device(
                url,
                "50(The request is not supported.)",
            ))
        }
    }

    /// The database other than `except` whose file is at `path`.
    fn file_owner(&self, path: &str, except: Option<i32>) -> Option<&str> {
        self.databases
            .iter()
            .filter(|d| Some(d.id) != except)
            .find(|d| d.files.iter().any(|f| f.physical_name == path))
            .map(|d| d.name.as_str())
    }

    // -- BACKUP ----------------------------------------------------------

    fn prepare_backup(
        &mut self,
        server: &Server,
        statement: &Backup,
        options: &BackupOptions,
    ) -> Result<PreparedBackup, Failure> {
        let name = statement.database.as_str();
        let role = self.ag_role(name);
        let fixed_seed = self.payload_seed;
        {
            let db = self
                .database(name)
                .ok_or_else(|| errors::database_not_found(name))?;
            if db.name.eq_ignore_ascii_case("tempdb") {
                return Err(errors::tempdb().into());
            }
            if db.state == DbState::Restoring {
                return Err(errors::restoring(&db.name).into());
            }
        }
        let kind = match (statement.target, options.differential) {
            (BackupTarget::Log, _) => BackupType::Log,
            (BackupTarget::Database, true) => BackupType::Differential,
            (BackupTarget::Database, false) => BackupType::Full,
        };
        // COPY_ONLY has no effect with DIFFERENTIAL.
        let copy_only = options.copy_only && kind != BackupType::Differential;
        // On a secondary replica: copy-only full and regular log backups only
        // ("Offload supported backups to secondary replicas").
        if role.is_some_and(|r| !r.primary)
            && (kind == BackupType::Differential || (kind == BackupType::Full) != copy_only)
        {
            return Err(errors::secondary_replica().into());
        }
        let db = self
            .database(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        match kind {
            BackupType::Log if db.recovery == RecoveryModel::Simple => {
                return Err(errors::log_in_simple().into());
            }
            BackupType::Log if db.last_log_backup_lsn.is_none() => {
                return Err(errors::no_current_backup().into());
            }
            BackupType::Differential if db.diff_base.is_none() => {
                return Err(errors::no_differential_base(&db.name).into());
            }
            _ => {}
        }
        for device in &statement.devices {
            if let Device::Url(url) = device {
                self.check_credential(url)?;
            }
        }
        let db = self
            .database_mut(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        let start = now_utc();
        let database_backup_lsn = db.diff_base.map_or(0, |b| b.lsn);
        let (first_lsn, last_lsn, checkpoint_lsn, content, payload_len, compressible);
        let (mut diff_lsn, mut diff_guid, mut fork_point) = (None, None, None);
        let first_fork;
        match kind {
            BackupType::Full | BackupType::Differential => {
                let checkpoint = db.log_transaction(LogOp::Checkpoint, 1, 0, start);
                db.last_checkpoint = checkpoint;
                first_lsn = checkpoint;
                checkpoint_lsn = checkpoint;
                let tables: Vec<Table> = db.tables.values().cloned().collect();
                db.log_transaction(LogOp::Marker, 1, 0, start);
                last_lsn = db.end_lsn();
                payload_len = if kind == BackupType::Full {
                    db.pages.len
                } else {
                    (db.pages.len / 16 + db.changed_since_base).min(db.pages.len)
                };
                if let (BackupType::Differential, Some(base)) = (kind, db.diff_base) {
                    diff_lsn = Some(base.lsn);
                    diff_guid = Some(base.guid);
                }
                compressible = db.pages.compressible;
                content = Content::Data {
                    tables,
                    pages: db.pages,
                    backup_size: 0,
                };
                first_fork = db.forks.current;
            }
            BackupType::Log => {
                first_lsn = db.last_log_backup_lsn.unwrap_or_default();
                db.log_transaction(LogOp::Marker, 1, 0, start);
                last_lsn = db.end_lsn();
                checkpoint_lsn = db.last_checkpoint;
                let records: Vec<LogRecord> = db
                    .log
                    .iter()
                    .filter(|r| r.lsn >= first_lsn && r.lsn < last_lsn)
                    .cloned()
                    .collect();
                payload_len = records.iter().map(|r| r.bytes).sum();
                compressible = true;
                content = Content::Log {
                    records,
                    backup_size: 0,
                };
                first_fork = db.fork_at(first_lsn);
                if first_fork != db.forks.current {
                    fork_point = db.forks.point;
                }
            }
        }
        let backup_size = 1024 + payload_len;
        let content = match content {
            Content::Data { tables, pages, .. } => Content::Data {
                tables,
                pages,
                backup_size,
            },
            Content::Log { records, .. } => Content::Log {
                records,
                backup_size,
            },
        };
        let set_guid = Uuid::new_v4();
        let seed = fixed_seed.unwrap_or_else(|| set_guid.as_u64_pair().0);
        let payload = if options.compression {
            // SQL Server's compression: table pages shrink about 2.5x, data
            // that does not compress stays its size; the output looks random.
            Payload {
                seed,
                len: if compressible {
                    payload_len * 2 / 5
                } else {
                    payload_len
                },
                compressible: false,
            }
        } else {
            Payload {
                seed,
                len: payload_len,
                compressible,
            }
        };
        let local_start = server.local(start);
        let header = SetHeader {
            backup_type: kind,
            is_copy_only: copy_only,
            database_name: db.name.clone(),
            server_name: server.settings.server_name.clone(),
            backup_set_guid: set_guid,
            first_lsn,
            last_lsn,
            checkpoint_lsn,
            database_backup_lsn,
            differential_base_lsn: diff_lsn,
            differential_base_guid: diff_guid,
            first_recovery_fork_guid: first_fork,
            last_recovery_fork_guid: db.forks.current,
            fork_point_lsn: fork_point,
            database_guid: db.guid,
            family_guid: db.family_guid,
            backup_start_date: local_start,
            backup_finish_date: server.local(now_utc()),
            time_zone: server.time_zone(),
            recovery_model: db.recovery.history_name().to_string(),
            begins_log_chain: kind == BackupType::Log && !copy_only && db.chain_begins,
            has_bulk_logged_data: false,
            has_backup_checksums: options.checksum,
            compressed: options.compression,
            files: db.files.clone(),
        };
        let content = serde_json::to_vec(&content).expect("backup content serialises to JSON");
        Ok(PreparedBackup {
            database: db.name.clone(),
            header,
            content,
            payload,
            backup_size,
        })
    }

    /// Records a backup that completed: its effects on the database's chain
    /// and its `msdb` rows. Returns the database's name and files.
    fn commit_backup(
        &mut self,
        prepared: &PreparedBackup,
        devices: &[Device],
        written: u64,
        options: &BackupOptions,
    ) -> (String, Vec<FileEntry>) {
        let header = &prepared.header;
        if let Some(db) = self
            .database_mut(&prepared.database)
            .filter(|d| d.guid == header.database_guid)
        {
            match header.backup_type {
                BackupType::Full | BackupType::Differential => {
                    if header.backup_type == BackupType::Full && !header.is_copy_only {
                        db.diff_base = Some(DiffBase {
                            guid: header.backup_set_guid,
                            lsn: header.checkpoint_lsn,
                            time: header.backup_start_date,
                        });
                        db.changed_since_base = 0;
                    }
                    if db.keeps_log_chain() && db.last_log_backup_lsn.is_none() {
                        db.last_log_backup_lsn = Some(header.first_lsn);
                        db.chain_begins = true;
                    }
                }
                BackupType::Log => {
                    if !header.is_copy_only && db.last_log_backup_lsn == Some(header.first_lsn) {
                        db.last_log_backup_lsn = Some(header.last_lsn);
                        db.chain_begins = false;
                    }
                }
            }
        }
        let media_set_id = self.history.last().map_or(1, |h| h.media_set_id + 1);
        self.history.push(HistoryRow {
            backup_set_id: media_set_id,
            media_set_id,
            header: header.clone(),
            name: options.name.clone(),
            description: options.description.clone(),
            backup_size: prepared.backup_size,
            compressed_backup_size: written,
            devices: devices.to_vec(),
        });
        (prepared.database.clone(), header.files.clone())
    }

    // -- RESTORE ---------------------------------------------------------

    /// Refusals that do not need the backup set: an AG database.
    fn check_restore_target(&self, name: &str) -> Result<(), SqlError> {
        if self.ag_role(name).is_some() && self.database(name).is_some() {
            return Err(errors::in_availability_group(name));
        }
        Ok(())
    }

    fn check_log_target(&self, name: &str) -> Result<(), SqlError> {
        let db = self
            .database(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        if db.state != DbState::Restoring {
            return Err(errors::nothing_to_roll_forward());
        }
        Ok(())
    }

    fn restore_data(
        &mut self,
        name: &str,
        decoded: Decoded,
        options: &RestoreOptions,
        device: &str,
    ) -> Exec {
        let header = &decoded.header;
        match header.backup_type {
            BackupType::Log => return Err(errors::wrong_backup_kind(device, "BACKUP LOG").into()),
            BackupType::Differential => return self.restore_differential(name, &decoded, options),
            BackupType::Full => {}
        }
        if let Some(stop_at) = &options.stop_at {
            parse_stop_at(stop_at)?;
        }
        let Content::Data { tables, pages, .. } = Content::read(&decoded)? else {
            return Err(errors::wrong_backup_kind(device, "BACKUP LOG").into());
        };
        let existing = self.database(name);
        let existing_id = existing.map(|d| d.id);
        let target_name = existing.map_or_else(|| name.to_string(), |d| d.name.clone());
        if let Some(existing) = existing
            && !options.replace
        {
            if existing.family_guid != header.family_guid {
                return Err(errors::other_database(&existing.name).into());
            }
            if existing.state == DbState::Online && existing.keeps_log_chain() {
                return Err(errors::tail_not_backed_up(&existing.name).into());
            }
        }
        let mut files = header.files.clone();
        for (logical, physical) in &options.moves {
            let file = files
                .iter_mut()
                .find(|f| f.logical_name.eq_ignore_ascii_case(logical))
                .ok_or_else(|| errors::not_in_set(logical, &header.database_name))?;
            file.physical_name = physical.clone();
        }
        let mut refusals = Vec::new();
        for file in &files {
            if let Some(owner) = self.file_owner(&file.physical_name, existing_id) {
                refusals.push(errors::file_in_use(&file.physical_name, owner));
                refusals.push(errors::file_cannot_be_restored(
                    &file.logical_name,
                    &file.physical_name,
                ));
            }
        }
        if !refusals.is_empty() {
            refusals.push(SqlError::new(
                3119,
                16,
                "Problems were identified while planning for the RESTORE statement. Previous messages provide details.",
            ));
            return Err(Failure(refusals));
        }
        let id = match existing_id {
            Some(id) => id,
            None => self.next_database_id(),
        };
        let reached =
            header.backup_finish_date - TimeDelta::minutes(i64::from(header.time_zone) * 15);
        let mut db = Database {
            name: target_name,
            id,
            guid: Uuid::new_v4(),
            family_guid: header.family_guid,
            created: now_utc(),
            recovery: RecoveryModel::from_name(&header.recovery_model)
                .unwrap_or(RecoveryModel::Full),
            state: DbState::Restoring,
            forks: Forks {
                first: header.first_recovery_fork_guid,
                current: header.last_recovery_fork_guid,
                point: header.fork_point_lsn,
                previous: None,
            },
            files,
            tables: tables
                .into_iter()
                .map(|t| (t.name.to_lowercase(), t))
                .collect(),
            log: Vec::new(),
            writer: LogWriter::after(header.last_lsn),
            last_checkpoint: header.checkpoint_lsn,
            last_log_backup_lsn: None,
            chain_begins: false,
            diff_base: (!header.is_copy_only).then_some(DiffBase {
                guid: header.backup_set_guid,
                lsn: header.checkpoint_lsn,
                time: header.backup_start_date,
            }),
            changed_since_base: 0,
            pages,
            restoring: Some(RestoreProgress {
                redo_lsn: header.last_lsn,
                fork: header.last_recovery_fork_guid,
                base_set: header.backup_set_guid,
                reached,
                stopped_at: None,
            }),
        };
        if options.recovery {
            db.recover();
        }
        self.databases.retain(|d| d.id != id);
        self.databases.push(db);
        self.databases.sort_by_key(|d| d.id);
        Ok(file_messages(name, &header.files, decoded.payload_len))
    }

    fn restore_differential(
        &mut self,
        name: &str,
        decoded: &Decoded,
        options: &RestoreOptions,
    ) -> Exec {
        let header = &decoded.header;
        let Content::Data { tables, .. } = Content::read(decoded)? else {
            return Err(errors::differential_out_of_place().into());
        };
        let db = self
            .database_mut(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        let Some(progress) = db.restoring.as_mut() else {
            return Err(errors::nothing_to_roll_forward().into());
        };
        if header.differential_base_guid != Some(progress.base_set)
            || progress.redo_lsn > header.last_lsn
            || progress.stopped_at.is_some()
        {
            return Err(errors::differential_out_of_place().into());
        }
        progress.redo_lsn = header.last_lsn;
        progress.fork = header.last_recovery_fork_guid;
        progress.reached =
            header.backup_finish_date - TimeDelta::minutes(i64::from(header.time_zone) * 15);
        db.tables = tables
            .into_iter()
            .map(|t| (t.name.to_lowercase(), t))
            .collect();
        db.last_checkpoint = header.checkpoint_lsn;
        if options.recovery {
            db.recover();
        }
        Ok(file_messages(name, &header.files, decoded.payload_len))
    }

    fn restore_log(
        &mut self,
        server: &Server,
        name: &str,
        decoded: &Decoded,
        options: &RestoreOptions,
        device: &str,
    ) -> Exec {
        let header = &decoded.header;
        if header.backup_type != BackupType::Log {
            return Err(errors::wrong_backup_kind(device, "BACKUP DATABASE").into());
        }
        let stop_at = match &options.stop_at {
            Some(text) => Some(
                parse_stop_at(text)?
                    - TimeDelta::minutes(i64::from(server.settings.utc_offset_minutes)),
            ),
            None => None,
        };
        let Content::Log { records, .. } = Content::read(decoded)? else {
            return Err(errors::wrong_backup_kind(device, "BACKUP DATABASE").into());
        };
        let db = self
            .database_mut(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        if db.family_guid != header.family_guid {
            return Err(errors::other_recovery_path().into());
        }
        let Some(progress) = db.restoring.clone() else {
            return Err(errors::nothing_to_roll_forward().into());
        };
        let redo = progress.redo_lsn;
        if header.first_lsn > redo {
            return Err(errors::log_too_recent(header.first_lsn, redo).into());
        }
        if header.last_lsn <= redo {
            return Err(errors::log_too_early(header.last_lsn, redo).into());
        }
        let fork_ok = header.first_recovery_fork_guid == progress.fork
            || (header.last_recovery_fork_guid == progress.fork
                && header.fork_point_lsn.is_some_and(|p| redo >= p));
        if !fork_ok {
            return Err(errors::other_recovery_path().into());
        }
        if let Some(stop) = stop_at
            && stop < progress.reached
        {
            return Err(errors::stop_too_early().into());
        }
        let pending: Vec<&LogRecord> = records.iter().filter(|r| r.lsn >= redo).collect();
        let applied = match stop_at {
            Some(stop) => pending.iter().take_while(|r| r.committed <= stop).count(),
            None => pending.len(),
        };
        for record in &pending[..applied] {
            db.apply(&record.op);
        }
        let mut replies = file_messages(name, &header.files, decoded.payload_len);
        let progress = db.restoring.as_mut().expect("checked above");
        progress.fork = header.last_recovery_fork_guid;
        if let Some(last) = pending[..applied].last() {
            progress.reached = last.committed;
        }
        let mut recover = options.recovery;
        if applied < pending.len() {
            // Stopped inside this log: the database is at the first record
            // not applied.
            progress.redo_lsn = pending[applied].lsn;
            progress.stopped_at = Some(pending[applied].lsn);
        } else {
            progress.redo_lsn = header.last_lsn;
            if stop_at.is_some() {
                replies.push(Reply::Info {
                    number: 4325,
                    message: "This backup set contains records that were logged before the designated point in time. \
                              The database is being left in the restoring state so that more roll forward can be performed."
                        .into(),
                });
                recover = false;
            }
        }
        if recover {
            db.recover();
        }
        Ok(replies)
    }

    /// `RESTORE DATABASE [x] WITH RECOVERY` (no devices).
    fn recover_only(&mut self, name: &str, options: &RestoreOptions) -> Exec {
        let db = self
            .database_mut(name)
            .ok_or_else(|| errors::database_not_found(name))?;
        if options.recovery {
            db.recover();
        }
        Ok(vec![
            Reply::Info {
                number: 3014,
                message: "RESTORE DATABASE successfully processed 0 pages in 0.001 seconds (0.000 MB/sec).".into(),
            },
            Reply::Done { rows_affected: None },
        ])
    }

    // -- SELECT ----------------------------------------------------------

    fn select(
        &self,
        server: &Server,
        session: &Session,
        select: &Select,
    ) -> Result<Reply, Failure> {
        let relation = match &select.from {
            Some(name) => self.relation(server, name)?,
            None => Relation {
                columns: Vec::new(),
                rows: vec![Vec::new()],
            },
        };
        let ctx = EvalContext {
            state: self,
            server,
            session,
        };
        // WHERE
        let mut filters = Vec::new();
        for (column, expr) in &select.filter {
            let i = relation.index(column)?;
            filters.push((i, ctx.eval(expr, &relation, None)?.value));
        }
        let mut rows: Vec<&Vec<Value>> = relation
            .rows
            .iter()
            .filter(|row| filters.iter().all(|(i, v)| values_equal(&row[*i], v)))
            .collect();
        // ORDER BY
        let mut keys = Vec::new();
        for key in &select.order_by {
            let i = match relation.index(&key.column) {
                Ok(i) => i,
                Err(e) => {
                    let aliased =
                        select
                            .items
                            .iter()
                            .find_map(|item| match (&item.alias, &item.expr) {
                                (Some(alias), Expr::Column(c))
                                    if alias.eq_ignore_ascii_case(&key.column) =>
                                {
                                    Some(c.clone())
                                }
                                _ => None,
                            });
                    match aliased {
                        Some(column) => relation.index(&column)?,
                        None => return Err(e.into()),
                    }
                }
            };
            keys.push((i, key.descending));
        }
        rows.sort_by(|a, b| {
            keys.iter()
                .map(|&(i, desc)| {
                    let o = compare_values(&a[i], &b[i]);
                    if desc { o.reverse() } else { o }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        // Aggregates: one row over every row that passed the filter.
        let aggregate = select.items.iter().any(|i| is_aggregate(&i.expr));
        let mut columns = Vec::new();
        let mut out_rows = Vec::new();
        if aggregate {
            let mut row = Vec::new();
            for item in &select.items {
                let typed = ctx.aggregate(&item.expr, &relation, &rows)?;
                columns.push(Column::new(item_name(item), typed.ty));
                row.push(typed.value);
            }
            out_rows.push(row);
        } else {
            let null_row = vec![Value::Null; relation.columns.len()];
            for item in &select.items {
                let typed = ctx.eval(&item.expr, &relation, Some(&null_row))?;
                columns.push(Column::new(item_name(item), typed.ty));
            }
            let limit = select.top.map_or(usize::MAX, |n| n as usize);
            for row in rows.into_iter().take(limit) {
                let mut values = Vec::new();
                for item in &select.items {
                    values.push(ctx.eval(&item.expr, &relation, Some(row))?.value);
                }
                out_rows.push(values);
            }
        }
        Ok(Reply::Rows {
            columns,
            rows: out_rows,
        })
    }

    /// A table or catalog view as columns and rows.
    fn relation(&self, server: &Server, name: &ObjectName) -> Result<Relation, SqlError> {
        let key = name.key();
        let key = key.strip_prefix("master.").unwrap_or(&key);
        Ok(match key {
            "sys.databases" => self.sys_databases(server),
            "sys.database_recovery_status" => self.sys_database_recovery_status(),
            "sys.master_files" => self.sys_master_files(),
            "sys.credentials" => self.sys_credentials(server),
            "msdb.dbo.backupset" => self.msdb_backupset(),
            "msdb.dbo.backupmediafamily" => self.msdb_backupmediafamily(),
            _ => {
                let (db_name, table_key) = Self::table_ref(name)?;
                let db = self
                    .database(&db_name)
                    .ok_or_else(|| errors::invalid_object(&name.to_string()))?;
                if db.state == DbState::Restoring {
                    return Err(errors::restoring(&db.name));
                }
                let table = db
                    .tables
                    .get(&table_key.to_lowercase())
                    .ok_or_else(|| errors::invalid_object(&name.to_string()))?;
                Relation {
                    columns: table
                        .columns
                        .iter()
                        .map(|c| Column::new(&c.name, c.ty.sql_type()))
                        .collect(),
                    rows: table
                        .rows
                        .iter()
                        .map(|row| {
                            row.iter()
                                .zip(&table.columns)
                                .map(|(cell, spec)| cell_value(cell, spec.ty))
                                .collect()
                        })
                        .collect(),
                }
            }
        })
    }

    fn sys_databases(&self, server: &Server) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("name", NVarChar),
            ("database_id", Int),
            ("source_database_id", Int),
            ("create_date", DateTime),
            ("compatibility_level", TinyInt),
            ("collation_name", NVarChar),
            ("is_read_only", Bit),
            ("state", TinyInt),
            ("state_desc", NVarChar),
            ("recovery_model", TinyInt),
            ("recovery_model_desc", NVarChar),
            ("log_reuse_wait_desc", NVarChar),
            ("replica_id", Guid),
            ("group_database_id", Guid),
        ]);
        for db in &self.databases {
            let in_ag = self.ag_role(&db.name).is_some();
            let (state, state_desc) = match db.state {
                DbState::Online => (0, "ONLINE"),
                DbState::Restoring => (1, "RESTORING"),
            };
            r.rows.push(vec![
                Value::NVarChar(db.name.clone()),
                Value::Int(db.id),
                Value::Null,
                Value::DateTime(server.local(db.created)),
                Value::TinyInt(160),
                Value::NVarChar("SQL_Latin1_General_CP1_CI_AS".into()),
                Value::Bit(false),
                Value::TinyInt(state),
                Value::NVarChar(state_desc.into()),
                Value::TinyInt(db.recovery.number()),
                Value::NVarChar(db.recovery.desc().into()),
                Value::NVarChar(
                    if db.keeps_log_chain() && db.last_log_backup_lsn.is_some() {
                        "LOG_BACKUP"
                    } else {
                        "NOTHING"
                    }
                    .into(),
                ),
                if in_ag {
                    Value::Guid(server.replica_id)
                } else {
                    Value::Null
                },
                if in_ag {
                    Value::Guid(db.family_guid)
                } else {
                    Value::Null
                },
            ]);
        }
        r
    }

    fn sys_database_recovery_status(&self) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("database_id", Int),
            ("database_guid", Guid),
            ("family_guid", Guid),
            ("last_log_backup_lsn", Numeric25),
            ("recovery_fork_guid", Guid),
            ("first_recovery_fork_guid", Guid),
            ("fork_point_lsn", Numeric25),
        ]);
        for db in &self.databases {
            let online = db.state == DbState::Online;
            r.rows.push(vec![
                Value::Int(db.id),
                if online {
                    Value::Guid(db.guid)
                } else {
                    Value::Null
                },
                Value::Guid(db.family_guid),
                opt_lsn(db.last_log_backup_lsn.filter(|_| online)),
                Value::Guid(db.forks.current),
                Value::Guid(db.forks.first),
                opt_lsn(db.forks.point),
            ]);
        }
        r
    }

    fn sys_master_files(&self) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("database_id", Int),
            ("file_id", Int),
            ("type", TinyInt),
            ("type_desc", NVarChar),
            ("data_space_id", Int),
            ("name", NVarChar),
            ("physical_name", NVarChar),
            ("state_desc", NVarChar),
            ("size", Int),
            ("differential_base_lsn", Numeric25),
            ("differential_base_guid", Guid),
            ("differential_base_time", DateTime),
            ("redo_start_lsn", Numeric25),
            ("redo_start_fork_guid", Guid),
            ("backup_lsn", Numeric25),
        ]);
        for db in &self.databases {
            for file in &db.files {
                let data = file.file_type == 'D';
                let base = db.diff_base.filter(|_| data);
                let redo = db.restoring.as_ref();
                r.rows.push(vec![
                    Value::Int(db.id),
                    Value::Int(file.file_id),
                    Value::TinyInt(if data { 0 } else { 1 }),
                    Value::NVarChar(if data { "ROWS" } else { "LOG" }.into()),
                    Value::Int(if data { 1 } else { 0 }),
                    Value::NVarChar(file.logical_name.clone()),
                    Value::NVarChar(file.physical_name.clone()),
                    Value::NVarChar(
                        if redo.is_some() {
                            "RESTORING"
                        } else {
                            "ONLINE"
                        }
                        .into(),
                    ),
                    Value::Int((file.size_bytes / 8192) as i32),
                    opt_lsn(base.map(|b| b.lsn)),
                    base.map_or(Value::Null, |b| Value::Guid(b.guid)),
                    base.map_or(Value::Null, |b| Value::DateTime(b.time)),
                    opt_lsn(redo.map(|p| p.redo_lsn)),
                    redo.map_or(Value::Null, |p| Value::Guid(p.fork)),
                    opt_lsn(base.map(|b| b.lsn)),
                ]);
            }
        }
        r
    }

    fn sys_credentials(&self, server: &Server) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("credential_id", Int),
            ("name", NVarChar),
            ("credential_identity", NVarChar),
            ("create_date", DateTime),
            ("modify_date", DateTime),
        ]);
        for c in &self.credentials {
            r.rows.push(vec![
                Value::Int(c.id),
                Value::NVarChar(c.name.clone()),
                Value::NVarChar(c.identity.clone()),
                Value::DateTime(server.local(c.created)),
                Value::DateTime(server.local(c.created)),
            ]);
        }
        r
    }

    fn msdb_backupset(&self) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("backup_set_id", Int),
            ("backup_set_uuid", Guid),
            ("media_set_id", Int),
            ("name", NVarChar),
            ("description", NVarChar),
            ("type", NVarChar),
            ("is_copy_only", Bit),
            ("first_lsn", Numeric25),
            ("last_lsn", Numeric25),
            ("checkpoint_lsn", Numeric25),
            ("database_backup_lsn", Numeric25),
            ("differential_base_lsn", Numeric25),
            ("differential_base_guid", Guid),
            ("first_recovery_fork_guid", Guid),
            ("last_recovery_fork_guid", Guid),
            ("fork_point_lsn", Numeric25),
            ("database_guid", Guid),
            ("family_guid", Guid),
            ("backup_start_date", DateTime),
            ("backup_finish_date", DateTime),
            ("time_zone", SmallInt),
            ("recovery_model", NVarChar),
            ("begins_log_chain", Bit),
            ("has_bulk_logged_data", Bit),
            ("has_backup_checksums", Bit),
            ("is_damaged", Bit),
            ("is_force_offline", Bit),
            ("has_incomplete_metadata", Bit),
            ("backup_size", Numeric25),
            ("compressed_backup_size", Numeric25),
            ("compression_algorithm", NVarChar),
            ("database_name", NVarChar),
            ("server_name", NVarChar),
            ("machine_name", NVarChar),
            ("software_major_version", TinyInt),
        ]);
        for h in &self.history {
            let s = &h.header;
            r.rows.push(vec![
                Value::Int(h.backup_set_id),
                Value::Guid(s.backup_set_guid),
                Value::Int(h.media_set_id),
                h.name.clone().map_or(Value::Null, Value::NVarChar),
                h.description.clone().map_or(Value::Null, Value::NVarChar),
                Value::NVarChar(s.backup_type.code().to_string()),
                Value::Bit(s.is_copy_only),
                Value::Numeric25(s.first_lsn),
                Value::Numeric25(s.last_lsn),
                Value::Numeric25(s.checkpoint_lsn),
                Value::Numeric25(s.database_backup_lsn),
                opt_lsn(s.differential_base_lsn),
                s.differential_base_guid.map_or(Value::Null, Value::Guid),
                Value::Guid(s.first_recovery_fork_guid),
                Value::Guid(s.last_recovery_fork_guid),
                opt_lsn(s.fork_point_lsn),
                Value::Guid(s.database_guid),
                Value::Guid(s.family_guid),
                Value::DateTime(s.backup_start_date),
                Value::DateTime(s.backup_finish_date),
                Value::SmallInt(s.time_zone),
                Value::NVarChar(s.recovery_model.clone()),
                Value::Bit(s.begins_log_chain),
                Value::Bit(s.has_bulk_logged_data),
                Value::Bit(s.has_backup_checksums),
                Value::Bit(false),
                Value::Bit(false),
                Value::Bit(false),
                Value::Numeric25(i128::from(h.backup_size)),
                Value::Numeric25(i128::from(h.compressed_backup_size)),
                if s.compressed {
                    Value::NVarChar("MS_XPRESS".into())
                } else {
                    Value::Null
                },
                Value::NVarChar(s.database_name.clone()),
                Value::NVarChar(s.server_name.clone()),
                Value::NVarChar(s.server_name.clone()),
                Value::TinyInt(16),
            ]);
        }
        r
    }

    fn msdb_backupmediafamily(&self) -> Relation {
        use SqlType::*;
        let mut r = Relation::new(&[
            ("media_set_id", Int),
            ("family_sequence_number", TinyInt),
            ("media_family_id", Guid),
            ("media_count", Int),
            ("logical_device_name", NVarChar),
            ("physical_device_name", NVarChar),
            ("device_type", TinyInt),
            ("physical_block_size", Int),
            ("mirror", TinyInt),
        ]);
        for h in &self.history {
            for (i, device) in h.devices.iter().enumerate() {
                r.rows.push(vec![
                    Value::Int(h.media_set_id),
                    Value::TinyInt((i + 1) as u8),
                    Value::Guid(Uuid::new_v4()),
                    Value::Int(1),
                    Value::Null,
                    Value::NVarChar(device.name().to_string()),
                    // backupmediafamily (Transact-SQL): 2 disk, 9 Azure Storage (URL).
                    Value::TinyInt(match device {
                        Device::Disk(_) => 2,
                        Device::Url(_) => 9,
                    }),
                    Value::Int(65536),
                    Value::TinyInt(0),
                ]);
            }
        }
        r
    }
}

/// The INFO messages of a restore: one "Processed n pages" per file.
fn file_messages(db: &str, files: &[FileEntry], payload_len: u64) -> Vec<Reply> {
    files
        .iter()
        .map(|f| Reply::Info {
            number: 4035,
            message: format!(
                "Processed {} pages for database '{db}', file '{}' on file 1.",
                if f.file_type == 'D' {
                    payload_len.div_ceil(8192)
                } else {
                    1
                },
                f.logical_name
            ),
        })
        .collect()
}

fn column_spec(position: usize, column: &ColumnDef) -> Result<ColumnSpec, SqlError> {
    let TypeName { name, args } = &column.ty;
    let ty = match name.as_str() {
        "int" => ColType::Int,
        "bigint" => ColType::BigInt,
        "smallint" => ColType::SmallInt,
        "tinyint" => ColType::TinyInt,
        "bit" => ColType::Bit,
        "nvarchar" | "varchar" | "nchar" | "char" | "sysname" => ColType::NVarChar,
        _ => return Err(errors::unknown_type(position, name)),
    };
    let max_len = match (ty, args.first()) {
        (ColType::NVarChar, Some(n)) => *n,
        (ColType::NVarChar, None) => Some(1),
        _ => None,
    };
    Ok(ColumnSpec {
        name: column.name.clone(),
        ty,
        max_len,
        nullable: column.nullable,
    })
}

/// A literal stored into a column, converted as SQL Server converts it.
fn cell_of(spec: &ColumnSpec, literal: &Literal, table: &str) -> Result<Cell, SqlError> {
    let range = |n: i64| -> bool {
        match spec.ty {
            ColType::Int => i32::try_from(n).is_ok(),
            ColType::SmallInt => i16::try_from(n).is_ok(),
            ColType::TinyInt => u8::try_from(n).is_ok(),
            _ => true,
        }
    };
    match (literal, spec.ty) {
        (Literal::Null, _) => Ok(Cell::Null),
        (Literal::Integer(n), ColType::NVarChar) => Ok(Cell::Text(n.to_string())),
        (Literal::Integer(n), ColType::Bit) => Ok(Cell::Int(i64::from(*n != 0))),
        (Literal::Integer(n), _) if range(*n) => Ok(Cell::Int(*n)),
        (Literal::Integer(n), ty) => Err(SqlError::new(
            8115,
            16,
            format!(
                "Arithmetic overflow error converting expression to data type {}. ({n})",
                ty.name()
            ),
        )),
        (Literal::String { text, .. }, ColType::NVarChar) => {
            if let Some(max) = spec.max_len
                && text.chars().count() > max as usize
            {
                let cut: String = text.chars().take(max as usize).collect();
                return Err(errors::truncated(table, &spec.name, &cut));
            }
            Ok(Cell::Text(text.clone()))
        }
        (Literal::String { text, .. }, ty) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| range(*n))
            .map(Cell::Int)
            .ok_or_else(|| errors::conversion(text, ty.name())),
    }
}

fn cell_value(cell: &Cell, ty: ColType) -> Value {
    match (cell, ty) {
        (Cell::Null, _) => Value::Null,
        (Cell::Text(t), _) => Value::NVarChar(t.clone()),
        (Cell::Int(n), ColType::Int) => Value::Int(*n as i32),
        (Cell::Int(n), ColType::BigInt) => Value::BigInt(*n),
        (Cell::Int(n), ColType::SmallInt) => Value::SmallInt(*n as i16),
        (Cell::Int(n), ColType::TinyInt) => Value::TinyInt(*n as u8),
        (Cell::Int(n), ColType::Bit) => Value::Bit(*n != 0),
        (Cell::Int(n), ColType::NVarChar) => Value::NVarChar(n.to_string()),
    }
}

fn opt_lsn(lsn: Option<Lsn>) -> Value {
    lsn.map_or(Value::Null, Value::Numeric25)
}

// ---------------------------------------------------------------------------
// Result sets of RESTORE HEADERONLY / FILELISTONLY
// ---------------------------------------------------------------------------

/// `RESTORE HEADERONLY`'s columns ("RESTORE Statements - HEADERONLY"), the
/// ones the emulator knows, in the documented order.
fn header_only_rows(decoded: &Decoded, device: Option<&Device>) -> Reply {
    use SqlType::*;
    let h = &decoded.header;
    let backup_size = Content::read(decoded).map_or(decoded.payload_len, |c| c.backup_size());
    let (type_number, type_desc) = match h.backup_type {
        BackupType::Full => (1, "DATABASE"),
        BackupType::Log => (2, "TRANSACTION LOG"),
        BackupType::Differential => (5, "DATABASE DIFFERENTIAL"),
    };
    let columns = [
        ("BackupName", NVarChar),
        ("BackupDescription", NVarChar),
        ("BackupType", SmallInt),
        ("Compressed", TinyInt),
        ("Position", SmallInt),
        ("DeviceType", TinyInt),
        ("ServerName", NVarChar),
        ("DatabaseName", NVarChar),
        ("BackupSize", Numeric25),
        ("FirstLSN", Numeric25),
        ("LastLSN", Numeric25),
        ("CheckpointLSN", Numeric25),
        ("DatabaseBackupLSN", Numeric25),
        ("BackupStartDate", DateTime),
        ("BackupFinishDate", DateTime),
        ("SoftwareVersionMajor", Int),
        ("MachineName", NVarChar),
        ("BindingID", Guid),
        ("RecoveryForkID", Guid),
        ("HasBulkLoggedData", Bit),
        ("IsCopyOnly", Bit),
        ("FirstRecoveryForkID", Guid),
        ("ForkPointLSN", Numeric25),
        ("RecoveryModel", NVarChar),
        ("DifferentialBaseLSN", Numeric25),
        ("DifferentialBaseGUID", Guid),
        ("BackupTypeDescription", NVarChar),
        ("BackupSetGUID", Guid),
        ("CompressedBackupSize", Numeric25),
        ("FamilyGUID", Guid),
        ("BeginsLogChain", Bit),
        ("HasBackupChecksums", Bit),
        ("TimeZone", SmallInt),
    ];
    let row = vec![
        Value::Null,
        Value::Null,
        Value::SmallInt(type_number),
        Value::TinyInt(u8::from(h.compressed)),
        Value::SmallInt(1),
        Value::TinyInt(match device {
            Some(Device::Url(_)) => 9,
            _ => 2,
        }),
        Value::NVarChar(h.server_name.clone()),
        Value::NVarChar(h.database_name.clone()),
        Value::Numeric25(i128::from(backup_size)),
        Value::Numeric25(h.first_lsn),
        Value::Numeric25(h.last_lsn),
        Value::Numeric25(h.checkpoint_lsn),
        Value::Numeric25(h.database_backup_lsn),
        Value::DateTime(h.backup_start_date),
        Value::DateTime(h.backup_finish_date),
        Value::Int(16),
        Value::NVarChar(h.server_name.clone()),
        Value::Guid(h.database_guid),
        Value::Guid(h.last_recovery_fork_guid),
        Value::Bit(h.has_bulk_logged_data),
        Value::Bit(h.is_copy_only),
        Value::Guid(h.first_recovery_fork_guid),
        opt_lsn(h.fork_point_lsn),
        Value::NVarChar(h.recovery_model.clone()),
        opt_lsn(h.differential_base_lsn),
        h.differential_base_guid.map_or(Value::Null, Value::Guid),
        Value::NVarChar(type_desc.into()),
        Value::Guid(h.backup_set_guid),
        Value::Numeric25(i128::from(decoded.payload_len)),
        Value::Guid(h.family_guid),
        Value::Bit(h.begins_log_chain),
        Value::Bit(h.has_backup_checksums),
        Value::SmallInt(h.time_zone),
    ];
    Reply::Rows {
        columns: columns.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
        rows: vec![row],
    }
}

/// `RESTORE FILELISTONLY`'s columns ("RESTORE Statements - FILELISTONLY"):
/// `Size`/`MaxSize` are numeric(20,0) (sent as numeric), `FileId` bigint.
fn file_list_rows(header: &SetHeader) -> Reply {
    use SqlType::*;
    let columns = [
        ("LogicalName", NVarChar),
        ("PhysicalName", NVarChar),
        ("Type", NVarChar),
        ("FileGroupName", NVarChar),
        ("Size", Numeric25),
        ("MaxSize", Numeric25),
        ("FileId", BigInt),
        ("DifferentialBaseLSN", Numeric25),
        ("DifferentialBaseGUID", Guid),
        ("IsReadOnly", Bit),
        ("IsPresent", Bit),
    ];
    let rows = header
        .files
        .iter()
        .map(|f| {
            let data = f.file_type == 'D';
            vec![
                Value::NVarChar(f.logical_name.clone()),
                Value::NVarChar(f.physical_name.clone()),
                Value::NVarChar(f.file_type.to_string()),
                if data {
                    Value::NVarChar("PRIMARY".into())
                } else {
                    Value::Null
                },
                Value::Numeric25(i128::from(f.size_bytes)),
                Value::Numeric25(35_184_372_080_640),
                Value::BigInt(i64::from(f.file_id)),
                opt_lsn(header.differential_base_lsn.filter(|_| data)),
                header
                    .differential_base_guid
                    .filter(|_| data)
                    .map_or(Value::Null, Value::Guid),
                Value::Bit(false),
                Value::Bit(true),
            ]
        })
        .collect();
    Reply::Rows {
        columns: columns.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
        rows,
    }
}

// ---------------------------------------------------------------------------
// Expressions
// ---------------------------------------------------------------------------

struct Relation {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
}

impl Relation {
    fn new(columns: &[(&str, SqlType)]) -> Relation {
        Relation {
            columns: columns.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
            rows: Vec::new(),
        }
    }

    fn index(&self, name: &str) -> Result<usize, SqlError> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| errors::invalid_column(name))
    }
}

/// A value with its type (a NULL has one too).
struct Typed {
    ty: SqlType,
    value: Value,
}

impl Typed {
    fn new(ty: SqlType, value: Value) -> Typed {
        Typed { ty, value }
    }
}

struct EvalContext<'a> {
    state: &'a State,
    server: &'a Server,
    session: &'a Session,
}

fn is_aggregate(expr: &Expr) -> bool {
    match expr {
        Expr::Call { name, .. } => matches!(name.key().as_str(), "count" | "min" | "max"),
        Expr::Cast { expr, .. } => is_aggregate(expr),
        _ => false,
    }
}

fn item_name(item: &super::sql::SelectItem) -> String {
    match (&item.alias, &item.expr) {
        (Some(alias), _) => alias.clone(),
        (None, Expr::Column(c)) => c.clone(),
        _ => String::new(),
    }
}

impl EvalContext<'_> {
    /// Evaluates `expr` on `row` (`None`: outside any row, e.g. a WHERE value).
    fn eval(
        &self,
        expr: &Expr,
        relation: &Relation,
        row: Option<&Vec<Value>>,
    ) -> Result<Typed, SqlError> {
        match expr {
            Expr::Literal(literal) => Ok(literal_value(literal)),
            Expr::Column(name) => {
                let Some(row) = row else {
                    return Err(errors::invalid_column(name));
                };
                let i = relation.index(name)?;
                Ok(Typed::new(relation.columns[i].ty, row[i].clone()))
            }
            Expr::Variable(name) => match name.as_str() {
                "SPID" => Ok(Typed::new(
                    SqlType::SmallInt,
                    Value::SmallInt(self.session.spid as i16),
                )),
                "SERVERNAME" => Ok(Typed::new(
                    SqlType::NVarChar,
                    Value::NVarChar(self.server.settings.server_name.clone()),
                )),
                "VERSION" => Ok(Typed::new(
                    SqlType::NVarChar,
                    Value::NVarChar(format!(
                        "Microsoft SQL Server 2022 - {} (X64) {} on Linux (Strata's emulator)",
                        self.server.settings.product_version, self.server.settings.edition
                    )),
                )),
                _ => Err(SqlError::new(
                    137,
                    15,
                    format!("Must declare the scalar variable \"@@{name}\"."),
                )),
            },
            Expr::Star => Err(errors::syntax("*")),
            Expr::Cast { expr, ty } => {
                let typed = self.eval(expr, relation, row)?;
                cast(typed, ty)
            }
            Expr::Call { name, args } => self.call(name, args, relation, row),
        }
    }

    fn string_arg(
        &self,
        args: &[Expr],
        relation: &Relation,
        row: Option<&Vec<Value>>,
    ) -> Result<Option<String>, SqlError> {
        match args.first() {
            Some(expr) => Ok(match self.eval(expr, relation, row)?.value {
                Value::NVarChar(s) => Some(s),
                Value::Null => None,
                other => Some(display_value(&other)),
            }),
            None => Ok(None),
        }
    }

    fn call(
        &self,
        name: &ObjectName,
        args: &[Expr],
        relation: &Relation,
        row: Option<&Vec<Value>>,
    ) -> Result<Typed, SqlError> {
        let settings = &self.server.settings;
        let key = name.key();
        let now = now_utc();
        match key.as_str() {
            "serverproperty" => {
                let property = self.string_arg(args, relation, row)?.unwrap_or_default();
                let text = |s: &str| {
                    Ok(Typed::new(
                        SqlType::NVarChar,
                        Value::NVarChar(s.to_string()),
                    ))
                };
                match property.to_ascii_lowercase().as_str() {
                    "productversion" => text(&settings.product_version),
                    "productmajorversion" => {
                        text(settings.product_version.split('.').next().unwrap_or("16"))
                    }
                    "edition" => text(&settings.edition),
                    "servername" | "machinename" => text(&settings.server_name),
                    "instancedefaultdatapath" | "instancedefaultlogpath" => {
                        text(&settings.data_path)
                    }
                    "ishadrenabled" => Ok(Typed::new(
                        SqlType::Int,
                        Value::Int(i32::from(!self.state.ag_roles.is_empty())),
                    )),
                    "engineedition" => Ok(Typed::new(SqlType::Int, Value::Int(3))),
                    _ => Ok(Typed::new(SqlType::NVarChar, Value::Null)),
                }
            }
            "is_srvrolemember" => {
                let role = self.string_arg(args, relation, row)?.unwrap_or_default();
                let member = role.eq_ignore_ascii_case("sysadmin") && settings.sysadmin;
                Ok(Typed::new(SqlType::Int, Value::Int(i32::from(member))))
            }
            "datepart" => match args {
                [Expr::Column(part), Expr::Call { name, args: inner }]
                    if part.eq_ignore_ascii_case("tzoffset")
                        && name.key() == "sysdatetimeoffset"
                        && inner.is_empty() =>
                {
                    Ok(Typed::new(
                        SqlType::Int,
                        Value::Int(settings.utc_offset_minutes),
                    ))
                }
                _ => Err(errors::syntax("DATEPART")),
            },
            "sysutcdatetime" => Ok(Typed::new(SqlType::DateTime2, Value::DateTime2(now))),
            "sysdatetime" => Ok(Typed::new(
                SqlType::DateTime2,
                Value::DateTime2(self.server.local(now)),
            )),
            "getutcdate" => Ok(Typed::new(SqlType::DateTime, Value::DateTime(now))),
            "getdate" => Ok(Typed::new(
                SqlType::DateTime,
                Value::DateTime(self.server.local(now)),
            )),
            "db_id" => {
                let id = match self.string_arg(args, relation, row)? {
                    Some(name) => self.state.database(&name).map(|d| d.id),
                    None => Some(1),
                };
                Ok(Typed::new(SqlType::Int, id.map_or(Value::Null, Value::Int)))
            }
            "db_name" => {
                let id = match args.first() {
                    Some(expr) => match self.eval(expr, relation, row)?.value {
                        Value::Int(n) => Some(n),
                        _ => None,
                    },
                    None => Some(1),
                };
                let name = id.and_then(|id| self.state.databases.iter().find(|d| d.id == id));
                Ok(Typed::new(
                    SqlType::NVarChar,
                    name.map_or(Value::Null, |d| Value::NVarChar(d.name.clone())),
                ))
            }
            "sys.fn_hadr_backup_is_preferred_replica" | "sys.fn_hadr_is_primary_replica" => {
                let db = self.string_arg(args, relation, row)?.unwrap_or_default();
                let value = match (self.state.database(&db), self.state.ag_role(&db)) {
                    (None, _) => Value::Null,
                    (Some(_), Some(role)) if key == "sys.fn_hadr_is_primary_replica" => {
                        Value::Bit(role.primary)
                    }
                    (Some(_), Some(role)) => Value::Bit(role.preferred),
                    // Not in an availability group: every backup is "preferred",
                    // and there is no primary replica.
                    (Some(_), None) => Value::Bit(key == "sys.fn_hadr_backup_is_preferred_replica"),
                };
                Ok(Typed::new(SqlType::Bit, value))
            }
            "count" | "min" | "max" => Err(errors::syntax(&name.to_string())),
            _ => Err(errors::not_a_function(&name.to_string())),
        }
    }

    /// An aggregate select item over `rows` (constants are allowed beside).
    fn aggregate(
        &self,
        expr: &Expr,
        relation: &Relation,
        rows: &[&Vec<Value>],
    ) -> Result<Typed, SqlError> {
        match expr {
            Expr::Call { name, args } if is_aggregate(expr) => {
                match (name.key().as_str(), args.as_slice()) {
                    ("count", [Expr::Star]) => {
                        Ok(Typed::new(SqlType::Int, Value::Int(rows.len() as i32)))
                    }
                    ("count", [arg]) => {
                        let mut n = 0;
                        for row in rows {
                            if self.eval(arg, relation, Some(row))?.value != Value::Null {
                                n += 1;
                            }
                        }
                        Ok(Typed::new(SqlType::Int, Value::Int(n)))
                    }
                    (f @ ("min" | "max"), [arg]) => {
                        let null_row = vec![Value::Null; relation.columns.len()];
                        let ty = self.eval(arg, relation, Some(&null_row))?.ty;
                        let mut best = Value::Null;
                        for row in rows {
                            let v = self.eval(arg, relation, Some(row))?.value;
                            if v == Value::Null {
                                continue;
                            }
                            let better = best == Value::Null || {
                                let o = compare_values(&v, &best);
                                if f == "min" { o.is_lt() } else { o.is_gt() }
                            };
                            if better {
                                best = v;
                            }
                        }
                        Ok(Typed::new(ty, best))
                    }
                    _ => Err(errors::syntax(&name.to_string())),
                }
            }
            Expr::Cast { expr, ty } if is_aggregate(expr) => {
                cast(self.aggregate(expr, relation, rows)?, ty)
            }
            Expr::Column(column) => Err(errors::not_aggregated(column)),
            other => self.eval(other, relation, None),
        }
    }
}

fn literal_value(literal: &Literal) -> Typed {
    match literal {
        Literal::Null => Typed::new(SqlType::Int, Value::Null),
        Literal::Integer(n) => match i32::try_from(*n) {
            Ok(n) => Typed::new(SqlType::Int, Value::Int(n)),
            Err(_) => Typed::new(SqlType::BigInt, Value::BigInt(*n)),
        },
        Literal::String { text, .. } => {
            Typed::new(SqlType::NVarChar, Value::NVarChar(text.clone()))
        }
    }
}

fn as_integer(value: &Value) -> Option<i128> {
    match value {
        Value::Int(n) => Some(i128::from(*n)),
        Value::BigInt(n) => Some(i128::from(*n)),
        Value::SmallInt(n) => Some(i128::from(*n)),
        Value::TinyInt(n) => Some(i128::from(*n)),
        Value::Bit(b) => Some(i128::from(*b)),
        Value::Numeric25(n) => Some(*n),
        Value::NVarChar(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn display_value(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::NVarChar(s) => s.clone(),
        Value::Guid(g) => g.to_string().to_uppercase(),
        Value::DateTime(t) | Value::DateTime2(t) => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        Value::Bit(b) => u8::from(*b).to_string(),
        other => as_integer(other).map(|n| n.to_string()).unwrap_or_default(),
    }
}

/// `CAST(value AS type)` for the types the emulator sends.
fn cast(typed: Typed, ty: &TypeName) -> Result<Typed, SqlError> {
    let target = match ty.name.as_str() {
        "int" => SqlType::Int,
        "bigint" => SqlType::BigInt,
        "smallint" => SqlType::SmallInt,
        "tinyint" => SqlType::TinyInt,
        "bit" => SqlType::Bit,
        "nvarchar" | "varchar" | "sysname" | "nchar" | "char" => SqlType::NVarChar,
        "numeric" | "decimal" => SqlType::Numeric25,
        "uniqueidentifier" => SqlType::Guid,
        "datetime" => SqlType::DateTime,
        "datetime2" => SqlType::DateTime2,
        other => return Err(errors::unknown_type(1, other)),
    };
    if typed.value == Value::Null {
        return Ok(Typed::new(target, Value::Null));
    }
    let failed = || errors::conversion(&display_value(&typed.value), &ty.name);
    let n = || as_integer(&typed.value).ok_or_else(failed);
    let value = match target {
        SqlType::Int => Value::Int(i32::try_from(n()?).map_err(|_| failed())?),
        SqlType::BigInt => Value::BigInt(i64::try_from(n()?).map_err(|_| failed())?),
        SqlType::SmallInt => Value::SmallInt(i16::try_from(n()?).map_err(|_| failed())?),
        SqlType::TinyInt => Value::TinyInt(u8::try_from(n()?).map_err(|_| failed())?),
        SqlType::Bit => Value::Bit(n()? != 0),
        SqlType::Numeric25 => Value::Numeric25(n()?),
        SqlType::NVarChar => {
            let text = display_value(&typed.value);
            match ty.args.first() {
                Some(Some(max)) => Value::NVarChar(text.chars().take(*max as usize).collect()),
                _ => Value::NVarChar(text),
            }
        }
        SqlType::Guid => match &typed.value {
            Value::Guid(g) => Value::Guid(*g),
            Value::NVarChar(s) => Value::Guid(Uuid::parse_str(s.trim()).map_err(|_| failed())?),
            _ => return Err(failed()),
        },
        SqlType::DateTime | SqlType::DateTime2 => {
            let t = match &typed.value {
                Value::DateTime(t) | Value::DateTime2(t) => *t,
                Value::NVarChar(s) => parse_stop_at(s)?,
                _ => return Err(failed()),
            };
            if target == SqlType::DateTime {
                Value::DateTime(t)
            } else {
                Value::DateTime2(t)
            }
        }
    };
    Ok(Typed::new(target, value))
}

/// `=` as SQL Server compares: numbers by value, strings case-insensitively
/// (the default collation), GUIDs against their text; NULL equals nothing.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::NVarChar(x), Value::NVarChar(y)) => x.to_lowercase() == y.to_lowercase(),
        (Value::Guid(g), Value::NVarChar(s)) | (Value::NVarChar(s), Value::Guid(g)) => {
            Uuid::parse_str(s.trim()).ok() == Some(*g)
        }
        (Value::Guid(x), Value::Guid(y)) => x == y,
        (Value::DateTime(x) | Value::DateTime2(x), Value::DateTime(y) | Value::DateTime2(y)) => {
            x == y
        }
        _ => match (as_integer(a), as_integer(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// Ordering for ORDER BY and MIN/MAX: NULL first, as SQL Server sorts.
fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::NVarChar(x), Value::NVarChar(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Value::Guid(x), Value::Guid(y)) => x.cmp(y),
        (Value::DateTime(x) | Value::DateTime2(x), Value::DateTime(y) | Value::DateTime2(y)) => {
            x.cmp(y)
        }
        _ => as_integer(a).cmp(&as_integer(b)),
    }
}

/// A session for batches run without a connection (`Emulator::sql`).
pub fn internal_session(login: &str) -> Session {
    Session {
        spid: 50,
        login: login.to_string(),
    }
}

#[cfg(test)]
mod tests;

//! Backup history rows: `msdb.dbo.backupset` as the plugin reads and stores it.
//!
//! A [`BackupSet`] is one row of `msdb.dbo.backupset` (SQL Server's
//! "backupset (Transact-SQL)" reference) with the columns the chain rules
//! use, under the table's own column names. It comes from three places and
//! reads the same from each:
//!
//! - the row SQL Server wrote after a backup the plugin took (statement 10
//!   of `tsql.rs`); the plugin keeps it in the manifest's `engine_meta` as
//!   `{"backup_set": {...}}` ([`crate::chain::engine_meta`]);
//! - that manifest, read back for planning;
//! - a history export a DBA hands to `strata sqlserver plan --history`
//!   ([`read_history`]): a JSON array of rows as `FOR JSON PATH`,
//!   `Invoke-DbaQuery ... | ConvertTo-Json` or `Invoke-Sqlcmd` produce, or an
//!   object holding them under `value` or `rows`.
//!
//! # Reading a row
//!
//! - Column names are matched without regard to case; columns the plugin
//!   does not use (`SELECT *`) are ignored. A `null` reads like a missing
//!   column (`FOR JSON PATH` leaves NULL columns out).
//! - LSNs (`numeric(25,0)`) are read exactly, whether the export wrote them
//!   as JSON numbers (`FOR JSON`), strings, or in the `VVVVVVVV:BBBBBBBB:SSSS`
//!   form: a 25-digit number does not fit a double, so the row is read from
//!   its raw text, never through `f64`. A number in exponent or fraction
//!   form lost digits before Strata saw it and is refused.
//! - Booleans (`bit`) are `true`/`false` or `0`/`1`, as numbers or strings.
//! - GUIDs (`uniqueidentifier`) are read in any case, with or without braces.
//! - Dates are the server's local time, `2026-11-30T22:15:00` or
//!   `2026-11-30 22:15:00.123`; the `/Date(...)/` form of Windows
//!   PowerShell 5.1 is refused, because it was converted with the exporting
//!   machine's time zone.
//! - `time_zone` is the server's offset from UTC in 15-minute units at the
//!   start of the backup; `127` means unknown.
//!
//! Older exports lack some columns (`differential_base_guid`, the recovery
//! fork GUIDs, `time_zone`, ...): those fields are `Option`s and the chain
//! rules fall back to the LSN relations ([`crate::chain`]). Required are
//! `type`, `first_lsn`, `last_lsn`, `backup_start_date`,
//! `backup_finish_date` and `database_name`.
//!
//! Written back ([`serde::Serialize`]), a set uses the same column names,
//! LSNs as decimal strings, GUIDs as lowercase hyphenated text and dates
//! as `YYYY-MM-DDTHH:MM:SS[.fff]`, and reads back equal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use strata_core::catalog::manifest::{BackupKind, Position};
use strata_core::{Error, Result};
use uuid::Uuid;

use crate::lsn;

/// `backupset.type`: what a backup set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackupType {
    /// `D`: a full database backup.
    #[serde(rename = "D")]
    Database,
    /// `I`: a differential database backup.
    #[serde(rename = "I")]
    Differential,
    /// `L`: a transaction log backup.
    #[serde(rename = "L")]
    Log,
    /// `F`: a file or filegroup backup.
    #[serde(rename = "F")]
    File,
    /// `G`: a differential file backup.
    #[serde(rename = "G")]
    DifferentialFile,
    /// `P`: a partial backup.
    #[serde(rename = "P")]
    Partial,
    /// `Q`: a differential partial backup.
    #[serde(rename = "Q")]
    DifferentialPartial,
}

impl BackupType {
    /// The `backupset.type` letter.
    pub fn code(self) -> char {
        match self {
            BackupType::Database => 'D',
            BackupType::Differential => 'I',
            BackupType::Log => 'L',
            BackupType::File => 'F',
            BackupType::DifferentialFile => 'G',
            BackupType::Partial => 'P',
            BackupType::DifferentialPartial => 'Q',
        }
    }

    /// The type of letter `code` (any case).
    pub fn from_code(code: &str) -> Option<BackupType> {
        Some(match code.trim().to_ascii_uppercase().as_str() {
            "D" => BackupType::Database,
            "I" => BackupType::Differential,
            "L" => BackupType::Log,
            "F" => BackupType::File,
            "G" => BackupType::DifferentialFile,
            "P" => BackupType::Partial,
            "Q" => BackupType::DifferentialPartial,
            _ => return None,
        })
    }

    /// The Strata kind of a database or log backup; `None` for the file
    /// and partial backups (`F`, `G`, `P`, `Q`), which Strata neither
    /// takes nor restores.
    pub fn kind(self) -> Option<BackupKind> {
        match self {
            BackupType::Database => Some(BackupKind::Full),
            BackupType::Differential => Some(BackupKind::Diff),
            BackupType::Log => Some(BackupKind::Log),
            _ => None,
        }
    }

    /// What SQL Server calls it (`RESTORE HEADERONLY`'s
    /// `BackupTypeDescription`, in lowercase).
    pub fn description(self) -> &'static str {
        match self {
            BackupType::Database => "database",
            BackupType::Differential => "database differential",
            BackupType::Log => "transaction log",
            BackupType::File => "file or filegroup",
            BackupType::DifferentialFile => "file differential",
            BackupType::Partial => "partial",
            BackupType::DifferentialPartial => "partial differential",
        }
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// `time_zone` value meaning "unknown".
pub const TIME_ZONE_UNKNOWN: i16 = 127;

/// One row of `msdb.dbo.backupset`: the columns the plugin uses, under
/// their own names. See the [module documentation](self) for how rows are
/// read and written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRow")]
pub struct BackupSet {
    /// The backup set's global id; what a differential's
    /// `differential_base_guid` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_set_uuid: Option<Uuid>,
    /// `type`: full (`D`), differential (`I`), log (`L`), or a file or
    /// partial backup.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// A copy-only backup: a copy-only full is never a differential base, a
    /// copy-only log is not part of the log chain. Absent: `false`.
    pub is_copy_only: bool,
    /// LSN of the first log record in the set.
    pub first_lsn: Position,
    /// LSN of the next log record after the set (exclusive end).
    pub last_lsn: Position,
    /// LSN where redo starts; a differential's `database_backup_lsn`
    /// equals its full's `checkpoint_lsn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<Position>,
    /// `checkpoint_lsn` of the most recent full backup when this one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_backup_lsn: Option<Position>,
    /// A single-based differential's base LSN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differential_base_lsn: Option<Position>,
    /// A single-based differential's base: the full's `backup_set_uuid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differential_base_guid: Option<Uuid>,
    /// The recovery fork at the start of the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_recovery_fork_guid: Option<Uuid>,
    /// The recovery fork at the end of the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_recovery_fork_guid: Option<Uuid>,
    /// Where the last fork branched from the first, when they differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork_point_lsn: Option<Position>,
    /// The database's binding id; changes when the database is restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_guid: Option<Uuid>,
    /// The id of the original database; survives restores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_guid: Option<Uuid>,
    /// When the backup started, in the server's local time.
    pub backup_start_date: NaiveDateTime,
    /// When the backup finished, in the server's local time.
    pub backup_finish_date: NaiveDateTime,
    /// The server's offset from UTC at the start, in 15-minute units east
    /// of UTC; `127` (or absent): unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<i16>,
    /// `FULL`, `BULK-LOGGED` or `SIMPLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_model: Option<String>,
    /// The first log backup of a chain. Absent: `false`.
    pub begins_log_chain: bool,
    /// The log holds minimally logged changes: no `STOPAT` inside it.
    /// Absent: `false`.
    pub has_bulk_logged_data: bool,
    /// The backup was taken `WITH CHECKSUM`. Absent: `false`.
    pub has_backup_checksums: bool,
    /// SQL Server marked the set damaged. Absent: `false`.
    pub is_damaged: bool,
    /// Bytes of the backup set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_size: Option<u64>,
    /// Bytes written after SQL Server's compression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed_backup_size: Option<u64>,
    /// The database's name when it was backed up.
    pub database_name: String,
    /// The server (`host\instance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `msdb.dbo.backupmediafamily.physical_device_name`, when the export
    /// joined it (one row per device of a striped backup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical_device_name: Option<String>,
}

impl BackupSet {
    /// The server's offset from UTC during this backup: `time_zone`, or
    /// `assumed` when the row does not know it (`127` or an older export
    /// without the column). Fails with
    /// [`ErrorKind::Config`](strata_core::ErrorKind::Config) naming the
    /// backup when neither is known, or when `time_zone` is out of range.
    pub fn utc_offset(&self, assumed: Option<FixedOffset>) -> Result<FixedOffset> {
        match self.time_zone.filter(|tz| *tz != TIME_ZONE_UNKNOWN) {
            Some(units) => FixedOffset::east_opt(i32::from(units) * 15 * 60)
                .filter(|_| (-14 * 4..=14 * 4).contains(&units))
                .ok_or_else(|| {
                    Error::config(format!(
                        "{}: time_zone {units} is not an offset from UTC in 15-minute units",
                        self.describe()
                    ))
                }),
            None => assumed.ok_or_else(|| {
                Error::config(format!(
                    "{}: the row does not say the server's time zone (time_zone is unknown), \
                     so its local times cannot be placed in UTC",
                    self.describe()
                ))
                .hint("give the server's UTC offset explicitly (for example --utc-offset +08:00)")
            }),
        }
    }

    /// `backup_start_date` in UTC (local time minus the offset, see
    /// [`BackupSet::utc_offset`]).
    pub fn start_utc(&self, assumed: Option<FixedOffset>) -> Result<DateTime<Utc>> {
        Ok(local_to_utc(
            self.backup_start_date,
            self.utc_offset(assumed)?,
        ))
    }

    /// `backup_finish_date` in UTC. SQL Server records one offset, taken at
    /// the start: a backup that ran across a daylight-saving change is an
    /// hour off at its finish.
    pub fn finish_utc(&self, assumed: Option<FixedOffset>) -> Result<DateTime<Utc>> {
        Ok(local_to_utc(
            self.backup_finish_date,
            self.utc_offset(assumed)?,
        ))
    }

    /// `t` in the server's local time, as `STOPAT` takes it ("RESTORE
    /// Statements - Arguments": the time is the server's), with this
    /// backup's offset.
    pub fn to_server_local(
        &self,
        t: DateTime<Utc>,
        assumed: Option<FixedOffset>,
    ) -> Result<NaiveDateTime> {
        Ok(t.with_timezone(&self.utc_offset(assumed)?).naive_local())
    }

    /// The Strata kind, `None` for file and partial backups.
    pub fn kind(&self) -> Option<BackupKind> {
        self.backup_type.kind()
    }

    /// Whether the set runs from one recovery fork into another (the first
    /// log backup after a restore `WITH RECOVERY`).
    pub fn spans_forks(&self) -> bool {
        matches!(
            (self.first_recovery_fork_guid, self.last_recovery_fork_guid),
            (Some(first), Some(last)) if first != last
        )
    }

    /// The set for an operator: `transaction log backup 6f9619ff-... of
    /// database sales started 2026-11-30 22:15:00`.
    pub fn describe(&self) -> String {
        let copy = if self.is_copy_only { "copy-only " } else { "" };
        let id = self
            .backup_set_uuid
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        format!(
            "{copy}{} backup{id} of database {} started {}",
            self.backup_type,
            self.database_name,
            self.backup_start_date.format("%Y-%m-%d %H:%M:%S")
        )
    }
}

/// `local` at `offset`, in UTC.
fn local_to_utc(local: NaiveDateTime, offset: FixedOffset) -> DateTime<Utc> {
    (local - offset).and_utc()
}

/// Formats a server-local time as `STOPAT` and the catalog show it:
/// `2026-12-01T10:00:00` or `2026-12-01T10:00:00.123`.
pub fn local_text(t: NaiveDateTime) -> String {
    if t.and_utc().timestamp_subsec_millis() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
    }
}

/// Reads a history export: the `msdb.dbo.backupset` rows in `path`. The
/// file is UTF-8 (with or without a byte-order mark) or UTF-16 with one
/// (what Windows PowerShell's `Out-File` writes). See [`parse_history`].
///
/// Errors: [`ErrorKind::Io`](strata_core::ErrorKind::Io) when the file
/// cannot be read; [`ErrorKind::Config`](strata_core::ErrorKind::Config)
/// naming the file, the row and the column when a row is not readable.
pub fn read_history(path: &Path) -> Result<Vec<BackupSet>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io_doing_at("cannot read", path, e))?;
    let origin = path.display().to_string();
    let text = decode_text(&bytes).map_err(|why| {
        Error::config(format!("{origin}: {why}"))
            .hint("save the export as UTF-8 (Out-File -Encoding utf8)")
    })?;
    parse_history(&text, &origin)
}

/// Parses a history export: a JSON array of rows, one row object (what
/// `ConvertTo-Json` writes for a single row), or an object holding the
/// array under `value` or `rows`. `origin` names the input in errors.
pub fn parse_history(text: &str, origin: &str) -> Result<Vec<BackupSet>> {
    let hint = "export the rows of msdb.dbo.backupset with their own column names, for example \
                `SELECT s.*, f.physical_device_name FROM msdb.dbo.backupset s JOIN msdb.dbo.backupmediafamily f \
                ON f.media_set_id = s.media_set_id FOR JSON PATH`";
    let not_json = |e: serde_json::Error| {
        Error::config(format!("{origin} is not a JSON backup history: {e}")).hint(hint)
    };
    let trimmed = text.trim_start();
    let rows: Vec<Box<RawValue>> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(not_json)?
    } else if trimmed.starts_with('{') {
        let object: RawRow = serde_json::from_str(trimmed).map_err(not_json)?;
        let wrapped = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("value") || k.eq_ignore_ascii_case("rows"));
        match wrapped {
            Some((_, rows)) => serde_json::from_str(rows.get()).map_err(not_json)?,
            None => vec![RawValue::from_string(trimmed.trim_end().to_owned()).map_err(not_json)?],
        }
    } else {
        return Err(Error::config(format!(
            "{origin} is not a JSON backup history: it holds neither an array of rows nor an object"
        ))
        .hint(hint));
    };
    let count = rows.len();
    rows.iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = || format!("{origin}: row {} of {count}", i + 1);
            let row: RawRow = serde_json::from_str(raw.get()).map_err(|e| {
                Error::config(format!("{}: not a row object: {e}", at())).hint(hint)
            })?;
            let set = BackupSet::try_from(row)
                .map_err(|e| Error::config(format!("{}: {e}", at())).hint(e.hint()))?;
            // What msdb never records: a row saying it is not a backup set.
            let impossible = if set.last_lsn < set.first_lsn {
                Some(format!(
                    "last_lsn {} is before first_lsn {}",
                    set.last_lsn, set.first_lsn
                ))
            } else if set.backup_finish_date < set.backup_start_date {
                Some(format!(
                    "backup_finish_date {} is before backup_start_date {}",
                    set.backup_finish_date, set.backup_start_date
                ))
            } else {
                None
            };
            match impossible {
                Some(why) => Err(Error::config(format!(
                    "{}: {why}: SQL Server never records such a backup set",
                    at()
                ))
                .hint(
                    "export the rows again from msdb.dbo.backupset; an edited row is not a history",
                )),
                None => Ok(set),
            }
        })
        .collect()
}

/// The text of an export: UTF-8, UTF-8 with a byte-order mark, or UTF-16
/// (either order) with one.
fn decode_text(bytes: &[u8]) -> std::result::Result<String, String> {
    let utf16 = |bytes: &[u8], to_unit: fn([u8; 2]) -> u16| {
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| to_unit([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        String::from_utf16(&units).map_err(|_| "the UTF-16 text is malformed".to_owned())
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| "the text is not valid UTF-8".to_owned())
        }
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ => String::from_utf8(bytes.to_vec())
            .map_err(|_| "the text is neither UTF-8 nor UTF-16 with a byte-order mark".to_owned()),
    }
}

/// A row as its columns' raw JSON text: LSNs are read from the digits
/// themselves (see the module documentation).
type RawRow = BTreeMap<String, Box<RawValue>>;

/// A column that could not be read.
#[derive(Debug)]
pub struct ColumnError {
    column: &'static str,
    message: String,
}

impl ColumnError {
    fn hint(&self) -> &'static str {
        match self.column {
            "first_lsn"
            | "last_lsn"
            | "checkpoint_lsn"
            | "database_backup_lsn"
            | "differential_base_lsn"
            | "fork_point_lsn" => {
                "export LSNs exactly: FOR JSON writes numeric(25,0) as exact numbers; \
                 elsewhere select them as text (CAST(first_lsn AS varchar(25)))"
            }
            "backup_start_date" | "backup_finish_date" => {
                "export dates as text in the server's local time, for example \
                 CONVERT(varchar(23), backup_start_date, 126) or FOR JSON PATH"
            }
            _ => "export the rows of msdb.dbo.backupset with their own column names and types",
        }
    }
}

impl fmt::Display for ColumnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ColumnError {}

/// A row's columns by lowercase name, `null`s left out.
struct Columns(BTreeMap<String, Box<RawValue>>);

impl Columns {
    fn new(row: RawRow) -> Self {
        Columns(
            row.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(_, v)| v.get().trim() != "null")
                .collect(),
        )
    }

    fn optional<T>(
        &self,
        column: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<Option<T>, ColumnError> {
        self.0
            .get(column)
            .map(|raw| parse(raw.get().trim()))
            .transpose()
            .map_err(|message| ColumnError { column, message })
    }

    fn required<T>(
        &self,
        column: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<T, ColumnError> {
        self.optional(column, parse)?.ok_or(ColumnError {
            column,
            message: "missing (the rules need it)".to_owned(),
        })
    }

    fn flag(&self, column: &'static str) -> std::result::Result<bool, ColumnError> {
        Ok(self.optional(column, boolean)?.unwrap_or(false))
    }
}

impl TryFrom<RawRow> for BackupSet {
    type Error = ColumnError;

    fn try_from(row: RawRow) -> std::result::Result<Self, ColumnError> {
        let c = Columns::new(row);
        let backup_type = c.required("type", |raw| {
            let code = string(raw)?;
            BackupType::from_code(&code)
                .ok_or_else(|| format!("`{code}` is not a backup set type (D, I, L, F, G, P or Q)"))
        })?;
        let time_zone = c.optional("time_zone", |raw| {
            let n = integer(raw)?;
            i16::try_from(n).map_err(|_| format!("`{raw}` is not a smallint"))
        })?;
        Ok(BackupSet {
            backup_set_uuid: c.optional("backup_set_uuid", guid)?,
            backup_type,
            is_copy_only: c.flag("is_copy_only")?,
            first_lsn: c.required("first_lsn", lsn_value)?,
            last_lsn: c.required("last_lsn", lsn_value)?,
            checkpoint_lsn: c.optional("checkpoint_lsn", lsn_value)?,
            database_backup_lsn: c.optional("database_backup_lsn", lsn_value)?,
            differential_base_lsn: c.optional("differential_base_lsn", lsn_value)?,
            differential_base_guid: c.optional("differential_base_guid", guid)?,
            first_recovery_fork_guid: c.optional("first_recovery_fork_guid", guid)?,
            last_recovery_fork_guid: c.optional("last_recovery_fork_guid", guid)?,
            fork_point_lsn: c.optional("fork_point_lsn", lsn_value)?,
            database_guid: c.optional("database_guid", guid)?,
            family_guid: c.optional("family_guid", guid)?,
            backup_start_date: c.required("backup_start_date", local_time)?,
            backup_finish_date: c.required("backup_finish_date", local_time)?,
            time_zone,
            recovery_model: c.optional("recovery_model", string)?,
            begins_log_chain: c.flag("begins_log_chain")?,
            has_bulk_logged_data: c.flag("has_bulk_logged_data")?,
            has_backup_checksums: c.flag("has_backup_checksums")?,
            is_damaged: c.flag("is_damaged")?,
            backup_size: c.optional("backup_size", size)?,
            compressed_backup_size: c.optional("compressed_backup_size", size)?,
            database_name: c.required("database_name", string)?,
            server_name: c.optional("server_name", string)?,
            physical_device_name: c.optional("physical_device_name", string)?,
        })
    }
}

/// A JSON string's content, or the text of a number.
fn string(raw: &str) -> std::result::Result<String, String> {
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|e| format!("`{raw}` is not a string: {e}"))
    } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(raw.to_owned())
    } else {
        Err(format!("`{raw}` is not a string"))
    }
}

/// An exact LSN: a JSON integer, or a string in either LSN notation.
fn lsn_value(raw: &str) -> std::result::Result<Position, String> {
    if raw.starts_with('"') {
        let text = string(raw)?;
        return lsn::parse(&text).map_err(|e| e.to_string());
    }
    if raw.contains(['.', 'e', 'E']) {
        return Err(format!(
            "`{raw}` was written as a floating-point number, which does not hold the 25 digits \
             of an LSN exactly"
        ));
    }
    lsn::parse_decimal(raw).map_err(|e| e.to_string())
}

/// A `bit`: `true`/`false` or `0`/`1`, as JSON literals, numbers or strings.
fn boolean(raw: &str) -> std::result::Result<bool, String> {
    let text = if raw.starts_with('"') {
        string(raw)?
    } else {
        raw.to_owned()
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("`{raw}` is not a bit (true, false, 0 or 1)")),
    }
}

/// A `uniqueidentifier` in any case, with or without braces; Windows
/// PowerShell writes one as `{"Guid": "..."}`.
fn guid(raw: &str) -> std::result::Result<Uuid, String> {
    if raw.starts_with('{') {
        let object: RawRow =
            serde_json::from_str(raw).map_err(|e| format!("`{raw}` is not a GUID: {e}"))?;
        let inner = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("guid"))
            .ok_or_else(|| format!("`{raw}` is not a GUID"))?;
        return guid(inner.1.get().trim());
    }
    let text = string(raw)?;
    let bare = text.trim().trim_start_matches('{').trim_end_matches('}');
    Uuid::parse_str(bare).map_err(|_| format!("`{text}` is not a GUID"))
}

/// A server-local `datetime`: `YYYY-MM-DD[T ]HH:MM:SS[.fff]` (an offset
/// suffix, if an export added one, is dropped: the wall-clock time is what
/// SQL Server recorded).
fn local_time(raw: &str) -> std::result::Result<NaiveDateTime, String> {
    let text = string(raw)?;
    let text = text.trim();
    if text.contains("/Date(") {
        return Err(format!(
            "`{text}` is a .NET JSON date, which Windows PowerShell converted with the exporting \
             machine's time zone; the server's local time cannot be recovered from it"
        ));
    }
    let parsed = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .into_iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|t| t.naive_local()))
        .ok_or_else(|| {
            format!("`{text}` is not a date and time such as 2026-11-30T22:15:00 or 2026-11-30 22:15:00.123")
        })?;
    // msdb's `datetime` runs from 1753 to 9999. A year outside was not
    // written by SQL Server, and near chrono's limits placing it in UTC
    // overflowed and panicked. Found by fuzzing
    // (fuzz/corpus/mssql_history/year-out-of-range).
    if !(1753..=9999).contains(&parsed.year()) {
        return Err(format!(
            "`{text}` is outside the range of SQL Server's datetime (years 1753 to 9999)"
        ));
    }
    Ok(parsed)
}

/// An integer, as a JSON number or string.
fn integer(raw: &str) -> std::result::Result<i64, String> {
    string(raw)?
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("`{raw}` is not an integer"))
}

/// A byte count (`numeric(20,0)`): an exact integer, or a number in another
/// form rounded (sizes are informative; nothing is computed from them).
fn size(raw: &str) -> std::result::Result<u64, String> {
    let text = string(raw)?;
    let text = text.trim();
    text.parse::<u64>()
        .or_else(|_| {
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v.round() as u64)
                .ok_or(())
        })
        .map_err(|_| format!("`{raw}` is not a byte count"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::NaiveDate;

    /// A full backup row in the `FOR JSON PATH` shape, `extra` columns merged in.
    pub(crate) fn row_json(extra: &str) -> String {
        let base = r#""backup_set_uuid":"E2B2C3D4-0000-4000-8000-000000000001","type":"D",
            "is_copy_only":false,"first_lsn":34000000012300001,"last_lsn":34000000045600001,
            "checkpoint_lsn":34000000012300001,"database_backup_lsn":0,
            "database_guid":"{5A1B2C3D-0000-4000-8000-0000000000AA}",
            "backup_start_date":"2026-11-30T10:00:00","backup_finish_date":"2026-11-30 10:05:00.123",
            "time_zone":32,"recovery_model":"FULL","begins_log_chain":0,"has_bulk_logged_data":false,
            "has_backup_checksums":1,"backup_size":123456789,"compressed_backup_size":23456789,
            "database_name":"sales","server_name":"SQL01\\PROD""#;
        if extra.is_empty() {
            format!("{{{base}}}")
        } else {
            format!("{{{base},{extra}}}")
        }
    }

    /// Found by fuzzing (fuzz/corpus/mssql_history/year-out-of-range): a
    /// date near chrono's limits was read, and placing it in UTC panicked.
    #[test]
    fn dates_outside_sql_servers_datetime_are_refused() {
        let row = row_json("");
        for (date, year) in [
            ("-262143-01-01T00:00:00", "-262143"),
            ("0001-01-01T00:00:00", "0001"),
            ("1752-12-31T23:59:59", "1752"),
        ] {
            let text = row.replace("2026-11-30T10:00:00", date);
            assert_ne!(text, row);
            let err = parse_history(&text, "h.json").expect_err(date);
            assert_eq!(err.kind(), strata_core::ErrorKind::Config, "{err}");
            assert!(
                err.to_string().contains("column backup_start_date"),
                "{err}"
            );
            assert!(err.to_string().contains(year), "{err}");
            assert!(err.to_string().contains("years 1753 to 9999"), "{err}");
        }
        for date in ["1753-01-01T00:00:00", "9999-12-31T23:59:59.997"] {
            let text = row
                .replace("2026-11-30T10:00:00", date)
                .replace("2026-11-30 10:05:00.123", date);
            let sets = parse_history(&format!("[{text}]"), "h.json").unwrap();
            let assumed = FixedOffset::west_opt(12 * 3600);
            assert!(sets[0].start_utc(assumed).is_ok(), "{date}");
        }
    }

    #[test]
    fn a_for_json_row_reads_every_column() {
        let sets = parse_history(&format!("[{}]", row_json("")), "h.json").unwrap();
        let set = &sets[0];
        assert_eq!(set.backup_type, BackupType::Database);
        assert_eq!(
            set.backup_set_uuid.unwrap().to_string(),
            "e2b2c3d4-0000-4000-8000-000000000001"
        );
        assert_eq!(
            set.database_guid.unwrap().to_string(),
            "5a1b2c3d-0000-4000-8000-0000000000aa"
        );
        assert_eq!(set.first_lsn, Position(34_000_000_012_300_001));
        assert_eq!(set.database_backup_lsn, Some(Position(0)));
        assert!(set.has_backup_checksums && !set.begins_log_chain && !set.is_copy_only);
        assert_eq!(
            set.backup_finish_date,
            NaiveDate::from_ymd_opt(2026, 11, 30)
                .unwrap()
                .and_hms_milli_opt(10, 5, 0, 123)
                .unwrap()
        );
        assert_eq!(set.server_name.as_deref(), Some("SQL01\\PROD"));
        assert_eq!(set.backup_size, Some(123_456_789));
        assert_eq!(set.differential_base_guid, None);
    }

    #[test]
    fn lsns_of_25_digits_given_as_json_numbers_keep_every_digit() {
        let row = row_json("")
            .replace(
                "\"first_lsn\":34000000012300001",
                "\"first_lsn\":9999999999999999999999991",
            )
            .replace(
                "\"last_lsn\":34000000045600001",
                "\"last_lsn\":\"9999999999999999999999999\"",
            )
            .replace(
                "\"checkpoint_lsn\":34000000012300001",
                "\"checkpoint_lsn\":\"00000022:0000007b:0001\"",
            );
        let set = &parse_history(&row, "h.json").unwrap()[0];
        // As f64 both would read 1e25 and compare equal.
        assert_eq!(set.first_lsn, Position(9_999_999_999_999_999_999_999_991));
        assert_eq!(set.last_lsn, Position(9_999_999_999_999_999_999_999_999));
        assert_eq!(set.checkpoint_lsn, Some(Position(34_000_000_012_300_001)));
    }

    #[test]
    fn a_float_lsn_is_refused_naming_file_row_and_column() {
        let good = row_json("");
        let bad = good.replace(
            "\"last_lsn\":34000000045600001",
            "\"last_lsn\":3.40000000456E16",
        );
        let err = parse_history(&format!("[{good},{bad}]"), "hist.json").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("hist.json: row 2 of 2: column last_lsn"),
            "{text}"
        );
        assert!(text.contains("floating-point"), "{text}");
        assert!(err.hint_text().unwrap_or_default().contains("varchar(25)"));
    }

    #[test]
    fn booleans_guids_and_missing_columns() {
        let row = row_json(
            r#""differential_base_guid":"{e2b2c3d4-0000-4000-8000-000000000001}",
               "is_damaged":"1","first_recovery_fork_guid":null"#,
        )
        .replace("\"is_copy_only\":false", "\"is_copy_only\":1")
        .replace("\"time_zone\":32,", "");
        let set = &parse_history(&row, "h.json").unwrap()[0];
        assert!(set.is_copy_only && set.is_damaged);
        assert_eq!(set.differential_base_guid, set.backup_set_uuid);
        assert_eq!(set.first_recovery_fork_guid, None);
        assert_eq!(set.time_zone, None);

        let no_type = row_json("").replace("\"type\":\"D\",", "");
        let err = parse_history(&no_type, "h.json").unwrap_err().to_string();
        assert!(err.contains("row 1 of 1: column type: missing"), "{err}");
        let bad_flag = row_json("").replace("\"begins_log_chain\":0", "\"begins_log_chain\":2");
        let err = parse_history(&bad_flag, "h.json").unwrap_err().to_string();
        assert!(
            err.contains("column begins_log_chain: `2` is not a bit"),
            "{err}"
        );
    }

    #[test]
    fn time_zone_units_convert_local_times_to_utc() {
        // A server at UTC+8 (32 quarter hours): local 10:00 is 02:00 UTC.
        let set = &parse_history(&row_json(""), "h.json").unwrap()[0];
        assert_eq!(
            set.start_utc(None).unwrap().to_rfc3339(),
            "2026-11-30T02:00:00+00:00"
        );
        assert_eq!(
            local_text(
                set.to_server_local("2026-11-30T02:30:00.250Z".parse().unwrap(), None)
                    .unwrap()
            ),
            "2026-11-30T10:30:00.250"
        );
        // West of UTC: -20 units is UTC-5.
        let west = parse_history(
            &row_json("").replace("\"time_zone\":32", "\"time_zone\":-20"),
            "h.json",
        )
        .unwrap();
        assert_eq!(
            west[0].start_utc(None).unwrap().to_rfc3339(),
            "2026-11-30T15:00:00+00:00"
        );
    }

    #[test]
    fn an_unknown_time_zone_needs_an_explicit_offset() {
        let set = &parse_history(
            &row_json("").replace("\"time_zone\":32", "\"time_zone\":127"),
            "h.json",
        )
        .unwrap()[0];
        let err = set.start_utc(None).unwrap_err();
        assert!(
            err.to_string()
                .contains("database backup e2b2c3d4-0000-4000-8000-000000000001 of database sales"),
            "{err}"
        );
        assert!(err.hint_text().unwrap_or_default().contains("UTC offset"));
        let plus_one = FixedOffset::east_opt(3600);
        assert_eq!(
            set.start_utc(plus_one).unwrap().to_rfc3339(),
            "2026-11-30T09:00:00+00:00"
        );
    }

    #[test]
    fn a_set_round_trips_through_engine_meta_json() {
        let set = parse_history(
            &row_json(r#""fork_point_lsn":"9999999999999999999999999","physical_device_name":"https://h/strata/t/stripe-000.bak""#),
            "h.json",
        )
        .unwrap()
        .remove(0);
        let value = serde_json::to_value(&set).unwrap();
        assert_eq!(value["first_lsn"], "34000000012300001");
        assert_eq!(value["fork_point_lsn"], "9999999999999999999999999");
        assert_eq!(value["type"], "D");
        assert_eq!(
            value["database_guid"],
            "5a1b2c3d-0000-4000-8000-0000000000aa"
        );
        assert_eq!(value["backup_finish_date"], "2026-11-30T10:05:00.123");
        let back: BackupSet = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, set);
        let text = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<BackupSet>(&text).unwrap(), set);
    }

    #[test]
    fn exports_wrapped_single_or_utf16_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let row = row_json("");
        let wrapped = dir.path().join("wrapped.json");
        std::fs::write(&wrapped, format!("{{\"value\":[{row},{row}],\"Count\":2}}")).unwrap();
        assert_eq!(read_history(&wrapped).unwrap().len(), 2);

        let single = dir.path().join("single.json");
        std::fs::write(&single, &row).unwrap();
        assert_eq!(read_history(&single).unwrap()[0].database_name, "sales");

        let utf16 = dir.path().join("utf16.json");
        let mut bytes = vec![0xFF, 0xFE];
        for unit in format!("[{row}]").encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        std::fs::write(&utf16, bytes).unwrap();
        assert_eq!(
            read_history(&utf16).unwrap()[0].first_lsn,
            Position(34_000_000_012_300_001)
        );

        let missing = dir.path().join("missing.json");
        let err = read_history(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "backup_set_uuid,type\n").unwrap();
        let err = read_history(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.json is not a JSON backup history"),
            "{err}"
        );
    }

    #[test]
    fn powershell_dates_are_refused_and_braced_guid_objects_read() {
        let row = row_json(r#""family_guid":{"Guid":"5A1B2C3D-0000-4000-8000-0000000000BB"}"#);
        let set = &parse_history(&row, "h.json").unwrap()[0];
        assert_eq!(
            set.family_guid.unwrap().to_string(),
            "5a1b2c3d-0000-4000-8000-0000000000bb"
        );
        let ps = row_json("").replace(
            "\"backup_start_date\":\"2026-11-30T10:00:00\"",
            "\"backup_start_date\":\"\\/Date(1796076900000)\\/\"",
        );
        let err = parse_history(&ps, "h.json").unwrap_err();
        assert!(
            err.to_string().contains("column backup_start_date"),
            "{err}"
        );
        assert!(err.hint_text().unwrap_or_default().contains("CONVERT"));
    }
}

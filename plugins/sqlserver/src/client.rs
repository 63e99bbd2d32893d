//! Sessions with SQL Server over TDS (tiberius), and the one conversion of
//! its errors.
//!
//! Two kinds of session, as tiberius's timeouts require (its
//! `Config::command_timeout` bounds every round trip and leaves a session
//! out of sync when it fires):
//!
//! - [`Session::Catalog`]: catalog queries, each answered in well under
//!   [`CATALOG_TIMEOUT`];
//! - [`Session::LongCommand`]: `BACKUP` and `RESTORE`, which can be silent
//!   for minutes (before the first `STATS` message, while a restore
//!   zero-initialises its files), so no command timeout at all.
//!
//! Logins: SQL Server logins (`user=...;password=...`). Windows
//! authentication (`IntegratedSecurity`) needs tiberius's `winauth`,
//! `sspi-rs` or `integrated-auth-gssapi` features, which bring system
//! libraries (GSSAPI) or a second TLS stack; Strata is built without them,
//! and such a connection string logs in with an empty SQL login, which
//! SQL Server refuses with error 18456.
//!
//! Every tiberius error becomes a [`strata_core::Error`] in [`sql_error`]:
//! the server's error number and message are kept (field `sql_error`), and
//! the numbers an operator meets in backups and restores get a hint that
//! says what to do ([`hint_for`]).

use std::time::Duration;

use chrono::NaiveDateTime;
use strata_core::catalog::manifest::Position;
use strata_core::{Error, ErrorKind, Result};
use tiberius::{ColumnData, EncryptionLevel, Row};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use uuid::Uuid;

use crate::config::{Encryption, InstanceConfig};

/// The command timeout of catalog sessions.
pub const CATALOG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a login may take (TCP, TLS and LOGIN7).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The application name SQL Server shows for Strata's sessions
/// (`sys.dm_exec_sessions.program_name`).
pub const APPLICATION_NAME: &str = "strata";

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Catalog queries: every round trip bounded by [`CATALOG_TIMEOUT`].
    Catalog,
    /// `BACKUP` and `RESTORE`: no command timeout.
    LongCommand,
}

/// The tiberius client over a tokio TCP stream.
pub type TdsClient = tiberius::Client<Compat<TcpStream>>;

/// An open session with one SQL Server instance.
pub struct Connection {
    client: TdsClient,
    instance: String,
    address: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("instance", &self.instance)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The tiberius configuration of `config` for a `session`: the connection
/// string, then the instance's encryption level and trust over it.
pub fn tiberius_config(config: &InstanceConfig, session: Session) -> Result<tiberius::Config> {
    let mut tds = tiberius::Config::from_ado_string(&config.connection).map_err(|e| {
        Error::config(format!("the connection string is not valid: {e}"))
            .hint("write it as server=tcp:HOST,PORT;user=LOGIN;password=SECRET")
    })?;
    tds.application_name(APPLICATION_NAME);
    tds.encryption(match config.encryption {
        Encryption::Required => EncryptionLevel::Required,
        Encryption::Off => EncryptionLevel::Off,
        Encryption::NotSupported => EncryptionLevel::NotSupported,
    });
    if let Some(ca) = &config.trust_ca {
        tds.trust_cert_ca(ca.display());
    } else if config.trust_server_certificate {
        tds.trust_cert();
    }
    tds.handshake_timeout(Some(LOGIN_TIMEOUT));
    tds.command_timeout(match session {
        Session::Catalog => Some(CATALOG_TIMEOUT),
        Session::LongCommand => None,
    });
    Ok(tds)
}

/// Opens a `session` with the SQL Server of `config` (the configured
/// `instance`, named in errors and hints).
///
/// # Errors
/// [`ErrorKind::Engine`] when the server cannot be reached (retryable) or
/// refuses the login (error 18456, not retryable), with the hint to run
/// `strata sqlserver check <instance>`.
pub async fn connect(
    instance: &str,
    config: &InstanceConfig,
    session: Session,
) -> Result<Connection> {
    let tds = tiberius_config(config, session)?;
    let address = tds.get_addr();
    let tcp = tokio::time::timeout(LOGIN_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| {
            Error::engine(format!(
                "cannot reach SQL Server at {address}: no answer within {} s",
                LOGIN_TIMEOUT.as_secs()
            ))
            .retryable(true)
        })
        .and_then(|r| {
            r.map_err(|e| {
                Error::engine(format!("cannot reach SQL Server at {address}: {e}"))
                    .retryable(strata_core::error::io_is_retryable(e.kind()))
                    .with_source(e)
            })
        })
        .map_err(|e| {
            e.hint(
                "check that SQL Server is running and listens on the host and port of `connection`",
            )
            .hint(check_hint(instance))
        })?;
    tcp.set_nodelay(true)
        .map_err(|e| Error::io(format!("cannot set TCP_NODELAY: {e}")))?;
    let client = tiberius::Client::connect(tds, tcp.compat_write())
        .await
        .map_err(|e| {
            sql_error(e, &format!("cannot log in to SQL Server at {address}"))
                .hint(check_hint(instance))
        })?;
    Ok(Connection {
        client,
        instance: instance.to_owned(),
        address,
    })
}

/// `run strata sqlserver check <instance>`: the hint of every failure whose
/// cause a check can show.
pub fn check_hint(instance: &str) -> String {
    format!("run `strata sqlserver check {instance}` to see what is missing")
}

impl Connection {
    /// The server's address as connected (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The configured instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs one batch and returns the rows of its first result set (none for
    /// a statement without a result); `what` says what it does, in errors.
    pub async fn query(&mut self, sql: &str, what: &str) -> Result<Vec<Row>> {
        tracing::debug!(target: "strata::sqlserver::tsql", sql, "batch");
        let mut results = self.batch(sql, what).await?;
        Ok(if results.is_empty() {
            Vec::new()
        } else {
            results.swap_remove(0)
        })
    }

    /// Runs one batch to its end and returns every result set, so that an
    /// error SQL Server sends last (`BACKUP`'s 3013) is seen.
    pub async fn batch(&mut self, sql: &str, what: &str) -> Result<Vec<Vec<Row>>> {
        let stream = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| sql_error(e, what))?;
        stream.into_results().await.map_err(|e| sql_error(e, what))
    }

    /// Runs one batch that returns no rows (`BACKUP`, `RESTORE`, `CREATE`).
    pub async fn execute(&mut self, sql: &str, what: &str) -> Result<()> {
        self.batch(sql, what).await.map(drop)
    }

    /// Asks the server to stop the running batch (TDS attention).
    pub async fn cancel(&mut self) -> Result<()> {
        self.client
            .cancel_query()
            .await
            .map_err(|e| sql_error(e, "cancelling the running statement"))
    }
}

/// Converts a tiberius error met while doing `what` into Strata's error:
/// kind [`ErrorKind::Engine`]; a server error keeps its number (field
/// `sql_error`) and message, and a known number gets [`hint_for`]'s hint.
/// Retryable: I/O failures tiberius reports (a reset or timed-out session)
/// and the server errors [`is_retryable_number`] names.
pub fn sql_error(e: tiberius::error::Error, what: &str) -> Error {
    match &e {
        tiberius::error::Error::Server(token) => server_error(what, token.code(), token.message()),
        tiberius::error::Error::Io { kind, message } => {
            Error::new(ErrorKind::Engine, format!("{what}: {message}"))
                .retryable(strata_core::error::io_is_retryable(*kind))
        }
        tiberius::error::Error::Tls(message) => Error::engine(format!("{what}: TLS failed: {message}"))
            .hint("set trust_ca in [sqlserver.<name>] to the CA of SQL Server's certificate (or encryption = \"not-supported\" for a server on this host that has no certificate)"),
        tiberius::error::Error::Protocol(message) if message.contains("encryption") => {
            Error::engine(format!("{what}: {message}")).hint(
                "the server and `encryption` in [sqlserver.<name>] disagree: \"required\" for a server that offers TLS (trust_ca or trust_server_certificate to trust it), \"not-supported\" for one on this host without TLS",
            )
        }
        tiberius::error::Error::Routing { host, port } => Error::engine(format!(
            "{what}: the server redirects to {host}:{port}"
        ))
        .hint("put that address in `connection`: Strata does not follow redirections"),
        _ => Error::engine(format!("{what}: {e}")),
    }
    .with_source(e)
}

/// The error for SQL Server error `number` with `message`, met while doing
/// `what`: its number kept as the field `sql_error`, [`hint_for`]'s hint.
pub fn server_error(what: &str, number: u32, message: &str) -> Error {
    let err = Error::engine(format!("{what}: SQL Server error {number}: {message}"))
        .with("sql_error", number)
        .retryable(is_retryable_number(number));
    match hint_for(number) {
        Some(hint) => err.hint(hint),
        None => err,
    }
}

/// Server errors a later attempt can cure: 1205 (chosen as a deadlock
/// victim), 3023 (another backup or file operation of the database is
/// running: "Backup, file manipulation operations ... must be serialized"),
/// 40613 and 40197 (the database or service is momentarily unavailable).
pub fn is_retryable_number(number: u32) -> bool {
    matches!(number, 1205 | 3023 | 40613 | 40197)
}

/// What to do about SQL Server error `number`, for the errors backups and
/// restores meet (messages from Microsoft's "Database engine events and
/// errors").
pub fn hint_for(number: u32) -> Option<&'static str> {
    Some(match number {
        // Login failed for user '...'.
        18456 => {
            "check the user and password in `connection`, and that the server allows SQL Server logins (mixed mode); the server's error log says why it refused"
        }
        // Cannot open database requested by the login.
        4060 => "remove `database=` from `connection` or name a database the login may open",
        // ... permission denied in database ...
        262 | 229 | 300 => {
            "make the login sysadmin (ALTER SERVER ROLE [sysadmin] ADD MEMBER [login]) or grant what `strata sqlserver check` lists"
        }
        // BACKUP LOG cannot be performed because there is no current database backup.
        4214 => "take a full backup first: strata backup sqlserver NAME --database DB --kind full",
        // The statement BACKUP LOG is not allowed while the recovery model is SIMPLE.
        4208 => {
            "a database in SIMPLE recovery has no log backups: take full and diff backups, or ALTER DATABASE [db] SET RECOVERY FULL and take a full backup"
        }
        // Cannot perform a differential backup ... a current database backup does not exist.
        3035 => "take a full backup first: strata backup sqlserver NAME --database DB --kind full",
        // Cannot open backup device '...'. Operating system error ...
        3201 => {
            "SQL Server could not reach Strata's blob endpoint: check that blob_host resolves to blob_listen on the SQL Server host, that SQL Server trusts the endpoint's CA and that the credential exists (strata sqlserver check NAME; strata sqlserver setup NAME)"
        }
        // BACKUP DATABASE is terminating abnormally.
        3013 => "the error before this one in SQL Server's error log names the cause",
        // The media family on device '...' is incorrectly formed.
        3241 => {
            "the backup read back is not what SQL Server wrote: run `strata verify` on the backup"
        }
        // Checksum failures while reading a backup.
        3183 | 3189 => {
            "the backup holds damaged pages: run `strata verify`, and restore from another backup"
        }
        // The log in this backup set begins at LSN ..., which is too recent to apply to the database.
        4305 => {
            "a log backup is missing between the restored backup and this log: `strata list --timeline` shows the restorable windows"
        }
        // The log in this backup set terminates at LSN ..., which is too early to apply to the database.
        4326 => {
            "this log is already contained in what was restored; the plan should not include it"
        }
        // This differential backup cannot be restored because the database has not been restored to the correct earlier state.
        3136 => {
            "the differential does not belong to the restored full backup: restore its own full first (`strata list --timeline`)"
        }
        // The backup set holds a backup of a database other than the existing '...' database.
        3154 => {
            "restore under a new name (--as NEWNAME), or overwrite the existing database on purpose with --replace"
        }
        // The tail of the log for the database "..." has not been backed up.
        3159 => {
            "take a log backup of the existing database first (strata backup sqlserver NAME --database DB --kind log), or overwrite it on purpose with --replace"
        }
        // The file '...' cannot be overwritten. It is being used by database '...'.
        1834 => {
            "restore the files elsewhere with --move-to DIR, or under another name with --as NEWNAME"
        }
        // Directory lookup for the file failed / CREATE FILE encountered operating system error.
        5133 | 5123 | 3634 => {
            "the directory must exist on the SQL Server host and be writable by SQL Server's service account (mssql on Linux): choose it with --move-to DIR"
        }
        // Exclusive access could not be obtained because the database is in use.
        3101 => {
            "close the sessions using the database (ALTER DATABASE [db] SET SINGLE_USER WITH ROLLBACK IMMEDIATE) or restore under a new name"
        }
        // There is already an object/credential named ...
        15025 => "the credential exists already: nothing to do",
        // Another backup or file operation of this database is running.
        3023 => "another backup of this database is running: try again when it ends",
        // The operation is not supported on a secondary replica / RESTORE on an availability database.
        976 | 35250 | 3104 => {
            "take backups on the replica `strata sqlserver check` names as preferred; restore to a database outside the availability group"
        }
        _ => return None,
    })
}

/// Typed reads of one result row by column name, with errors that name the
/// column: SQL Server's types as tiberius decodes them.
pub trait RowExt {
    /// An `nvarchar`/`varchar`/`char` value.
    fn text(&self, column: &str) -> Result<Option<String>>;
    /// Any integer (`tinyint`, `smallint`, `int`, `bigint`), `bit`, or a
    /// `numeric` without decimals.
    fn int(&self, column: &str) -> Result<Option<i64>>;
    /// A `bit` (or an integer: 0 is false).
    fn flag(&self, column: &str) -> Result<Option<bool>>;
    /// An LSN: `numeric(25,0)` (or an integer), never negative.
    fn lsn(&self, column: &str) -> Result<Option<Position>>;
    /// A `uniqueidentifier`.
    fn guid(&self, column: &str) -> Result<Option<Uuid>>;
    /// A `datetime`, `datetime2` or `smalldatetime` (no time zone).
    fn datetime(&self, column: &str) -> Result<Option<NaiveDateTime>>;
}

fn column_error(column: &str, found: &ColumnData<'_>, wanted: &str) -> Error {
    Error::engine(format!(
        "SQL Server returned {} for column `{column}` where {wanted} was expected",
        column_type_name(found)
    ))
}

fn column_type_name(value: &ColumnData<'_>) -> &'static str {
    match value {
        ColumnData::U8(_) => "a tinyint",
        ColumnData::I16(_) => "a smallint",
        ColumnData::I32(_) => "an int",
        ColumnData::I64(_) => "a bigint",
        ColumnData::F32(_) | ColumnData::F64(_) => "a float",
        ColumnData::Bit(_) => "a bit",
        ColumnData::String(_) => "a string",
        ColumnData::Guid(_) => "a uniqueidentifier",
        ColumnData::Binary(_) => "binary data",
        ColumnData::Numeric(_) => "a numeric",
        ColumnData::Xml(_) => "xml",
        _ => "a date or time",
    }
}

fn cell<'a>(row: &'a Row, column: &str) -> Result<&'a ColumnData<'static>> {
    row.get_column_data(column)
        .map_err(|_| Error::engine(format!("SQL Server's answer has no column `{column}`")))
}

impl RowExt for Row {
    fn text(&self, column: &str) -> Result<Option<String>> {
        match cell(self, column)? {
            ColumnData::String(s) => Ok(s.as_ref().map(|s| s.to_string())),
            other => Err(column_error(column, other, "text")),
        }
    }

    fn int(&self, column: &str) -> Result<Option<i64>> {
        match cell(self, column)? {
            ColumnData::U8(v) => Ok(v.map(i64::from)),
            ColumnData::I16(v) => Ok(v.map(i64::from)),
            ColumnData::I32(v) => Ok(v.map(i64::from)),
            ColumnData::I64(v) => Ok(*v),
            ColumnData::Bit(v) => Ok(v.map(i64::from)),
            ColumnData::Numeric(Some(n)) if n.scale() == 0 => {
                i64::try_from(n.value()).map(Some).map_err(|_| {
                    Error::engine(format!("column `{column}`: {} is out of range", n.value()))
                })
            }
            ColumnData::Numeric(None) => Ok(None),
            other => Err(column_error(column, other, "an integer")),
        }
    }

    fn flag(&self, column: &str) -> Result<Option<bool>> {
        match cell(self, column)? {
            ColumnData::Bit(v) => Ok(*v),
            _ => Ok(self.int(column)?.map(|v| v != 0)),
        }
    }

    fn lsn(&self, column: &str) -> Result<Option<Position>> {
        let value: Option<i128> = match cell(self, column)? {
            ColumnData::Numeric(Some(n)) if n.scale() == 0 => Some(n.value()),
            ColumnData::Numeric(None) => None,
            ColumnData::Numeric(Some(n)) => {
                return Err(Error::engine(format!(
                    "column `{column}`: the LSN {n} has decimals"
                )));
            }
            _ => self.int(column)?.map(i128::from),
        };
        value
            .map(|v| {
                u128::try_from(v).map(Position).map_err(|_| {
                    Error::engine(format!("column `{column}`: the LSN {v} is negative"))
                })
            })
            .transpose()
    }

    fn guid(&self, column: &str) -> Result<Option<Uuid>> {
        match cell(self, column)? {
            ColumnData::Guid(v) => Ok(*v),
            other => Err(column_error(column, other, "a uniqueidentifier")),
        }
    }

    fn datetime(&self, column: &str) -> Result<Option<NaiveDateTime>> {
        self.try_get::<NaiveDateTime, _>(column).map_err(|_| {
            column_error(
                column,
                cell(self, column).unwrap_or(&ColumnData::Bit(None)),
                "a datetime",
            )
        })
    }
}

/// A row as a JSON object under its column names, in the forms a history
/// export uses ([`crate::history`]): LSNs and other `numeric`s as decimal
/// strings (exact), GUIDs as lowercase text, dates as
/// `YYYY-MM-DDTHH:MM:SS.fff` (the server's local time, as stored), `bit`s
/// as booleans, NULL as `null`.
pub fn row_json(row: &Row) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    row.columns()
        .iter()
        .zip(row.cells().map(|(_, data)| data))
        .enumerate()
        .map(|(i, (column, data))| {
            let value = match data {
                ColumnData::U8(v) => v.map(Value::from),
                ColumnData::I16(v) => v.map(Value::from),
                ColumnData::I32(v) => v.map(Value::from),
                ColumnData::I64(v) => v.map(Value::from),
                ColumnData::F32(v) => v.map(Value::from),
                ColumnData::F64(v) => v.map(Value::from),
                ColumnData::Bit(v) => v.map(Value::from),
                ColumnData::String(v) => v.as_ref().map(|s| Value::from(s.as_ref())),
                ColumnData::Guid(v) => v.map(|g| Value::from(g.to_string())),
                ColumnData::Numeric(v) => v.map(|n| {
                    Value::from(if n.scale() == 0 {
                        n.value().to_string()
                    } else {
                        n.to_string()
                    })
                }),
                ColumnData::Binary(_) | ColumnData::Xml(_) => None,
                _ => row
                    .try_get::<NaiveDateTime, _>(i)
                    .ok()
                    .flatten()
                    .map(|t| Value::from(t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())),
            };
            (column.name().to_owned(), value.unwrap_or(Value::Null))
        })
        .collect()
}

/// The value of a column that must not be NULL, or an error naming it.
pub fn required<T>(value: Option<T>, column: &str) -> Result<T> {
    value.ok_or_else(|| Error::engine(format!("SQL Server returned NULL for `{column}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS level the server refuses points at the `encryption` key, not
    /// at `check` (which would meet the same refusal).
    #[test]
    fn an_encryption_mismatch_names_the_encryption_key() {
        let err = sql_error(
            tiberius::error::Error::Protocol(
                "Server does not allow the requested encryption level".into(),
            ),
            "connecting to 127.0.0.1:1433",
        );
        let hint = err.hint_text().unwrap_or_default();
        assert!(
            hint.contains("`encryption` in [sqlserver.<name>]"),
            "{hint}"
        );
        assert!(!hint.contains("strata sqlserver check"), "{hint}");
    }

    #[test]
    fn a_server_error_keeps_its_number_message_and_hint() {
        let err = server_error(
            "backing up the log of [db]",
            4214,
            "BACKUP LOG cannot be performed because there is no current database backup.",
        );
        assert_eq!(err.kind(), ErrorKind::Engine);
        assert_eq!(
            err.to_string(),
            "backing up the log of [db]: SQL Server error 4214: BACKUP LOG cannot be performed because there is no current database backup. (sql_error: 4214)"
        );
        assert!(err.hint_text().unwrap().contains("--kind full"));
        assert!(!err.is_retryable());

        let io = tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionReset,
            message: "connection reset by peer".into(),
        };
        let err = sql_error(io, "reading sys.databases");
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .starts_with("reading sys.databases: connection reset"),
            "{err}"
        );
    }

    #[test]
    fn every_number_the_plugin_documents_has_a_hint() {
        for n in [
            4214, 4208, 3035, 3201, 18456, 262, 4305, 4326, 3136, 3154, 3159, 1834,
        ] {
            assert!(hint_for(n).is_some(), "{n}");
        }
        assert_eq!(hint_for(50000), None);
    }

    #[test]
    fn the_catalog_session_has_a_timeout_and_the_long_one_none() {
        let config = InstanceConfig::new(
            "server=tcp:127.0.0.1,1433;user=u;password=p",
            "strata-blob.local",
        );
        let catalog = tiberius_config(&config, Session::Catalog).unwrap();
        assert_eq!(catalog.get_command_timeout(), Some(CATALOG_TIMEOUT));
        assert_eq!(catalog.get_addr(), "127.0.0.1:1433");
        let long = tiberius_config(&config, Session::LongCommand).unwrap();
        assert_eq!(long.get_command_timeout(), None);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_retryable_engine_error_naming_the_check() {
        // A port nothing listens on: bind one, then close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut config = InstanceConfig::new(
            format!("server=tcp:127.0.0.1,{port};user=u;password=p"),
            "strata-blob.local",
        );
        config.encryption = Encryption::NotSupported;
        let err = connect("main", &config, Session::Catalog)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Engine);
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(
            err.hint_text()
                .unwrap()
                .contains("strata sqlserver check main")
        );
    }
}

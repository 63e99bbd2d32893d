//! Connecting to a cluster, and `strata pg check`: the server's identity and
//! archiving settings, with the exact line to fix each misconfiguration.

use std::fmt;

use serde::Serialize;
use strata_core::{Error, Result};
use tokio_postgres::{Client, NoTls};

use crate::config::{ClusterConfig, redacted_connection};

/// The RPO Strata promises with `archive_command`: `archive_timeout` must be
/// on and at most this many seconds.
pub const MAX_ARCHIVE_TIMEOUT_SECS: i64 = 900;

/// An open session to a cluster.
pub struct Server {
    /// The session. A full backup keeps it for its whole run.
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What identifies a cluster and its WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The system identifier.
    pub system_id: u64,
    /// `server_version_num`.
    pub server_version_num: u32,
    /// `server_version`.
    pub server_version: String,
    /// The current timeline: the one WAL is written on (a server just
    /// promoted is on its new timeline before its first checkpoint, which
    /// `pg_control_checkpoint()` would still show the old one until);
    /// on a standby, its last restartpoint's.
    pub timeline: u32,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// Whether data checksums are on.
    pub data_checksums: bool,
    /// Whether `wal_log_hints` is on.
    pub wal_log_hints: bool,
    /// The data directory the server reports.
    pub data_directory: String,
}

/// Connects to `cluster`. Errors show its connection string without the
/// password ([`redacted_connection`]).
pub async fn connect(cluster: &ClusterConfig) -> Result<Server> {
    connect_with(
        &cluster.pg_config()?,
        &redacted_connection(&cluster.connection),
    )
    .await
}

/// Connects with an explicit configuration; `describe` names it in errors
/// (so it must hold no password).
pub async fn connect_with(config: &tokio_postgres::Config, describe: &str) -> Result<Server> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        // A refusal by the server (a wrong password, an unknown database)
        // is worded by the server; the client's own text is only "db error",
        // so that is not the cause shown then.
        let retryable = pg_is_retryable(&e);
        let (detail, source) = match e.as_db_error() {
            Some(db) => (db.message().to_owned(), None),
            None => (e.to_string(), Some(e)),
        };
        let error = Error::engine(format!(
            "cannot connect to PostgreSQL with `{describe}`: {detail}"
        ))
        .hint("check that the server is running and that connection in [postgres.<name>] names its socket directory, port and a superuser")
        .retryable(retryable);
        match source {
            Some(e) => error.with_source(e),
            None => error,
        }
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL session ended");
        }
    });
    Ok(Server { client, task })
}

/// Converts a PostgreSQL client error into an engine error worded
/// `"<what>: <detail>"` (the server's message for an error it reported);
/// whether to retry is [`pg_is_retryable`]'s decision. The one conversion of
/// `tokio_postgres::Error` in this plugin, with [`connect_with`]'s.
pub(crate) fn pg_error(e: tokio_postgres::Error, what: &str) -> Error {
    let retryable = pg_is_retryable(&e);
    match e.as_db_error() {
        // The server's own message; the client's text around it ("db
        // error: ERROR: ...") would only repeat it.
        Some(db) => Error::engine(format!("{what}: {}", db.message())).retryable(retryable),
        None => Error::engine(format!("{what}: {e}"))
            .retryable(retryable)
            .with_source(e),
    }
}

/// Whether a later attempt can cure a PostgreSQL client error: see
/// [`retry_policy`].
fn pg_is_retryable(e: &tokio_postgres::Error) -> bool {
    let mut io_kind = None;
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        source = cause.source();
    }
    retry_policy(e.code().map(|c| c.code()), e.is_closed(), io_kind)
}

/// The retry policy for PostgreSQL errors, from the SQLSTATE the server
/// sent (if any), whether the session was closed, and the I/O error under
/// the failure (if any):
///
/// - retryable: a closed session; SQLSTATE class 08 (connection
///   exception), 57P01/57P02/57P03 (the server is shutting down, crashed
///   or starting), 53300 (too many connections), 40001 (serialization
///   failure), 40P01 (deadlock), 55P03 (lock not available); a socket that
///   is missing or refuses connections (the server is down or restarting);
///   any other I/O error the core policy calls retryable
///   ([`strata_core::error::io_is_retryable`]).
/// - not retryable: everything else, such as 28P01 (wrong password), 42501
///   (insufficient privilege) or a syntax error.
fn retry_policy(sqlstate: Option<&str>, closed: bool, io_kind: Option<std::io::ErrorKind>) -> bool {
    if closed {
        return true;
    }
    if let Some(code) = sqlstate {
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55P03"
            );
    }
    match io_kind {
        Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => true,
        Some(kind) => strata_core::error::io_is_retryable(kind),
        None => false,
    }
}

impl Server {
    /// A setting's current value (`SHOW`).
    pub async fn setting(&self, name: &str) -> Result<String> {
        let row = self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| pg_error(e, &format!("reading setting {name}")))?;
        Ok(row.get(0))
    }

    /// The cluster's identity.
    pub async fn identity(&self) -> Result<Identity> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                        current_setting('server_version_num')::int, \
                        current_setting('server_version'), \
                        CASE WHEN pg_is_in_recovery() \
                             THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
                        END, \
                        pg_size_bytes(current_setting('wal_segment_size')), \
                        current_setting('data_checksums') = 'on', \
                        current_setting('data_directory'), \
                        current_setting('wal_log_hints') = 'on'",
                &[],
            )
            .await
            .map_err(|e| {
                pg_error(e, "reading the cluster's identity")
                    .hint("connect as a superuser (or a role in pg_read_all_settings with EXECUTE on pg_control_system)")
            })?;
        let system_id: String = row.get(0);
        let version: i32 = row.get(1);
        let timeline: i32 = row.get(3);
        let seg: i64 = row.get(4);
        Ok(Identity {
            system_id: system_id
                .parse()
                .map_err(|_| Error::engine("the system identifier is not a number"))?,
            server_version_num: version as u32,
            server_version: row.get(2),
            timeline: timeline as u32,
            wal_segment_size: seg as u64,
            data_checksums: row.get(5),
            data_directory: row.get(6),
            wal_log_hints: row.get(7),
        })
    }
}

/// One problem found by `check`, with the line that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The setting concerned.
    pub setting: String,
    /// What is wrong.
    pub problem: String,
    /// The exact line to put in postgresql.conf (or the command to run).
    pub fix: String,
    /// Whether a restart is needed after the fix (a reload otherwise).
    pub restart: bool,
}

/// The outcome of `strata pg check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The configured cluster name.
    pub cluster: String,
    /// The server's identity.
    pub identity: Identity,
    /// `wal_level`.
    pub wal_level: String,
    /// `archive_mode`.
    pub archive_mode: String,
    /// `archive_command`.
    pub archive_command: String,
    /// `archive_library`.
    pub archive_library: String,
    /// `archive_timeout` in seconds.
    pub archive_timeout_secs: i64,
    /// The `archive_command` Strata expects.
    pub expected_archive_command: String,
    /// The `restore_command` to use when recovering from Strata's archive.
    pub restore_command: String,
    /// The problems, in the order to fix them.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing needs fixing.
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Connects to cluster `name` and checks it. `strata` is how PostgreSQL
/// should invoke Strata (e.g. `/usr/bin/strata --config /etc/strata/strata.toml`).
pub async fn check(cluster: &ClusterConfig, name: &str, strata: &str) -> Result<CheckReport> {
    let server = connect(cluster).await?;
    let identity = server.identity().await?;
    let wal_level = server.setting("wal_level").await?;
    let archive_mode = server.setting("archive_mode").await?;
    let archive_command = server.setting("archive_command").await?;
    let archive_library = server.setting("archive_library").await.unwrap_or_default();
    let timeout: i32 = server
        .client
        .query_one(
            "SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "reading archive_timeout"))?
        .get(0);
    let expected = format!("{strata} pg wal-push %p --cluster {name}");
    let restore_command = format!("{strata} pg wal-fetch %f \"%p\" --cluster {name}");
    let mut findings = Vec::new();
    if identity.server_version_num < 150000 {
        findings.push(Finding {
            setting: "server_version".into(),
            problem: format!(
                "PostgreSQL {} is older than 15, which Strata needs",
                identity.server_version
            ),
            fix: "upgrade the cluster to PostgreSQL 15 or later".into(),
            restart: true,
        });
    }
    if wal_level == "minimal" {
        findings.push(Finding {
            setting: "wal_level".into(),
            problem: "wal_level is minimal: the WAL cannot restore a base backup".into(),
            fix: "wal_level = replica".into(),
            restart: true,
        });
    }
    if archive_mode == "off" {
        findings.push(Finding {
            setting: "archive_mode".into(),
            problem: "archive_mode is off: no WAL reaches the vault, so no point-in-time restore"
                .into(),
            fix: "archive_mode = on".into(),
            restart: true,
        });
    }
    if !archive_library.is_empty() {
        findings.push(Finding {
            setting: "archive_library".into(),
            problem: format!(
                "archive_library is `{archive_library}`, which replaces archive_command"
            ),
            fix: "archive_library = ''".into(),
            restart: false,
        });
    }
    let pushes_here = archive_command.contains("pg wal-push")
        && archive_command.contains("%p")
        && archive_command.contains(&format!("--cluster {name}"));
    if !pushes_here {
        findings.push(Finding {
            setting: "archive_command".into(),
            problem: if archive_command.is_empty() {
                "archive_command is empty".into()
            } else {
                format!(
                    "archive_command `{archive_command}` does not push this cluster's WAL to Strata"
                )
            },
            fix: format!("archive_command = '{expected}'"),
            restart: false,
        });
    }
    if timeout == 0 || i64::from(timeout) > MAX_ARCHIVE_TIMEOUT_SECS {
        findings.push(Finding {
            setting: "archive_timeout".into(),
            problem: if timeout == 0 {
                "archive_timeout is 0: a quiet server may keep committed transactions out of the vault indefinitely, beyond the 15-minute RPO".into()
            } else {
                format!("archive_timeout is {timeout}s, longer than the 15-minute RPO")
            },
            fix: "archive_timeout = 60".into(),
            restart: false,
        });
    }
    let configured = cluster.data_directory.display().to_string();
    if !runs_from(cluster, &identity.data_directory) {
        findings.push(Finding {
            setting: "data_directory".into(),
            problem: format!(
                "the config says data_directory = {configured}, the server runs from {}",
                identity.data_directory
            ),
            fix: format!(
                "data_directory = \"{}\"   (in [postgres.{name}] of Strata's config)",
                identity.data_directory
            ),
            restart: false,
        });
    }
    Ok(CheckReport {
        cluster: name.to_owned(),
        identity,
        wal_level,
        archive_mode,
        archive_command,
        archive_library,
        archive_timeout_secs: i64::from(timeout),
        expected_archive_command: expected,
        restore_command,
        findings,
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.identity;
        writeln!(f, "cluster          {}", self.cluster)?;
        writeln!(
            f,
            "version          {} ({})",
            id.server_version, id.server_version_num
        )?;
        writeln!(f, "system id        {}", id.system_id)?;
        writeln!(f, "timeline         {}", id.timeline)?;
        writeln!(f, "data directory   {}", id.data_directory)?;
        writeln!(
            f,
            "data checksums   {}",
            if id.data_checksums { "on" } else { "off" }
        )?;
        writeln!(f, "wal_level        {}", self.wal_level)?;
        writeln!(f, "archive_mode     {}", self.archive_mode)?;
        writeln!(f, "archive_command  {}", self.archive_command)?;
        writeln!(f, "archive_timeout  {}s", self.archive_timeout_secs)?;
        if self.findings.is_empty() {
            writeln!(f, "\nOK: WAL archiving into Strata is configured.")?;
        } else {
            writeln!(f, "\n{} problem(s):", self.findings.len())?;
            for finding in &self.findings {
                writeln!(f, "  - {}", finding.problem)?;
                writeln!(
                    f,
                    "    fix: {}{}",
                    finding.fix,
                    if finding.restart {
                        "   (then restart PostgreSQL)"
                    } else {
                        "   (then reload PostgreSQL)"
                    }
                )?;
            }
        }
        if !id.data_checksums {
            writeln!(
                f,
                "\nnote: data checksums are off; `pg_checksums --enable` (server stopped) lets restores detect corrupt pages."
            )?;
            if !id.wal_log_hints {
                writeln!(
                    f,
                    "note: differential and incremental backups need data checksums or `wal_log_hints = on` \
                     (then restart PostgreSQL and take a full backup); full backups do not."
                )?;
            }
        }
        writeln!(
            f,
            "\nFor restores, recovery uses:\n  restore_command = '{}'",
            self.restore_command
        )
    }
}

/// Whether the server whose `data_directory` setting is `server_dir` runs
/// from the cluster's configured data directory (compared after resolving
/// links, as far as both exist here). An empty setting (not readable by the
/// role) is taken as a match: nothing is known against it.
pub fn runs_from(cluster: &ClusterConfig, server_dir: &str) -> bool {
    if server_dir.is_empty() {
        return true;
    }
    let resolve = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    resolve(&cluster.data_directory) == resolve(std::path::Path::new(server_dir))
}

#[cfg(test)]
mod tests {
    use strata_core::ErrorKind;

    use super::*;

    #[test]
    fn sqlstates_decide_retry() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03",
        ] {
            assert!(retry_policy(Some(code), false, None), "{code}");
        }
        for code in ["28P01", "28000", "42501", "42601", "3D000", "53100"] {
            assert!(!retry_policy(Some(code), false, None), "{code}");
        }
        assert!(retry_policy(None, true, None), "a closed session");
        assert!(!retry_policy(None, false, None));
    }

    #[test]
    fn socket_failures_decide_retry() {
        use std::io::ErrorKind as K;
        for kind in [
            K::NotFound,
            K::ConnectionRefused,
            K::TimedOut,
            K::ConnectionReset,
        ] {
            assert!(retry_policy(None, false, Some(kind)), "{kind:?}");
        }
        for kind in [K::PermissionDenied, K::InvalidInput, K::Other] {
            assert!(!retry_policy(None, false, Some(kind)), "{kind:?}");
        }
    }

    /// A failed connection names the connection string without its
    /// password, in the message and in everything the error carries.
    #[tokio::test]
    async fn a_failed_connection_never_shows_the_password() {
        let dir = tempfile::tempdir().unwrap();
        for connection in [
            format!(
                "host={} port=5432 user=postgres password=Pg-S3cret-1",
                dir.path().display()
            ),
            "postgresql://postgres:Pg-S3cret-1@127.0.0.1:1/postgres".to_owned(),
        ] {
            let cluster = ClusterConfig::new(connection.clone(), "/srv/pg");
            let err = connect(&cluster).await.err().expect("no server there");
            let shown = format!("{err} {err:?} {}", err.hint_text().unwrap_or_default());
            assert!(!shown.contains("Pg-S3cret-1"), "{shown}");
            assert!(
                err.to_string().starts_with(&format!(
                    "cannot connect to PostgreSQL with `{}`: ",
                    redacted_connection(&connection)
                )),
                "{err}"
            );
            assert!(err.to_string().contains("<redacted>"), "{err}");
        }
    }

    /// A server that is not running: an engine error worth retrying (it may
    /// be restarting), naming the connection and keeping the cause.
    #[tokio::test]
    async fn a_missing_server_is_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let describe = format!("host={} port=5432 user=postgres", dir.path().display());
        let config: tokio_postgres::Config = describe.parse().unwrap();
        let err = connect_with(&config, &describe)
            .await
            .err()
            .expect("no server there");
        assert_eq!(err.kind(), ErrorKind::Engine);
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to PostgreSQL with `{describe}`: ")),
            "{err}"
        );
        assert!(err.hint_text().unwrap().contains("server is running"));
        assert!(std::error::Error::source(&err).is_some());

        // The same failure through the query conversion keeps the decision.
        let e = config.connect(NoTls).await.err().unwrap();
        let err = pg_error(e, "reading archive_timeout");
        assert!(err.is_retryable());
        assert!(
            err.to_string().starts_with("reading archive_timeout: "),
            "{err}"
        );
    }
}

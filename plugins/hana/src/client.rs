//! HANA over SQL (hdbconnect): reading configuration, starting data
//! backups, running recoveries. Connect to the **SYSTEMDB** with a user
//! holding `BACKUP ADMIN`, `DATABASE ADMIN` and `INIFILE ADMIN` (for
//! `strata hana check --connect`, `CATALOG READ` is enough).
//!
//! hdbconnect is synchronous: every call runs on a blocking thread.

use strata_core::{Error, Result};

use crate::ini::GlobalIni;

/// A connection URL: `hdbsql://USER:PASSWORD@host:3<nr>13` (the SYSTEMDB's
/// SQL port), or `hdbsqls://...` for TLS.
#[derive(Clone)]
pub struct HanaUrl(String);

impl std::fmt::Debug for HanaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        let shown = match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &self.0[..scheme], &self.0[at..])
            }
            _ => self.0.clone(),
        };
        f.debug_tuple("HanaUrl").field(&shown).finish()
    }
}

impl HanaUrl {
    /// Checks the shape of a connection URL.
    pub fn parse(url: &str) -> Result<HanaUrl> {
        if !(url.starts_with("hdbsql://") || url.starts_with("hdbsqls://")) || !url.contains('@') {
            return Err(Error::config(
                "the HANA connection must look like hdbsql://USER:PASSWORD@host:port",
            )
            .hint("use the SYSTEMDB's SQL port, 3<instance>13 (e.g. 30013); hdbsqls:// for TLS"));
        }
        Ok(HanaUrl(url.to_owned()))
    }
}

fn engine_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::engine(format!("{what}: {err}"))
        .hint("check the connection URL, that HANA is up, and the user's privileges (BACKUP ADMIN, DATABASE ADMIN, INIFILE ADMIN)")
}

/// Converts an `hdbconnect` error, worded `"<what>: <error>"`; whether to
/// retry is [`hana_is_retryable`]'s decision. The one conversion of
/// `HdbError` in this plugin.
fn hana_error(what: &str, err: hdbconnect::HdbError) -> Error {
    let retryable = hana_is_retryable(&err);
    engine_error(what, &err)
        .retryable(retryable)
        .with_source(err)
}

/// Whether a later attempt can cure an `hdbconnect` failure:
///
/// - retryable: a broken connection or one the server closed
///   (`ConnectionBroken`, `SessionClosingTransactionError`); a server error
///   [`server_code_is_retryable`] calls transient; a failure whose cause is
///   an I/O error that core's policy calls retryable (a refused, reset or
///   timed-out connection: HANA is down or restarting), also after a
///   reconnect;
/// - not retryable: authentication, connection parameters, TLS set-up,
///   wrong usage, (de)serialization, and any other server error.
fn hana_is_retryable(err: &hdbconnect::HdbError) -> bool {
    use hdbconnect::HdbError as E;
    match err {
        E::ConnectionBroken { .. } | E::SessionClosingTransactionError => true,
        // Transparent: its `source()` skips the io::Error itself.
        E::Io { source } => strata_core::error::io_is_retryable(source.kind()),
        E::DbError { source } => server_code_is_retryable(source.code()),
        E::ErrorAfterReconnect { second, .. } => hana_is_retryable(second),
        E::Authentication { .. }
        | E::ConnParams { .. }
        | E::TlsInvalidDnsName { .. }
        | E::TlsInit { .. }
        | E::TlsProtocol { .. }
        | E::Usage(_) => false,
        _ => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
            while let Some(error) = cause {
                if let Some(io) = error.downcast_ref::<std::io::Error>() {
                    return strata_core::error::io_is_retryable(io.kind());
                }
                cause = error.source();
            }
            false
        }
    }
}

/// HANA's transient server errors: 131 (transaction rolled back by lock
/// wait timeout) and 133 (transaction rolled back by detected deadlock).
fn server_code_is_retryable(code: i32) -> bool {
    matches!(code, 131 | 133)
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| engine_error(what, e))?
}

/// Reads the `[backup]` and `[persistence]` settings of global.ini from
/// `SYS.M_INIFILE_CONTENTS`, layers applied in order (DEFAULT, SYSTEM,
/// DATABASE, HOST) so that the effective value wins.
pub async fn read_global_ini(url: &HanaUrl) -> Result<GlobalIni> {
    let url = url.0.clone();
    blocking("reading global.ini", move || {
        let conn = hdbconnect::Connection::new(url.as_str())
            .map_err(|e| hana_error("connecting to HANA", e))?;
        let rows: Vec<(String, String, String, String)> = conn
            .query(
                "SELECT LAYER_NAME, SECTION, KEY, VALUE FROM SYS.M_INIFILE_CONTENTS \
                 WHERE FILE_NAME = 'global.ini' AND SECTION IN ('backup', 'persistence') \
                 ORDER BY CASE LAYER_NAME WHEN 'DEFAULT' THEN 0 WHEN 'SYSTEM' THEN 1 WHEN 'DATABASE' THEN 2 ELSE 3 END",
            )
            .and_then(|rs| rs.try_into())
            .map_err(|e| hana_error("reading SYS.M_INIFILE_CONTENTS", e))?;
        let mut ini = GlobalIni::default();
        for (_layer, section, key, value) in rows {
            ini.set(&section, &key, &value);
        }
        Ok(ini)
    })
    .await
}

/// Runs statements in order on one connection, stopping at the first failure.
pub async fn execute(url: &HanaUrl, statements: Vec<String>) -> Result<()> {
    let url = url.0.clone();
    blocking("running SQL", move || {
        let conn = hdbconnect::Connection::new(url.as_str())
            .map_err(|e| hana_error("connecting to HANA", e))?;
        for statement in &statements {
            conn.exec(statement.as_str())
                .map_err(|e| hana_error(&format!("`{statement}` failed"), e))?;
        }
        Ok(())
    })
    .await
}

/// Takes a data backup: runs `BACKUP DATA ... USING BACKINT` on the
/// SYSTEMDB and returns the statement once HANA reports it complete (HANA
/// calls hdbbackint for every service meanwhile).
pub async fn backup_data(url: &HanaUrl, backup: &crate::sql::DataBackup) -> Result<String> {
    let statement = backup.statement()?;
    execute(url, vec![statement.clone()]).await?;
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdbconnect_failures_decide_retry() {
        use hdbconnect::HdbError as E;
        use std::io::ErrorKind as K;
        let io = |kind: K| E::Io {
            source: std::io::Error::from(kind),
        };
        for (err, retryable) in [
            (io(K::ConnectionRefused), true),
            (io(K::ConnectionReset), true),
            (io(K::TimedOut), true),
            (io(K::PermissionDenied), false),
            (E::ConnectionBroken { source: None }, true),
            (E::SessionClosingTransactionError, true),
            (
                E::ErrorAfterReconnect {
                    source: std::io::Error::from(K::ConnectionReset),
                    second: Box::new(io(K::ConnectionRefused)),
                },
                true,
            ),
            (
                E::Authentication {
                    source: Box::new(E::Usage("wrong password".into())),
                },
                false,
            ),
            (E::Usage("bad".into()), false),
            (E::Cesu8, false),
        ] {
            let text = err.to_string();
            let converted = hana_error("connecting to HANA", err);
            assert_eq!(converted.is_retryable(), retryable, "{text}");
            assert_eq!(converted.kind(), strata_core::ErrorKind::Engine);
            assert_eq!(converted.to_string(), format!("connecting to HANA: {text}"));
            assert!(converted.hint_text().unwrap().contains("HANA is up"));
        }
        assert!(server_code_is_retryable(131) && server_code_is_retryable(133));
        assert!(!server_code_is_retryable(258), "insufficient privilege");
        assert!(!server_code_is_retryable(10), "authentication failed");
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let url = HanaUrl::parse("hdbsql://SYSTEM:Secret1@hana:30013").unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("Secret1"), "{shown}");
        assert!(shown.contains("@hana:30013"), "{shown}");
        assert!(HanaUrl::parse("hana:30013").is_err());
    }

    /// Reads the `[backup]` and `[persistence]` settings of a real SYSTEMDB
    /// over SQL: every HANA defines `persistence.log_mode` and
    /// `persistence.log_backup_timeout_s` in global.ini's DEFAULT layer, so
    /// only a real read of `SYS.M_INIFILE_CONTENTS` gives both (an empty or
    /// failed read gives neither).
    #[tokio::test]
    #[ignore = "needs a real SAP HANA: set STRATA_TEST_HANA=hdbsql://USER:PASSWORD@host:port and run with --ignored"]
    async fn reads_backup_settings_from_a_real_hana() {
        let url = std::env::var("STRATA_TEST_HANA").unwrap_or_else(|_| {
            panic!(
                "STRATA_TEST_HANA is not set: this test needs a real SAP HANA SYSTEMDB, \
                 STRATA_TEST_HANA=hdbsql://USER:PASSWORD@host:port (the SQL port, 3<nr>13)"
            )
        });
        let url = HanaUrl::parse(&url).unwrap();
        let ini = read_global_ini(&url).await.unwrap();
        let log_mode = ini.get("persistence", "log_mode");
        assert!(
            matches!(log_mode, Some("normal" | "overwrite")),
            "persistence.log_mode from the server: {log_mode:?} in {ini:?}"
        );
        let timeout = ini.get("persistence", "log_backup_timeout_s");
        assert!(
            timeout.is_some_and(|t| t.trim().parse::<u64>().is_ok()),
            "persistence.log_backup_timeout_s from the server: {timeout:?} in {ini:?}"
        );
        // The check reports the server's own value, not HANA's default.
        let findings = crate::ini::check_backint(&ini, &Default::default());
        let finding = findings
            .iter()
            .find(|f| f.setting == "persistence.log_backup_timeout_s")
            .expect("the check covers log_backup_timeout_s");
        assert_eq!(finding.current.as_deref(), timeout);
    }
}

//! The configuration of one protected PostgreSQL cluster.
//!
//! A cluster is a `[postgres.<name>]` table in Strata's TOML config:
//!
//! ```toml
//! [postgres.main]
//! # libpq-style keyword/value connection string; a superuser or a role with
//! # EXECUTE on pg_backup_start/pg_backup_stop and pg_read_all_settings.
//! connection = "host=/var/run/postgresql port=5432 user=postgres dbname=postgres"
//! # The cluster's data directory, read directly by full backups.
//! data_directory = "/var/lib/postgresql/15/main"
//! # Where initdb/pg_ctl/pg_amcheck live (default: the newest
//! # /usr/lib/postgresql/<major>/bin, then $PATH).
//! # bin_dir = "/usr/lib/postgresql/15/bin"
//! # The OS user that owns the data directory and runs the server.
//! # os_user = "postgres"
//! # Streams read (backup) or written (restore) in parallel.
//! # parallel = 2
//! # WAL segments `wal-fetch` fetches ahead of the one recovery asked for.
//! # wal_prefetch = 4
//! # How long `backup pg` waits, after pg_backup_stop, for archive_command to
//! # have put the backup's last WAL segment into the vault (units: s, m, h).
//! # archive_wait = "2m"
//! ```
//!
//! PostgreSQL's `archive_command` then calls
//! `strata --config /etc/strata/strata.toml pg wal-push %p --cluster main`.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_core::time::Interval;
use strata_core::{Error, IoResultExt, Result};

/// One protected PostgreSQL cluster (see the module docs for the TOML form).
///
/// Its `Debug` form shows the connection string through
/// [`redacted_connection`], so that a password in it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// libpq keyword/value connection string (`host=... port=... user=... dbname=...`).
    pub connection: String,
    /// The cluster's data directory.
    pub data_directory: PathBuf,
    /// Directory holding the PostgreSQL programs (`pg_ctl`, `pg_amcheck`...).
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// The OS user that owns the data directory and runs the server.
    #[serde(default = "default_os_user")]
    pub os_user: String,
    /// Number of streams read or written in parallel by full backups and restores.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Number of WAL segments `wal-fetch` fetches ahead.
    #[serde(default = "default_prefetch")]
    pub wal_prefetch: usize,
    /// How long `backup pg` waits, after `pg_backup_stop`, for the WAL up
    /// to the backup's stop LSN to be archived into the vault; the backup
    /// fails uncommitted when it is not (written `"2m"`, `"90s"`).
    #[serde(
        default = "default_archive_wait",
        deserialize_with = "archive_wait_in_range"
    )]
    pub archive_wait: Interval,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("connection", &redacted_connection(&self.connection))
            .field("data_directory", &self.data_directory)
            .field("bin_dir", &self.bin_dir)
            .field("os_user", &self.os_user)
            .field("parallel", &self.parallel)
            .field("wal_prefetch", &self.wal_prefetch)
            .field("archive_wait", &self.archive_wait)
            .finish()
    }
}

/// What a password is shown as.
const REDACTED: &str = "<redacted>";

/// `connection` as errors and logs may show it: the password replaced by
/// `<redacted>`, everything else as written.
///
/// Both of libpq's forms are covered: the value of a `password` keyword in
/// the keyword/value form (`host=h password='a b'`, quoted or not, with
/// backslash escapes), and in the URI form
/// (`postgresql://user:secret@host/db?password=secret`) the password of the
/// user information and any `password` parameter. A text that is neither
/// well formed nor recognisable loses everything from a `password` keyword
/// on rather than showing it.
pub fn redacted_connection(connection: &str) -> String {
    let trimmed = connection.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        redacted_uri(connection)
    } else {
        redacted_keyword_values(connection)
    }
}

/// The URI form: `scheme://[user[:password]@]host[:port][/db][?params]`.
fn redacted_uri(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let query = uri[start..].find('?').map(|i| start + i);
    let authority_end = query.unwrap_or(uri.len());
    let mut out = String::with_capacity(uri.len());
    // The last `@` before the query ends the user information: a password
    // holding `/` or `@` unencoded must not slip through.
    match uri[start..authority_end].rfind('@').map(|i| start + i) {
        Some(at) => {
            let userinfo = &uri[start..at];
            out.push_str(&uri[..start]);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&uri[at..authority_end]);
        }
        None => out.push_str(&uri[..authority_end]),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = uri[query + 1..]
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => {
                    format!("{key}={REDACTED}")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// The keyword/value form: `key = value` pairs separated by whitespace; a
/// value is single-quoted (`\'` and `\\` inside) or runs to the next
/// whitespace.
fn redacted_keyword_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let take_space = |rest: &mut &str, out: &mut String| {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        *rest = trimmed;
    };
    loop {
        take_space(&mut rest, &mut out);
        if rest.is_empty() {
            return out;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        take_space(&mut rest, &mut out);
        let Some(after) = rest.strip_prefix('=') else {
            continue;
        };
        out.push('=');
        rest = after;
        take_space(&mut rest, &mut out);
        let value_end = value_length(rest);
        if key.eq_ignore_ascii_case("password") {
            out.push_str(REDACTED);
        } else {
            out.push_str(&rest[..value_end]);
        }
        rest = &rest[value_end..];
    }
}

/// The length in bytes of the value at the start of `text`: a quoted one
/// through its closing quote (all of `text` when it is never closed), an
/// unquoted one up to whitespace; a backslash escapes the next character.
fn value_length(text: &str) -> usize {
    let quoted = text.starts_with('\'');
    let mut chars = text.char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    text.len()
}

fn default_os_user() -> String {
    "postgres".to_owned()
}

fn default_parallel() -> usize {
    2
}

fn default_prefetch() -> usize {
    4
}

fn default_archive_wait() -> Interval {
    Interval(Duration::from_secs(120))
}

/// An `archive_wait` above 0 and at most a day.
fn archive_wait_in_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Interval, D::Error> {
    let wait = Interval::deserialize(d)?;
    if wait.0 == Duration::ZERO || wait.0 > Duration::from_secs(24 * 3600) {
        return Err(serde::de::Error::custom(format!(
            "`{wait}` is out of range: write a duration above 0 and at most 24h"
        )));
    }
    Ok(wait)
}

impl ClusterConfig {
    /// A configuration with defaults for everything but the connection and data directory.
    pub fn new(connection: impl Into<String>, data_directory: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            connection: connection.into(),
            data_directory: data_directory.into(),
            bin_dir: None,
            os_user: default_os_user(),
            parallel: default_parallel(),
            wal_prefetch: default_prefetch(),
            archive_wait: default_archive_wait(),
        }
    }

    /// Parses the connection string.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        self.connection.parse().map_err(|e| {
            Error::config(format!(
                "the connection string `{}` is not valid: {e}",
                redacted_connection(&self.connection)
            ))
            .hint("write it as keyword=value pairs: host=/var/run/postgresql port=5432 user=postgres dbname=postgres")
        })
    }

    /// The path of PostgreSQL program `name` (`pg_ctl`, `pg_amcheck`...).
    pub fn program(&self, name: &str) -> PathBuf {
        if let Some(dir) = &self.bin_dir {
            return dir.join(name);
        }
        default_bin_dir()
            .map(|d| d.join(name))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// A command that runs `program` as the cluster's OS user (through
    /// `runuser` when Strata runs as root, directly otherwise).
    pub fn command_as_owner(&self, program: &Path) -> Command {
        if running_as_root() && self.os_user != "root" {
            let mut cmd = Command::new("runuser");
            cmd.arg("-u").arg(&self.os_user).arg("--").arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// Checks values that can be checked without a server.
    pub fn validate(&self, name: &str) -> Result<()> {
        self.pg_config()
            .map_err(|e| e.context(format!("[postgres.{name}]")))?;
        if !self.data_directory.is_absolute() {
            return Err(Error::config(format!(
                "[postgres.{name}] data_directory `{}` is not an absolute path",
                self.data_directory.display()
            ))
            .hint("write the full path, e.g. /var/lib/postgresql/15/main"));
        }
        if self.parallel == 0 || self.parallel > 64 {
            return Err(Error::config(format!(
                "[postgres.{name}] parallel = {} is out of range",
                self.parallel
            ))
            .hint("use a value from 1 to 64; the number of cores is a good start"));
        }
        Ok(())
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin`, if any.
pub fn default_bin_dir() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, p)| p)
}

/// Whether this process runs as root (uid 0).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid of OS user `name`, from `/etc/passwd`.
pub fn os_user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").doing_at("cannot read", "/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let uid = fields[2].parse().ok();
            let gid = fields[3].parse().ok();
            if let (Some(uid), Some(gid)) = (uid, gid) {
                return Ok((uid, gid));
            }
        }
    }
    Err(
        Error::config(format!("the OS user `{name}` does not exist"))
            .hint("set os_user in the [postgres.<name>] section to the user that runs PostgreSQL"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form of password libpq accepts is hidden, and nothing else is.
    #[test]
    fn passwords_in_connection_strings_are_redacted() {
        for (written, shown) in [
            (
                "host=h port=5432 user=u password=s3cr3t dbname=d",
                "host=h port=5432 user=u password=<redacted> dbname=d",
            ),
            (
                "host=h password = 's3 cr\\'3t' user=u",
                "host=h password = <redacted> user=u",
            ),
            ("password=s3cr3t", "password=<redacted>"),
            ("PASSWORD=s3cr3t\\ x user=u", "PASSWORD=<redacted> user=u"),
            (
                "host=h password='never closed s3cr3t",
                "host=h password=<redacted>",
            ),
            (
                "postgresql://u:s3cr3t@h:5432/d?sslmode=disable",
                "postgresql://u:<redacted>@h:5432/d?sslmode=disable",
            ),
            ("postgres://u:s3/cr@3t@h/d", "postgres://u:<redacted>@h/d"),
            (
                "postgresql://u@h/d?password=s3cr3t&application_name=x",
                "postgresql://u@h/d?password=<redacted>&application_name=x",
            ),
            (
                "host=/var/run/postgresql user=postgres",
                "host=/var/run/postgresql user=postgres",
            ),
            ("postgresql:///d", "postgresql:///d"),
        ] {
            assert_eq!(redacted_connection(written), shown, "{written}");
        }
        // Both forms parse as tokio-postgres reads them: the redacted text
        // describes the same connection.
        let cfg = ClusterConfig::new("host=h user=u password='a b'", "/srv/pg");
        assert_eq!(cfg.pg_config().unwrap().get_password(), Some(&b"a b"[..]));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("a b"), "{shown}");
        assert!(shown.contains("password=<redacted>"), "{shown}");
        // An invalid string does not show its password in the error either.
        let bad = ClusterConfig::new("host=h port=x password=s3cr3t", "/srv/pg");
        let err = bad.validate("main").unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("password=<redacted>"), "{err}");
    }

    #[test]
    fn toml_defaults_and_validation() {
        let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
            "connection": "host=/tmp port=5433 user=postgres",
            "data_directory": "/srv/pg"
        }))
        .unwrap();
        assert_eq!(cfg.os_user, "postgres");
        assert_eq!(cfg.parallel, 2);
        cfg.validate("main").unwrap();
        let bad = ClusterConfig::new("host=/tmp port=notaport", "/srv/pg");
        let err = bad.validate("main").unwrap_err();
        assert!(err.to_string().contains("[postgres.main]"), "{err}");
        let relative = ClusterConfig::new("host=/tmp", "data");
        assert!(
            relative
                .validate("x")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }
}

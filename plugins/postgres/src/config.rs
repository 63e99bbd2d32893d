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
//! ```
//!
//! PostgreSQL's `archive_command` then calls
//! `strata --config /etc/strata/strata.toml pg wal-push %p --cluster main`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use strata_core::{Error, IoResultExt, Result};

/// One protected PostgreSQL cluster (see the module docs for the TOML form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }

    /// Parses the connection string.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        self.connection.parse().map_err(|e| {
            Error::config(format!(
                "the connection string `{}` is not valid: {e}",
                self.connection
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

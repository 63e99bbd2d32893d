//! The service's part of the configuration: `[service]`, protection
//! policies (`[policy.<name>]`) and protected items (`[[protect]]`).
//!
//! ```toml
//! [service]
//! socket = "/run/strata/strata.sock"   # the control socket (mode 0660)
//! socket_group = "strata"               # who may use it: status, jobs, WAL through the service
//! metrics = "127.0.0.1:9187"            # Prometheus metrics (loopback only); absent: none
//! concurrency = 2                       # jobs at once on this host
//! retry_delay = "1m"                    # first retry of a retryable failure; doubles each time
//! retries = 3                           # retries after the first attempt
//! log_format = "text"                   # or "json"
//! shutdown_grace = "5m"                 # on SIGTERM, running jobs may finish this long, then are cancelled
//!
//! [policy.standard]
//! time_zone = "Europe/Berlin"           # IANA name; schedules and retention days use it (default UTC)
//! full = "0 2 * * SUN"                  # cron (5 fields, or 6 with seconds)
//! diff = "0 2 * * MON-SAT"              # optional
//! incr = "0 */4 * * *"                  # optional
//! log_interval = "15m"                  # log backups Strata drives (SQL Server); at least 1m
//! rpo = "15m"                           # the recovery point objective `status` and metrics hold it to
//!
//! [policy.standard.retention]           # absent: nothing ever expires
//! daily = 7
//! weekly = 4
//! monthly = 12
//! yearly = 3
//! log_days = 7
//!
//! [[protect]]
//! engine = "postgres"                   # postgres (alias pg), sqlserver or hana
//! instance = "main"                     # a [postgres.main] section
//! policy = "standard"
//! ```
//!
//! Every value is checked when the file is read: a cron expression, a time
//! zone, a duration or a policy name that does not exist is an error naming
//! its line ([`validate`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};
use strata_core::catalog::manifest::BackupKind;
use strata_core::catalog::retention::Retention;
use strata_core::{Error, Result};
use toml::Spanned;

/// The shortest log backup interval a policy may ask for.
pub const MIN_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The `[service]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The control socket (mode 0660).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The group of the control socket: its members may use `strata
    /// status`, `strata jobs` and archive WAL through the service. The
    /// service's own group when absent.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Where Prometheus metrics are served (a loopback address).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Jobs that run at once on this host.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The wait before the first retry of a retryable failure; each further
    /// retry waits twice as long.
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Interval,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `text` or `json` logs.
    #[serde(default)]
    pub log_format: LogFormat,
    /// On SIGTERM, how long running jobs may go on before they are
    /// cancelled (a cancelled backup deletes what it wrote and commits
    /// nothing).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Interval,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            socket: default_socket(),
            socket_group: None,
            metrics: None,
            concurrency: default_concurrency(),
            retry_delay: default_retry_delay(),
            retries: default_retries(),
            log_format: LogFormat::default(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// The control socket's default path.
pub const DEFAULT_SOCKET: &str = "/run/strata/strata.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_concurrency() -> usize {
    2
}

fn default_retry_delay() -> Interval {
    Interval(Duration::from_secs(60))
}

fn default_shutdown_grace() -> Interval {
    Interval(Duration::from_secs(300))
}

fn default_retries() -> u32 {
    3
}

/// How the service writes its logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A protection policy (`[policy.<name>]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The time zone of the schedules and of retention's calendar days.
    #[serde(default)]
    pub time_zone: Zone,
    /// When full backups run.
    #[serde(default)]
    pub full: Option<Schedule>,
    /// When differential backups run.
    #[serde(default)]
    pub diff: Option<Schedule>,
    /// When incremental backups run.
    #[serde(default)]
    pub incr: Option<Schedule>,
    /// How often log backups run, where Strata drives them.
    #[serde(default)]
    pub log_interval: Option<Spanned<Interval>>,
    /// The recovery point objective.
    #[serde(default)]
    pub rpo: Option<Spanned<Interval>>,
    /// What is kept; absent: everything.
    #[serde(default)]
    pub retention: Option<Spanned<Retention>>,
}

impl PolicyConfig {
    /// The RPO target.
    pub fn rpo_target(&self) -> Option<Duration> {
        self.rpo.as_ref().map(|r| r.get_ref().0)
    }

    /// What is kept, when the policy expires anything.
    pub fn retention(&self) -> Option<&Retention> {
        self.retention.as_ref().map(Spanned::get_ref)
    }

    /// The schedule of `kind`, if the policy has one.
    pub fn schedule(&self, kind: BackupKind) -> Option<&Schedule> {
        match kind {
            BackupKind::Full => self.full.as_ref(),
            BackupKind::Diff => self.diff.as_ref(),
            BackupKind::Incr => self.incr.as_ref(),
            BackupKind::Log => None,
        }
    }
}

/// A protected item (`[[protect]]`): an engine instance under a policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectConfig {
    /// The engine (`postgres` or `pg`, `sqlserver`, `hana`).
    pub engine: Spanned<String>,
    /// The configured instance.
    pub instance: Spanned<String>,
    /// The databases to protect; empty or `["*"]`: every database the
    /// engine reports, new ones included at each discovery pass.
    #[serde(default)]
    pub databases: Option<Spanned<Vec<String>>>,
    /// The policy's name.
    pub policy: Spanned<String>,
}

impl ProtectConfig {
    /// Whether every database of the instance is protected.
    pub fn all_databases(&self) -> bool {
        self.databases().is_empty() || self.databases().iter().any(|d| d == "*")
    }

    /// The databases listed (empty when none are).
    pub fn databases(&self) -> &[String] {
        self.databases
            .as_ref()
            .map_or(&[], |d| d.get_ref().as_slice())
    }
}

/// A cron expression (5 fields, or 6 with seconds first), parsed with
/// `croner`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub expression: String,
    cron: croner::Cron,
}

impl Schedule {
    /// The latest slot at or before `now` in `zone`.
    pub fn previous(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&zone), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first slot after `now` in `zone`.
    pub fn next(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The schedule in words ("At 02:00 on Sunday").
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{text}` has {fields} fields; a schedule has 5 (minute hour day month weekday), or 6 with seconds first"
            ));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| {
            format!("`{text}` is not a cron expression ({e}); write e.g. \"0 2 * * SUN\"")
        })?;
        // A date that never comes (February 31st) is a mistake, not a
        // schedule that is off.
        if cron
            .find_next_occurrence(&chrono::Utc::now(), false)
            .is_err()
        {
            return Err(format!("`{text}` never fires"));
        }
        Ok(Schedule {
            expression: text.to_owned(),
            cron,
        })
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(pub Tz);

impl Default for Zone {
    fn default() -> Self {
        Zone(Tz::UTC)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<Tz>().map(Zone).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{name}` is not an IANA time zone; write e.g. \"Europe/Berlin\" or \"UTC\""
            ))
        })
    }
}

/// A duration written with units (`15m`, `1h 30m`, `90s`): core's, shared
/// with the engines' sections.
pub use strata_core::time::Interval;

/// The checks that need more than one value: every `[[protect]]` names a
/// known engine, a configured instance and an existing policy; log
/// intervals are at least [`MIN_LOG_INTERVAL`]; the metrics address is on
/// loopback. `text` and `origin` locate the mistake.
pub fn validate(config: &crate::config::Config, text: &str, origin: &str) -> Result<()> {
    let at = |span: std::ops::Range<usize>, message: String| {
        strata_core::config::invalid_at(text, origin, span.start, &message)
    };
    // The engine sections a type cannot check (SQL Server's connection
    // string, blob host and limits), so that `strata config check` and
    // every command refuse them as the engine commands would.
    for (name, instance) in &config.sqlserver {
        instance
            .validate(name)
            .map_err(|e| e.context(format!("the configuration {origin} is invalid")))?;
    }
    for (name, policy) in &config.policy {
        if let Some(interval) = &policy.log_interval
            && interval.get_ref().0 < MIN_LOG_INTERVAL
        {
            return Err(at(
                interval.span(),
                format!(
                    "policy `{name}`: log_interval {} is shorter than the minimum of 1 minute",
                    interval.get_ref()
                ),
            ));
        }
        // Errors about a policy as a whole point at its section header.
        let header = text
            .find(&format!("[policy.{name}]"))
            .or_else(|| text.find(&format!("policy.{name}")))
            .unwrap_or(0);
        if policy.full.is_none() && (policy.diff.is_some() || policy.incr.is_some()) {
            return Err(at(
                header..header,
                format!(
                    "policy `{name}` schedules differential or incremental backups but no full; add full = \"0 2 * * SUN\" or another schedule"
                ),
            ));
        }
        if let Some(rpo) = &policy.rpo
            && rpo.get_ref().0.is_zero()
        {
            return Err(at(
                rpo.span(),
                format!("policy `{name}`: an RPO of 0 cannot be met; write e.g. \"15m\""),
            ));
        }
        if let Some(retention) = &policy.retention {
            let r = retention.get_ref();
            if r.daily == 0 && r.weekly == 0 && r.monthly == 0 && r.yearly == 0 && r.log_days == 0 {
                return Err(at(
                    retention.span(),
                    format!(
                        "policy `{name}`: this retention keeps nothing but the newest backup; set daily, weekly, monthly, yearly or log_days, or remove [policy.{name}.retention] to keep everything"
                    ),
                ));
            }
        }
    }
    if config.service.concurrency == 0 {
        return Err(
            Error::config("[service] concurrency = 0 would never run a job")
                .hint(format!("set it to 1 or more in {origin}")),
        );
    }
    if let Some(address) = config.service.metrics
        && !address.ip().is_loopback()
    {
        return Err(Error::config(format!(
            "[service] metrics = \"{address}\" is not a loopback address"
        ))
        .hint("serve metrics on 127.0.0.1 or [::1] and let a local Prometheus agent or a reverse proxy reach them"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for item in &config.protect {
        let engine = crate::engines::engine_name(item.engine.get_ref())
            .map_err(|e| at(item.engine.span(), e.to_string()))?;
        if item.instance.get_ref().trim().is_empty() {
            return Err(at(
                item.instance.span(),
                "the instance name is empty".into(),
            ));
        }
        match engine {
            strata_postgres::ENGINE => {
                if !item.all_databases() {
                    return Err(at(
                        item.databases.as_ref().map_or(item.instance.span(), |d| d.span()),
                        "a PostgreSQL cluster is protected as a whole (its backups and WAL are the cluster's); remove `databases`".into(),
                    ));
                }
                if !config.postgres.contains_key(item.instance.get_ref()) {
                    return Err(at(
                        item.instance.span(),
                        format!(
                            "there is no [postgres.{}] section to protect",
                            item.instance.get_ref()
                        ),
                    ));
                }
            }
            strata_hana::ENGINE => {}
            strata_sqlserver::ENGINE => {
                if !config.sqlserver.contains_key(item.instance.get_ref()) {
                    return Err(at(
                        item.instance.span(),
                        format!(
                            "there is no [sqlserver.{}] section to protect",
                            item.instance.get_ref()
                        ),
                    ));
                }
            }
            other => {
                return Err(at(
                    item.engine.span(),
                    format!(
                        "`{other}` backups are not scheduled by the service; protect postgres, sqlserver or hana instances"
                    ),
                ));
            }
        }
        if !config.policy.contains_key(item.policy.get_ref()) {
            let known: Vec<&str> = config.policy.keys().map(String::as_str).collect();
            return Err(at(
                item.policy.span(),
                format!(
                    "there is no policy `{}` (policies: {})",
                    item.policy.get_ref(),
                    if known.is_empty() {
                        "none; add a [policy.<name>] section".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if !seen.insert((engine, item.instance.get_ref().clone())) {
            return Err(at(
                item.instance.span(),
                format!(
                    "{engine} instance `{}` is protected twice",
                    item.instance.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

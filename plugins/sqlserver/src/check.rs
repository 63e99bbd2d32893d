//! `strata sqlserver check NAME`: the server, its databases and what each
//! can get, and every missing prerequisite with the command that fixes it.
//!
//! What is checked:
//!
//! - the connection and login (statement 1): version, edition, server
//!   name, whether the login is `sysadmin` (BACKUP, RESTORE, msdb history
//!   and CREATE CREDENTIAL all need it, or the permissions listed in the
//!   finding);
//! - the databases (statements 2 and 4): recovery model, state,
//!   availability group role and whether this replica is the preferred
//!   backup replica, and which backup kinds each can get;
//! - the credential SQL Server finds by the blob URL prefix (statement 3);
//! - on this host: the blob endpoint's certificate files, whether the blob
//!   host name resolves to the listen address (SQL Server runs here and
//!   resolves it the same way), and whether a listen port below 1024 can
//!   be bound.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;
use strata_core::Result;

use crate::client::{self, Session};
use crate::config::InstanceConfig;
use crate::server::{self, DatabaseInfo, ReplicaRole, ServerInfo};
use crate::tsql;

/// One missing prerequisite, with what fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What it concerns (`login`, `credential`, `certificate`, ...).
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// The command, statement or line that fixes it.
    pub fix: String,
}

/// One database and what Strata can back up of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseReport {
    /// The database's name.
    pub name: String,
    /// `FULL`, `BULK_LOGGED` or `SIMPLE`.
    pub recovery_model: String,
    /// `ONLINE`, `RESTORING`, ...
    pub state: String,
    /// Whether it is read-only.
    pub read_only: bool,
    /// This replica's role, for a database in an availability group.
    pub availability: Option<ReplicaRole>,
    /// The backup kinds it can get here (`full`, `diff`, `log`, `copy-only`).
    pub backups: Vec<&'static str>,
    /// Why some kinds are missing, when they are.
    pub note: Option<String>,
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The configured instance.
    pub instance: String,
    /// The server, when the connection succeeded.
    pub server: Option<ServerInfo>,
    /// The prefix of the blob URLs and the credential's name.
    pub blob_url_prefix: String,
    /// The user databases (system databases are not backed up by default).
    pub databases: Vec<DatabaseReport>,
    /// Missing prerequisites; empty when the instance is ready.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing is missing.
    pub fn is_ready(&self) -> bool {
        self.findings.is_empty()
    }
}

/// What can be found out on this host without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// The endpoint certificate and key files that do not exist.
    pub missing_tls_files: Vec<PathBuf>,
    /// What the blob host name resolves to here (empty: it does not).
    pub blob_host_resolves_to: Vec<SocketAddr>,
    /// Whether this process may bind a port below 1024 (root, or
    /// `CAP_NET_BIND_SERVICE`).
    pub may_bind_low_ports: bool,
}

impl LocalFacts {
    /// Looks at this host for `instance` with `config`.
    pub async fn gather(instance: &str, config: &InstanceConfig) -> LocalFacts {
        let missing_tls_files = [
            config.tls_cert_path(instance),
            config.tls_key_path(instance),
        ]
        .into_iter()
        .filter(|p| !p.exists())
        .collect();
        let blob_host_resolves_to =
            tokio::net::lookup_host((config.blob_host.as_str(), config.blob_listen.port()))
                .await
                .map(|addrs| addrs.collect())
                .unwrap_or_default();
        LocalFacts {
            missing_tls_files,
            blob_host_resolves_to,
            may_bind_low_ports: may_bind_low_ports(),
        }
    }
}

/// Whether this process is root or holds `CAP_NET_BIND_SERVICE` (bit 10 of
/// the effective capabilities in `/proc/self/status`).
fn may_bind_low_ports() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let root = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0");
    let cap = field("CapEff:")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0);
    root || cap
}

/// Connects to the instance and reports (see the module docs). A failed
/// connection is a finding, not an error: the local checks still run.
///
/// # Errors
/// Only a configuration that does not validate.
pub async fn check(instance: &str, config: &InstanceConfig) -> Result<CheckReport> {
    config.validate(instance)?;
    let local = LocalFacts::gather(instance, config).await;
    let prefix = config.url_prefix();
    let mut databases = Vec::new();
    let mut server = None;
    let mut credential = None;
    let mut connection_error = None;
    match read_server(instance, config, &prefix).await {
        Ok((info, dbs, exists)) => {
            server = Some(info);
            databases = dbs;
            credential = Some(exists);
        }
        Err(e) => connection_error = Some(e),
    }
    let mut findings = Vec::new();
    if let Some(e) = &connection_error {
        findings.push(Finding {
            subject: "connection".into(),
            problem: e.to_string(),
            fix: e
                .hint_text()
                .unwrap_or("check `connection` in the instance's section")
                .to_owned(),
        });
    }
    findings.extend(findings_of(
        instance,
        config,
        server.as_ref(),
        credential,
        &local,
    ));
    Ok(CheckReport {
        instance: instance.to_owned(),
        server,
        blob_url_prefix: prefix,
        databases,
        findings,
    })
}

async fn read_server(
    instance: &str,
    config: &InstanceConfig,
    prefix: &str,
) -> Result<(ServerInfo, Vec<DatabaseReport>, bool)> {
    let mut conn = client::connect(instance, config, Session::Catalog).await?;
    let info = ServerInfo::read(&mut conn).await?;
    let mut reports = Vec::new();
    for db in DatabaseInfo::list(&mut conn).await? {
        if db.is_system() {
            continue;
        }
        let role = if db.in_availability_group {
            Some(ReplicaRole::read(&mut conn, &db.name).await?)
        } else {
            None
        };
        reports.push(database_report(&db, role));
    }
    let credential = server::credential_exists(&mut conn, prefix).await?;
    Ok((info, reports, credential))
}

/// What database `db` can get on this replica (`role` in an availability
/// group): SIMPLE recovery has no log backups ("Recovery models (SQL
/// Server)"); an AG secondary takes copy-only fulls and log backups only,
/// and only the preferred replica takes them ("Offload supported backups
/// to secondary replicas of an availability group").
pub fn database_report(db: &DatabaseInfo, role: Option<ReplicaRole>) -> DatabaseReport {
    let quoted = tsql::quote_ident(&db.name);
    let (backups, note): (Vec<&'static str>, Option<String>) = if !db
        .state
        .eq_ignore_ascii_case("ONLINE")
    {
        (
            Vec::new(),
            Some(format!("{}: no backups until it is ONLINE", db.state)),
        )
    } else if let Some(role) = role.filter(|r| !r.is_primary) {
        let kinds = if db.is_simple() {
            vec!["copy-only"]
        } else {
            vec!["copy-only", "log"]
        };
        let note = if role.is_preferred {
            "secondary replica: copy-only full and log backups only; differentials run on the primary".to_owned()
        } else {
            "secondary replica that is not the preferred backup replica: backups run on the preferred one".to_owned()
        };
        (
            if role.is_preferred { kinds } else { Vec::new() },
            Some(note),
        )
    } else if db.is_simple() {
        (
            vec!["full", "diff", "copy-only"],
            Some(format!(
                "SIMPLE recovery: full and diff backups only, no log backups and no point-in-time restore (ALTER DATABASE {quoted} SET RECOVERY FULL, then a full backup, to get them)"
            )),
        )
    } else {
        (vec!["full", "diff", "log", "copy-only"], None)
    };
    DatabaseReport {
        name: db.name.clone(),
        recovery_model: db.recovery_model.clone(),
        state: db.state.clone(),
        read_only: db.read_only,
        availability: role,
        backups,
        note,
    }
}

/// The missing prerequisites, from what the server said (`server`, and
/// whether the credential exists: `None` when the server was not reached)
/// and what this host shows.
pub fn findings_of(
    instance: &str,
    config: &InstanceConfig,
    server: Option<&ServerInfo>,
    credential: Option<bool>,
    local: &LocalFacts,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(server) = server
        && !server.is_sysadmin
    {
        let login = tsql::quote_ident(config.login().as_deref().unwrap_or("<login>"));
        findings.push(Finding {
            subject: "login".into(),
            problem: format!(
                "the login {login} is not sysadmin: BACKUP, RESTORE, msdb's history and CREATE CREDENTIAL need it (or the permissions below)"
            ),
            fix: format!(
                "ALTER SERVER ROLE [sysadmin] ADD MEMBER {login}; or at least: ALTER SERVER ROLE [dbcreator] ADD MEMBER {login}; GRANT ALTER ANY CREDENTIAL, VIEW SERVER STATE, VIEW ANY DEFINITION TO {login}; in msdb and in every protected database: CREATE USER {login} FOR LOGIN {login}; ALTER ROLE [db_backupoperator] ADD MEMBER {login} (and [db_datareader] in msdb)"
            ),
        });
    }
    if credential == Some(false) {
        findings.push(Finding {
            subject: "credential".into(),
            problem: format!(
                "SQL Server has no credential for {}, so BACKUP ... TO URL cannot write there",
                config.url_prefix()
            ),
            fix: format!(
                "{} (or `strata sqlserver setup {instance} --apply`)",
                tsql::create_credential(&config.url_prefix())
            ),
        });
    }
    for path in &local.missing_tls_files {
        findings.push(Finding {
            subject: "certificate".into(),
            problem: format!(
                "the blob endpoint's TLS file {} does not exist",
                path.display()
            ),
            fix: format!("strata sqlserver setup {instance}"),
        });
    }
    let listen = config.blob_listen;
    if !local
        .blob_host_resolves_to
        .iter()
        .any(|a| a.ip() == listen.ip())
    {
        let found = if local.blob_host_resolves_to.is_empty() {
            "does not resolve".to_owned()
        } else {
            let ips: Vec<String> = local
                .blob_host_resolves_to
                .iter()
                .map(|a| a.ip().to_string())
                .collect();
            format!("resolves to {}", ips.join(", "))
        };
        findings.push(Finding {
            subject: "host name".into(),
            problem: format!(
                "{} {found} on this host, not to the endpoint's address {}",
                config.blob_host,
                listen.ip()
            ),
            fix: format!(
                "add the line `{} {}` to /etc/hosts (on Windows: C:\\Windows\\System32\\drivers\\etc\\hosts)",
                listen.ip(),
                config.blob_host
            ),
        });
    }
    if listen.port() < 1024 && !local.may_bind_low_ports {
        findings.push(Finding {
            subject: "listen port".into(),
            problem: format!(
                "port {} is below 1024 and this process may not bind it",
                listen.port()
            ),
            fix: "AmbientCapabilities=CAP_NET_BIND_SERVICE in the [Service] section of strata.service (systemctl edit strata), or a blob_listen port from 1024 up".into(),
        });
    }
    findings
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "SQL Server instance {}", self.instance)?;
        if let Some(s) = &self.server {
            writeln!(
                f,
                "  server: {} ({} {}), login is {}sysadmin",
                s.server_name,
                s.edition,
                s.product_version,
                if s.is_sysadmin { "" } else { "not " }
            )?;
            if s.hadr_enabled {
                writeln!(f, "  Always On availability groups: enabled")?;
            }
        }
        writeln!(f, "  blob URLs: {}/...", self.blob_url_prefix)?;
        if !self.databases.is_empty() {
            writeln!(f, "  databases:")?;
        }
        for db in &self.databases {
            let ag = match db.availability {
                Some(r) => format!(
                    ", {} replica{}",
                    if r.is_primary { "primary" } else { "secondary" },
                    if r.is_preferred {
                        ", preferred for backups"
                    } else {
                        ""
                    }
                ),
                None => String::new(),
            };
            let kinds = if db.backups.is_empty() {
                "none".to_owned()
            } else {
                db.backups.join(", ")
            };
            writeln!(
                f,
                "    {}: {}, {}{}{}; backups: {kinds}",
                db.name,
                db.recovery_model,
                db.state,
                if db.read_only { ", read-only" } else { "" },
                ag
            )?;
            if let Some(note) = &db.note {
                writeln!(f, "      {note}")?;
            }
        }
        if self.findings.is_empty() {
            writeln!(f, "  ready: nothing is missing")?;
        } else {
            writeln!(f, "  missing:")?;
            for finding in &self.findings {
                writeln!(f, "    {}: {}", finding.subject, finding.problem)?;
                writeln!(f, "      fix: {}", finding.fix)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InstanceConfig {
        InstanceConfig::new(
            "server=tcp:127.0.0.1,1433;user=backup svc;password=p",
            "strata-blob.local",
        )
    }

    fn server(sysadmin: bool) -> ServerInfo {
        ServerInfo {
            product_version: "16.0.4135.4".into(),
            edition: "Developer Edition (64-bit)".into(),
            server_name: "sql1".into(),
            hadr_enabled: false,
            is_sysadmin: sysadmin,
            data_path: Some("/var/opt/mssql/data/".into()),
            log_path: Some("/var/opt/mssql/data/".into()),
            utc_offset_minutes: 0,
        }
    }

    fn ready_host() -> LocalFacts {
        LocalFacts {
            missing_tls_files: vec![],
            blob_host_resolves_to: vec!["127.0.0.1:443".parse().unwrap()],
            may_bind_low_ports: true,
        }
    }

    #[test]
    fn a_ready_instance_has_no_findings() {
        let f = findings_of(
            "main",
            &config(),
            Some(&server(true)),
            Some(true),
            &ready_host(),
        );
        assert_eq!(f, []);
    }

    #[test]
    fn each_missing_prerequisite_comes_with_its_fix() {
        let local = LocalFacts {
            missing_tls_files: vec![PathBuf::from("/etc/strata/sqlserver/main/blob.crt")],
            blob_host_resolves_to: vec![],
            may_bind_low_ports: false,
        };
        let f = findings_of("main", &config(), Some(&server(false)), Some(false), &local);
        let fixes: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.subject.as_str(), f.fix.as_str()))
            .collect();
        assert_eq!(fixes.len(), 5, "{fixes:#?}");
        assert!(
            fixes[0]
                .1
                .starts_with("ALTER SERVER ROLE [sysadmin] ADD MEMBER [backup svc];")
        );
        assert_eq!(
            fixes[1].1,
            "CREATE CREDENTIAL [https://strata-blob.local/strata] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = N'sv=2020-10-02&sig=strata-local-endpoint' (or `strata sqlserver setup main --apply`)"
        );
        assert_eq!(fixes[2], ("certificate", "strata sqlserver setup main"));
        assert!(
            fixes[3]
                .1
                .starts_with("add the line `127.0.0.1 strata-blob.local` to /etc/hosts")
        );
        assert!(
            fixes[4]
                .1
                .starts_with("AmbientCapabilities=CAP_NET_BIND_SERVICE")
        );
        // A name resolving elsewhere says where.
        let elsewhere = LocalFacts {
            blob_host_resolves_to: vec!["10.0.0.8:443".parse().unwrap()],
            ..ready_host()
        };
        let f = findings_of("main", &config(), None, None, &elsewhere);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].problem.contains("resolves to 10.0.0.8"),
            "{}",
            f[0].problem
        );
    }

    fn db(name: &str, model: &str, state: &str) -> DatabaseInfo {
        DatabaseInfo {
            name: name.into(),
            database_id: 7,
            recovery_model: model.into(),
            state: state.into(),
            read_only: false,
            in_availability_group: false,
        }
    }

    #[test]
    fn each_database_says_which_backups_it_can_get() {
        let full = database_report(&db("Sales", "FULL", "ONLINE"), None);
        assert_eq!(full.backups, ["full", "diff", "log", "copy-only"]);
        let simple = database_report(&db("Stage", "SIMPLE", "ONLINE"), None);
        assert_eq!(simple.backups, ["full", "diff", "copy-only"]);
        assert!(simple.note.as_deref().unwrap().contains("no log backups"));
        assert!(
            simple
                .note
                .as_deref()
                .unwrap()
                .contains("ALTER DATABASE [Stage] SET RECOVERY FULL")
        );
        let restoring = database_report(&db("Old", "FULL", "RESTORING"), None);
        assert!(restoring.backups.is_empty());
        let secondary = database_report(
            &db("Sales", "FULL", "ONLINE"),
            Some(ReplicaRole {
                is_primary: false,
                is_preferred: true,
            }),
        );
        assert_eq!(secondary.backups, ["copy-only", "log"]);
        let not_preferred = database_report(
            &db("Sales", "FULL", "ONLINE"),
            Some(ReplicaRole {
                is_primary: false,
                is_preferred: false,
            }),
        );
        assert!(not_preferred.backups.is_empty());

        let report = CheckReport {
            instance: "main".into(),
            server: Some(server(true)),
            blob_url_prefix: "https://strata-blob.local/strata".into(),
            databases: vec![full, simple, secondary],
            findings: vec![],
        };
        let text = report.to_string();
        assert!(
            text.contains(
                "server: sql1 (Developer Edition (64-bit) 16.0.4135.4), login is sysadmin"
            ),
            "{text}"
        );
        assert!(text.contains("Sales: FULL, ONLINE, secondary replica, preferred for backups; backups: copy-only, log"), "{text}");
        assert!(
            text.contains("Stage: SIMPLE, ONLINE; backups: full, diff, copy-only"),
            "{text}"
        );
        assert!(text.contains("ready: nothing is missing"), "{text}");
    }
}

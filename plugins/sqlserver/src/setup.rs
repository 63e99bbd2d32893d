//! `strata sqlserver setup NAME [--apply]`: what SQL Server needs before its
//! first `BACKUP ... TO URL` into Strata's blob endpoint.
//!
//! 1. The endpoint's TLS certificate: a private CA and a certificate for
//!    `blob_host` signed by it ([`crate::tls`]), written unless they exist.
//! 2. The trust and name steps, printed for Linux and Windows: SQL Server
//!    must trust the CA (on Linux the directory
//!    `/var/opt/mssql/security/ca-certificates`, read at start-up; on
//!    Windows the machine's Trusted Root store) and resolve `blob_host` to
//!    the endpoint's address (the hosts file), since SQL Server needs a
//!    host name in a URL, not an address.
//! 3. The credential SQL Server finds by the URL prefix (statement 11),
//!    created with `--apply` (which connects) or printed.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use strata_core::{Error, Result};

use crate::client::{self, Session};
use crate::config::InstanceConfig;
use crate::server;
use crate::tls;
use crate::tsql;

/// The endpoint's certificate files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateStep {
    /// The CA certificate SQL Server must trust.
    pub ca: PathBuf,
    /// The endpoint's certificate chain.
    pub cert: PathBuf,
    /// The endpoint's private key.
    pub key: PathBuf,
    /// Whether this run created them (they did not exist).
    pub created: bool,
}

/// The commands for one platform, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlatformSteps {
    /// `Linux` or `Windows`.
    pub platform: &'static str,
    /// Commands to run as root / Administrator on the SQL Server host.
    pub commands: Vec<String>,
}

/// What became of the SQL Server credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialState {
    /// Created by this run (`--apply`).
    Created,
    /// It existed already.
    Exists,
    /// Not applied: run the statement (or `setup --apply`).
    ToRun,
}

/// What `setup` did and what is left to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetupReport {
    /// The configured instance.
    pub instance: String,
    /// The certificate files.
    pub certificate: CertificateStep,
    /// The trust and host-name steps per platform.
    pub steps: Vec<PlatformSteps>,
    /// Statement 11.
    pub credential_statement: String,
    /// What became of the credential.
    pub credential: CredentialState,
}

/// Runs the setup of `instance` (see the module docs); with `apply`, it
/// connects to SQL Server and creates the credential.
///
/// # Errors
/// A configuration that does not validate, or whose `tls_cert`/`tls_key`
/// are missing files with other names than setup writes
/// ([`ErrorKind::Config`](strata_core::ErrorKind::Config)); a file that
/// cannot be written; with `apply`, a server that cannot be reached or
/// refuses the statement.
pub async fn setup(instance: &str, config: &InstanceConfig, apply: bool) -> Result<SetupReport> {
    config.validate(instance)?;
    let certificate = certificate(instance, config)?;
    let steps = trust_steps(instance, config, &certificate.ca);
    let statement = tsql::create_credential(&config.url_prefix());
    let credential = if apply {
        let mut conn = client::connect(instance, config, Session::Catalog).await?;
        if server::credential_exists(&mut conn, &config.url_prefix()).await? {
            CredentialState::Exists
        } else {
            conn.execute(&statement, "creating the credential for the blob endpoint")
                .await?;
            CredentialState::Created
        }
    } else {
        CredentialState::ToRun
    };
    Ok(SetupReport {
        instance: instance.to_owned(),
        certificate,
        steps,
        credential_statement: statement,
        credential,
    })
}

/// The certificate files of `instance`, created when missing.
fn certificate(instance: &str, config: &InstanceConfig) -> Result<CertificateStep> {
    let cert = config.tls_cert_path(instance);
    let key = config.tls_key_path(instance);
    let dir = cert.parent().map(PathBuf::from).unwrap_or_default();
    let ca = dir.join(tls::CA_FILE);
    if cert.exists() && key.exists() {
        return Ok(CertificateStep {
            ca,
            cert,
            key,
            created: false,
        });
    }
    if cert != dir.join(tls::CERT_FILE) || key != dir.join(tls::KEY_FILE) {
        return Err(Error::config(format!(
            "[sqlserver.{instance}] names {} and {}, which do not both exist, and setup writes {} and {} in one directory",
            cert.display(),
            key.display(),
            tls::CERT_FILE,
            tls::KEY_FILE
        ))
        .hint("remove tls_cert and tls_key to let setup create the files, or provide both files yourself"));
    }
    let files = tls::generate(&config.blob_host)?.write(&dir)?;
    Ok(CertificateStep {
        ca: files.ca,
        cert: files.cert,
        key: files.key,
        created: true,
    })
}

/// The trust and host-name commands for Linux and Windows.
pub fn trust_steps(
    instance: &str,
    config: &InstanceConfig,
    ca: &std::path::Path,
) -> Vec<PlatformSteps> {
    let hosts_line = format!("{} {}", config.blob_listen.ip(), config.blob_host);
    let ca = ca.display();
    vec![
        PlatformSteps {
            platform: "Linux",
            commands: vec![
                format!(
                    "install -D -o mssql -g mssql -m 0644 {ca} /var/opt/mssql/security/ca-certificates/strata-{instance}.crt"
                ),
                "systemctl restart mssql-server".to_owned(),
                format!("grep -qxF '{hosts_line}' /etc/hosts || echo '{hosts_line}' >> /etc/hosts"),
            ],
        },
        PlatformSteps {
            platform: "Windows",
            commands: vec![
                format!(
                    "Import-Certificate -FilePath '{ca}' -CertStoreLocation Cert:\\LocalMachine\\Root"
                ),
                format!(
                    "Add-Content -Path \"$env:SystemRoot\\System32\\drivers\\etc\\hosts\" -Value '{hosts_line}'"
                ),
                "Restart-Service -Name MSSQLSERVER -Force".to_owned(),
            ],
        },
    ]
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.certificate;
        writeln!(
            f,
            "blob endpoint certificate for {}: {} {} and {} (CA: {})",
            self.instance,
            if c.created { "created" } else { "kept" },
            c.cert.display(),
            c.key.display(),
            c.ca.display()
        )?;
        writeln!(
            f,
            "\nOn the SQL Server host, trust the CA and resolve the blob host name:"
        )?;
        for platform in &self.steps {
            writeln!(f, "  {} (as root / Administrator):", platform.platform)?;
            for command in &platform.commands {
                writeln!(f, "    {command}")?;
            }
        }
        match self.credential {
            CredentialState::Created => writeln!(f, "\nSQL Server credential created:")?,
            CredentialState::Exists => writeln!(f, "\nSQL Server credential exists already:")?,
            CredentialState::ToRun => writeln!(
                f,
                "\nThen create the SQL Server credential (or run setup again with --apply):"
            )?,
        }
        writeln!(f, "    {};", self.credential_statement)?;
        writeln!(
            f,
            "\nCheck the result with: strata sqlserver check {}",
            self.instance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn setup_writes_the_certificate_once_and_prints_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = InstanceConfig::new(
            "server=tcp:127.0.0.1,1433;user=u;password=p",
            "strata-blob.local",
        );
        config.tls_cert = Some(dir.path().join("main/blob.crt"));
        config.tls_key = Some(dir.path().join("main/blob.key"));
        let report = setup("main", &config, false).await.unwrap();
        assert!(report.certificate.created);
        let ca = std::fs::read_to_string(&report.certificate.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(report.certificate.key.exists());
        assert_eq!(report.credential, CredentialState::ToRun);
        let text = report.to_string();
        assert!(text.contains(&format!(
            "install -D -o mssql -g mssql -m 0644 {} /var/opt/mssql/security/ca-certificates/strata-main.crt",
            report.certificate.ca.display()
        )), "{text}");
        assert!(
            text.contains("echo '127.0.0.1 strata-blob.local' >> /etc/hosts"),
            "{text}"
        );
        assert!(
            text.contains("-CertStoreLocation Cert:\\LocalMachine\\Root"),
            "{text}"
        );
        assert!(text.contains("CREATE CREDENTIAL [https://strata-blob.local/strata] WITH IDENTITY = N'SHARED ACCESS SIGNATURE'"), "{text}");

        // A second run keeps the files.
        let key = std::fs::read(&report.certificate.key).unwrap();
        let again = setup("main", &config, false).await.unwrap();
        assert!(!again.certificate.created);
        assert_eq!(std::fs::read(&again.certificate.key).unwrap(), key);

        // Names setup does not write are refused when missing.
        config.tls_cert = Some(dir.path().join("other/server.pem"));
        config.tls_key = Some(dir.path().join("other/server.key"));
        let err = setup("main", &config, false).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("setup writes blob.crt and blob.key"),
            "{err}"
        );
    }
}

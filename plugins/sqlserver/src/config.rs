//! The configuration of one protected SQL Server instance.
//!
//! An instance is a `[sqlserver.<name>]` table in Strata's TOML config:
//!
//! ```toml
//! [sqlserver.main]
//! # ADO.NET-style connection string as tiberius reads it: a SQL login that
//! # is sysadmin (or holds the permissions `strata sqlserver check` lists).
//! connection = "server=tcp:127.0.0.1,1433;user=strata;password=..."   # TLS trust: the keys below, not the string
//! # TLS to SQL Server: "required" (default), "off" (the login only) or
//! # "not-supported" (no TLS at all; a server on this host only).
//! # encryption = "required"
//! # The CA of SQL Server's certificate, or trust_server_certificate = true
//! # to accept any (a server on this host only).
//! # trust_ca = "/etc/strata/sqlserver/sql-ca.pem"
//! # The blob endpoint SQL Server writes to: the host name in the URLs (it must
//! # resolve to blob_listen on the SQL Server host; SQL Server needs a name, not
//! # an IP address) and the loopback address the plugin listens on.
//! blob_host = "strata-blob.local"
//! # blob_listen = "127.0.0.1:443"
//! # blob_port = 443        # the port in the URLs (default: the listen port)
//! # The endpoint's certificate and key, written by `strata sqlserver setup`
//! # (default: /etc/strata/sqlserver/<name>/blob.crt and blob.key).
//! # tls_cert = "/etc/strata/sqlserver/main/blob.crt"
//! # tls_key  = "/etc/strata/sqlserver/main/blob.key"
//! # Who compresses: "sqlserver" (BACKUP ... WITH COMPRESSION, the default)
//! # or "strata" (NO_COMPRESSION; the vault writer's zstd compresses).
//! # compression = "sqlserver"
//! # URLs (stripes) per backup: 0 = one per 100 GiB of database, at least 1.
//! # stripes = 0
//! # Blocks (4 MiB each) the endpoint holds in memory per backup to reorder
//! # retried or concurrent puts, shared by the stripes (at least 4 each).
//! # reorder_window = 8
//! ```
//!
//! Serde reads the table (unknown keys are refused with their line by the
//! configuration loader); [`InstanceConfig::validate`] then checks what a
//! type cannot, naming the section and key of every mistake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_core::{Error, Result};

/// SQL Server accepts at most 64 backup devices in one `BACKUP` statement
/// (Microsoft's "BACKUP (Transact-SQL)": "up to 64 devices").
pub const MAX_STRIPES: usize = 64;

/// The database size each stripe carries when `stripes = 0`: a block blob
/// holds at most 50,000 blocks of 4 MiB (about 195 GiB, Microsoft's "SQL
/// Server backup to URL best practices"), and half of that leaves room for
/// SQL Server writing smaller blocks.
pub const BYTES_PER_STRIPE: u64 = 100 << 30;

/// Where `strata sqlserver setup` keeps an instance's files by default.
pub const DEFAULT_CERT_DIR: &str = "/etc/strata/sqlserver";

/// TLS between Strata and SQL Server (the TDS connection, not the blob endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// The whole session is encrypted (the default).
    #[default]
    Required,
    /// Only the login packet is encrypted.
    Off,
    /// No TLS at all: allowed only for a server on this host.
    NotSupported,
}

/// Who compresses a backup's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionChoice {
    /// SQL Server (`BACKUP ... WITH COMPRESSION`); the vault writer's zstd
    /// then finds little left to gain.
    #[default]
    Sqlserver,
    /// Strata (`WITH NO_COMPRESSION`): the writer's zstd compresses the
    /// parts on every core.
    Strata,
}

impl CompressionChoice {
    /// The name recorded in a manifest's `engine_meta.compression`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionChoice::Sqlserver => "sqlserver",
            CompressionChoice::Strata => "strata",
        }
    }
}

/// One protected SQL Server instance (see the module docs for the TOML form).
///
/// Its `Debug` form hides the password of the connection string, so that
/// no log line or error report ever carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// ADO.NET-style connection string (`server=tcp:host,port;user=...;password=...`).
    pub connection: String,
    /// TLS to SQL Server.
    #[serde(default)]
    pub encryption: Encryption,
    /// A PEM or DER file with the CA of SQL Server's certificate.
    #[serde(default)]
    pub trust_ca: Option<PathBuf>,
    /// Accept any certificate SQL Server presents (a server on this host only).
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// The host name in the blob URLs SQL Server writes to.
    pub blob_host: String,
    /// The loopback address the blob endpoint listens on. Port 0 takes a
    /// free port (tests): the URLs then carry the port actually bound, and
    /// the credential SQL Server needs changes with it.
    #[serde(default = "default_blob_listen")]
    pub blob_listen: SocketAddr,
    /// The port in the blob URLs (default: `blob_listen`'s port).
    #[serde(default)]
    pub blob_port: Option<u16>,
    /// The blob endpoint's certificate (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The blob endpoint's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Who compresses backups.
    #[serde(default)]
    pub compression: CompressionChoice,
    /// URLs (stripes) per backup; 0: one per [`BYTES_PER_STRIPE`] of
    /// database, at least one.
    #[serde(default)]
    pub stripes: usize,
    /// Blocks the endpoint holds in memory per backup to reorder retried or
    /// concurrent puts, shared by the stripes (at least 4 each).
    #[serde(default = "default_reorder_window")]
    pub reorder_window: usize,
}

impl std::fmt::Debug for InstanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceConfig")
            .field("connection", &redacted_connection(&self.connection))
            .field("encryption", &self.encryption)
            .field("trust_ca", &self.trust_ca)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("blob_host", &self.blob_host)
            .field("blob_listen", &self.blob_listen)
            .field("blob_port", &self.blob_port)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("compression", &self.compression)
            .field("stripes", &self.stripes)
            .field("reorder_window", &self.reorder_window)
            .finish()
    }
}

/// `connection` with the value of every `password`/`pwd` key replaced by
/// `<redacted>` (ADO.NET keys are case-insensitive; a quoted value may hold
/// `;`, so everything after the key up to the next key is dropped).
pub fn redacted_connection(connection: &str) -> String {
    let mut out = Vec::new();
    let mut hiding = false;
    for part in connection.split(';') {
        let key = part
            .split_once('=')
            .map(|(k, _)| k.trim().to_ascii_lowercase());
        match key.as_deref() {
            Some("password" | "pwd") => {
                hiding = true;
                let (k, _) = part.split_once('=').expect("has a key");
                out.push(format!("{k}=<redacted>"));
            }
            Some(k) if hiding && !KNOWN_KEYS.contains(&k) => {}
            None if hiding => {}
            _ => {
                hiding = false;
                out.push(part.to_owned());
            }
        }
    }
    out.join(";")
}

/// ADO.NET connection-string keys tiberius reads, to find where a quoted
/// password that holds `;` ends.
const KNOWN_KEYS: &[&str] = &[
    "server",
    "data source",
    "address",
    "addr",
    "network address",
    "user",
    "user id",
    "uid",
    "database",
    "initial catalog",
    "encrypt",
    "trustservercertificate",
    "trustservercertificateca",
    "integratedsecurity",
    "integrated security",
    "application name",
    "applicationintent",
];

fn default_blob_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 443))
}

fn default_reorder_window() -> usize {
    8
}

impl InstanceConfig {
    /// A configuration with defaults for everything but the connection
    /// string and the blob host name.
    pub fn new(connection: impl Into<String>, blob_host: impl Into<String>) -> Self {
        InstanceConfig {
            connection: connection.into(),
            encryption: Encryption::default(),
            trust_ca: None,
            trust_server_certificate: false,
            blob_host: blob_host.into(),
            blob_listen: default_blob_listen(),
            blob_port: None,
            tls_cert: None,
            tls_key: None,
            compression: CompressionChoice::default(),
            stripes: 0,
            reorder_window: default_reorder_window(),
        }
    }

    /// Checks what can be checked without a server; errors name
    /// `[sqlserver.<instance>]` and the key, with a hint that fixes it.
    pub fn validate(&self, instance: &str) -> Result<()> {
        let section = format!("[sqlserver.{instance}]");
        let bad = |key: &str, problem: String| Error::config(format!("{section} {key}: {problem}"));

        let parsed = tiberius::Config::from_ado_string(&self.connection).map_err(|e| {
            bad("connection", format!("the connection string is not valid: {e}")).hint(
                "write it as server=tcp:HOST,PORT;user=LOGIN;password=SECRET (quote values holding `;` as password='a;b')",
            )
        })?;
        let in_string = |key: &str| ado_value(&self.connection, &[key]).is_some();
        if (self.trust_ca.is_some() || self.trust_server_certificate)
            && (in_string("trustservercertificate") || in_string("trustservercertificateca"))
        {
            return Err(bad(
                "trust_ca",
                "the connection string already says which certificate to trust".into(),
            )
            .hint("set the trust either in the connection string or with trust_ca / trust_server_certificate, not both"));
        }
        if self.trust_ca.is_some() && self.trust_server_certificate {
            return Err(bad(
                "trust_server_certificate",
                "trust_ca and trust_server_certificate exclude each other".into(),
            )
            .hint("keep trust_ca (the CA that signed SQL Server's certificate) and remove trust_server_certificate"));
        }
        if let Some(ca) = &self.trust_ca
            && !ca.is_absolute()
        {
            return Err(bad(
                "trust_ca",
                format!("`{}` is not an absolute path", ca.display()),
            )
            .hint("write the full path of the CA file, e.g. /etc/strata/sqlserver/sql-ca.pem"));
        }
        let server_host = parsed.get_addr();
        let local_server = is_local_host(&server_host);
        if self.encryption == Encryption::NotSupported && !local_server {
            return Err(bad(
                "encryption",
                format!("\"not-supported\" sends the password in clear text to {server_host}"),
            )
            .hint("use encryption = \"required\" for a server on another host; \"not-supported\" is for a server on this host only"));
        }
        if self.trust_server_certificate && !local_server {
            return Err(bad(
                "trust_server_certificate",
                format!("accepting any certificate from {server_host} allows a man in the middle"),
            )
            .hint("set trust_ca to the CA of SQL Server's certificate"));
        }

        check_host_name(&self.blob_host).map_err(|problem| {
            bad("blob_host", problem).hint(
                "use a DNS name such as strata-blob.local that resolves to blob_listen on the SQL Server host (SQL Server refuses IP addresses in backup URLs)",
            )
        })?;
        if !self.blob_listen.ip().is_loopback() {
            return Err(bad(
                "blob_listen",
                format!("{} is not a loopback address", self.blob_listen),
            )
            .hint("the endpoint accepts any request it receives: listen on 127.0.0.1 (SQL Server must run on this host)"));
        }
        if self.blob_port == Some(0) {
            return Err(bad("blob_port", "0 is not a port".into())
                .hint("remove blob_port to use blob_listen's port"));
        }
        for (key, path) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(bad(key, format!("`{}` is not an absolute path", path.display()))
                    .hint("write the full path, or remove the key to use the files `strata sqlserver setup` writes"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(bad(
                if self.tls_cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                },
                "tls_cert and tls_key go together".into(),
            )
            .hint("set both, or neither to use the files `strata sqlserver setup` writes"));
        }
        if self.stripes > MAX_STRIPES {
            return Err(bad(
                "stripes",
                format!(
                    "{} is more than SQL Server's {MAX_STRIPES} backup devices",
                    self.stripes
                ),
            )
            .hint("use 0 (one per 100 GiB) or a number from 1 to 64"));
        }
        if self.reorder_window == 0 || self.reorder_window > 64 {
            return Err(bad(
                "reorder_window",
                format!("{} is out of range", self.reorder_window),
            )
            .hint(
                "use a number of blocks from 1 to 64 (8 by default; each block is up to 4 MiB)",
            ));
        }
        Ok(())
    }

    /// The port in the blob URLs.
    pub fn url_port(&self) -> u16 {
        self.blob_port.unwrap_or(self.blob_listen.port())
    }

    /// The prefix of every blob URL and the name of the SQL Server
    /// credential that covers them: `https://<blob_host>[:<port>]/strata`
    /// (the port left out when it is 443). With a listen port of 0 and no
    /// `blob_port`, the endpoint's own `credential_name` knows the port.
    pub fn url_prefix(&self) -> String {
        match self.url_port() {
            443 => format!("https://{}/strata", self.blob_host),
            port => format!("https://{}:{port}/strata", self.blob_host),
        }
    }

    /// The endpoint certificate's path: `tls_cert`, or
    /// `/etc/strata/sqlserver/<instance>/blob.crt`.
    pub fn tls_cert_path(&self, instance: &str) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_CERT_DIR).join(instance).join("blob.crt"))
    }

    /// The endpoint key's path: `tls_key`, or
    /// `/etc/strata/sqlserver/<instance>/blob.key`.
    pub fn tls_key_path(&self, instance: &str) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_CERT_DIR).join(instance).join("blob.key"))
    }

    /// The SQL login of the connection string (`user`, `uid`, `username` or
    /// `user id`), if it names one.
    pub fn login(&self) -> Option<String> {
        ado_value(&self.connection, &["user", "uid", "username", "user id"])
    }
}

/// The value of the first of `keys` (lowercase) in an ADO.NET connection
/// string, unquoted; keys compare case-insensitively, as tiberius reads them.
fn ado_value(connection: &str, keys: &[&str]) -> Option<String> {
    // Only for reading plain keys back (the login, trust settings): a
    // quoted value holding `;` is cut, which never hides a key name.
    connection.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        keys.contains(&key.as_str()).then(|| {
            let value = value.trim();
            value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .or_else(|| value.strip_prefix('{').and_then(|v| v.strip_suffix('}')))
                .unwrap_or(value)
                .to_owned()
        })
    })
}

/// Whether `addr` (`host:port` as tiberius gives it) is this host.
fn is_local_host(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host == "."
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why `host` cannot be the host name of a blob URL, if it cannot: SQL
/// Server wants a DNS name (letters, digits, `-` and `.` labels), not an
/// IP address.
fn check_host_name(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("the host name is empty".into());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("`{host}` is an IP address, not a host name"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a valid DNS host name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        sqlserver: BTreeMap<String, InstanceConfig>,
    }

    fn parse(text: &str) -> Result<InstanceConfig> {
        let file: File = strata_core::config::parse(text, "strata.toml")?;
        let (name, config) = file.sqlserver.into_iter().next().unwrap();
        config.validate(&name)?;
        Ok(config)
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let config = InstanceConfig::new(
            "server=tcp:h,1;User ID=strata;Password='s3cr;et';Database=master",
            "blob.local",
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("et'"), "{shown}");
        assert!(shown.contains("Password=<redacted>"), "{shown}");
        assert!(shown.contains("Database=master"), "{shown}");
        assert!(shown.contains("User ID=strata"), "{shown}");
        assert_eq!(
            redacted_connection("server=tcp:h,1;pwd=x;user=u"),
            "server=tcp:h,1;pwd=<redacted>;user=u"
        );
    }

    const MINIMAL: &str = "[sqlserver.main]\nconnection = \"server=tcp:127.0.0.1,1433;user=strata;password=x\"\nblob_host = \"strata-blob.local\"\n";

    #[test]
    fn defaults_and_urls() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.encryption, Encryption::Required);
        assert_eq!(config.compression, CompressionChoice::Sqlserver);
        assert_eq!(config.stripes, 0);
        assert_eq!(config.reorder_window, 8);
        assert_eq!(config.url_prefix(), "https://strata-blob.local/strata");
        assert_eq!(config.login().as_deref(), Some("strata"));
        assert_eq!(
            config.tls_cert_path("main"),
            PathBuf::from("/etc/strata/sqlserver/main/blob.crt")
        );
        let config = parse(&format!(
            "{MINIMAL}blob_listen = \"127.0.0.1:8443\"\ncompression = \"strata\"\nencryption = \"not-supported\"\n"
        ))
        .unwrap();
        assert_eq!(config.url_prefix(), "https://strata-blob.local:8443/strata");
        assert_eq!(config.compression, CompressionChoice::Strata);
        let config = parse(&format!(
            "{MINIMAL}blob_port = 443\nblob_listen = \"127.0.0.1:8443\"\n"
        ))
        .unwrap();
        assert_eq!(config.url_prefix(), "https://strata-blob.local/strata");
    }

    #[test]
    fn type_mistakes_name_their_line() {
        let err = parse(&format!("{MINIMAL}compresion = \"strata\"\n")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `compresion`"),
            "{err}"
        );
        assert_eq!(
            err.hint_text(),
            Some("fix line 4 of strata.toml: correct the key's spelling or remove it")
        );
        let err = parse(&format!("{MINIMAL}compression = \"zstd\"\n")).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("sqlserver"), "{err}");
        let err = parse(&format!("{MINIMAL}blob_listen = \"localhost\"\n")).unwrap_err();
        assert_eq!(err.hint_text(), Some("fix line 4 of strata.toml"));
        let err = parse("[sqlserver.main]\nblob_host = \"h\"\n").unwrap_err();
        assert!(
            err.to_string().contains("missing field `connection`"),
            "{err}"
        );
    }

    #[test]
    fn values_are_checked_with_the_section_and_key() {
        let cases = [
            (
                "blob_host = \"10.0.0.5\"",
                "[sqlserver.main] blob_host: `10.0.0.5` is an IP address",
            ),
            (
                "blob_host = \"bad_name.local\"",
                "blob_host: `bad_name.local` is not a valid DNS host name",
            ),
            (
                "blob_listen = \"10.1.2.3:443\"",
                "blob_listen: 10.1.2.3:443 is not a loopback address",
            ),
            (
                "stripes = 65",
                "stripes: 65 is more than SQL Server's 64 backup devices",
            ),
            ("reorder_window = 0", "reorder_window: 0 is out of range"),
            (
                "tls_cert = \"blob.crt\"",
                "tls_cert: `blob.crt` is not an absolute path",
            ),
            (
                "tls_cert = \"/etc/b.crt\"",
                "tls_key: tls_cert and tls_key go together",
            ),
            (
                "trust_ca = \"/etc/ca.pem\"\ntrust_server_certificate = true",
                "trust_ca and trust_server_certificate exclude each other",
            ),
        ];
        for (extra, expected) in cases {
            let text = MINIMAL.replace("blob_host = \"strata-blob.local\"\n", "")
                + if extra.starts_with("blob_host") {
                    ""
                } else {
                    "blob_host = \"strata-blob.local\"\n"
                }
                + extra
                + "\n";
            let err = parse(&text).unwrap_err();
            assert!(err.to_string().contains(expected), "{extra}: {err}");
            assert!(err.hint_text().is_some(), "{extra}: no hint");
        }
    }

    #[test]
    fn clear_text_and_blind_trust_only_reach_this_host() {
        let remote = "[sqlserver.main]\nconnection = \"server=tcp:db1.example.com,1433;user=s;password=p\"\nblob_host = \"strata-blob.local\"\n";
        let err = parse(&format!("{remote}encryption = \"not-supported\"\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains("clear text to db1.example.com:1433"),
            "{err}"
        );
        let err = parse(&format!("{remote}trust_server_certificate = true\n")).unwrap_err();
        assert!(err.to_string().contains("man in the middle"), "{err}");
        parse(&format!(
            "{remote}trust_ca = \"/etc/strata/sqlserver/sql-ca.pem\"\n"
        ))
        .unwrap();
        let both = "[sqlserver.main]\nconnection = \"server=tcp:127.0.0.1,1433;user=s;password=p;TrustServerCertificate=true\"\nblob_host = \"h.local\"\ntrust_ca = \"/etc/ca.pem\"\n";
        let err = parse(both).unwrap_err();
        assert!(
            err.to_string().contains("already says which certificate"),
            "{err}"
        );
        let err = parse("[sqlserver.main]\nconnection = \"server=tcp:127.0.0.1,notaport\"\nblob_host = \"h.local\"\n").unwrap_err();
        assert!(
            err.to_string().contains("[sqlserver.main] connection"),
            "{err}"
        );
    }

    #[test]
    fn login_reads_quoted_values() {
        let mut config = InstanceConfig::new(
            "Server=tcp:h,1;User ID='backup svc';Password={p;w}",
            "h.local",
        );
        assert_eq!(config.login().as_deref(), Some("backup svc"));
        config.connection = "server=tcp:h,1;IntegratedSecurity=true".into();
        assert_eq!(config.login(), None);
    }
}

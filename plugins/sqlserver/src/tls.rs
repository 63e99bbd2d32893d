//! The blob endpoint's certificates.
//!
//! SQL Server only writes `BACKUP ... TO URL` to an HTTPS endpoint whose
//! certificate it trusts and whose name matches the URL (Microsoft's "SQL
//! Server backup to URL for Microsoft Azure Blob Storage"). `strata
//! sqlserver setup` makes a small private CA and a server certificate for
//! the configured blob host signed by it: the operator adds the CA to the
//! trust store SQL Server uses (the Windows machine store, or
//! `/var/opt/mssql/security/ca-certificates` on Linux), and the endpoint
//! serves the certificate and its key.
//!
//! Keys are ECDSA P-256 (the `ring` provider rustls uses here generates no
//! RSA keys); certificates are valid for ten years from the day they are
//! made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_core::{Error, Result};

/// The file name of the CA certificate [`CertBundle::write`] writes: what
/// SQL Server's host must trust.
pub const CA_FILE: &str = "ca.crt";
/// The file name of the server certificate chain (server, then CA).
pub const CERT_FILE: &str = "blob.crt";
/// The file name of the server's private key (mode 0600).
pub const KEY_FILE: &str = "blob.key";

/// How long the certificates are valid, in years.
const VALID_YEARS: i32 = 10;

/// What the operator is told whenever the certificate files are unusable.
const SETUP_HINT: &str = "run `strata sqlserver setup NAME` to create the blob endpoint's certificate and key, or set tls_cert and tls_key";

/// A CA and a server certificate signed by it, in PEM.
#[derive(Clone)]
pub struct CertBundle {
    /// The CA certificate: what SQL Server's host must trust.
    pub ca_pem: String,
    /// The server certificate followed by the CA certificate.
    pub cert_chain_pem: String,
    /// The server's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("CertBundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_chain_pem", &self.cert_chain_pem)
            .finish_non_exhaustive()
    }
}

/// The paths [`CertBundle::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `blob.crt`.
    pub cert: PathBuf,
    /// `blob.key`.
    pub key: PathBuf,
}

/// Makes a CA and a certificate for `host` signed by it: the server
/// certificate names `host` as its subject alternative name (a DNS name,
/// or an IP address when `host` is one) and is valid for TLS servers only.
///
/// # Errors
/// [`ErrorKind::Config`](strata_core::ErrorKind::Config) when `host` is
/// not a valid DNS name or address.
pub fn generate(host: &str) -> Result<CertBundle> {
    check_host(host)?;
    let today = Utc::now().date_naive();
    let not_before = rcgen::date_time_ymd(today.year(), today.month() as u8, today.day() as u8);
    // Day 28 exists in every month, so the expiry date is always valid.
    let not_after = rcgen::date_time_ymd(
        today.year() + VALID_YEARS,
        today.month() as u8,
        today.day().min(28) as u8,
    );
    let failed = |what: &str, e: rcgen::Error| {
        Error::config(format!("cannot make the {what} for {host}: {e}")).with_source(e)
    };

    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA", e))?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Strata blob endpoint CA for {host}"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| failed("CA", e))?;

    let key = KeyPair::generate().map_err(|e| failed("server key", e))?;
    let mut server = CertificateParams::new(vec![host.to_owned()])
        .map_err(|e| failed("server certificate", e))?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(DnType::CommonName, host);
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server
        .signed_by(&key, &issuer)
        .map_err(|e| failed("server certificate", e))?;

    let ca_pem = ca_cert.pem();
    Ok(CertBundle {
        cert_chain_pem: format!("{}{ca_pem}", server_cert.pem()),
        ca_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Checks `host` is an IP address or a DNS name (RFC 1123: labels of 1 to
/// 63 letters, digits and inner hyphens, 253 bytes in all).
fn check_host(host: &str) -> Result<()> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if (1..=253).contains(&host.len()) && host.split('.').all(label_ok) {
        return Ok(());
    }
    Err(Error::config(format!("{host:?} is not a host name for a certificate"))
        .hint("set blob_host to the DNS name SQL Server reaches this host by, such as strata-blob.local"))
}

impl CertBundle {
    /// Writes `ca.crt`, `blob.crt` and `blob.key` (mode 0600) into `dir`,
    /// creating it if needed and replacing files of those names.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](strata_core::ErrorKind::Io) naming the file that
    /// could not be written.
    pub fn write(&self, dir: &Path) -> Result<CertFiles> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io_doing_at("cannot create", dir, e))?;
        let files = CertFiles {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        };
        write_file(&files.ca, &self.ca_pem, 0o644)?;
        write_file(&files.cert, &self.cert_chain_pem, 0o644)?;
        write_file(&files.key, &self.key_pem, 0o600)?;
        Ok(files)
    }
}

/// Writes `text` to `path` with permissions `mode` (also when it existed).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        // `mode` applies to a new file only; an existing key must not stay readable.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io_doing_at("cannot set the permissions of", path, e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| Error::io_doing_at("cannot write", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io_doing_at("cannot write", path, e))
}

/// The TLS configuration of the blob endpoint: the certificate chain in
/// `cert` and the private key in `key` (PEM files), TLS 1.2 and 1.3 with
/// the `ring` provider, HTTP/1.1 by ALPN.
///
/// # Errors
/// [`ErrorKind::Config`](strata_core::ErrorKind::Config) naming the file
/// when one is missing, holds no certificate or key, or the key does not
/// belong to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            Error::io_doing_at("cannot read the blob endpoint's TLS file", path, e).hint(SETUP_HINT)
        })
    };
    let chain_pem = read(cert)?;
    let key_pem = read_private_key(key)?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::config(format!(
                "{} is not a PEM certificate chain: {e}",
                cert.display()
            ))
            .hint(SETUP_HINT)
        })?;
    if chain.is_empty() {
        return Err(
            Error::config(format!("{} holds no certificate", cert.display())).hint(SETUP_HINT),
        );
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::config(format!("{} holds no PEM private key: {e}", key.display())).hint(SETUP_HINT)
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::config(format!("the TLS provider refused its defaults: {e}")))?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(|e| {
        Error::config(format!(
            "the key in {} does not fit the certificate in {}: {e}",
            key.display(),
            cert.display()
        ))
        .hint(SETUP_HINT)
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the endpoint's private key. It is a secret: a file that others
/// may read or replace is refused, as a vault key file is
/// ([`check_secret_file_mode`](strata_core::crypto::check_secret_file_mode));
/// `strata sqlserver setup` writes it 0600.
fn read_private_key(path: &Path) -> Result<Vec<u8>> {
    let cannot_read = |e| {
        Error::io_doing_at("cannot read the blob endpoint's TLS file", path, e).hint(SETUP_HINT)
    };
    let mut file = std::fs::File::open(path).map_err(cannot_read)?;
    let metadata = file.metadata().map_err(cannot_read)?;
    strata_core::crypto::check_secret_file_mode(
        path,
        &metadata,
        "blob endpoint's TLS private key",
    )?;
    let mut pem = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut pem).map_err(cannot_read)?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_load_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = generate("blob.test").unwrap();
        let files = bundle.write(&dir.path().join("main")).unwrap();
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), bundle.ca_pem);
        // The chain is the server certificate, then the CA.
        let chain = std::fs::read_to_string(&files.cert).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.ends_with(&bundle.ca_pem));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        server_config(&files.cert, &files.key).unwrap();
    }

    /// A private key others may read, or its group may write, is refused
    /// with the chmod that fixes it (exit 7, as a loose vault key file).
    #[cfg(unix)]
    #[test]
    fn a_private_key_with_loose_permissions_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = generate("blob.test")
            .unwrap()
            .write(&dir.path().join("main"))
            .unwrap();
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = server_config(&files.cert, &files.key).unwrap_err();
            assert_eq!(err.kind(), strata_core::ErrorKind::Crypto, "{err:?}");
            assert!(
                err.to_string().starts_with(&format!(
                    "the blob endpoint's TLS private key {} has mode {mode:04o}",
                    files.key.display()
                )),
                "{err}"
            );
            assert!(
                err.hint_text()
                    .unwrap()
                    .contains(&format!("chmod 0640 {}", files.key.display())),
                "{err:?}"
            );
        }
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        server_config(&files.cert, &files.key).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = generate("blob.test")
            .unwrap()
            .write(&dir.path().join("one"))
            .unwrap();
        let two = generate("blob.test")
            .unwrap()
            .write(&dir.path().join("two"))
            .unwrap();
        let err = server_config(&one.cert, &two.key).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(
            err.to_string().contains(&two.key.display().to_string()),
            "{err}"
        );
        let missing = server_config(&dir.path().join("none.crt"), &one.key).unwrap_err();
        assert!(missing.to_string().contains("none.crt"), "{missing}");
        assert!(
            missing
                .hint_text()
                .unwrap()
                .contains("strata sqlserver setup")
        );
    }

    #[test]
    fn an_invalid_host_name_is_a_configuration_error() {
        let err = generate("not a host name").unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Config);
    }
}

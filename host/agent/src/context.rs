//! What every command needs: the configuration, the vault, the index, output mode.

use std::path::PathBuf;

use strata_core::catalog::index::CatalogIndex;
use strata_core::lifecycle::Host;
use strata_core::vault::reader::ReaderConfig;
use strata_core::vault::writer::WriterConfig;
use strata_core::vault::{Vault, VaultConfig};
use strata_core::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::progress::Bar;

/// The shared state of one CLI invocation.
pub struct Context {
    /// The effective configuration (file plus command-line overrides).
    pub config: Config,
    /// The configuration file `config` was read from (`--config`,
    /// `STRATA_CONFIG`, or the default file when it exists); `None` when
    /// there was none. Commands that write a command line for an engine
    /// (`archive_command`) pass it on.
    pub config_path: Option<PathBuf>,
    /// Machine-readable output requested (`--json`).
    pub json: bool,
    /// No progress bars or chatter (`--quiet`).
    pub quiet: bool,
}

impl Context {
    /// The configured vault's settings; an error if no vault is configured.
    pub fn vault_config(&self) -> Result<&VaultConfig> {
        if self.config.vault.url.trim().is_empty() {
            return Err(Error::config("no vault is configured").hint(format!(
                "pass --vault URL (or set STRATA_VAULT), or set [vault] url in {}",
                crate::config::DEFAULT_CONFIG
            )));
        }
        Ok(&self.config.vault)
    }

    /// Opens the configured vault.
    pub async fn vault(&self) -> Result<Vault> {
        Vault::open(self.vault_config()?).await
    }

    /// The catalog index path.
    pub fn index_path(&self) -> PathBuf {
        self.config.catalog_path()
    }

    /// Opens the local catalog index.
    pub fn index(&self) -> Result<CatalogIndex> {
        CatalogIndex::open(&self.index_path())
    }

    /// Writer settings from the configuration.
    pub fn writer_config(&self) -> WriterConfig {
        self.config.writer.writer_config()
    }

    /// Reader settings.
    pub fn reader_config(&self) -> ReaderConfig {
        ReaderConfig::default()
    }

    /// A progress bar (hidden for `--json`, `--quiet` or a non-terminal stderr).
    pub fn progress(&self, total: Option<u64>, message: &str) -> Bar {
        Bar::new(total, message, !self.json && !self.quiet)
    }

    /// The library's lifecycle over the configured vault, writer, reader and index.
    pub async fn host(&self) -> Result<Host> {
        let host = Host::new(self.vault().await?)
            .with_writer(self.writer_config(), self.config.writer.part_size.is_some())
            .with_reader(self.reader_config())
            .with_index(Some(self.index_path()));
        Ok(match &self.config_path {
            Some(path) => host.with_protected_path(path.clone()),
            None => host,
        })
    }

    /// The configured PostgreSQL cluster `name`, checked.
    pub fn cluster(&self, name: &str) -> Result<&strata_postgres::ClusterConfig> {
        let cluster = self.config.postgres.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.postgres.keys().map(String::as_str).collect();
            Error::config(format!("no PostgreSQL cluster `{name}` is configured")).hint(
                if known.is_empty() {
                    format!("add a [postgres.{name}] section with connection and data_directory to the config")
                } else {
                    format!("configured clusters: {}", known.join(", "))
                },
            )
        })?;
        cluster.validate(name)?;
        Ok(cluster)
    }
}

/// A token cancelled when the operator presses Ctrl-C (SIGINT): long work
/// stops, deletes what it wrote, and the command exits 130.
pub fn cancel_on_interrupt() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}

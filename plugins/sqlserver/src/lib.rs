//! # strata-sqlserver
//!
//! Strata's SQL Server engine: native full, differential and log backups
//! that SQL Server streams through a blob endpoint on this host straight
//! into the vault, the log chain of `msdb.dbo.backupset`, and
//! point-in-time restores to an alternate database or as files.
//!
//! ## A short tour
//!
//! 1. Describe an instance with an [`InstanceConfig`] (`[sqlserver.<name>]`
//!    in the TOML config, see [`config`]) and run [`setup::setup`]: it
//!    creates the blob endpoint's certificate, prints how SQL Server's host
//!    trusts it and resolves the blob host name, and creates the credential
//!    SQL Server needs for the endpoint's URLs. [`check::check`] then reports
//!    the server, its databases with what each can get, and every missing
//!    prerequisite with the command that fixes it.
//! 2. [`client`] opens TDS sessions with tiberius (a catalog session with a
//!    short timeout, a long one for `BACKUP`/`RESTORE`) and converts SQL
//!    Server's errors, keeping their number, with a hint per known error.
//!    Every statement the plugin sends is built in [`tsql`].
//! 3. [`backup::backup`] reads the database's state ([`server`]), refuses
//!    what SQL Server would refuse with a better message, and runs `BACKUP
//!    ... TO URL` while the data path ([`device`], implemented by
//!    [`blob::BlobEndpoint`]) receives each stripe into the vault as one
//!    stream with no local copy. Before it, [`backup::settle`] turns a log
//!    or differential backup the vault could not restore into a full
//!    (Azure Backup's auto-heal), and says why.
//! 4. [`history`] reads backup sets (rows of `msdb.dbo.backupset`) and
//!    [`chain`] gives core's planner SQL Server's chain rules over them.
//! 5. [`restore::restore`] applies the planned full, differential and logs
//!    `WITH MOVE`/`NORECOVERY`, the last log `WITH STOPAT`, then `RECOVERY`,
//!    while the data path serves the stripes from the vault; or writes them
//!    as `.bak`/`.trn` files with `restore.json` and `restore.sql`.
//!
//! [`SqlServerEngine`] ties these together as Strata's [`EnginePlugin`].

pub mod backup;
pub mod blob;
pub mod chain;
pub mod check;
pub mod client;
pub mod config;
pub mod device;
pub mod history;
pub mod lsn;
pub mod restore;
pub mod server;
pub mod setup;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod tsql;

pub use backup::BackupOptions;
pub use config::InstanceConfig;
pub use restore::RestoreDestination;

/// The engine name used in vault keys, manifests and the CLI.
pub const ENGINE: &str = "sqlserver";

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::Result;
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, Chain, DatabaseRef,
    EnginePlugin, KindDecision, RestoreOutcome, RestoreRequest, RestoreSource, parse_options,
};

use crate::blob::{BlobEndpoint, BlobEndpointConfig};
use crate::client::Session;
use crate::device::DataPath;
use crate::server::{DatabaseInfo, DatabaseState};

/// Part size of SQL Server backups unless the operator configured one: a
/// backup writes one stream per stripe at once, each with its own parts in
/// flight, so parts are small: one of SQL Server's 4 MiB blocks
/// (`MAXTRANSFERSIZE = 4194304`) each, which keeps four stripes within the
/// memory one stream of 16 MiB parts takes.
pub const PART_SIZE: usize = 4 << 20;

/// The SQL Server engine for one configured instance: Strata's
/// [`EnginePlugin`].
///
/// - **Databases** ([`EnginePlugin::discover`]): the `ONLINE` user
///   databases; each has its own chain (`DatabaseRef::database`).
/// - **Kinds** ([`EnginePlugin::settle_kind`], [`backup::settle`]): a log
///   or differential the vault could not restore becomes a full, with the
///   reason; a differential's base is the full whose backup set is the
///   database's differential base ([`backup::choose_base`]).
/// - **Backup** ([`backup::backup`]): options are a [`BackupOptions`].
/// - **Chain** ([`chain::chain_of`]): the manifests' backup sets under
///   [`chain::SqlServerChainRules`].
/// - **Restore** ([`restore::restore`]): the destination is a
///   [`RestoreDestination`].
pub struct SqlServerEngine {
    instance: String,
    /// `None` for an instance this host has no section for
    /// ([`SqlServerEngine::unconfigured`]).
    setup: Option<(InstanceConfig, Arc<dyn DataPath>)>,
}

impl std::fmt::Debug for SqlServerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerEngine")
            .field("instance", &self.instance)
            .field("config", &self.setup.as_ref().map(|(config, _)| config))
            .finish_non_exhaustive()
    }
}

impl SqlServerEngine {
    /// The engine for the configured instance `instance`, its data path
    /// the blob endpoint `config` describes (nothing listens until a
    /// backup or restore opens a device).
    ///
    /// # Errors
    /// A configuration that does not validate ([`InstanceConfig::validate`]).
    pub fn new(instance: &str, config: InstanceConfig) -> Result<Self> {
        config.validate(instance)?;
        let endpoint = BlobEndpointConfig {
            listen: config.blob_listen,
            host: config.blob_host.clone(),
            port: config.blob_port,
            tls_cert: config.tls_cert_path(instance),
            tls_key: config.tls_key_path(instance),
            reorder_window: config.reorder_window,
        };
        let data_path: Arc<dyn DataPath> = Arc::new(BlobEndpoint::new(endpoint));
        Ok(SqlServerEngine {
            instance: instance.to_owned(),
            setup: Some((config, data_path)),
        })
    }

    /// The engine of an instance this host has no `[sqlserver.<name>]`
    /// section for: it lists and plans what the vault holds (the chain
    /// rules need no server), and every call that needs the server fails
    /// with a configuration error naming the missing section.
    pub fn unconfigured(instance: &str) -> Self {
        SqlServerEngine {
            instance: instance.to_owned(),
            setup: None,
        }
    }

    /// The same engine with another data path (a test double, or a future
    /// `s3://` or VDI path). No effect on an unconfigured engine.
    pub fn with_data_path(mut self, data_path: Arc<dyn DataPath>) -> Self {
        if let Some((_, path)) = &mut self.setup {
            *path = data_path;
        }
        self
    }

    /// The instance's configuration and data path.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](strata_core::ErrorKind::Config) for an
    /// unconfigured engine.
    pub fn configured(&self) -> Result<(&InstanceConfig, &dyn DataPath)> {
        self.setup
            .as_ref()
            .map(|(config, path)| (config, path.as_ref()))
            .ok_or_else(|| {
                strata_core::Error::config(format!(
                    "this host has no [sqlserver.{}] section",
                    self.instance
                ))
                .hint(format!(
                    "add a [sqlserver.{}] section with connection and blob_host to the config (see docs/sqlserver.md)",
                    self.instance
                ))
            })
    }

    async fn database_state(&self, database: &str) -> Result<DatabaseState> {
        let (config, _) = self.configured()?;
        let mut conn = client::connect(&self.instance, config, Session::Catalog).await?;
        DatabaseState::read(&mut conn, database).await
    }
}

#[async_trait]
impl EnginePlugin for SqlServerEngine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![BackupKind::Full, BackupKind::Diff, BackupKind::Log],
            point_in_time: true,
            alternate_target: true,
            engine_delivers: false,
            engine_plans_restore: false,
            part_size: Some(PART_SIZE),
            settles_kind: true,
        }
    }

    /// The `ONLINE` user databases (not `master`, `model`, `msdb`, `tempdb`).
    async fn discover(&self) -> Result<Vec<DatabaseRef>> {
        let (config, _) = self.configured()?;
        let mut conn = client::connect(&self.instance, config, Session::Catalog).await?;
        Ok(DatabaseInfo::list(&mut conn)
            .await?
            .into_iter()
            .filter(|d| !d.is_system() && d.state.eq_ignore_ascii_case("ONLINE"))
            .map(|d| DatabaseRef {
                instance: self.instance.clone(),
                database: Some(d.name),
            })
            .collect())
    }

    async fn settle_kind(
        &self,
        database: &DatabaseRef,
        kind: BackupKind,
        options: &serde_json::Value,
        backups: &[Manifest],
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<KindDecision> {
        let options: BackupOptions = parse_options(options, "SQL Server backup options")?;
        if kind == BackupKind::Full {
            return Ok(KindDecision::keep(kind));
        }
        let name = backup::database_of(database.database.as_deref())?;
        let state = self.database_state(name).await?;
        backup::settle(kind, options.copy_only, &state, backups)
    }

    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome> {
        let (config, data_path) = self.configured()?;
        backup::backup(&self.instance, config, data_path, request, sink).await
    }

    /// The full whose backup set is the database's current differential
    /// base (`sys.master_files.differential_base_guid`).
    async fn choose_base(
        &self,
        kind: BackupKind,
        candidates: &[Manifest],
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<Option<usize>> {
        let Some(database) = candidates.first().and_then(|m| m.database.clone()) else {
            return Ok(None);
        };
        if kind != BackupKind::Diff {
            return Ok(Some(0));
        }
        let state = self.database_state(&database).await?;
        backup::choose_base(&state, candidates)
    }

    async fn chain(
        &self,
        _database: &DatabaseRef,
        backups: &[Manifest],
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<Chain> {
        chain::chain_of(backups)
    }

    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome> {
        restore::restore(&self.instance, self.configured(), request, source).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use strata_core::plugin::{ArchiveEntry, ArchiveObject, Attributes, PutOnce};

    /// SQL Server archives nothing of its own.
    struct NoArchive;

    #[async_trait]
    impl ArchiveStore for NoArchive {
        async fn put_once(&self, _: &str, _: Bytes, _: Attributes) -> Result<PutOnce> {
            unreachable!("SQL Server archives nothing")
        }
        async fn get(&self, _: &str) -> Result<Option<ArchiveObject>> {
            Ok(None)
        }
        async fn attributes(&self, _: &str) -> Result<Option<Attributes>> {
            Ok(None)
        }
        async fn list(&self, _: &str) -> Result<Vec<ArchiveEntry>> {
            Ok(Vec::new())
        }
        async fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
    }

    /// A host without the instance's section still plans from the vault,
    /// and refuses what needs the server with the section it lacks.
    #[tokio::test]
    async fn an_unconfigured_instance_plans_but_does_not_reach_the_server() {
        let engine = SqlServerEngine::unconfigured("prod");
        let err = engine.discover().await.unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Config);
        assert!(err.to_string().contains("[sqlserver.prod]"), "{err}");
        let chain = engine
            .chain(&DatabaseRef::instance("prod"), &[], Arc::new(NoArchive))
            .await
            .unwrap();
        assert!(chain.records.is_empty());
    }
}

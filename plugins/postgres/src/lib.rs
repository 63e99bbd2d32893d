//! # strata-postgres
//!
//! Strata's PostgreSQL (15 and later) engine: native full backups with the
//! non-exclusive low-level API, WAL archiving, and point-in-time restore to
//! another data directory, port or host.
//!
//! ## A short tour
//!
//! 1. Describe a cluster with a [`ClusterConfig`] (`[postgres.<name>]` in the
//!    TOML config) and run [`check::check`]: it reports the server's version,
//!    system identifier, timeline and archiving settings, and prints the exact
//!    line to fix each problem.
//! 2. PostgreSQL's `archive_command` calls `strata pg wal-push %p`, which is
//!    [`WalArchive::push`]: one object per WAL file in the cluster's archive
//!    store (host-provided, see `strata_core::plugin::ArchiveStore`), keyed
//!    by system identifier and timeline and stored once.
//!    `restore_command` calls [`WalArchive::fetch`]. The plugin never
//!    talks to object storage: it depends on strata-core without the vault.
//! 3. [`backup::backup`] runs `pg_backup_start`, streams the data
//!    directory and tablespaces into the vault in parallel (small files bundled
//!    into a few streams, see [`bundle`]) while it checks every page's
//!    checksum ([`pages`]), copies `pg_control` last, runs
//!    `pg_backup_stop` and returns only once the WAL from start to stop is archived.
//!    A differential or incremental stores only what changed since its
//!    base, page by page ([`delta`]).
//! 4. [`chain`] turns the archive and the committed backups into recoverable
//!    windows per timeline and picks the backup and WAL for a target;
//!    [`restore::restore`] lays the files down in a new data directory,
//!    writes the recovery settings and optionally starts the copy.

pub mod backup;
pub mod bundle;
pub mod chain;
pub mod check;
pub mod config;
pub mod delta;
pub mod pages;
pub mod restore;
pub mod wal;
pub mod walname;
pub mod walrecords;

pub use config::ClusterConfig;
pub use wal::WalArchive;
pub use walname::{Lsn, WalFileName};

/// The engine name used in vault keys and manifests.
pub const ENGINE: &str = "postgres";

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest};
use strata_core::catalog::planner::{RestorePlan, RestoreTarget};
use strata_core::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, Chain, ContentCheck,
    DatabaseRef, EnginePlugin, ExpiredLog, RestoreOutcome, RestoreRequest, RestoreSource,
    parse_options, refuse_protected,
};
use strata_core::{Error, Result};

/// Part size of PostgreSQL full backups unless the operator configured one:
/// a backup writes `parallel` streams at once, and 8 MiB parts keep its
/// memory under 256 MiB with two streams and every core compressing.
pub const PART_SIZE: usize = 8 << 20;

/// The PostgreSQL engine for one configured cluster: Strata's
/// [`EnginePlugin`].
///
/// - **Backup** ([`backup::backup`]): full, differential and incremental
///   backups (see [`delta`]; the base is the request's, chosen by the host,
///   and its file index is read through [`BackupSink::base_source`]). WAL
///   is pushed by PostgreSQL's `archive_command` into the instance's
///   archive store, see [`wal`]. Options: `{"spread_checkpoint": bool}`.
/// - **Chain** ([`chain::Catalog`]): the committed full backups and the
///   archived WAL, one log record per contiguous run of segments of a
///   timeline, and [`chain::PgChainRules`] (timeline histories as fork
///   origins; a full backup needs the WAL from its start LSN).
/// - **Restore** ([`restore::restore`]): into a new data directory; the
///   destination is a [`RestoreDestination`].
///
/// # From the plan to the recovery target
///
/// A time target must stop exactly where PostgreSQL would with all the
/// WAL ever written, and the planned WAL may end before any transaction
/// ended after the target (an idle tail): the restore then stops at the
/// last transaction end before it, by LSN ([`chain::time_stop`]). That
/// needs what the plan's runs of WAL hold, which only their segments'
/// attributes in the archive tell, and [`EnginePlugin::restore`] has no
/// archive and only the planner's records. So [`EnginePlugin::chain`]
/// remembers, in the engine, what each run it gave the planner holds
/// ([`chain::RunCommits`], by log record id), and `restore` looks the
/// plan's logs up there. A run's id names its first and last segment, and
/// archived segments are never replaced, so what an id maps to never
/// changes: the memory is a cache of facts, valid for any later plan (it
/// grows by the few runs of each catalog read, never by segments). The
/// host plans and restores with the same engine (core's `Host::restore`);
/// a plan whose runs this engine has not seen falls back on
/// `recovery_target_time`, with a warning.
#[derive(Debug, Clone)]
pub struct PostgresEngine {
    name: String,
    cluster: Option<ClusterConfig>,
    system_id: Option<u64>,
    runs: Arc<Mutex<BTreeMap<BackupId, chain::RunCommits>>>,
}

/// Where and how a PostgreSQL restore lays the cluster down (the JSON form
/// of [`RestoreRequest::destination`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDestination {
    /// The new data directory, absolute (must be empty or absent unless `force`).
    pub target_dir: PathBuf,
    /// The port the copy listens on.
    #[serde(default)]
    pub port: Option<u16>,
    /// Tablespace remapping: old location (or OID) to new location.
    #[serde(default)]
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Start the copy and wait until it has finished recovery.
    #[serde(default)]
    pub start: bool,
    /// Delete the contents of a non-empty target first.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for the started copy to finish recovery.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u64,
    /// How the restored server calls Strata back: the shell words before
    /// `pg wal-fetch` in its `restore_command` (binary, `--config`, `--vault`).
    pub strata_command: String,
}

fn default_start_timeout() -> u64 {
    3600
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupOptions {
    #[serde(default)]
    spread_checkpoint: bool,
}

impl ClusterConfig {
    /// The engine plugin of this cluster, configured as `name`.
    pub fn build(&self, name: &str) -> Result<PostgresEngine> {
        self.validate(name)?;
        Ok(PostgresEngine {
            name: name.to_owned(),
            cluster: Some(self.clone()),
            system_id: None,
            runs: Arc::default(),
        })
    }
}

impl PostgresEngine {
    /// The plugin of a cluster this host has no configuration for: it lists,
    /// plans and verifies what the vault holds, and refuses to back up or
    /// restore, naming the missing section.
    pub fn unconfigured(name: &str) -> Self {
        PostgresEngine {
            name: name.to_owned(),
            cluster: None,
            system_id: None,
            runs: Arc::default(),
        }
    }

    /// Works on the backups and WAL of system identifier `system_id` (when
    /// the name held several clusters over time); by default the newest
    /// backup's system.
    pub fn with_system_id(mut self, system_id: Option<u64>) -> Self {
        self.system_id = system_id;
        self
    }

    /// How a restore of `plan` to time `t` stops: see the type's docs.
    fn time_stop(
        &self,
        t: chrono::DateTime<chrono::Utc>,
        plan: &RestorePlan,
        meta: &backup::BackupMeta,
    ) -> chain::Target {
        let known = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let runs: Option<Vec<chain::RunCommits>> = plan
            .logs
            .iter()
            .map(|log| known.get(&log.id).cloned())
            .collect();
        match runs {
            Some(runs) => chain::time_stop(t, &runs, meta.stop()),
            None => {
                tracing::warn!(
                    "the restore plan names WAL this engine did not catalog; \
                     stopping at recovery_target_time"
                );
                chain::Target::Time(t)
            }
        }
    }

    fn cluster(&self) -> Result<&ClusterConfig> {
        self.cluster.as_ref().ok_or_else(|| {
            Error::config(format!(
                "no PostgreSQL cluster `{}` is configured",
                self.name
            ))
            .hint(format!(
                "add a [postgres.{}] section with connection and data_directory to the config",
                self.name
            ))
        })
    }

    /// The catalog (full backups and archived WAL) of this cluster.
    pub async fn catalog(
        &self,
        backups: &[Manifest],
        archive: &dyn ArchiveStore,
    ) -> Result<chain::Catalog> {
        let wal = WalArchive::new(archive);
        chain::Catalog::load(backups.to_vec(), &wal, &self.name, self.system_id).await
    }
}

#[async_trait]
impl EnginePlugin for PostgresEngine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn instance(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![BackupKind::Full, BackupKind::Diff, BackupKind::Incr],
            point_in_time: true,
            alternate_target: true,
            part_size: Some(PART_SIZE),
            ..Capabilities::default()
        }
    }

    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome> {
        let cluster = self.cluster()?;
        let options: BackupOptions = parse_options(&request.options, "PostgreSQL backup options")?;
        let wal = WalArchive::new(archive.as_ref());
        let options = backup::FullBackupOptions {
            label: format!("strata {}", request.id),
            fast_checkpoint: !options.spread_checkpoint,
            parallel: cluster.parallel,
            wal_wait: cluster.archive_wait.0,
        };
        let base = match &request.base {
            Some(manifest) if request.kind != BackupKind::Full => {
                Some(backup::Base::new(manifest)?)
            }
            _ => None,
        };
        backup::backup(cluster, &wal, sink, &options, base.as_ref()).await
    }

    async fn choose_base(
        &self,
        _kind: BackupKind,
        candidates: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Option<usize>> {
        let cluster = self.cluster()?;
        backup::choose_base(cluster, &WalArchive::new(archive.as_ref()), candidates).await
    }

    async fn chain(
        &self,
        _database: &DatabaseRef,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Chain> {
        let catalog = self.catalog(backups, archive.as_ref()).await?;
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(catalog.runs_by_id());
        Ok(catalog.chain())
    }

    async fn expired_log(
        &self,
        _database: &DatabaseRef,
        kept: &[Manifest],
        anchor: Option<&Manifest>,
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Vec<ExpiredLog>> {
        let kept: Vec<backup::BackupMeta> = kept
            .iter()
            .filter(|m| m.kind.is_data())
            .map(backup::BackupMeta::from_manifest)
            .collect::<Result<_>>()?;
        let from = match anchor {
            Some(anchor) => Some(backup::BackupMeta::from_manifest(anchor)?),
            None => kept.iter().max_by_key(|m| m.stop_time).cloned(),
        };
        let entries = archive.list("wal").await?;
        Ok(chain::expired_wal(&kept, from.as_ref(), &entries))
    }

    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome> {
        let cluster = self.cluster()?;
        let destination: RestoreDestination =
            parse_options(&request.destination, "PostgreSQL restore options")?;
        let plan = request
            .plan
            .as_ref()
            .ok_or_else(|| Error::engine("a PostgreSQL restore needs the planner's plan"))?;
        // The data backups in apply order: the full, then what applies on it.
        let mut applied_on = request
            .backups
            .iter()
            .filter(|m| m.kind.is_data())
            .map(|m| Ok((m.clone(), backup::BackupMeta::from_manifest(m)?)))
            .collect::<Result<Vec<_>>>()?;
        let (backup, meta) = applied_on
            .pop()
            .ok_or_else(|| Error::engine("the restore plan names no full backup"))?;
        let timeline: u32 = plan.fork.parse().map_err(|_| {
            Error::integrity(format!("`{}` is not a PostgreSQL timeline", plan.fork))
        })?;
        let target = match &request.target {
            RestoreTarget::Latest => chain::Target::Latest,
            RestoreTarget::Time(t) => self.time_stop(*t, plan, &meta),
            RestoreTarget::Position { position, .. } => {
                chain::Target::Lsn(chain::lsn_of(*position)?)
            }
            RestoreTarget::Backup(_) => chain::Target::Lsn(meta.stop()),
        };
        for dir in
            std::iter::once(&destination.target_dir).chain(destination.tablespace_map.values())
        {
            refuse_protected(dir, &request.protected)?;
        }
        let restore_command = format!(
            "{} pg wal-fetch %f \"%p\" --cluster {} --system-id {}",
            destination.strata_command,
            restore::shell_word(&self.name),
            meta.system_id()
        );
        let options = restore::RestoreOptions {
            target_dir: destination.target_dir,
            port: destination.port,
            tablespace_map: destination.tablespace_map,
            start: destination.start,
            force: destination.force,
            restore_command,
            parallel: cluster.parallel,
            start_timeout: Duration::from_secs(destination.start_timeout_seconds),
        };
        let plan = chain::Plan {
            applied_on,
            backup,
            meta,
            timeline,
            target,
        };
        let target_dir = options.target_dir.clone();
        let had_contents = !restore::is_empty_dir(&target_dir).unwrap_or(true);
        let report = restore::restore(cluster, &plan, source, &options)
            .await
            .map_err(|e| {
                // A restore that failed after it began writing leaves a
                // data directory without pg_control (it cannot be started
                // by mistake; pg_control is written last); say so, and how
                // to try again. With pg_control, every file is in place and
                // only starting failed: recovery goes on from where it
                // stopped once its cause is fixed.
                let written = !restore::is_empty_dir(&target_dir).unwrap_or(true);
                let complete = target_dir.join("global").join("pg_control").is_file();
                let e = if e.kind() == strata_core::ErrorKind::Integrity {
                    e.hint("`strata verify` names the damaged backup; `strata restore pg ... --skip-backup <id>` plans around it")
                } else {
                    e
                };
                if complete && (!had_contents || options.force) {
                    e.hint(format!(
                        "once the cause is fixed, `pg_ctl -D {} start` goes on with the recovery (or run the restore again with --force)",
                        restore::shell_word(&target_dir.display().to_string())
                    ))
                } else if written && (!had_contents || options.force) {
                    e.hint(format!(
                        "{} holds a partial restore: remove it, or run the restore again with --force",
                        target_dir.display()
                    ))
                } else {
                    e
                }
            })?;
        Ok(RestoreOutcome {
            position: report
                .lsn
                .as_deref()
                .and_then(|l| l.parse::<Lsn>().ok())
                .map(|l| strata_core::catalog::manifest::Position(u128::from(l.0))),
            time: report.reached_time,
            summary: format!(
                "restored backup {} into {}; recovery target: {} on timeline {}",
                report.backup,
                report.target_dir.display(),
                plan.target,
                report.recovery_timeline
            ),
            details: serde_json::to_value(&report)?,
        })
    }

    fn content_check(&self) -> Option<Arc<dyn ContentCheck>> {
        Some(Arc::new(bundle::BundleCheck))
    }

    async fn verify_archive(
        &self,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Vec<strata_core::plugin::ArchiveFinding>> {
        chain::verify_wal(backups, archive.as_ref()).await
    }
}

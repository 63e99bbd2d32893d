//! The one backup and restore lifecycle every engine goes through.
//!
//! The CLI, `hdbbackint` and the service call these functions; none of them
//! opens a writer, commits a manifest or plans a restore by itself. A
//! [`Host`] is a vault with its writer and reader settings and the local
//! catalog index; an [`EnginePlugin`] brings the engine.
//!
//! ## A backup ([`Host::backup`])
//!
//! 1. The kind is checked against the plugin's [`Capabilities`]. An engine
//!    that settles kinds itself ([`Capabilities::settles_kind`], SQL
//!    Server) is asked which kind the backup is taken as
//!    ([`EnginePlugin::settle_kind`]); a changed kind is logged and recorded
//!    in the manifest's labels `strata.requested_kind` and
//!    `strata.kind_reason`. An engine that delivers its own backups through
//!    another entry point ([`Capabilities::engine_delivers`], HANA through
//!    `hdbbackint`) is only asked to start one: nothing is written or
//!    committed here, and the result is [`BackupResult::Delegated`].
//! 2. A differential's base (the newest full of the database) or an
//!    incremental's (the newest data backup) is chosen from the vault; its
//!    streams are readable through the sink
//!    ([`BackupSink::base_source`]).
//! 3. A writer is opened; the plugin writes its streams into it
//!    ([`EnginePlugin::backup`]).
//! 4. On success the manifest is committed with the plugin's
//!    [`BackupOutcome`] (the commit point: written last, create-only) and
//!    recorded in the catalog index (best effort: the index is a cache). On
//!    failure or cancellation every stream is deleted and nothing is
//!    committed: a backup that failed does not exist.
//!
//! ## A restore ([`Host::restore`])
//!
//! The database's committed manifests are read from the vault, the plugin
//! turns them (and any log it archives itself) into a [`Chain`], core's
//! planner picks the backups that reach the target (or refuses, naming the
//! gap, before anything is written), and the plugin restores them from a
//! [`RestoreSource`](crate::plugin::RestoreSource) that reads only those
//! backups, every part checked.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::catalog::index::CatalogIndex;
use crate::catalog::manifest::{BackupId, BackupKind, Manifest};
use crate::catalog::planner::{self, RestorePlan, RestoreTarget, Timeline};
use crate::catalog::retention::{self, Retention, RetentionPlan};
use crate::error::{Error, Result};
use crate::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, Chain, DatabaseRef,
    EnginePlugin, ExpiredLog, PartFeed, PartStream, Progress, RestoreOutcome, RestoreRequest,
    StreamDigest,
};
use crate::vault::archive::VaultArchive;
use crate::vault::reader::{ReaderConfig, VaultRestoreSource, VerifyReport, verify_backup_with};
use crate::vault::writer::{BackupTarget, BackupWriter, ProgressSink, WriterConfig};
use crate::vault::{Deletion, PurgeReport, Vault, layout};

/// The manifest label naming the kind a backup was requested as, when its
/// engine took it as another ([`EnginePlugin::settle_kind`]).
pub const REQUESTED_KIND_LABEL: &str = "strata.requested_kind";

/// The manifest label giving the engine's reason for taking a backup as
/// another kind than requested ([`EnginePlugin::settle_kind`]).
pub const KIND_REASON_LABEL: &str = "strata.kind_reason";

/// A vault and how to write to it, read from it and index it.
#[derive(Debug, Clone)]
pub struct Host {
    vault: Vault,
    writer: WriterConfig,
    part_size_configured: bool,
    reader: ReaderConfig,
    index: Option<PathBuf>,
    protected: Vec<PathBuf>,
    /// The backups left out ([`Host::skipping`]); `None` when the caller
    /// cannot leave backups out (only `restore pg --skip-backup` can), so
    /// refusals do not suggest it.
    skipped: Option<Vec<BackupId>>,
}

/// What [`Host::backup`] did.
#[derive(Debug)]
pub enum BackupResult {
    /// The backup is committed: its manifest is in the vault.
    Committed(Box<Manifest>),
    /// The engine was asked to back up and delivers the bytes through its
    /// own entry point (HANA through `hdbbackint`); the plugin's outcome says
    /// what the engine reported.
    Delegated(BackupOutcome),
}

impl Host {
    /// A host over `vault` with default writer and reader settings and no index.
    pub fn new(vault: Vault) -> Self {
        Host {
            vault,
            writer: WriterConfig::default(),
            part_size_configured: false,
            reader: ReaderConfig::default(),
            index: None,
            protected: Vec::new(),
            skipped: None,
        }
    }

    /// Leaves the backups `ids` out of every listing, plan and choice of
    /// base, as if they were not in the vault (and with them what builds on
    /// them): the way around a backup `verify` found damaged, so that a
    /// restore to a later time uses the backups before it and more log.
    pub fn skipping(mut self, ids: Vec<BackupId>) -> Self {
        self.skipped = Some(ids);
        self
    }

    /// Whether the backup `id` is left out ([`Host::skipping`]).
    fn is_skipped(&self, id: &str) -> bool {
        self.skipped
            .iter()
            .flatten()
            .any(|skipped| skipped.as_str() == id)
    }

    /// Adds a local path no restore may write into, replace or delete (the
    /// configuration file); the vault's directory and the index are always
    /// protected.
    pub fn with_protected_path(mut self, path: PathBuf) -> Self {
        self.protected.push(path);
        self
    }

    /// The local paths restores must leave alone: the directory of a
    /// `file://` vault, the catalog index, and those added.
    fn protected_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.protected.clone();
        paths.extend(self.vault.local_dir());
        paths.extend(self.index.clone());
        paths
    }

    /// Writes with `config`. `part_size_configured` says whether the
    /// operator chose its part size; if not, an engine's preferred part size
    /// ([`Capabilities::part_size`]) wins.
    pub fn with_writer(mut self, config: WriterConfig, part_size_configured: bool) -> Self {
        self.writer = config;
        self.part_size_configured = part_size_configured;
        self
    }

    /// Reads with `config`.
    pub fn with_reader(mut self, config: ReaderConfig) -> Self {
        self.reader = config;
        self
    }

    /// Records committed backups in the catalog index at `path`.
    pub fn with_index(mut self, path: Option<PathBuf>) -> Self {
        self.index = path;
        self
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The reader settings.
    pub fn reader_config(&self) -> &ReaderConfig {
        &self.reader
    }

    /// The writer settings a backup of `plugin`'s engine uses.
    pub fn writer_config(&self, plugin: &dyn EnginePlugin) -> WriterConfig {
        let mut config = self.writer.clone();
        if !self.part_size_configured
            && let Some(size) = plugin.capabilities().part_size
        {
            config.part_size = size;
        }
        config
    }

    /// The archive of `plugin`'s instance (WAL, Backint markers).
    pub fn archive(&self, plugin: &dyn EnginePlugin) -> Arc<dyn ArchiveStore> {
        Arc::new(VaultArchive::new(
            self.vault.clone(),
            plugin.engine(),
            plugin.instance(),
        ))
    }

    /// Records a committed manifest in the catalog index. The index is a
    /// cache: a failure is logged, never fatal, since the backup is
    /// committed already and `strata catalog rebuild` picks it up.
    pub fn record(&self, manifest: &Manifest) {
        let Some(path) = &self.index else {
            return;
        };
        let recorded = CatalogIndex::open(path)
            .and_then(|index| index.record(&self.vault.meta().vault_id, manifest));
        if let Err(err) = recorded {
            tracing::warn!(backup = %manifest.id, index = %path.display(), error = %err, "the backup is committed but the local index was not updated; `strata catalog rebuild` will pick it up");
        }
    }

    /// Runs one backup of `plugin`'s engine; see the [module docs](self).
    /// `progress` counts the raw bytes written; `cancel`, when triggered,
    /// stops the backup and deletes what it wrote
    /// ([`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)).
    pub async fn backup(
        &self,
        plugin: &dyn EnginePlugin,
        mut request: BackupRequest,
        progress: Option<&dyn Progress>,
        cancel: CancellationToken,
    ) -> Result<BackupResult> {
        let capabilities = plugin.capabilities();
        if !capabilities.kinds.contains(&request.kind) {
            return Err(Error::config(format!(
                "{} backups of kind `{}` are not available",
                plugin.engine(),
                request.kind
            ))
            .hint(takes(&capabilities)));
        }
        let archive = self.archive(plugin);
        // Read once, for the plugin's decision and the choice of a base.
        let mut committed = None;
        if capabilities.settles_kind {
            let backups = self.backups(plugin, &request.database).await?;
            self.settle_kind(
                plugin,
                &capabilities,
                &mut request,
                &backups,
                archive.clone(),
            )
            .await?;
            committed = Some(backups);
        }
        if capabilities.engine_delivers && request.input.is_none() {
            let outcome = plugin.backup(request, &DeliveredElsewhere, archive).await?;
            return Ok(BackupResult::Delegated(outcome));
        }
        if request.base.is_none() && matches!(request.kind, BackupKind::Diff | BackupKind::Incr) {
            let backups = match committed {
                Some(backups) => backups,
                None => self.backups(plugin, &request.database).await?,
            };
            request.base = Some(
                self.choose_base(plugin, &request.database, request.kind, backups)
                    .await?,
            );
        }
        let base = request.base.as_ref().map(|m| m.id.clone());
        let labels = std::mem::take(&mut request.labels);
        let writer = BackupWriter::start(
            &self.vault,
            BackupTarget {
                engine: plugin.engine().into(),
                instance: plugin.instance().into(),
                database: request.database.database.clone(),
                kind: request.kind,
            },
            self.writer_config(plugin),
        )?;
        request.id = writer.id().clone();
        if let (Some(progress), Some(size)) =
            (progress, request.input.as_ref().and_then(|i| i.size))
        {
            progress.set_total(size);
        }
        let mut sink = match progress {
            Some(progress) => ProgressSink::new(&writer, progress),
            None => ProgressSink::quiet(&writer),
        };
        if let Some(base) = &request.base {
            sink = sink.with_base(VaultRestoreSource::new(
                self.vault.clone(),
                vec![base.clone()],
                self.reader.clone(),
            ));
        }
        let what = describe(plugin, &request.database, request.kind);
        let outcome = tokio::select! {
            outcome = plugin.backup(request, &sink, archive) => outcome,
            _ = cancel.cancelled() => Err(Error::cancelled(format!("{what} was interrupted"))),
        };
        let mut outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "cleaning up the failed backup's objects failed; they belong to no backup and `strata vault gc` removes them");
                }
                return Err(err.context(format!("{what} failed; nothing was committed")));
            }
        };
        if outcome.base.is_none() {
            outcome.base = base;
        }
        outcome.labels.extend(labels);
        let manifest = writer.commit(outcome).await?;
        self.record(&manifest);
        Ok(BackupResult::Committed(Box::new(manifest)))
    }

    /// Asks `plugin` which kind `request` is taken as
    /// ([`EnginePlugin::settle_kind`]) and applies the answer: a changed kind
    /// replaces the request's (and drops a base chosen for the old kind),
    /// is logged, and is recorded in the request's labels (over the
    /// operator's: they say what happened, not what was wished).
    async fn settle_kind(
        &self,
        plugin: &dyn EnginePlugin,
        capabilities: &Capabilities,
        request: &mut BackupRequest,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<()> {
        let requested = request.kind;
        let decision = plugin
            .settle_kind(
                &request.database,
                requested,
                &request.options,
                backups,
                archive,
            )
            .await?;
        if decision.kind == requested {
            return Ok(());
        }
        let what = describe(plugin, &request.database, requested);
        if !capabilities.kinds.contains(&decision.kind) {
            return Err(Error::config(format!(
                "{} would take the {what} as a `{}` backup, a kind it does not take",
                plugin.engine(),
                decision.kind
            ))
            .hint(format!(
                "{}; the plugin's settle_kind must answer one of them (a plugin fault: report it)",
                takes(capabilities)
            )));
        }
        let reason = decision.reason.as_deref().unwrap_or("no reason given");
        tracing::warn!(
            requested = %requested,
            kind = %decision.kind,
            reason,
            "the {what} is taken as a {} backup: {reason}",
            decision.kind
        );
        request.kind = decision.kind;
        request.base = None;
        request
            .labels
            .insert(REQUESTED_KIND_LABEL.into(), requested.to_string());
        match decision.reason {
            Some(reason) => request.labels.insert(KIND_REASON_LABEL.into(), reason),
            None => request.labels.remove(KIND_REASON_LABEL),
        };
        Ok(())
    }

    /// The committed backups of `database` (of `plugin`'s instance), oldest first.
    pub async fn backups(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
    ) -> Result<Vec<Manifest>> {
        let mut manifests = self
            .vault
            .read_manifests(&layout::manifest_prefix(plugin.engine(), plugin.instance()))
            .await?;
        manifests.retain(|m| {
            (database.database.is_none() || m.database == database.database)
                && !self.is_skipped(m.id.as_str())
        });
        manifests.sort_by(|a, b| (a.ended_at, &a.id).cmp(&(b.ended_at, &b.id)));
        Ok(manifests)
    }

    /// The planner's view of `database`: its backups and the engine's rules.
    pub async fn chain(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
    ) -> Result<(Chain, Vec<Manifest>)> {
        let manifests = self.backups(plugin, database).await?;
        let archive = self.archive(plugin);
        let chain = plugin.chain(database, &manifests, archive).await?;
        Ok((chain, manifests))
    }

    /// The recoverable windows and gaps of `database`.
    pub async fn timeline(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
    ) -> Result<Timeline> {
        let manifests = self.backups(plugin, database).await?;
        self.timeline_of(plugin, database, &manifests).await
    }

    /// The recoverable windows and gaps of `database` whose committed
    /// backups (from [`backups`](Self::backups)) the caller read already.
    pub async fn timeline_of(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
        manifests: &[Manifest],
    ) -> Result<Timeline> {
        let chain = plugin
            .chain(database, manifests, self.archive(plugin))
            .await?;
        Ok(planner::timeline(&chain.records, chain.rules.as_ref()))
    }

    /// The backups that restore `database` to `target`, and their manifests
    /// (data backups only, in apply order). Fails with
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound), naming the gap,
    /// when the target is not restorable.
    pub async fn plan(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
        target: &RestoreTarget,
    ) -> Result<(RestorePlan, Vec<Manifest>)> {
        let (chain, manifests) = self.chain(plugin, database).await?;
        self.refuse_unreadable_backups(plugin, database, target, &manifests)
            .await?;
        let plan = planner::plan(&chain.records, chain.rules.as_ref(), target)?;
        let backups = std::iter::once(&plan.base)
            .chain(&plan.diffs)
            .chain(plan.logs.iter())
            .filter_map(|record| manifests.iter().find(|m| m.id == record.id).cloned())
            .collect();
        Ok((plan, backups))
    }

    /// Refuses to plan a restore of `database` while one of its backups
    /// cannot be read: a manifest that is damaged, and one that this
    /// host's catalog index knows but that is gone from the vault without
    /// a deletion ([`Vault::lost_manifest`]). Planning around them would
    /// restore something else than asked for without a word (an older
    /// stream backup as the newest, another base and more log), so the
    /// operator decides: put the object back, or leave the backup out
    /// ([`Host::skipping`], `--skip-backup`; a restore of another named
    /// backup is not affected).
    async fn refuse_unreadable_backups(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
        target: &RestoreTarget,
        readable: &[Manifest],
    ) -> Result<()> {
        let named = match target {
            RestoreTarget::Backup(id) => Some(id),
            _ => None,
        };
        let matters = |id: &str| !self.is_skipped(id) && named.is_none_or(|n| n.as_str() == id);
        // Only a caller that can leave backups out (`restore pg
        // --skip-backup`) is told to; every restore can name another backup.
        let leave_out = |id: &str| {
            let how = if self.skipped.is_some() {
                format!("leave it out (`--skip-backup {id}`), or restore another backup by its id")
            } else {
                "restore another backup by its id (`strata list` shows them)".to_owned()
            };
            format!(
                "put the object back (an earlier version of it, a replica of the vault); to restore without backup {id}, {how}"
            )
        };
        let prefix = layout::manifest_prefix(plugin.engine(), plugin.instance());
        for (key, err) in self.vault.damaged_manifests(&prefix).await? {
            let id = key
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".json"))
                .unwrap_or_default();
            if matters(id) {
                return Err(Error::integrity(format!(
                    "backup {id} of {} cannot be read, so no restore is planned around it: {err}",
                    describe_database(plugin, database)
                ))
                .hint(leave_out(id)));
            }
        }
        let Some(index) = self
            .index
            .as_ref()
            .and_then(|path| CatalogIndex::open(path).ok())
        else {
            return Ok(());
        };
        let filter = crate::catalog::index::ListFilter {
            engine: Some(plugin.engine().to_owned()),
            instance: Some(plugin.instance().to_owned()),
            ..Default::default()
        };
        let known = index
            .list(&self.vault.meta().vault_id, &filter)
            .unwrap_or_default();
        for manifest in known {
            let id = manifest.id.as_str();
            if readable.iter().any(|m| m.id == manifest.id)
                || !matters(id)
                || (database.database.is_some() && manifest.database != database.database)
            {
                continue;
            }
            if let Some(key) = self.vault.lost_manifest(&manifest).await? {
                return Err(Error::integrity(format!(
                    "backup {id} of {} has lost its manifest {key}: this host's catalog index knows the backup, its data is still in the vault, but the manifest is gone and no deletion recorded it",
                    describe_database(plugin, database)
                ))
                .hint(format!(
                    "{}; `strata catalog rebuild` makes this host forget it",
                    leave_out(id)
                )));
            }
        }
        Ok(())
    }

    /// Restores `source` to `target` into the engine-specific `destination`;
    /// see the [module docs](self). `progress` counts the raw bytes read.
    pub async fn restore(
        &self,
        plugin: &dyn EnginePlugin,
        source: DatabaseRef,
        target: RestoreTarget,
        destination: serde_json::Value,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<RestoreOutcome> {
        let (plan, backups) = if plugin.capabilities().engine_plans_restore {
            (None, self.backups(plugin, &source).await?)
        } else {
            let (plan, backups) = self.plan(plugin, &source, &target).await?;
            (Some(plan), backups)
        };
        let mut reader =
            VaultRestoreSource::new(self.vault.clone(), backups.clone(), self.reader.clone());
        if let Some(progress) = progress
            && plan.is_some()
        {
            progress.set_total(backups.iter().map(Manifest::raw_size).sum());
            reader = reader.with_progress(progress);
        }
        let request = RestoreRequest {
            source,
            target,
            plan,
            backups,
            destination,
            protected: self.protected_paths(),
        };
        plugin.restore(request, &reader).await
    }

    /// Reads every part of `manifest` and checks it, and with `plugin` the
    /// engine's content check of its streams (every file of a PostgreSQL
    /// bundle).
    pub async fn verify(
        &self,
        plugin: Option<&dyn EnginePlugin>,
        manifest: &Manifest,
        progress: Option<&dyn Progress>,
    ) -> Result<VerifyReport> {
        let check = plugin.and_then(|p| p.content_check());
        verify_backup_with(
            &self.vault,
            manifest,
            &self.reader,
            progress,
            check.as_deref(),
        )
        .await
    }

    /// Applies `retention` to `database` at `now` (calendar periods in
    /// `zone`): the backups no rule keeps are deleted, newest first, each
    /// through a tombstone ([`Vault::delete_backup`]), then the archived log
    /// no kept backup needs ([`EnginePlugin::expired_log`]), oldest first.
    /// Deletions an earlier pass left unfinished are finished first. With
    /// `dry_run` nothing is deleted and the report says what would be.
    ///
    /// An engine that keeps its own backup catalog
    /// ([`Capabilities::engine_plans_restore`],
    /// SAP HANA) is left alone: deleting behind its back would leave its
    /// catalog naming backups that are gone, so it expires its backups
    /// itself (through `hdbbackint delete`), and the report says so.
    pub async fn expire(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
        policy: &Retention,
        now: DateTime<Utc>,
        zone: chrono_tz::Tz,
        dry_run: bool,
    ) -> Result<ExpiryReport> {
        let mut report = ExpiryReport {
            database: describe_database(plugin, database),
            dry_run,
            ..ExpiryReport::default()
        };
        if plugin.capabilities().engine_plans_restore {
            report.left_to_engine = Some(format!(
                "{} keeps its own backup catalog and deletes its backups itself; set its retention there",
                plugin.engine()
            ));
            return Ok(report);
        }
        // Locks and purge dates are judged at `now` too.
        let vault = self.vault.at(now);
        report.soft_delete_days = Some(vault.deleted_data_days());
        report.purge = vault
            .purge_deleted_of(plugin.engine(), plugin.instance(), now, dry_run)
            .await?;
        let manifests = self.backups(plugin, database).await?;
        if manifests.is_empty() {
            // Nothing to expire, and nothing to keep WAL for yet: a first
            // backup may be running.
            return Ok(report);
        }
        let chain = plugin
            .chain(database, &manifests, self.archive(plugin))
            .await?;
        report.plan = retention::plan(&manifests, chain.rules.as_ref(), policy, now, zone);
        // A soft-deleted backup keeps the log its own consistency needs, so
        // that an undelete gives back a backup that restores: those this
        // pass deletes, and those deleted earlier and not purged yet.
        let keeps_deleted_data = vault.deleted_data_days() > 0;
        let mut kept: Vec<Manifest> = manifests
            .iter()
            .filter(|m| keeps_deleted_data || report.plan.keeps(&m.id))
            .cloned()
            .collect();
        let same_database = |m: &Manifest| {
            m.engine == plugin.engine()
                && m.instance == plugin.instance()
                && m.database == database.database
        };
        kept.extend(
            vault
                .deleted_backups_of(plugin.engine(), plugin.instance())
                .await?
                .into_iter()
                .map(|t| t.manifest)
                .filter(same_database),
        );
        let anchor = report
            .plan
            .anchor
            .as_ref()
            .and_then(|id| manifests.iter().find(|m| &m.id == id));
        let archive = self.archive(plugin);
        report.log = plugin
            .expired_log(database, &kept, anchor, archive.clone())
            .await?;
        if dry_run {
            return Ok(report);
        }
        let index = self
            .index
            .as_ref()
            .and_then(|path| CatalogIndex::open(path).ok());
        for expired in &report.plan.expire {
            let Some(manifest) = manifests.iter().find(|m| m.id == expired.id) else {
                continue;
            };
            let reason = format!("retention: {}", expired.reason);
            let deletion = vault.delete_backup(manifest, &reason).await.map_err(|e| {
                e.context(format!(
                    "deleting expired backup {}; what was deleted so far is consistent, and the next pass goes on",
                    expired.id
                ))
            })?;
            if let Deletion::Locked { until } = deletion {
                tracing::info!(backup = %expired.id, until = ?until, "expired, but the vault's lock keeps it; a later pass deletes it");
                report.locked.push((expired.id.clone(), until));
                continue;
            }
            if let Some(index) = &index
                && let Err(err) = index.forget(&self.vault.meta().vault_id, &expired.id)
            {
                tracing::warn!(backup = %expired.id, error = %err, "the backup is deleted but the local index still lists it; `strata catalog rebuild` fixes that");
            }
            report.deleted_backups += 1;
            report.freed_bytes += expired.stored_bytes;
            tracing::info!(backup = %expired.id, kind = %expired.kind, reason = %expired.reason, "expired");
        }
        let archive = VaultArchive::new(vault.clone(), plugin.engine(), plugin.instance());
        for log in &report.log {
            match self
                .vault
                .delete_object(&archive.vault_key(&log.key)?)
                .await?
            {
                Deletion::Deleted => {
                    report.deleted_log += 1;
                    report.freed_bytes += log.stored_bytes;
                }
                Deletion::Locked { .. } => report.locked_log += 1,
            }
        }
        Ok(report)
    }

    /// The base of a new `kind` backup of `database`: among the newest full
    /// (differential) or the newest data backup whose chain of bases
    /// reaches a full (incremental), the one the plugin accepts
    /// ([`EnginePlugin::choose_base`]). `backups` are the committed backups
    /// of `database`, oldest first ([`backups`](Self::backups)).
    async fn choose_base(
        &self,
        plugin: &dyn EnginePlugin,
        database: &DatabaseRef,
        kind: BackupKind,
        backups: Vec<Manifest>,
    ) -> Result<Manifest> {
        let records: Vec<planner::BackupRecord> =
            backups.iter().map(planner::BackupRecord::from).collect();
        let complete = planner::complete_chains(&records, &planner::DefaultChainRules);
        let mut candidates: Vec<Manifest> = backups
            .into_iter()
            .rev()
            .filter(|m| match kind {
                BackupKind::Diff => m.kind == BackupKind::Full,
                _ => complete.contains(&m.id),
            })
            .collect();
        let none = || {
            Error::not_found(format!(
                "{} {kind} backup of {} needs a full backup to build on, and there is none",
                if kind == BackupKind::Incr { "an" } else { "a" },
                describe_database(plugin, database)
            ))
            .hint("take a full backup first (--kind full)")
        };
        if candidates.is_empty() {
            return Err(none());
        }
        let chosen = plugin
            .choose_base(kind, &candidates, self.archive(plugin))
            .await?
            .filter(|&i| i < candidates.len())
            .ok_or_else(none)?;
        Ok(candidates.swap_remove(chosen))
    }
}

/// What [`Host::expire`] did (or, in a dry run, would do) to one database.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpiryReport {
    /// The database, as messages name it.
    pub database: String,
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Why retention left the database to its engine, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_to_engine: Option<String>,
    /// The backups kept and expired, with the reasons.
    pub plan: RetentionPlan,
    /// The archived log objects no kept backup needs.
    pub log: Vec<ExpiredLog>,
    /// Backups deleted.
    pub deleted_backups: usize,
    /// Archived log objects deleted.
    pub deleted_log: usize,
    /// Bytes freed in the vault (stored sizes).
    pub freed_bytes: u64,
    /// Expired backups the vault's lock still keeps, with the lock's end
    /// if known: deleted by a pass after it.
    pub locked: Vec<(BackupId, Option<DateTime<Utc>>)>,
    /// Expired log objects the vault's lock still keeps.
    pub locked_log: usize,
    /// What the purge of soft-deleted backups did first (see
    /// [`Vault::purge_deleted`]).
    pub purge: PurgeReport,
    /// The vault's soft delete period in days (see
    /// [`Vault::soft_delete_days`]); `None` when the engine expires its own.
    pub soft_delete_days: Option<u32>,
}

fn describe_database(plugin: &dyn EnginePlugin, database: &DatabaseRef) -> String {
    match &database.database {
        Some(db) => format!(
            "{} `{}` database `{db}`",
            plugin.engine(),
            plugin.instance()
        ),
        None => format!("{} `{}`", plugin.engine(), plugin.instance()),
    }
}

/// The hint listing the kinds an engine takes.
fn takes(capabilities: &Capabilities) -> String {
    let kinds: Vec<&str> = capabilities.kinds.iter().map(|k| k.as_str()).collect();
    format!("this engine takes: {}", kinds.join(", "))
}

fn describe(plugin: &dyn EnginePlugin, database: &DatabaseRef, kind: BackupKind) -> String {
    format!("{kind} backup of {}", describe_database(plugin, database))
}

/// The sink of a backup the engine delivers through another entry point:
/// writing to it is a plugin bug, reported as such.
struct DeliveredElsewhere;

#[async_trait::async_trait]
impl BackupSink for DeliveredElsewhere {
    async fn write_stream(
        &self,
        name: &str,
        _reader: Box<dyn tokio::io::AsyncRead + Send + Unpin + 'static>,
    ) -> Result<crate::catalog::manifest::StreamRecord> {
        Err(refused(name))
    }

    fn part_channel(&self) -> (PartFeed, PartStream) {
        crate::plugin::part_channel(crate::vault::writer::MIN_PART_SIZE, Arc::new(NoBuffers))
    }

    async fn write_parts(
        &self,
        name: &str,
        _parts: PartStream,
        _digest: StreamDigest,
    ) -> Result<crate::catalog::manifest::StreamRecord> {
        Err(refused(name))
    }
}

fn refused(name: &str) -> Error {
    Error::engine(format!(
        "stream `{name}` was offered to a backup that the engine delivers through its own entry point"
    ))
}

struct NoBuffers;

impl crate::plugin::PartBuffers for NoBuffers {
    fn take_full(&self) -> Vec<u8> {
        Vec::new()
    }

    fn give(&self, _buffer: Vec<u8>) {}
}

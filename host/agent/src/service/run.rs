//! One pass of the service: discover the protected databases, run what is
//! due (at most [`ServiceConfig::concurrency`] jobs at once, one per
//! database), retry what can succeed on a retry, turn a broken chain into a
//! full, then apply retention. `strata serve --once` is one pass; `strata
//! serve` repeats them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use strata_core::catalog::index::{CatalogIndex, JobRecord};
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::catalog::retention::{SCHEDULED_FOR_LABEL, point_time};
use strata_core::lifecycle::{BackupResult, ExpiryReport, Host, KIND_REASON_LABEL};
use strata_core::plugin::{BackupRequest, DatabaseRef, EnginePlugin};
use strata_core::{Error, ErrorKind, Result};
use tokio_util::sync::CancellationToken;

use super::policy::{PolicyConfig, ProtectConfig, ServiceConfig};
use super::schedule::{self, Due, KindRuns, LastRuns, Trigger};
use super::telemetry;
use crate::context::Context;

/// A protected database, with its plugin and policy.
pub struct Protected {
    /// The plugin of its instance.
    pub plugin: Arc<dyn EnginePlugin>,
    /// The database.
    pub database: DatabaseRef,
    /// The policy's name.
    pub policy_name: String,
    /// The policy.
    pub policy: PolicyConfig,
}

impl Protected {
    /// Applies the policy's retention at `now` (see [`Host::expire`]);
    /// `None` when the policy keeps everything.
    pub async fn expire(
        &self,
        host: &Host,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Option<Result<ExpiryReport>> {
        let retention = self.policy.retention()?;
        Some(
            host.expire(
                self.plugin.as_ref(),
                &self.database,
                retention,
                now,
                self.policy.time_zone.0,
                dry_run,
            )
            .await,
        )
    }

    /// The newest restorable point of the database (UTC), from the
    /// planner's recoverable windows.
    pub async fn latest_point(&self, host: &Host) -> Result<Option<DateTime<Utc>>> {
        let backups = host.backups(self.plugin.as_ref(), &self.database).await?;
        self.latest_point_of(host, &backups).await
    }

    /// [`latest_point`](Self::latest_point) from backups read already.
    pub async fn latest_point_of(
        &self,
        host: &Host,
        backups: &[Manifest],
    ) -> Result<Option<DateTime<Utc>>> {
        let timeline = host
            .timeline_of(self.plugin.as_ref(), &self.database, backups)
            .await?;
        Ok(timeline.windows.iter().map(|w| w.to_time).max())
    }

    /// How messages and tables name it.
    pub fn name(&self) -> String {
        match &self.database.database {
            Some(db) => format!("{}/{}/{db}", self.plugin.engine(), self.plugin.instance()),
            None => format!("{}/{}", self.plugin.engine(), self.plugin.instance()),
        }
    }
}

/// Every protected database of the configuration: each `[[protect]]`
/// item's databases as its engine reports them now (new databases included),
/// filtered by its `databases` list.
pub async fn discover(ctx: &Context) -> Result<Vec<Protected>> {
    let mut out = Vec::new();
    for item in &ctx.config.protect {
        let plugin: Arc<dyn EnginePlugin> =
            crate::engines::plugin(ctx, item.engine.get_ref(), item.instance.get_ref())?.into();
        let policy = ctx.config.policy[item.policy.get_ref()].clone();
        for database in plugin.discover().await? {
            if wanted(item, &database) {
                out.push(Protected {
                    plugin: plugin.clone(),
                    database,
                    policy_name: item.policy.get_ref().clone(),
                    policy: policy.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn wanted(item: &ProtectConfig, database: &DatabaseRef) -> bool {
    item.all_databases()
        || database
            .database
            .as_ref()
            .is_some_and(|db| item.databases().contains(db))
}

/// When each kind last ran for `protected` (see [`schedule`]): its newest
/// committed backups' schedule slots or ends, and the last slots its jobs
/// ran for.
pub fn last_runs(
    protected: &Protected,
    backups: &[Manifest],
    index: Option<&CatalogIndex>,
) -> LastRuns {
    let job = |kind: BackupKind, succeeded: bool| {
        index.and_then(|index| {
            index
                .last_job(
                    protected.plugin.engine(),
                    protected.plugin.instance(),
                    protected.database.database.as_deref(),
                    kind.as_str(),
                    succeeded,
                )
                .ok()
                .flatten()
        })
    };
    let runs = |kind: BackupKind| {
        let of_kind = || backups.iter().filter(move |m| m.kind == kind);
        let success = job(kind, true);
        // A backup taken by hand has no job: when it ended is when it ran.
        let by_hand = of_kind()
            .filter(|m| !m.labels.contains_key(SCHEDULED_FOR_LABEL))
            .map(|m| m.ended_at)
            .max();
        let slot = of_kind()
            .map(point_time)
            .max()
            .max(success.as_ref().and_then(|j| j.scheduled_for));
        // Only a failure pauses a kind: a job cancelled by a stop (or
        // whose process died) is taken again by the next pass at once.
        let failed_at = job(kind, false)
            .filter(|j| j.result == "failed")
            .map(|j| j.ended_at.unwrap_or(j.started_at));
        KindRuns {
            slot,
            ran: success.map(|j| j.started_at).max(by_hand),
            failed_at,
        }
    };
    LastRuns {
        full: runs(BackupKind::Full),
        diff: runs(BackupKind::Diff),
        incr: runs(BackupKind::Incr),
        log: runs(BackupKind::Log),
        has_full: backups.iter().any(|m| m.kind == BackupKind::Full),
        takes_logs: protected
            .plugin
            .capabilities()
            .kinds
            .contains(&BackupKind::Log),
    }
}

/// How long a kind whose job failed waits before a later pass takes its
/// slot again: as long as the job's own retries took, at the least.
pub fn retry_pause(service: &ServiceConfig) -> std::time::Duration {
    // Saturating: a retry_delay of many years would overflow and panic the
    // service (found by fuzzing the configuration).
    service
        .retry_delay
        .0
        .saturating_mul(2u32.saturating_pow(service.retries.min(16)))
}

/// Where jobs wait for their turn: at most `[service] concurrency` at once
/// on the host, and one backup per database at a time, whether a pass or an
/// operator (`backup ... --now`) started it.
pub struct JobSlots {
    host: tokio::sync::Semaphore,
    databases: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl JobSlots {
    /// Slots for `service`'s concurrency.
    pub fn new(service: &ServiceConfig) -> Self {
        JobSlots {
            host: tokio::sync::Semaphore::new(service.concurrency.max(1)),
            databases: Default::default(),
        }
    }

    fn database(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// What one pass did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PassReport {
    /// The jobs that ran, in the order they ended.
    pub jobs: Vec<JobRecord>,
    /// Retention, per database with a retention policy.
    pub expiries: Vec<ExpiryReport>,
}

/// Runs one pass at `now` (see the module docs). Once `stop` is
/// cancelled no further job starts (running ones go on); `cancel` aborts
/// running jobs.
pub async fn pass(
    ctx: &Context,
    host: &Host,
    index: Option<&CatalogIndex>,
    now: DateTime<Utc>,
    slots: &JobSlots,
    stop: &CancellationToken,
    cancel: CancellationToken,
) -> Result<PassReport> {
    let service = &ctx.config.service;
    let protected = discover(ctx).await?;
    // What is due, for every database at once (reading the vault is most
    // of the time a pass takes).
    let checked: Vec<Result<Option<(&Protected, Due)>>> = futures::stream::iter(&protected)
        .map(|item| async move {
            let backups = host.backups(item.plugin.as_ref(), &item.database).await?;
            let last = last_runs(item, &backups, index);
            Ok(
                schedule::due(&item.policy, &last, now, retry_pause(service))
                    .map(|due| (item, due)),
            )
        })
        .buffered(PASS_READS)
        .collect()
        .await;
    let mut due = Vec::new();
    let mut first_error = None;
    let mut readable = 0;
    for (item, result) in protected.iter().zip(checked) {
        match result {
            Ok(job) => {
                readable += 1;
                due.extend(job);
            }
            Err(err) => {
                tracing::error!(database = %item.name(), error = %err, "its backups could not be read; nothing runs for it in this pass");
                first_error.get_or_insert(err);
            }
        }
    }
    // Nothing readable at all (the vault is down): the pass failed.
    if let Some(err) = first_error
        && readable == 0
    {
        return Err(err);
    }
    let mut report = PassReport::default();
    telemetry::queued(due.len());
    let runs = futures::stream::iter(due)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .map(|(item, job)| run_job(host, index, service, slots, item, job, now, cancel.clone()))
        .buffer_unordered(service.concurrency.max(1));
    futures::pin_mut!(runs);
    while let Some(jobs) = runs.next().await {
        report.jobs.extend(jobs);
    }
    if stop.is_cancelled() || cancel.is_cancelled() {
        return Ok(report);
    }
    // Retention and the RPO of every database, several at once. An expiry
    // enters the job history when it deleted something or failed: an idle
    // service does not fill the history with passes that did nothing.
    let maintained: Vec<(Option<JobRecord>, Option<ExpiryReport>)> =
        futures::stream::iter(&protected)
            .map(|item| maintain(host, index, item, now))
            .buffered(PASS_READS)
            .collect()
            .await;
    for (job, expiry) in maintained {
        report.jobs.extend(job);
        report.expiries.extend(expiry);
    }
    Ok(report)
}

/// Databases whose backups a pass reads at once.
const PASS_READS: usize = 16;

/// Applies retention to one database and records its RPO.
async fn maintain(
    host: &Host,
    index: Option<&CatalogIndex>,
    item: &Protected,
    now: DateTime<Utc>,
) -> (Option<JobRecord>, Option<ExpiryReport>) {
    let mut outcome = (None, None);
    if let Some(expiry) = item.expire(host, now, false).await {
        let mut job = new_job(item, "expire", "schedule", None, now);
        match expiry {
            Ok(expiry) => {
                telemetry::expired(
                    &job.engine,
                    &job.instance,
                    job.database.as_deref(),
                    expiry.deleted_backups,
                );
                if expiry.deleted_backups + expiry.deleted_log > 0 {
                    job = start(index, job);
                    job.result = "succeeded".into();
                    job.stored_bytes = Some(expiry.freed_bytes);
                    finish(index, &mut job);
                    outcome.0 = Some(job);
                }
                outcome.1 = Some(expiry);
            }
            Err(err) => {
                job = start(index, job);
                fail(&mut job, &err);
                finish(index, &mut job);
                outcome.0 = Some(job);
            }
        }
    }
    match item.latest_point(host).await {
        Ok(point) => telemetry::rpo(
            item.plugin.engine(),
            item.plugin.instance(),
            item.database.database.as_deref(),
            point.map(|p| (Utc::now() - p).num_seconds().max(0)),
            item.policy.rpo_target().map(|r| r.as_secs()),
        ),
        Err(err) => {
            tracing::warn!(database = %item.name(), error = %err, "the restorable windows could not be read")
        }
    }
    outcome
}

fn new_job(
    item: &Protected,
    kind: &str,
    trigger: &str,
    slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> JobRecord {
    JobRecord {
        id: 0,
        engine: item.plugin.engine().into(),
        instance: item.plugin.instance().into(),
        database: item.database.database.clone(),
        kind: kind.into(),
        trigger: trigger.into(),
        scheduled_for: slot,
        started_at: now,
        ended_at: None,
        result: "running".into(),
        backup_id: None,
        raw_bytes: None,
        stored_bytes: None,
        error: None,
        hint: None,
    }
}

/// Records a job's start in the index (a failure there is logged: history
/// is not worth a backup).
fn start(index: Option<&CatalogIndex>, job: JobRecord) -> JobRecord {
    match index.map(|index| index.start_job(job.clone())) {
        Some(Ok(job)) => job,
        Some(Err(err)) => {
            tracing::warn!(error = %err, "the job history could not be written");
            job
        }
        None => job,
    }
}

fn finish(index: Option<&CatalogIndex>, job: &mut JobRecord) {
    job.ended_at = Some(Utc::now().max(job.started_at));
    match job.result.as_str() {
        "succeeded" => tracing::info!(
            job = job.id, engine = %job.engine, instance = %job.instance, kind = %job.kind,
            trigger = %job.trigger, backup = job.backup_id.as_deref().unwrap_or(""), "job succeeded"
        ),
        _ => tracing::error!(
            job = job.id, engine = %job.engine, instance = %job.instance, kind = %job.kind,
            trigger = %job.trigger, error = job.error.as_deref().unwrap_or(""),
            hint = job.hint.as_deref().unwrap_or(""), "job {}", job.result
        ),
    }
    telemetry::job_finished(job);
    if let Some(index) = index
        && job.id > 0
        && let Err(err) = index.finish_job(job)
    {
        tracing::warn!(error = %err, "the job history could not be written");
    }
}

fn fail(job: &mut JobRecord, err: &Error) {
    job.result = if err.kind() == ErrorKind::Cancelled {
        "cancelled"
    } else {
        "failed"
    }
    .into();
    job.error = Some(err.to_string());
    job.hint = err.hint_text().map(str::to_owned);
}

/// Runs one due backup with its retries, and the full that replaces a
/// differential or incremental whose chain is broken, once `slots` give it
/// its turn. Returns the jobs, as history records them.
#[allow(clippy::too_many_arguments)]
pub async fn run_job(
    host: &Host,
    index: Option<&CatalogIndex>,
    service: &ServiceConfig,
    slots: &JobSlots,
    item: &Protected,
    due: Due,
    now: DateTime<Utc>,
    cancel: CancellationToken,
) -> Vec<JobRecord> {
    let database = slots.database(&item.name());
    let _database = database.lock().await;
    let Ok(_host) = slots.host.acquire().await else {
        return Vec::new();
    };
    telemetry::job_started();
    let jobs = run_due(host, index, service, item, due, now, cancel).await;
    telemetry::job_ended();
    jobs
}

async fn run_due(
    host: &Host,
    index: Option<&CatalogIndex>,
    service: &ServiceConfig,
    item: &Protected,
    due: Due,
    now: DateTime<Utc>,
    cancel: CancellationToken,
) -> Vec<JobRecord> {
    let mut jobs = Vec::new();
    let mut next = Some(due);
    while let Some(due) = next.take() {
        let label_time = due
            .slot
            .filter(|_| due.trigger == Trigger::Schedule)
            .unwrap_or(now);
        let mut job = start(
            index,
            new_job(
                item,
                due.kind.as_str(),
                due.trigger.as_str(),
                Some(label_time),
                now,
            ),
        );
        if let Trigger::ChainBroken(why) = &due.trigger {
            tracing::warn!(database = %item.name(), reason = %why, "the chain is broken; a full backup runs now");
        }
        let mut attempt = 0;
        let outcome = loop {
            let mut request = BackupRequest::new(item.database.clone(), due.kind);
            request
                .labels
                .insert(SCHEDULED_FOR_LABEL.into(), label_time.to_rfc3339());
            request
                .labels
                .insert("strata.trigger".into(), due.trigger.as_str().into());
            let result = host
                .backup(item.plugin.as_ref(), request, None, cancel.clone())
                .await;
            match result {
                Err(err) if err.is_retryable() && attempt < service.retries => {
                    let wait = service
                        .retry_delay
                        .0
                        .saturating_mul(2u32.saturating_pow(attempt));
                    attempt += 1;
                    tracing::warn!(database = %item.name(), kind = %due.kind, error = %err, attempt, "retryable failure; retrying in {}", humantime::format_duration(wait));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => break Err(err),
                    }
                }
                other => break other,
            }
        };
        match outcome {
            Ok(BackupResult::Committed(manifest)) => {
                job.result = "succeeded".into();
                // The engine settled another kind (a broken log chain turns
                // a log backup into a full): history shows what ran and why.
                if let Some(reason) = manifest.labels.get(KIND_REASON_LABEL) {
                    job.kind = manifest.kind.as_str().into();
                    job.trigger = Trigger::ChainBroken(reason.clone()).as_str().into();
                    job.hint = Some(format!(
                        "a {} backup was due and a {} ran: {reason}",
                        due.kind, manifest.kind
                    ));
                }
                job.backup_id = Some(manifest.id.to_string());
                job.raw_bytes = Some(manifest.raw_size());
                job.stored_bytes = Some(manifest.stored_size());
            }
            Ok(BackupResult::Delegated(_)) => job.result = "succeeded".into(),
            Err(err) => {
                fail(&mut job, &err);
                if matches!(due.kind, BackupKind::Diff | BackupKind::Incr)
                    && err.kind() == ErrorKind::NotFound
                {
                    next = Some(Due {
                        kind: BackupKind::Full,
                        trigger: Trigger::ChainBroken(err.to_string()),
                        slot: due.slot,
                    });
                }
            }
        }
        if attempt > 0 {
            job.hint = Some(match job.hint.take() {
                Some(hint) => format!("{hint}; {attempt} retries were made"),
                None => format!("{attempt} retries were made"),
            });
        }
        finish(index, &mut job);
        jobs.push(job);
    }
    jobs
}

/// How long the service sleeps between passes when nothing is due sooner.
pub const IDLE_PASS: Duration = Duration::from_secs(60);

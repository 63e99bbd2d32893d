//! The service's commands: `serve`, `prune`, `status`, `jobs`, `config check`.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use sd_notify::NotifyState;
use strata_core::catalog::index::JobRecord;
use strata_core::catalog::manifest::BackupKind;
use strata_core::catalog::retention::point_time;
use strata_core::{Error, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::control::{self, Reply, Request};
use super::run::{self, IDLE_PASS, PassReport};
use super::schedule;
use super::telemetry;
use crate::context::Context;
use crate::output::{Table, human_bytes, print_json};

/// `strata serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run what is due now (backups, then retention) and exit: for cron-style
    /// use and tests. Exits 1 when a job failed.
    #[arg(long)]
    pub once: bool,
    /// Evaluate schedules and retention as if it were this time (RFC 3339);
    /// for drills and tests with compressed time.
    #[arg(long, hide = true, value_name = "TIME")]
    pub now: Option<DateTime<Utc>>,
}

/// `strata prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply retention as if it were this time (RFC 3339).
    #[arg(long, hide = true, value_name = "TIME")]
    pub now: Option<DateTime<Utc>>,
}

/// `strata jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// How many jobs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Keep watching: print each job as it starts and as it ends, until
    /// Ctrl-C (with --json, one object per line).
    #[arg(long, short)]
    pub follow: bool,
}

/// `strata status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Evaluate RPO and next runs as if it were this time (RFC 3339).
    #[arg(long, hide = true, value_name = "TIME")]
    pub now: Option<DateTime<Utc>>,
}

/// `strata config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration without starting anything, and print the
    /// next run of every schedule.
    Check,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `strata serve [--once]`.
pub async fn serve(args: ServeArgs, ctx: &Context) -> Result<()> {
    if ctx.config.protect.is_empty() {
        return Err(Error::config("nothing is protected: the configuration has no [[protect]] item")
            .hint("add a [policy.<name>] and a [[protect]] item (engine, instance, policy); `strata config check` validates them"));
    }
    // One service per index: a second `serve` (or an overlapping
    // `serve --once` from cron) would run the same jobs twice and take the
    // other's running jobs for abandoned ones.
    let _lock = service_lock(ctx)?;
    let host = ctx.host().await?;
    let index = ctx.index().ok();
    if let Some(index) = &index
        && let Ok(n) = index.fail_abandoned_jobs(Utc::now())
        && n > 0
    {
        tracing::warn!(
            jobs = n,
            "jobs left running by a service that stopped were marked cancelled"
        );
    }
    // SIGTERM or Ctrl-C: no new job starts; running jobs get the grace
    // period, then are cancelled (they delete what they wrote).
    let stop = stop_signal();
    let cancel = CancellationToken::new();
    let grace = ctx.config.service.shutdown_grace.0;
    tokio::spawn({
        let (stop, cancel) = (stop.clone(), cancel.clone());
        async move {
            stop.cancelled().await;
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
            tracing::warn!(
                "stopping: no new jobs; running jobs are cancelled in {}",
                humantime::format_duration(grace)
            );
            tokio::time::sleep(grace).await;
            cancel.cancel();
        }
    });
    if args.once {
        let now = args.now.unwrap_or_else(Utc::now);
        let slots = run::JobSlots::new(&ctx.config.service);
        let report = run::pass(ctx, &host, index.as_ref(), now, &slots, &stop, cancel).await?;
        print_pass(&report, ctx)?;
        return outcome(&report);
    }
    if let Some(address) = ctx.config.service.metrics {
        telemetry::serve(address)?;
    }
    let listener = control::bind(
        &ctx.config.service.socket,
        ctx.config.service.socket_group.as_deref(),
    )?;
    let slots = run::JobSlots::new(&ctx.config.service);
    // The socket stays open until the passes (and so every running job)
    // ended: a backup waiting for its last WAL segment gets it through the
    // socket during the grace period.
    let passes_done = CancellationToken::new();
    let control = control::serve(
        listener,
        control::Service {
            ctx,
            host: &host,
            index: index.as_ref(),
            slots: &slots,
            cancel: cancel.clone(),
            stopping: stop.clone(),
        },
        passes_done.clone(),
    );
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // systemd restarts a service that stops pinging: ping at half the
        // interval from a task of its own, so a long pass never trips it
        // while the runtime is alive.
        tokio::spawn(async move {
            loop {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                tokio::time::sleep(interval / 2).await;
            }
        });
    }
    tracing::info!(
        protected = ctx.config.protect.len(),
        "the service is running"
    );
    let passes = async {
        passes(ctx, &host, index.as_ref(), &slots, &stop, cancel).await;
        passes_done.cancel();
    };
    tokio::join!(control, passes);
    let _ = std::fs::remove_file(&ctx.config.service.socket);
    tracing::info!("the service stopped");
    Ok(())
}

/// The service's passes, one a minute, until `stop`.
async fn passes(
    ctx: &Context,
    host: &strata_core::lifecycle::Host,
    index: Option<&strata_core::catalog::index::CatalogIndex>,
    slots: &run::JobSlots,
    stop: &CancellationToken,
    cancel: CancellationToken,
) {
    let mut failed_jobs = 0;
    while !stop.is_cancelled() {
        let now = Utc::now();
        match run::pass(ctx, host, index, now, slots, stop, cancel.clone()).await {
            Ok(report) => {
                failed_jobs += report.jobs.iter().filter(|j| j.result == "failed").count();
                let status = format!(
                    "last pass {}: {} jobs; {failed_jobs} failed since start",
                    time(now),
                    report.jobs.len()
                );
                tracing::info!(jobs = report.jobs.len(), "pass done");
                let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            }
            // A pass that cannot even start (the vault unreachable) is
            // logged; the next pass tries again.
            Err(err) => {
                tracing::error!(error = %err, hint = err.hint_text().unwrap_or(""), "the pass failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_PASS) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Takes the service lock beside the catalog index, held until the
/// returned file is dropped (the process ends).
fn service_lock(ctx: &Context) -> Result<std::fs::File> {
    let index = ctx.index_path();
    let path = index.with_file_name(format!(
        "{}.serve.lock",
        index.file_name().unwrap_or_default().to_string_lossy()
    ));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io_doing_at("cannot create the directory of", &path, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io_doing_at("cannot open the service lock", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::conflict(format!(
            "another `strata serve` is running with this catalog index (it holds {})",
            path.display()
        ))
        .hint("let it finish (`strata jobs` shows what it runs); a cron entry for `serve --once` must not overlap a running service")),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io_doing_at("cannot lock", &path, e))
        }
    }
}

/// `serve --once`'s result: an error when a job did not succeed.
fn outcome(report: &PassReport) -> Result<()> {
    let failed = report
        .jobs
        .iter()
        .filter(|j| j.result != "succeeded")
        .count();
    if failed > 0 {
        return Err(
            Error::engine(format!("{failed} of {} jobs failed", report.jobs.len()))
                .hint("`strata jobs` shows each error and what to do"),
        );
    }
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT.
fn stop_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "SIGTERM cannot be caught");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
    });
    token
}

fn print_pass(report: &PassReport, ctx: &Context) -> Result<()> {
    if ctx.json {
        return print_json(report);
    }
    if ctx.quiet {
        return Ok(());
    }
    if report.jobs.is_empty() {
        println!("nothing was due");
        return Ok(());
    }
    print_jobs(&report.jobs);
    Ok(())
}

fn print_jobs(jobs: &[JobRecord]) {
    let mut table = Table::new(&[
        "JOB", "DATABASE", "KIND", "TRIGGER", "STARTED", "RESULT", "BACKUP", "STORED",
    ]);
    let mut errors = Vec::new();
    for job in jobs {
        let database = match &job.database {
            Some(db) => format!("{}/{}/{db}", job.engine, job.instance),
            None => format!("{}/{}", job.engine, job.instance),
        };
        table.row(vec![
            job.id.to_string(),
            database,
            job.kind.clone(),
            job.trigger.clone(),
            time(job.started_at),
            job.result.clone(),
            job.backup_id.clone().unwrap_or_else(|| "-".into()),
            job.stored_bytes.map_or("-".into(), human_bytes),
        ]);
        if let Some(error) = &job.error {
            errors.push((job.id, error.clone(), job.hint.clone()));
        }
    }
    print!("{}", table.render());
    for (id, error, hint) in errors {
        println!("job {id}: {error}");
        if let Some(hint) = hint {
            println!("  hint: {hint}");
        }
    }
}

/// `strata prune [--dry-run]`.
pub async fn prune(args: PruneArgs, ctx: &Context) -> Result<()> {
    if ctx.config.protect.is_empty() {
        return Err(Error::config(
            "nothing is protected: the configuration has no [[protect]] item",
        )
        .hint("retention comes from the policy of each [[protect]] item"));
    }
    let host = ctx.host().await?;
    let now = args.now.unwrap_or_else(Utc::now);
    let mut reports = Vec::new();
    for item in run::discover(ctx).await? {
        let Some(report) = item.expire(&host, now, args.dry_run).await else {
            if !ctx.json && !ctx.quiet {
                println!(
                    "{}: policy `{}` has no [retention]; nothing expires",
                    item.name(),
                    item.policy_name
                );
            }
            continue;
        };
        let report = report?;
        if !ctx.json && !ctx.quiet {
            print_expiry(&report);
        }
        reports.push(report);
    }
    if ctx.json {
        print_json(&reports)?;
    }
    Ok(())
}

fn print_expiry(report: &strata_core::lifecycle::ExpiryReport) {
    if let Some(why) = &report.left_to_engine {
        println!("{}: left alone: {why}", report.database);
        return;
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let log_bytes: u64 = report.log.iter().map(|l| l.stored_bytes).sum();
    let backup_bytes: u64 = report.plan.expire.iter().map(|e| e.stored_bytes).sum();
    println!(
        "{}: keeps {} backups; {verb} {} backups ({}) and {} archived log files ({})",
        report.database,
        report.plan.keep.len(),
        report.plan.expire.len(),
        human_bytes(backup_bytes),
        report.log.len(),
        human_bytes(log_bytes),
    );
    if let Some(days) = report.soft_delete_days {
        crate::vault_cmd::print_purge(&report.purge, days, report.dry_run, "  ");
    }
    for expired in &report.plan.expire {
        let locked = report.locked.iter().find(|(id, _)| id == &expired.id);
        match locked {
            Some((_, until)) => println!(
                "  expires {} {} ({}): {}; the vault's lock keeps it{}, a later pass deletes it",
                expired.kind,
                expired.id,
                time(expired.ended_at),
                expired.reason,
                until
                    .map(|t| format!(" until {}", time(t)))
                    .unwrap_or_default()
            ),
            None => println!(
                "  {verb} {} {} ({}): {}",
                expired.kind,
                expired.id,
                time(expired.ended_at),
                expired.reason
            ),
        }
    }
    if report.locked_log > 0 {
        println!(
            "  {} expired archived log file(s) are still locked by the vault; a later pass deletes them",
            report.locked_log
        );
    }
    for kept in &report.plan.keep {
        let why: Vec<String> = kept.reasons.iter().map(ToString::to_string).collect();
        println!("  keeps {} {}: {}", kept.kind, kept.id, why.join("; "));
    }
}

/// `strata jobs`.
pub async fn jobs(args: JobsArgs, ctx: &Context) -> Result<()> {
    let fetch = |limit: usize| -> Result<Vec<JobRecord>> {
        let request = Request::Jobs {
            limit,
            index: ctx.index_path(),
        };
        Ok(match from_service(ctx, &request)? {
            Some(value) => serde_json::from_value(value)?,
            None => ctx.index()?.jobs(None, None, limit)?,
        })
    };
    let jobs = fetch(args.limit)?;
    if args.follow {
        return follow(jobs, fetch, ctx).await;
    }
    if ctx.json {
        return print_json(&jobs);
    }
    if jobs.is_empty() {
        println!(
            "no jobs have run (the service records its jobs in {})",
            ctx.index_path().display()
        );
        return Ok(());
    }
    print_jobs(&jobs);
    Ok(())
}

/// `jobs --follow`: the recent jobs, then each change as it happens.
async fn follow(
    recent: Vec<JobRecord>,
    fetch: impl Fn(usize) -> Result<Vec<JobRecord>>,
    ctx: &Context,
) -> Result<()> {
    let show = |job: &JobRecord| -> Result<()> {
        if ctx.json {
            println!("{}", serde_json::to_string(job)?);
        } else {
            let database = job
                .database
                .as_deref()
                .map_or(String::new(), |d| format!("/{d}"));
            let detail = match (&job.backup_id, &job.error) {
                (_, Some(error)) => format!(": {error}"),
                (Some(id), None) => format!(" {id}"),
                _ => String::new(),
            };
            println!(
                "{} job {} {}/{}{database} {} ({}) {}{detail}",
                time(job.ended_at.unwrap_or(job.started_at)),
                job.id,
                job.engine,
                job.instance,
                job.kind,
                job.trigger,
                job.result,
            );
        }
        Ok(())
    };
    let mut seen: std::collections::HashMap<i64, String> = std::collections::HashMap::new();
    for job in recent.iter().rev() {
        show(job)?;
        seen.insert(job.id, job.result.clone());
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        for job in fetch(100)?.iter().rev() {
            if seen.get(&job.id) != Some(&job.result) {
                show(job)?;
                seen.insert(job.id, job.result.clone());
            }
        }
    }
}

/// `strata backup ENGINE NAME --kind KIND --now`: the backup as a job of
/// the running service.
pub fn backup_now(ctx: &Context, engine: &str, instance: &str, kind: BackupKind) -> Result<()> {
    let request = Request::Backup {
        engine: engine.to_owned(),
        instance: instance.to_owned(),
        kind: kind.as_str().to_owned(),
        index: ctx.index_path(),
    };
    let Some(answer) = from_service(ctx, &request)? else {
        return Err(Error::not_found(format!(
            "--now hands the backup to the service, and no service runs at {}",
            ctx.config.service.socket.display()
        ))
        .hint("start it (`systemctl start strata`), or back up in this process without --now"));
    };
    let jobs: Vec<JobRecord> = serde_json::from_value(answer)?;
    if ctx.json {
        print_json(&jobs)?;
    } else if !ctx.quiet {
        print_jobs(&jobs);
    }
    match jobs.iter().find(|j| j.result != "succeeded") {
        Some(job) => Err(Error::engine(format!(
            "job {} failed: {}",
            job.id,
            job.error.as_deref().unwrap_or("no reason given")
        ))
        .hint(
            job.hint
                .clone()
                .unwrap_or_else(|| "`strata jobs` shows the history".into()),
        )),
        None if jobs.is_empty() => Err(Error::cancelled(
            "the service stopped before the backup ran",
        )),
        None => Ok(()),
    }
}

/// One protected database's state, as `status` shows it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DatabaseStatus {
    /// `engine/instance[/database]`.
    pub database: String,
    /// The policy's name.
    pub policy: String,
    /// The newest full, differential and incremental (id and time).
    pub last: std::collections::BTreeMap<String, (String, DateTime<Utc>)>,
    /// The newest restorable point (UTC).
    pub latest_point: Option<DateTime<Utc>>,
    /// Seconds from the newest restorable point to now.
    pub rpo_seconds: Option<i64>,
    /// The policy's RPO target, in seconds.
    pub rpo_target_seconds: Option<u64>,
    /// The next scheduled backup: kind and time (UTC).
    pub next: Option<(BackupKind, DateTime<Utc>)>,
    /// `ok`, `rpo-exceeded`, `last-job-failed`, `no-backup` or `error`.
    pub health: String,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// `strata status`.
pub async fn status(args: StatusArgs, ctx: &Context) -> Result<()> {
    let rows: Vec<DatabaseStatus> = match args.now {
        None => match from_service(
            ctx,
            &Request::Status {
                index: ctx.index_path(),
            },
        )? {
            Some(value) => serde_json::from_value(value)?,
            None => status_rows(ctx, None).await?,
        },
        now => status_rows(ctx, now).await?,
    };
    print_status(&rows, ctx)
}

/// Asks the running service, when there is one (`None`: there is none).
fn from_service(ctx: &Context, request: &Request) -> Result<Option<serde_json::Value>> {
    match control::ask(&ctx.config.service.socket, request) {
        Reply::NoService => Ok(None),
        Reply::Answered(answer) => {
            tracing::info!(socket = %ctx.config.service.socket.display(), "answered by the service");
            answer.map(Some)
        }
    }
}

/// Every protected database's status at `now` (default: the current time).
pub async fn status_rows(ctx: &Context, now: Option<DateTime<Utc>>) -> Result<Vec<DatabaseStatus>> {
    let host = ctx.host().await?;
    let index = ctx.index().ok();
    let now = now.unwrap_or_else(Utc::now);
    let mut rows = Vec::new();
    for item in run::discover(ctx).await? {
        let mut status = DatabaseStatus {
            database: item.name(),
            policy: item.policy_name.clone(),
            last: Default::default(),
            latest_point: None,
            rpo_seconds: None,
            rpo_target_seconds: item.policy.rpo_target().map(|r| r.as_secs()),
            next: schedule::next_runs(&item.policy, now).into_iter().next(),
            health: "ok".into(),
            problem: None,
        };
        let backups = host.backups(item.plugin.as_ref(), &item.database).await?;
        for m in &backups {
            status
                .last
                .insert(m.kind.as_str().into(), (m.id.to_string(), point_time(m)));
        }
        match item.latest_point_of(&host, &backups).await {
            Ok(point) => status.latest_point = point,
            Err(err) => {
                status.health = "error".into();
                status.problem = Some(err.to_string());
            }
        }
        status.rpo_seconds = status.latest_point.map(|p| (now - p).num_seconds().max(0));
        // The newest backup job of this database (retention's own jobs
        // do not hide a failed backup).
        let failed = index.as_ref().and_then(|index| {
            let jobs = index
                .jobs(Some(item.plugin.engine()), Some(item.plugin.instance()), 50)
                .ok()?;
            jobs.into_iter()
                .find(|j| j.kind != "expire" && j.database == item.database.database)
                .filter(|j| j.result == "failed" || j.result == "cancelled")
        });
        if backups.is_empty() {
            status.health = "no-backup".into();
            status.problem = Some("no backup has been taken yet".into());
        } else if let Some(job) = failed {
            status.health = "last-job-failed".into();
            status.problem = Some(format!(
                "job {} ({} {}) failed: {}",
                job.id,
                job.kind,
                job.trigger,
                job.error.unwrap_or_default()
            ));
        } else if let (Some(rpo), Some(target)) = (status.rpo_seconds, status.rpo_target_seconds)
            && rpo > target as i64
        {
            status.health = "rpo-exceeded".into();
            status.problem = Some(format!(
                "the newest restorable point is {} old, over the {} target",
                humantime::format_duration(std::time::Duration::from_secs(rpo as u64)),
                humantime::format_duration(std::time::Duration::from_secs(target))
            ));
        }
        rows.push(status);
    }
    Ok(rows)
}

fn print_status(rows: &[DatabaseStatus], ctx: &Context) -> Result<()> {
    if ctx.json {
        return print_json(&rows);
    }
    let mut table = Table::new(&[
        "DATABASE",
        "POLICY",
        "LAST FULL",
        "LAST DIFF",
        "LATEST POINT",
        "RPO",
        "TARGET",
        "NEXT",
        "HEALTH",
    ]);
    let last =
        |s: &DatabaseStatus, kind: &str| s.last.get(kind).map_or("-".into(), |(_, at)| time(*at));
    for s in rows {
        table.row(vec![
            s.database.clone(),
            s.policy.clone(),
            last(s, "full"),
            last(s, "diff"),
            s.latest_point.map_or("-".into(), time),
            s.rpo_seconds.map_or("-".into(), |r| {
                humantime::format_duration(std::time::Duration::from_secs(r as u64)).to_string()
            }),
            s.rpo_target_seconds.map_or("-".into(), |r| {
                humantime::format_duration(std::time::Duration::from_secs(r)).to_string()
            }),
            s.next
                .map_or("-".into(), |(kind, at)| format!("{kind} {}", time(at))),
            s.health.clone(),
        ]);
    }
    print!("{}", table.render());
    for s in rows {
        if let Some(problem) = &s.problem {
            println!("{}: {problem}", s.database);
        }
    }
    Ok(())
}

/// `strata config check`: the configuration was read and validated when
/// the command started; this prints what it schedules.
pub async fn config_check(ctx: &Context) -> Result<()> {
    let origin = ctx
        .config_path
        .as_ref()
        .map_or("the built-in defaults".to_owned(), |p| {
            p.display().to_string()
        });
    let now = Utc::now();
    let mut items = Vec::new();
    for item in &ctx.config.protect {
        let policy = &ctx.config.policy[item.policy.get_ref()];
        let next: Vec<serde_json::Value> = schedule::next_runs(policy, now)
            .into_iter()
            .map(|(kind, at)| {
                let expression = policy.schedule(kind).map(|s| s.expression.clone());
                serde_json::json!({
                    "kind": kind,
                    "schedule": expression,
                    "description": policy.schedule(kind).map(|s| s.describe()),
                    "next": at,
                    "next_local": at.with_timezone(&policy.time_zone.0).to_rfc3339(),
                })
            })
            .collect();
        items.push(serde_json::json!({
            "engine": crate::engines::engine_name(item.engine.get_ref())?,
            "instance": item.instance.get_ref(),
            "databases": if item.all_databases() { vec!["*".to_owned()] } else { item.databases().to_vec() },
            "policy": item.policy.get_ref(),
            "time_zone": policy.time_zone.0.name(),
            "schedules": next,
            "log_interval": policy.log_interval.as_ref().map(|i| i.get_ref().to_string()),
            "rpo": policy.rpo.as_ref().map(|r| r.get_ref().to_string()),
            "retention": policy.retention(),
        }));
    }
    if ctx.json {
        return print_json(
            &serde_json::json!({ "config": origin, "valid": true, "protected": items }),
        );
    }
    println!("{origin}: valid");
    if items.is_empty() {
        println!(
            "nothing is protected (no [[protect]] item): `strata serve` would have nothing to do"
        );
    }
    for item in &items {
        println!(
            "{}/{} under policy `{}` ({}):",
            item["engine"].as_str().unwrap_or_default(),
            item["instance"].as_str().unwrap_or_default(),
            item["policy"].as_str().unwrap_or_default(),
            item["time_zone"].as_str().unwrap_or_default()
        );
        for schedule in item["schedules"].as_array().into_iter().flatten() {
            println!(
                "  {:<5} \"{}\" ({}): next at {} ({})",
                schedule["kind"].as_str().unwrap_or_default(),
                schedule["schedule"].as_str().unwrap_or_default(),
                schedule["description"].as_str().unwrap_or_default(),
                schedule["next_local"].as_str().unwrap_or_default(),
                schedule["next"].as_str().unwrap_or_default(),
            );
        }
        match item["retention"].as_object() {
            Some(r) => println!(
                "  retention: {}",
                r.iter()
                    .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => println!("  retention: none (nothing expires)"),
        }
    }
    Ok(())
}

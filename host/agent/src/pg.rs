//! `strata pg ...`, `strata backup pg`, `strata restore pg`, `strata list pg`:
//! the PostgreSQL commands. Thin: parse, call `strata_postgres`, print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind, Position};
use strata_core::catalog::planner::{self, RecoverableWindow, RestoreTarget};
use strata_core::lifecycle::BackupResult;
use strata_core::plugin::{BackupRequest, DatabaseRef};
use strata_core::time::parse_time;
use strata_core::vault::{Vault, VaultArchive};
use strata_core::{Error, ErrorKind, Result};
use strata_postgres::chain::{Catalog, lsn_of, position};
use strata_postgres::restore::{RestoreReport, shell_word};
use strata_postgres::wal::{FetchOutcome, PushOutcome};
use strata_postgres::{Lsn, PostgresEngine, RestoreDestination, WalArchive};

use crate::context::{Context, cancel_on_interrupt};
use crate::output::{Table, human_bytes, human_rate, print_json};

/// The archive objects of cluster `name`, where its WAL lives.
pub fn wal_store(vault: &Vault, name: &str) -> VaultArchive {
    VaultArchive::new(vault.clone(), strata_postgres::ENGINE, name)
}

/// The plugin of cluster `name`: built from its section when this host
/// configures it, otherwise one that can only read the vault.
pub fn engine(ctx: &Context, name: &str, system_id: Option<u64>) -> Result<PostgresEngine> {
    let engine = match ctx.config.postgres.get(name) {
        Some(cluster) => cluster.build(name)?,
        None => PostgresEngine::unconfigured(name),
    };
    Ok(engine.with_system_id(system_id))
}

/// `strata pg ...`: PostgreSQL checks and the archive/restore commands PostgreSQL calls.
#[derive(Debug, Subcommand)]
pub enum PgCommand {
    /// Connect to a configured cluster and report its version, identity and
    /// archiving settings, with the line to fix each problem.
    Check {
        /// The cluster's name (`[postgres.<name>]` in the config).
        name: String,
    },
    /// Archive one WAL file into the vault (PostgreSQL's `archive_command`).
    /// Exits 0 only once the file is durable in the vault.
    WalPush {
        /// The file to archive (`%p`).
        path: PathBuf,
        /// The cluster's name in the config.
        #[arg(long)]
        cluster: String,
    },
    /// Restore one WAL file from the vault (PostgreSQL's `restore_command`).
    /// Exits 1 when the archive has no such file, 126 on any other failure
    /// (which stops recovery rather than ending it early).
    WalFetch {
        /// The file name PostgreSQL asks for (`%f`).
        file: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
        /// The cluster's name in the config.
        #[arg(long)]
        cluster: String,
        /// The system identifier whose WAL to read (default: the only one in the archive).
        #[arg(long)]
        system_id: Option<u64>,
    },
}

/// `strata backup pg NAME --kind full`.
#[derive(Debug, Args)]
pub struct PgBackupArgs {
    /// The cluster's name (`[postgres.<name>]` in the config).
    pub name: String,
    /// The kind of backup: `full`; `diff` (the pages changed since the
    /// newest full); `incr` (the pages changed since the newest backup of
    /// any kind).
    #[arg(long, default_value = "full")]
    pub kind: String,
    /// Wait for a scheduled checkpoint instead of requesting an immediate one.
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Hand the backup to the running service: it runs as one of its jobs
    /// (its concurrency limit, one backup per database at a time, its
    /// retries and job history), and this command waits for it.
    #[arg(long, conflicts_with = "spread_checkpoint")]
    pub now: bool,
}

/// `strata restore pg NAME (--to-time T | --to-lsn L | --latest) --target-dir D ...`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_time", "to_lsn", "latest"])))]
pub struct PgRestoreArgs {
    /// The cluster's name (`[postgres.<name>]` in the config).
    pub name: String,
    /// Restore to this time, with its zone: RFC 3339 (2026-11-22T01:02:03.5Z)
    /// or PostgreSQL's form (2026-11-22 01:02:03.5+00, +05:30, +0530, UTC).
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    /// Restore to this LSN (0/3000060).
    #[arg(long, value_name = "LSN")]
    pub to_lsn: Option<String>,
    /// Restore to the end of the archived WAL on the newest timeline.
    #[arg(long)]
    pub latest: bool,
    /// The new data directory (must be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// The port the restored cluster listens on.
    #[arg(long)]
    pub port: Option<u16>,
    /// Restore a tablespace elsewhere: OLD=NEW, OLD being its location (or OID)
    /// in the backup; repeatable.
    #[arg(long = "tablespace-map", value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Start the restored cluster and wait until it accepts connections.
    #[arg(long)]
    pub start: bool,
    /// Delete the contents of a non-empty target directory first.
    #[arg(long)]
    pub force: bool,
    /// The system identifier to restore (when the name held several clusters).
    #[arg(long)]
    pub system_id: Option<u64>,
    /// How long to wait for the started cluster to finish recovery, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub start_timeout: u64,
    /// Plan as if this backup (and what builds on it) were not in the
    /// vault, e.g. one `strata verify` found damaged: the restore then uses
    /// an older backup and more WAL. Repeatable.
    #[arg(long, value_name = "BACKUP")]
    pub skip_backup: Vec<String>,
}

/// `strata list pg NAME`.
#[derive(Debug, Args)]
pub struct PgListArgs {
    /// The cluster's name (`[postgres.<name>]` in the config).
    pub name: String,
    /// Show only the recoverable windows.
    #[arg(long)]
    pub timeline: bool,
    /// The system identifier (when the name held several clusters).
    #[arg(long)]
    pub system_id: Option<u64>,
}

/// How PostgreSQL should invoke this Strata: the binary, config and vault.
fn strata_invocation(ctx: &Context) -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "strata".to_owned());
    let mut words = vec![shell_word(&exe)];
    if let Some(config) = &ctx.config_path {
        let config = config.canonicalize().unwrap_or_else(|_| config.clone());
        words.push("--config".into());
        words.push(shell_word(&config.display().to_string()));
    }
    if !ctx.config.vault.url.is_empty() {
        words.push("--vault".into());
        words.push(shell_word(&ctx.config.vault.url));
    }
    if let Some(key) = &ctx.config.vault.key_file {
        words.push("--key-file".into());
        words.push(shell_word(&key.display().to_string()));
    }
    words.join(" ")
}

/// Runs `strata pg ...`.
pub async fn run(command: PgCommand, ctx: &Context) -> Result<()> {
    match command {
        PgCommand::Check { name } => check(&name, ctx).await,
        PgCommand::WalPush {
            path,
            cluster: name,
        } => wal_push(&path, &name, ctx).await,
        PgCommand::WalFetch {
            file,
            dest,
            cluster: name,
            system_id,
        } => {
            // PostgreSQL passes `%p` relative to the data directory (its
            // working directory): errors name the absolute path, so that
            // "free space on ..." says which file system.
            let dest = std::path::absolute(&dest).unwrap_or(dest);
            let outcome = wal_fetch(&file, &dest, &name, system_id, ctx).await;
            match outcome {
                Ok(FetchOutcome::Found) => Ok(()),
                Ok(FetchOutcome::NotFound) => {
                    // Recovery asks for files past the end of the archive: that is how it finds the end.
                    tracing::info!(file = %file, "not in the archive");
                    std::process::exit(1)
                }
                Err(err) => {
                    eprintln!("error: wal-fetch {file}: {err}");
                    if let Some(hint) = err.hint_text() {
                        eprintln!("hint: {hint}");
                    }
                    // Above 125: PostgreSQL stops recovery instead of treating the file as missing.
                    std::process::exit(126)
                }
            }
        }
    }
}

async fn check(name: &str, ctx: &Context) -> Result<()> {
    let cluster = ctx.cluster(name)?;
    let report = strata_postgres::check::check(cluster, name, &strata_invocation(ctx)).await?;
    if ctx.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(Error::config(format!(
            "cluster `{name}` has {} configuration problem(s)",
            report.findings.len()
        ))
        .hint("apply the lines printed above to postgresql.conf (ALTER SYSTEM works too), then reload or restart"))
    }
}

async fn wal_push(path: &Path, name: &str, ctx: &Context) -> Result<()> {
    let cluster = ctx.config.postgres.get(name).ok_or_else(|| {
        Error::config(format!("no PostgreSQL cluster `{name}` is configured"))
            .hint(format!("archive_command must name a [postgres.<name>] section of the config: add [postgres.{name}]"))
    })?;
    let data_dir = archiver_data_directory(cluster);
    let started = Instant::now();
    let vault = ctx.vault().await?;
    let store = wal_store(&vault, name);
    match WalArchive::new(&store).push(path, &data_dir).await? {
        PushOutcome::Stored { key, stored } => {
            tracing::info!(%key, stored, ms = started.elapsed().as_millis() as u64, "archived");
        }
        PushOutcome::Duplicate { key } => {
            tracing::info!(%key, "already archived with identical content");
        }
    }
    Ok(())
}

/// The data directory `archive_command` runs for: the archiver runs in it
/// and passes `%p` relative to it; else the configured one.
pub fn archiver_data_directory(cluster: &strata_postgres::ClusterConfig) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| cluster.data_directory.clone());
    if cwd.join("global/pg_control").is_file() {
        cwd
    } else {
        cluster.data_directory.clone()
    }
}

/// `strata pg wal-push` through a running service
/// ([`crate::service::control`]): `Some` when the service archived the
/// file, `None` when there is no service or it failed (the caller then
/// archives the file itself, as without a service).
pub fn wal_push_through_service(
    config: &crate::config::Config,
    path: &Path,
    name: &str,
) -> Option<()> {
    let cluster = config.postgres.get(name)?;
    let data_directory = archiver_data_directory(cluster);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        data_directory.join(path)
    };
    let request = crate::service::control::Request::WalPush {
        cluster: name.to_owned(),
        path: path.clone(),
        data_directory,
        index: config.catalog_path(),
    };
    match crate::service::control::ask(&config.service.socket, &request) {
        crate::service::control::Reply::NoService => None,
        crate::service::control::Reply::Answered(Ok(answer)) => {
            tracing::info!(file = %path.display(), %answer, "archived through the service");
            Some(())
        }
        crate::service::control::Reply::Answered(Err(err)) => {
            tracing::warn!(file = %path.display(), error = %err, "the service did not archive the file; archiving it directly");
            None
        }
    }
}

async fn wal_fetch(
    file: &str,
    dest: &Path,
    name: &str,
    system_id: Option<u64>,
    ctx: &Context,
) -> Result<FetchOutcome> {
    let prefetch = ctx
        .config
        .postgres
        .get(name)
        .map(|c| c.wal_prefetch)
        .unwrap_or(4);
    let mut attempt = 0;
    loop {
        let result = async {
            let vault = ctx.vault().await?;
            let store = wal_store(&vault, name);
            let archive = WalArchive::new(&store);
            let system_id = match system_id {
                Some(id) => id,
                None => match archive.system_ids().await?.as_slice() {
                    [id] => *id,
                    [] => return Ok(FetchOutcome::NotFound),
                    ids => {
                        return Err(Error::config(format!(
                            "the archive of `{name}` holds several systems: {ids:?}"
                        ))
                        .hint("add --system-id to restore_command"));
                    }
                },
            };
            archive.fetch(system_id, file, dest, prefetch).await
        }
        .await;
        match result {
            Err(err) if err.is_retryable() && attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %err, attempt, "wal-fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// Runs `strata backup pg NAME`.
pub async fn backup(args: PgBackupArgs, ctx: &Context) -> Result<()> {
    let kind: BackupKind = args.kind.parse()?;
    if kind == BackupKind::Log {
        return Err(Error::config(
            "PostgreSQL takes no log backups: its WAL is archived continuously",
        )
        .hint("use --kind full, diff or incr; `strata pg wal-push` archives the WAL (see `strata pg check`)"));
    }
    if args.now {
        return crate::service::commands::backup_now(
            ctx,
            strata_postgres::ENGINE,
            &args.name,
            kind,
        );
    }
    let plugin = ctx.cluster(&args.name)?.build(&args.name)?;
    let host = ctx.host().await?;
    let mut request = BackupRequest::new(DatabaseRef::instance(&args.name), kind);
    request.options = serde_json::json!({ "spread_checkpoint": args.spread_checkpoint });
    let started = Instant::now();
    let bar = ctx.progress(None, "backing up");
    let result = host
        .backup(&plugin, request, Some(&bar), cancel_on_interrupt())
        .await;
    bar.finish();
    let BackupResult::Committed(manifest) = result? else {
        return Err(Error::engine("the PostgreSQL plugin delivered no backup"));
    };
    let meta = strata_postgres::backup::BackupMeta::from_manifest(&manifest)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(damage) = meta.page_check.as_ref().filter(|p| !p.damaged.is_empty()) {
        warn_damaged_pages(damage);
    }
    if let Some(delta) = meta
        .delta
        .as_ref()
        .filter(|d| d.paged_files == 0 && d.whole_files > 0)
    {
        eprintln!(
            "note: no file of the base was found unchanged in identity, so this {} backup stored every file whole              ({} files), as large as a full: after a restore, a re-clone or a failover, take a full backup (--kind full)              to build on",
            manifest.kind, delta.whole_files
        );
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "id": manifest.id,
            "cluster": args.name,
            "system_id": meta.system_id,
            "timeline": meta.timeline,
            "start_lsn": meta.start_lsn,
            "stop_lsn": meta.stop_lsn,
            "stop_time": meta.stop_time,
            "files": meta.files(),
            "kind": manifest.kind,
            "base": manifest.base,
            "delta": meta.delta,
            "raw_bytes": manifest.raw_size(),
            "stored_bytes": manifest.stored_size(),
            "seconds": seconds,
            "page_check": meta.page_check,
        }))?;
    } else if !ctx.quiet {
        let on = match (&manifest.base, &meta.delta) {
            (Some(base), Some(delta)) => format!(
                "; applies on {base}: {} of {} relation pages changed since LSN {}, {} files stored whole, {} removed",
                delta.pages_stored,
                delta.pages_scanned,
                delta.since_lsn,
                delta.whole_files,
                delta.removed
            ),
            _ => String::new(),
        };
        println!(
            "{} backup {} of `{}` committed: {} files, {} stored as {} in {:.1}s ({}); timeline {}, LSN {} .. {}{on}",
            manifest.kind,
            manifest.id,
            args.name,
            meta.files(),
            human_bytes(manifest.raw_size()),
            human_bytes(manifest.stored_size()),
            seconds,
            human_rate(manifest.raw_size(), seconds),
            meta.timeline,
            meta.start_lsn,
            meta.stop_lsn
        );
    }
    Ok(())
}

/// Tells the DBA, on standard error, which pages of the cluster a backup
/// found damaged, and what to do about them.
fn warn_damaged_pages(report: &strata_postgres::pages::PageReport) {
    const SHOWN: usize = 10;
    let mut files: Vec<String> = report
        .damaged
        .iter()
        .take(SHOWN)
        .map(|file| {
            let blocks: Vec<String> = file.blocks.iter().take(SHOWN).map(u64::to_string).collect();
            let more = if file.blocks.len() > SHOWN {
                ", ..."
            } else {
                ""
            };
            format!("{} (block {}{more})", file.path, blocks.join(", "))
        })
        .collect();
    if report.damaged.len() > SHOWN {
        files.push(format!(
            "and more files (`strata --json backup` lists up to {})",
            strata_postgres::pages::REPORT_LIMIT
        ));
    }
    eprintln!(
        "warning: {} page(s) of the cluster failed their checksum: {}",
        report.damaged_pages,
        files.join("; ")
    );
    eprintln!(
        "hint: the backup was committed and holds these pages as PostgreSQL has them on disk; \
         find the damaged relations with `pg_amcheck` or `SELECT pg_relation_filepath(...)`, \
         and recover them from a backup taken before the damage"
    );
}

/// Runs `strata restore pg NAME ...`.
pub async fn restore_cmd(args: PgRestoreArgs, ctx: &Context) -> Result<()> {
    let plugin = ctx
        .cluster(&args.name)?
        .build(&args.name)?
        .with_system_id(args.system_id);
    let target = match (&args.to_time, &args.to_lsn, args.latest) {
        (Some(t), None, false) => RestoreTarget::Time(parse_time(t)?),
        (None, Some(l), false) => RestoreTarget::Position {
            fork: None,
            position: position(l.parse::<Lsn>()?),
        },
        (None, None, true) => RestoreTarget::Latest,
        _ => {
            return Err(Error::config(
                "give exactly one of --to-time, --to-lsn, --latest",
            ));
        }
    };
    let mut tablespace_map = BTreeMap::new();
    for pair in &args.tablespace_map {
        let (old, new) = pair.split_once('=').ok_or_else(|| {
            Error::config(format!("--tablespace-map `{pair}` is not OLD=NEW"))
                .hint("e.g. --tablespace-map /srv/pg/space1=/srv/restore/space1")
        })?;
        tablespace_map.insert(old.trim_end_matches('/').to_owned(), PathBuf::from(new));
    }
    let target_dir = if args.target_dir.is_absolute() {
        args.target_dir.clone()
    } else {
        std::env::current_dir()?.join(&args.target_dir)
    };
    let destination = RestoreDestination {
        target_dir,
        port: args.port,
        tablespace_map,
        start: args.start,
        force: args.force,
        start_timeout_seconds: args.start_timeout,
        strata_command: strata_invocation(ctx),
    };
    let skipped = args
        .skip_backup
        .iter()
        .map(|id| id.parse::<BackupId>())
        .collect::<Result<Vec<_>>>()?;
    let host = ctx.host().await?;
    if !skipped.is_empty() {
        // A typo must not restore from the very backup meant to be skipped.
        let known = host
            .backups(&plugin, &DatabaseRef::instance(&args.name))
            .await?;
        if let Some(unknown) = skipped
            .iter()
            .find(|id| !known.iter().any(|m| &m.id == *id))
        {
            return Err(Error::not_found(format!(
                "--skip-backup {unknown}: there is no such backup of PostgreSQL cluster `{}`",
                args.name
            ))
            .hint(format!("`strata list pg {}` shows its backups", args.name)));
        }
    }
    let host = host.skipping(skipped);
    let started = Instant::now();
    let bar = std::sync::Arc::new(ctx.progress(None, "restoring"));
    let outcome = host
        .restore(
            &plugin,
            DatabaseRef::instance(&args.name),
            target,
            serde_json::to_value(&destination)?,
            Some(bar.clone()),
        )
        .await;
    bar.finish();
    let outcome = outcome?;
    let report: RestoreReport = serde_json::from_value(outcome.details.clone())?;
    let seconds = started.elapsed().as_secs_f64();
    if ctx.json {
        print_json(&outcome.details)?;
    } else if !ctx.quiet {
        let chain = if report.applied_on.is_empty() {
            String::new()
        } else {
            format!(" (applied on {})", report.applied_on.join(", then "))
        };
        println!(
            "restored backup {}{chain} into {} ({} files, {}) in {:.1}s; recovery target: {} on timeline {}",
            report.backup,
            report.target_dir.display(),
            report.files,
            human_bytes(report.bytes),
            seconds,
            report.target,
            report.recovery_timeline
        );
        if report.started {
            println!(
                "the restored cluster is up on port {}: timeline {}, LSN {}, last transaction replayed at {}",
                report
                    .port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(source port)".into()),
                report
                    .timeline
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into()),
                report.lsn.as_deref().unwrap_or("?"),
                report
                    .reached_time
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string())
                    .unwrap_or_else(|| "(none)".into())
            );
        } else {
            println!(
                "start it with: pg_ctl -D {} start   (it recovers to the target, then promotes)",
                report.target_dir.display()
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct BackupRow {
    id: String,
    /// `full`, `diff` or `incr`.
    kind: BackupKind,
    /// The backup a diff or incr applies on.
    base: Option<String>,
    timeline: u32,
    start_lsn: String,
    stop_lsn: String,
    start_time: DateTime<Utc>,
    stop_time: DateTime<Utc>,
    files: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    server_version: String,
}

/// A recoverable window as `strata list pg` shows it: the planner's window
/// in PostgreSQL's words (timeline, LSNs, the last archived segment).
#[derive(Serialize)]
struct WindowRow {
    timeline: u32,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    start_lsn: String,
    end_lsn: String,
    last_segment: String,
}

fn window_row(catalog: &Catalog, window: &RecoverableWindow) -> Result<WindowRow> {
    let timeline: u32 = window
        .fork
        .parse()
        .map_err(|_| Error::integrity(format!("`{}` is not a timeline", window.fork)))?;
    let lsn = |p: Option<Position>| p.map(lsn_of).transpose();
    let start = lsn(window.from_position)?.unwrap_or_default();
    let end = lsn(window.to_position)?.unwrap_or_default();
    Ok(WindowRow {
        timeline,
        start_time: window.from_time,
        end_time: window.to_time,
        start_lsn: start.to_string(),
        end_lsn: end.to_string(),
        last_segment: catalog.last_segment(timeline, end).to_string(),
    })
}

#[derive(Serialize)]
struct TimelineRow {
    timeline: u32,
    parent: Option<u32>,
    switch_lsn: Option<String>,
    created_at: Option<DateTime<Utc>>,
    segments: usize,
}

/// Runs `strata list pg NAME`.
pub async fn list(args: PgListArgs, ctx: &Context) -> Result<()> {
    let host = ctx.host().await?;
    let plugin = engine(ctx, &args.name, args.system_id)?;
    let store = wal_store(host.vault(), &args.name);
    let manifests = host
        .backups(&plugin, &DatabaseRef::instance(&args.name))
        .await?;
    let catalog = match plugin.catalog(&manifests, &store).await {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound && ctx.json => {
            return print_json(
                &serde_json::json!({"cluster": args.name, "backups": [], "windows": [], "timelines": []}),
            );
        }
        Err(e) => return Err(e),
    };
    let backups: Vec<BackupRow> = catalog
        .backups
        .iter()
        .map(|(m, meta)| BackupRow {
            id: m.id.to_string(),
            kind: m.kind,
            base: m.base.as_ref().map(ToString::to_string),
            timeline: meta.timeline,
            start_lsn: meta.start_lsn.clone(),
            stop_lsn: meta.stop_lsn.clone(),
            start_time: meta.start_time,
            stop_time: meta.stop_time,
            files: meta.files(),
            raw_bytes: m.raw_size(),
            stored_bytes: m.stored_size(),
            server_version: meta.server_version.clone(),
        })
        .collect();
    let chain = catalog.chain();
    let timeline = planner::timeline(&chain.records, chain.rules.as_ref());
    let windows: Vec<WindowRow> = timeline
        .windows
        .iter()
        .map(|w| window_row(&catalog, w))
        .collect::<Result<_>>()?;
    let timelines: Vec<TimelineRow> = catalog
        .timelines()
        .into_iter()
        .map(|tli| {
            let history = catalog.histories.get(&tli);
            let last_parent = history.and_then(|h| h.parents.last());
            TimelineRow {
                timeline: tli,
                parent: last_parent.map(|(p, _)| *p),
                switch_lsn: last_parent.map(|(_, l)| l.to_string()),
                created_at: history.and_then(|h| h.created_at),
                segments: catalog.segments.get(&tli).map(|s| s.len()).unwrap_or(0),
            }
        })
        .collect();
    if ctx.json {
        return print_json(&serde_json::json!({
            "cluster": args.name,
            "system_id": catalog.system_id.to_string(),
            "backups": backups,
            "windows": windows,
            "gaps": timeline.gaps,
            "timelines": timelines,
        }));
    }
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
    println!(
        "PostgreSQL cluster `{}`, system {}",
        args.name, catalog.system_id
    );
    if !args.timeline {
        let mut table = Table::new(&[
            "BACKUP",
            "KIND",
            "BASE",
            "TL",
            "START LSN",
            "STOP LSN",
            "STOPPED (UTC)",
            "FILES",
            "SIZE",
            "STORED",
        ]);
        for b in &backups {
            table.row(vec![
                b.id.clone(),
                b.kind.to_string(),
                b.base.clone().unwrap_or_else(|| "-".into()),
                b.timeline.to_string(),
                b.start_lsn.clone(),
                b.stop_lsn.clone(),
                fmt(b.stop_time),
                b.files.to_string(),
                human_bytes(b.raw_bytes),
                human_bytes(b.stored_bytes),
            ]);
        }
        println!("\nBackups:\n{}", table.render());
        let mut table = Table::new(&["TL", "PARENT", "SWITCH LSN", "BEGAN (UTC)", "SEGMENTS"]);
        for t in &timelines {
            table.row(vec![
                t.timeline.to_string(),
                t.parent
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                t.switch_lsn.clone().unwrap_or_else(|| "-".into()),
                t.created_at.map(fmt).unwrap_or_else(|| "-".into()),
                t.segments.to_string(),
            ]);
        }
        println!("\nTimelines:\n{}", table.render());
    }
    let mut table = Table::new(&[
        "TL",
        "FROM (UTC)",
        "TO (UTC)",
        "FROM LSN",
        "TO LSN",
        "LAST SEGMENT",
    ]);
    for w in &windows {
        table.row(vec![
            w.timeline.to_string(),
            fmt(w.start_time),
            fmt(w.end_time),
            w.start_lsn.to_string(),
            w.end_lsn.to_string(),
            w.last_segment.clone(),
        ]);
    }
    if windows.is_empty() {
        println!("\nRecoverable windows: none (a full backup whose WAL is archived is needed)");
    } else {
        println!("\nRecoverable windows:\n{}", table.render());
    }
    for gap in &timeline.gaps {
        println!(
            "gap on timeline {}: {} .. {}: {}",
            gap.fork,
            fmt(gap.from_time),
            fmt(gap.to_time),
            gap.reason
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_notations() {
        let a = parse_time("2026-11-22T01:02:03.5Z").unwrap();
        let b = parse_time("2026-11-22 01:02:03.5+00").unwrap();
        let c = parse_time("2026-11-22 02:02:03.5+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let err = parse_time("2026-11-22 01:02:03").unwrap_err();
        assert!(err.to_string().contains("no time zone"), "{err}");
        assert!(parse_time("yesterday").is_err());
    }
}

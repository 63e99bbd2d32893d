//! `strata sqlserver check|setup|plan`, `strata backup sqlserver` and
//! `strata restore sqlserver`.
//!
//! SQL Server writes its native backups itself (`BACKUP ... TO URL`) into the
//! blob endpoint the plugin serves for the duration of the job; these
//! commands only name the instance and the database and hand the work to the
//! library's lifecycle, like every other engine.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest};
use strata_core::catalog::planner::RestoreTarget;
use strata_core::lifecycle::{BackupResult, KIND_REASON_LABEL};
use strata_core::plugin::{BackupRequest, DatabaseRef};
use strata_core::time::parse_time;
use strata_core::{Error, Result};
use strata_sqlserver::{BackupOptions, InstanceConfig, RestoreDestination, SqlServerEngine};

use crate::context::{Context, cancel_on_interrupt};
use crate::output::{human_bytes, print_json};

/// `strata sqlserver ...`
#[derive(Debug, Subcommand)]
pub enum SqlServerCommand {
    /// Connect to a configured instance and report its version, databases
    /// (recovery model, availability-group role) and every missing
    /// prerequisite with the command that fixes it.
    Check {
        /// The instance's name (`[sqlserver.<name>]` in the config).
        name: String,
    },
    /// Create the blob endpoint's TLS certificate, print the trust and
    /// host-name steps, and create the SQL Server credential (with --apply).
    Setup {
        /// The instance's name (`[sqlserver.<name>]` in the config).
        name: String,
        /// Connect and create the credential instead of printing its statement.
        #[arg(long)]
        apply: bool,
    },
    /// Print the restore chain SQL Server history (msdb.dbo.backupset rows
    /// exported as JSON) allows, or why none exists. Needs no server and no vault.
    Plan(PlanArgs),
}

/// Arguments of `strata sqlserver plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The JSON file of msdb.dbo.backupset rows (the table's own column names).
    #[arg(long, value_name = "FILE.json")]
    pub history: PathBuf,
    /// The database, when the file holds several.
    #[arg(long)]
    pub database: Option<String>,
    /// Restore to this time, with its zone (RFC 3339); default: the latest point.
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    /// The server's offset from UTC (e.g. +02:00) for rows whose time_zone
    /// is unknown (127) or missing (older exports).
    #[arg(long, value_name = "OFFSET", allow_hyphen_values = true)]
    pub utc_offset: Option<String>,
}

/// The kind of a SQL Server backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqlKind {
    /// A full database backup (resets the differential base).
    Full,
    /// The pages changed since the differential base (the last full).
    Diff,
    /// The transaction log since the last log backup.
    Log,
    /// A full backup that leaves the differential base and the log chain alone.
    CopyOnly,
}

/// Arguments of `strata backup sqlserver`.
#[derive(Debug, Args)]
pub struct BackupSqlServerArgs {
    /// The instance's name (`[sqlserver.<name>]` in the config).
    pub name: String,
    /// The database.
    #[arg(long)]
    pub database: String,
    /// full, diff, log or copy-only.
    #[arg(long, value_enum, default_value = "full")]
    pub kind: SqlKind,
}

/// Arguments of `strata restore sqlserver`.
#[derive(Debug, Args)]
pub struct RestoreSqlServerArgs {
    /// The instance's name (`[sqlserver.<name>]` in the config).
    pub name: String,
    /// The database whose backups to restore.
    #[arg(long)]
    pub database: String,
    /// Restore to this time, with its zone (RFC 3339, e.g. 2026-12-01T10:15:00Z).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["latest", "backup"])]
    pub to_time: Option<String>,
    /// Restore to the newest restorable point.
    #[arg(long, conflicts_with = "backup")]
    pub latest: bool,
    /// Restore exactly this full or differential backup (no log).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Restore under this database name (default: the source's name).
    #[arg(long = "as", value_name = "NEWNAME")]
    pub as_name: Option<String>,
    /// Put the database's files in this directory on the SQL Server host
    /// (default: the instance's default data and log directories).
    #[arg(long, value_name = "DIR")]
    pub move_to: Option<String>,
    /// Overwrite a database of the target name (RESTORE ... WITH REPLACE).
    #[arg(long)]
    pub replace: bool,
    /// Write the chain as .bak/.trn files, a restore.json and a restore.sql
    /// into DIR instead of restoring (no SQL Server needed).
    #[arg(long, value_name = "DIR")]
    pub files_only: Option<PathBuf>,
}

/// The configured instance `name`, as a plugin.
pub fn engine(ctx: &Context, name: &str) -> Result<SqlServerEngine> {
    SqlServerEngine::new(name, instance_config(ctx, name)?.clone())
}

/// The plugin of instance `name` for listing, planning and verifying: the
/// configured one, or one that reads only the vault when this host has no
/// section for it (a second host restoring, an auditor listing).
pub fn plugin(ctx: &Context, name: &str) -> Result<SqlServerEngine> {
    if ctx.config.sqlserver.contains_key(name) {
        engine(ctx, name)
    } else {
        Ok(SqlServerEngine::unconfigured(name))
    }
}

fn instance_config<'a>(ctx: &'a Context, name: &str) -> Result<&'a InstanceConfig> {
    ctx.config.sqlserver.get(name).ok_or_else(|| {
        let known: Vec<&str> = ctx.config.sqlserver.keys().map(String::as_str).collect();
        Error::config(format!("no SQL Server instance `{name}` is configured")).hint(
            if known.is_empty() {
                format!(
                    "add a [sqlserver.{name}] section with connection and blob_host to the config (see docs/sqlserver.md)"
                )
            } else {
                format!("configured instances: {}", known.join(", "))
            },
        )
    })
}

/// Runs `strata sqlserver ...`.
pub async fn run(cmd: SqlServerCommand, ctx: &Context) -> Result<()> {
    match cmd {
        SqlServerCommand::Check { name } => {
            let report =
                strata_sqlserver::check::check(&name, instance_config(ctx, &name)?).await?;
            if ctx.json {
                print_json(&report)?;
            } else {
                print!("{report}");
            }
            if !report.is_ready() {
                return Err(Error::config(format!(
                    "SQL Server instance `{name}` is missing prerequisites (listed above)"
                ))
                .hint("run the commands shown, then `strata sqlserver check` again"));
            }
            Ok(())
        }
        SqlServerCommand::Setup { name, apply } => {
            let report =
                strata_sqlserver::setup::setup(&name, instance_config(ctx, &name)?, apply).await?;
            if ctx.json {
                print_json(&report)?;
            } else {
                print!("{report}");
            }
            Ok(())
        }
        SqlServerCommand::Plan(args) => plan(args, ctx),
    }
}

fn plan(args: PlanArgs, ctx: &Context) -> Result<()> {
    let sets = strata_sqlserver::history::read_history(&args.history)?;
    let target = match &args.to_time {
        Some(text) => RestoreTarget::Time(parse_time(text)?),
        None => RestoreTarget::Latest,
    };
    let offset = args
        .utc_offset
        .as_deref()
        .map(|text| {
            text.parse::<chrono::FixedOffset>().map_err(|_| {
                Error::config(format!("--utc-offset `{text}` is not an offset from UTC"))
                    .hint("write it as +HH:MM or -HH:MM, e.g. --utc-offset +02:00")
            })
        })
        .transpose()?;
    let plan =
        strata_sqlserver::chain::plan_history(&sets, args.database.as_deref(), target, offset)?;
    if ctx.json {
        print_json(&plan)
    } else {
        print!("{plan}");
        Ok(())
    }
}

/// Runs `strata backup sqlserver`.
pub async fn backup(args: BackupSqlServerArgs, ctx: &Context) -> Result<()> {
    let plugin = engine(ctx, &args.name)?;
    let host = ctx.host().await?;
    let (kind, copy_only) = match args.kind {
        SqlKind::Full => (BackupKind::Full, false),
        SqlKind::Diff => (BackupKind::Diff, false),
        SqlKind::Log => (BackupKind::Log, false),
        SqlKind::CopyOnly => (BackupKind::Full, true),
    };
    let database = DatabaseRef {
        instance: args.name.clone(),
        database: Some(args.database.clone()),
    };
    let mut request = BackupRequest::new(database, kind);
    request.options = serde_json::to_value(BackupOptions { copy_only })?;
    let started = Instant::now();
    let bar = ctx.progress(None, "backing up");
    let result = host
        .backup(&plugin, request, Some(&bar), cancel_on_interrupt())
        .await;
    bar.finish();
    let BackupResult::Committed(manifest) = result? else {
        return Err(Error::engine("the SQL Server plugin delivered no backup"));
    };
    let seconds = started.elapsed().as_secs_f64();
    let reason = manifest.labels.get(KIND_REASON_LABEL);
    if ctx.json {
        print_json(&serde_json::json!({
            "id": manifest.id,
            "instance": args.name,
            "database": args.database,
            "kind": manifest.kind,
            "copy_only": copy_only,
            "kind_reason": reason,
            "base": manifest.base,
            "fork": manifest.fork,
            "first_lsn": manifest.start,
            "last_lsn": manifest.end,
            "consistent_at": manifest.consistent_at,
            "raw_bytes": manifest.raw_size(),
            "stored_bytes": manifest.stored_size(),
            "seconds": seconds,
            "backup_set": manifest.engine_meta.get("backup_set"),
        }))?;
    } else if !ctx.quiet {
        if let Some(reason) = reason {
            eprintln!(
                "note: a {} backup was asked for, and a {} was taken: {reason}",
                args.kind
                    .to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
                manifest.kind
            );
        }
        println!("{}", backup_summary(&manifest, &args.database, seconds));
    }
    Ok(())
}

fn backup_summary(manifest: &Manifest, database: &str, seconds: f64) -> String {
    let lsns = match (manifest.start, manifest.end) {
        (Some(first), Some(last)) => format!(", LSN {first} .. {last}"),
        _ => String::new(),
    };
    let base = manifest
        .base
        .as_ref()
        .map(|b| format!(" on {b}"))
        .unwrap_or_default();
    format!(
        "backup {} of {database}: {}{base}{lsns}, {} raw, {} stored, {seconds:.1}s",
        manifest.id,
        manifest.kind,
        human_bytes(manifest.raw_size()),
        human_bytes(manifest.stored_size()),
    )
}

/// Runs `strata restore sqlserver`.
pub async fn restore(args: RestoreSqlServerArgs, ctx: &Context) -> Result<()> {
    // Files need no server: a recovery host without the instance's section
    // writes them too.
    let plugin = if args.files_only.is_some() {
        plugin(ctx, &args.name)?
    } else {
        engine(ctx, &args.name)?
    };
    let target = match (&args.to_time, args.latest, &args.backup) {
        (Some(t), false, None) => RestoreTarget::Time(parse_time(t)?),
        (None, true, None) => RestoreTarget::Latest,
        (None, false, Some(id)) => RestoreTarget::Backup(id.parse::<BackupId>()?),
        _ => {
            return Err(
                Error::config("give exactly one of --to-time, --latest, --backup")
                    .hint("e.g. --to-time 2026-12-01T10:15:00Z"),
            );
        }
    };
    let destination = RestoreDestination {
        database: args.as_name.clone(),
        move_to: args.move_to.clone(),
        replace: args.replace,
        files_only: match &args.files_only {
            Some(dir) if dir.is_relative() => Some(std::env::current_dir()?.join(dir)),
            other => other.clone(),
        },
    };
    let host = ctx.host().await?;
    let bar = std::sync::Arc::new(ctx.progress(None, "restoring"));
    let outcome = host
        .restore(
            &plugin,
            DatabaseRef {
                instance: args.name.clone(),
                database: Some(args.database.clone()),
            },
            target,
            serde_json::to_value(&destination)?,
            Some(bar.clone()),
        )
        .await;
    bar.finish();
    let outcome = outcome?;
    if ctx.json {
        print_json(&outcome.details)?;
    } else if !ctx.quiet {
        println!("{}", outcome.summary);
    }
    Ok(())
}

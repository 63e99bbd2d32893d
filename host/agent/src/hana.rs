//! `strata hana check`, `strata backup hana` and `strata restore hana`.
//!
//! HANA's bytes flow through `hdbbackint`, which HANA calls itself; these
//! commands are the control side: check the Backint settings, start a data
//! backup over SQL, and plan (or run) a recovery from what the vault holds.
//! `strata list hana` lists what hdbbackint stored.

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use strata_core::catalog::manifest::BackupKind;
use strata_core::catalog::planner::RestoreTarget;
use strata_core::lifecycle::BackupResult;
use strata_core::plugin::{BackupRequest, DatabaseRef, EnginePlugin};
use strata_core::time::parse_time;
use strata_core::{Error, Result};
use strata_hana::client::{self, HanaUrl};
use strata_hana::ini::{CheckContext, GlobalIni, Severity, check_backint};
use strata_hana::sql::DataBackup;
use strata_hana::{HanaEngine, RecoveryDestination};

use crate::context::{Context, cancel_on_interrupt};
use crate::output::print_json;

/// `strata hana ...`
#[derive(Debug, Subcommand)]
pub enum HanaCommand {
    /// Check global.ini for what Backint with Strata needs, with the SQL to fix it.
    Check(CheckArgs),
}

/// Where to reach HANA.
#[derive(Debug, Args)]
pub struct Connection {
    /// The SYSTEMDB's SQL endpoint: hdbsql://USER:PASSWORD@host:3<nr>13.
    #[arg(
        long,
        env = "STRATA_HANA_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub connect: Option<String>,
}

/// Arguments of `strata hana check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The system's SID (for the default global.ini and parameter-file paths).
    #[arg(long)]
    pub sid: String,
    /// Read this global.ini instead of /usr/sap/<SID>/SYS/global/hdb/custom/config/global.ini.
    #[arg(long, value_name = "PATH")]
    pub global_ini: Option<std::path::PathBuf>,
    /// Also check that the parameter files exist on this host.
    #[arg(long)]
    pub check_files: bool,
    /// How to reach the database.
    #[command(flatten)]
    pub connection: Connection,
}

/// The kind of a data backup.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DataKind {
    /// A complete data backup.
    Full,
    /// Changes since the last complete backup.
    Diff,
    /// Changes since the last data backup of any kind.
    Incr,
}

/// Arguments of `strata backup hana`.
#[derive(Debug, Args)]
pub struct BackupHanaArgs {
    /// The system's SID.
    #[arg(long)]
    pub sid: String,
    /// The database: SYSTEMDB or a tenant.
    #[arg(long)]
    pub database: String,
    /// full, diff or incr.
    #[arg(long, value_enum, default_value = "full")]
    pub kind: DataKind,
    /// Print the statement without running it.
    #[arg(long)]
    pub dry_run: bool,
    /// How to reach the database.
    #[command(flatten)]
    pub connection: Connection,
}

/// Arguments of `strata restore hana`.
#[derive(Debug, Args)]
pub struct RestoreHanaArgs {
    /// The SID that took the backups.
    #[arg(long)]
    pub sid: String,
    /// The database whose backups to use: SYSTEMDB or a tenant.
    #[arg(long)]
    pub database: String,
    /// Recover to this time, with its zone (`'2026-11-22 01:00:00+00'` or RFC 3339); default: now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Recover into this SID (a system copy); default: the same.
    #[arg(long)]
    pub target_sid: Option<String>,
    /// Recover into this database; default: the same.
    #[arg(long)]
    pub target_database: Option<String>,
    /// Use exactly this HANA data backup id.
    #[arg(long)]
    pub backup_id: Option<u64>,
    /// Run the recovery (tenants only, over SQL) instead of printing it.
    #[arg(long)]
    pub execute: bool,
    /// How to reach the database.
    #[command(flatten)]
    pub connection: Connection,
}

fn url(connection: &Connection) -> Result<HanaUrl> {
    let text = connection.connect.as_deref().ok_or_else(|| {
        Error::config("no HANA connection given")
            .hint("pass --connect hdbsql://USER:PASSWORD@host:3<nr>13 or set STRATA_HANA_URL")
    })?;
    HanaUrl::parse(text)
}

/// Runs `strata hana ...`.
pub async fn run(command: HanaCommand, ctx: &Context) -> Result<()> {
    match command {
        HanaCommand::Check(args) => check(args, ctx).await,
    }
}

async fn check(args: CheckArgs, ctx: &Context) -> Result<()> {
    let sid = strata_hana::sql::identifier("SID", &args.sid)?;
    let ini = match (&args.connection.connect, &args.global_ini) {
        (Some(_), _) => client::read_global_ini(&url(&args.connection)?).await?,
        (None, Some(path)) => GlobalIni::load(path)?,
        (None, None) => GlobalIni::load(std::path::Path::new(&format!(
            "/usr/sap/{sid}/SYS/global/hdb/custom/config/global.ini"
        )))?,
    };
    let findings = check_backint(
        &ini,
        &CheckContext {
            suggested_param_file: Some(format!(
                "/usr/sap/{sid}/SYS/global/hdb/opt/hdbconfig/strata.utl"
            )),
            check_files: args.check_files,
        },
    );
    let missing = findings
        .iter()
        .filter(|f| f.severity == Severity::Missing)
        .count();
    if ctx.json {
        print_json(&findings)?;
    } else {
        for f in &findings {
            let mark = match f.severity {
                Severity::Ok => "ok     ",
                Severity::Warning => "warning",
                Severity::Missing => "MISSING",
            };
            println!(
                "{mark} {} = {}: {}",
                f.setting,
                f.current.as_deref().unwrap_or("(not set)"),
                f.message
            );
        }
        let fixes: Vec<&str> = findings.iter().filter_map(|f| f.fix.as_deref()).collect();
        if !fixes.is_empty() {
            println!("\n-- run on the SYSTEMDB to fix:");
            for fix in fixes {
                println!("{fix}");
            }
        }
    }
    if missing > 0 {
        return Err(Error::config(format!(
            "{missing} setting(s) keep Backint with Strata from working"
        ))
        .hint("run the statements printed above on the SYSTEMDB, then check again"));
    }
    Ok(())
}

fn engine(sid: &str, connection: &Connection) -> Result<HanaEngine> {
    let url = connection
        .connect
        .as_deref()
        .map(HanaUrl::parse)
        .transpose()?;
    Ok(HanaEngine::from_sid(sid)?.with_connection(url))
}

/// Runs `strata backup hana`: asks HANA to back up through Backint; the
/// bytes arrive through `hdbbackint`.
pub async fn backup(args: BackupHanaArgs, ctx: &Context) -> Result<()> {
    let plugin = engine(&args.sid, &args.connection)?;
    let kind = match args.kind {
        DataKind::Full => BackupKind::Full,
        DataKind::Diff => BackupKind::Diff,
        DataKind::Incr => BackupKind::Incr,
    };
    let database = DatabaseRef {
        instance: plugin.instance().to_owned(),
        database: Some(args.database.to_ascii_uppercase()),
    };
    if args.dry_run {
        // Nothing to connect to or write: the statement is all there is.
        let statement = DataBackup {
            sid: plugin.instance().to_owned(),
            database: args.database.to_ascii_uppercase(),
            kind,
            at: Utc::now(),
        }
        .statement()?;
        println!("{statement};");
        return Ok(());
    }
    let request = BackupRequest::new(database, kind);
    let started = std::time::Instant::now();
    let outcome = match ctx
        .host()
        .await?
        .backup(&plugin, request, None, cancel_on_interrupt())
        .await?
    {
        BackupResult::Delegated(outcome) => outcome,
        BackupResult::Committed(manifest) => {
            return Err(Error::engine(format!(
                "HANA backups are stored by hdbbackint, yet {} was committed here",
                manifest.id
            )));
        }
    };
    let statement = outcome.engine_meta["statement"]
        .as_str()
        .unwrap_or_default();
    if ctx.json {
        print_json(
            &serde_json::json!({ "statement": statement, "seconds": started.elapsed().as_secs_f64() }),
        )?;
    } else if !ctx.quiet {
        eprintln!(
            "HANA completed: {statement} ({:.1} s); `strata list hana` shows the pieces",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Runs `strata restore hana`: checks that the vault holds a data backup
/// before the target time, then prints (or with `--execute` runs) the recovery.
pub async fn restore(args: RestoreHanaArgs, ctx: &Context) -> Result<()> {
    let target = match args.until.as_deref() {
        Some(text) => RestoreTarget::Time(parse_time(text)?),
        None => RestoreTarget::Latest,
    };
    let plugin = engine(&args.sid, &args.connection)?;
    let database = args.database.to_ascii_uppercase();
    let destination = RecoveryDestination {
        database: database.clone(),
        target_sid: args.target_sid.clone(),
        target_database: args.target_database.clone(),
        backup_id: args.backup_id,
        execute: args.execute,
    };
    let source = DatabaseRef {
        instance: plugin.instance().to_owned(),
        database: Some(database),
    };
    let outcome = ctx
        .host()
        .await?
        .restore(
            &plugin,
            source,
            target,
            serde_json::to_value(&destination)?,
            None,
        )
        .await?;
    if ctx.json {
        print_json(&outcome.details)?;
    } else {
        print!("{}", outcome.summary);
        if args.execute && !ctx.quiet {
            eprintln!(
                "HANA recovered {} of {}",
                args.target_database
                    .as_deref()
                    .unwrap_or(&args.database)
                    .to_ascii_uppercase(),
                args.target_sid
                    .as_deref()
                    .unwrap_or(&args.sid)
                    .to_ascii_uppercase()
            );
        }
    }
    Ok(())
}

//! `strata`: the Strata backup agent's command-line interface.
//!
//! Commands are thin: they parse, call the library crates, and print. Every
//! listing has `--json`; long work shows a progress bar on a terminal.
//! Exit codes: 0 success, 2 usage, and per error kind: 3 config, 4 storage,
//! 5 engine, 6 integrity, 7 crypto, 8 not found, 9 conflict, 10 local I/O,
//! 11 catalog, 130 cancelled.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_agent::config::{Config, DEFAULT_CONFIG};
use strata_agent::context::Context;
use strata_agent::{deleting, hana, listing, pg, service, sqlserver, stream, vault_cmd};
use strata_core::{Error, ErrorKind, Result};

/// Strata: native database backups streamed straight to object storage.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: native database backups streamed straight to object storage, restored to the second.",
    propagate_version = true
)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "STRATA_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The vault URL (overrides [vault] url): file:///dir, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
    #[arg(long, global = true, env = "STRATA_VAULT", value_name = "URL")]
    vault: Option<String>,
    /// The vault key file (overrides [vault] key_file).
    #[arg(long, global = true, env = "STRATA_KEY_FILE", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The local catalog index (overrides [catalog] path).
    #[arg(long, global = true, env = "STRATA_CATALOG", value_name = "PATH")]
    catalog: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars or summaries.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More logging (-v info, -vv debug); STRATA_LOG takes a full filter.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or inspect a vault.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCommand),
    /// Take a backup.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore a backup.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// List backups, and with --timeline the restorable windows.
    List(listing::ListArgs),
    /// Read every part of backups and check checksums and digests.
    Verify(listing::VerifyArgs),
    /// Delete backups: they leave list and restore at once; their data stays
    /// for the vault's soft delete period (`strata undelete` brings them
    /// back), then `vault gc` or retention purges it.
    Delete(deleting::DeleteArgs),
    /// Bring back deleted backups whose data is not purged yet.
    Undelete(deleting::UndeleteArgs),
    /// Manage the local catalog index.
    #[command(subcommand)]
    Catalog(listing::CatalogCommand),
    /// PostgreSQL: check a cluster, and the archive/restore commands PostgreSQL calls.
    #[command(subcommand)]
    Pg(pg::PgCommand),
    /// SAP HANA: check the Backint settings.
    #[command(subcommand)]
    Hana(hana::HanaCommand),
    /// SQL Server: check an instance, set up its blob endpoint, plan from msdb history.
    #[command(subcommand)]
    Sqlserver(sqlserver::SqlServerCommand),
    /// Run the service: scheduled backups, retention (see [[protect]] and [policy.*] in the config).
    Serve(service::commands::ServeArgs),
    /// Apply retention now: delete the backups and archived log no retained point needs.
    Prune(service::commands::PruneArgs),
    /// Each protected database: its newest backups, RPO against its target, next run, health.
    Status(service::commands::StatusArgs),
    /// The service's job history, newest first.
    Jobs(service::commands::JobsArgs),
    /// Check the configuration.
    #[command(subcommand)]
    Config(service::commands::ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Back up standard input or a file as a full backup under a name.
    Stream(stream::BackupStreamArgs),
    /// Take a full, differential or incremental backup of a configured PostgreSQL cluster.
    Pg(pg::PgBackupArgs),
    /// Start a SAP HANA data backup (full, diff, incr) through Backint.
    Hana(hana::BackupHanaArgs),
    /// Take a full, differential, log or copy-only backup of a SQL Server database.
    Sqlserver(sqlserver::BackupSqlServerArgs),
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Restore a stream backup to standard output or a file.
    Stream(stream::RestoreStreamArgs),
    /// Restore a PostgreSQL cluster to a point in time, into a new data directory.
    Pg(pg::PgRestoreArgs),
    /// Print (or run) a SAP HANA recovery to a point in time or another SID.
    Hana(hana::RestoreHanaArgs),
    /// Restore a SQL Server database to a point in time, under another name, or as files.
    Sqlserver(sqlserver::RestoreSqlServerArgs),
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => 3,
        ErrorKind::Storage => 4,
        ErrorKind::Engine => 5,
        ErrorKind::Integrity => 6,
        ErrorKind::Crypto => 7,
        ErrorKind::NotFound => 8,
        ErrorKind::Conflict => 9,
        ErrorKind::Io => 10,
        ErrorKind::Catalog => 11,
        ErrorKind::Cancelled => 130,
        _ => 1,
    }
}

fn init_logging(verbose: u8, json_by_config: bool) {
    // tiberius (SQL Server's TDS client) logs every server error at error
    // level (Strata reports the error itself, with its hint), warns on
    // every connection configured without TLS (`encryption =
    // "not-supported"`, allowed only for a server on this host) and logs
    // each login step at info: it speaks only from -vv on.
    let default = match verbose {
        0 => "warn,tiberius=off",
        1 => "info,tiberius=off",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = match std::env::var("STRATA_LOG_FORMAT") {
        Ok(format) => format == "json",
        Err(_) => json_by_config,
    };
    // Colours only on a terminal: a log file or the journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The configuration file to read: `--config` (or `STRATA_CONFIG`), else
/// the default file when it exists.
fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        std::path::Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG))
    })
}

fn load_config(cli: &Cli, path: Option<&std::path::Path>) -> Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(url) = &cli.vault {
        config.vault.url = url.clone();
    }
    if let Some(key) = &cli.key_file {
        config.vault.key_file = Some(key.clone());
    }
    if let Some(path) = &cli.catalog {
        config.catalog.path = Some(path.clone());
    }
    Ok(config)
}

async fn run(cli: Cli, config_path: Option<PathBuf>, config: Result<Config>) -> Result<()> {
    let config = config?;
    let ctx = Context {
        config,
        config_path,
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Vault(cmd) => vault_cmd::run(cmd, &ctx).await,
        Command::Backup(BackupCommand::Stream(args)) => stream::backup(args, &ctx).await,
        Command::Restore(RestoreCommand::Stream(args)) => stream::restore(args, &ctx).await,
        Command::List(args)
            if matches!(args.engine.as_deref(), Some("pg" | "postgres"))
                && args.instance.is_some() =>
        {
            let list = pg::PgListArgs {
                name: args.instance.unwrap_or_default(),
                timeline: args.timeline,
                system_id: None,
            };
            pg::list(list, &ctx).await
        }
        Command::List(args) => listing::list(args, &ctx).await,
        Command::Verify(args) => listing::verify(args, &ctx).await,
        Command::Delete(args) => deleting::delete(args, &ctx).await,
        Command::Undelete(args) => deleting::undelete(args, &ctx).await,
        Command::Catalog(cmd) => listing::catalog(cmd, &ctx).await,
        Command::Pg(cmd) => pg::run(cmd, &ctx).await,
        Command::Hana(cmd) => hana::run(cmd, &ctx).await,
        Command::Sqlserver(cmd) => sqlserver::run(cmd, &ctx).await,
        Command::Backup(BackupCommand::Sqlserver(args)) => sqlserver::backup(args, &ctx).await,
        Command::Restore(RestoreCommand::Sqlserver(args)) => sqlserver::restore(args, &ctx).await,
        Command::Backup(BackupCommand::Hana(args)) => hana::backup(args, &ctx).await,
        Command::Restore(RestoreCommand::Hana(args)) => hana::restore(args, &ctx).await,
        Command::Backup(BackupCommand::Pg(args)) => pg::backup(args, &ctx).await,
        Command::Restore(RestoreCommand::Pg(args)) => pg::restore_cmd(args, &ctx).await,
        Command::Serve(args) => service::commands::serve(args, &ctx).await,
        Command::Prune(args) => service::commands::prune(args, &ctx).await,
        Command::Status(args) => service::commands::status(args, &ctx).await,
        Command::Jobs(args) => service::commands::jobs(args, &ctx).await,
        Command::Config(service::commands::ConfigCommand::Check) => {
            service::commands::config_check(&ctx).await
        }
    }
}

/// Prints a failed command's error on stderr: the message, then one
/// `hint: ...` line per hint (most specific first); with `--json`, one
/// object with the kind, message, retry, every hint, the structured context
/// fields and what was being done (`hint` keeps the joined hints for
/// consumers written before `hints`).
fn report(err: &Error, json: bool) {
    if json {
        let context: serde_json::Map<String, serde_json::Value> = err
            .fields()
            .map(|(key, value)| (key.to_owned(), value.into()))
            .collect();
        let doing: Vec<&str> = err.contexts().collect();
        let value = serde_json::json!({
            "error": {
                "kind": err.kind().as_str(),
                "message": err.to_string(),
                "hint": err.hint_text(),
                "hints": err.hints(),
                "context": context,
                "while": doing,
                "retryable": err.is_retryable(),
            }
        });
        eprintln!("{value}");
    } else {
        eprintln!("error: {err}");
        for hint in err.hints() {
            eprintln!("hint: {hint}");
        }
    }
}

/// Large allocations (part and frame buffers of megabytes) are given back to
/// the system when freed. Left to itself, glibc raises its mmap threshold
/// after the first such buffer is freed and serves the next ones from its
/// per-thread heaps, which keep the freed memory: a 2.3 GB PostgreSQL backup
/// peaked at 213-263 MiB that way, and at 177-190 MiB with a fixed
/// threshold, at the same CPU time.
#[allow(unsafe_code)]
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, takes no pointers, and runs
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// A reader that stops early (`strata list | head`, or `2>&1 | head`)
/// closes standard output or standard error; printing then fails with a
/// broken pipe, which `println!` and `eprintln!` turn into a panic. Such a run ends quietly with 141 (128 + SIGPIPE), as a shell tool
/// killed by SIGPIPE would; every other panic is reported as usual.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let closed = message.contains("failed printing to stdout")
            || message.contains("failed printing to stderr");
        if closed && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // The log format is the configuration's ([service] log_format) unless
    // STRATA_LOG_FORMAT says otherwise; a configuration that cannot be read
    // is reported by the command itself.
    let path = config_path(&cli);
    let config = load_config(&cli, path.as_deref());
    let json_logs = config
        .as_ref()
        .is_ok_and(|c| c.service.log_format == service::policy::LogFormat::Json);
    init_logging(cli.verbose, json_logs);
    // PostgreSQL runs archive_command once per segment: with a service
    // running, hand the segment to it before any runtime or vault is set up.
    if let (Command::Pg(pg::PgCommand::WalPush { path, cluster }), Ok(config)) =
        (&cli.command, &config)
        && pg::wal_push_through_service(config, path, cluster).is_some()
    {
        return ExitCode::SUCCESS;
    }
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli, path, config));
    // A read blocked in the runtime's blocking pool (the standard input of a
    // cancelled backup, still open) must not keep the process alive: the
    // command is over, whatever that thread waits for.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, json);
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

//! `strata backup stream` and `strata restore stream`: any byte stream (stdin,
//! a file, a FIFO) as a full backup under a name, and back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind};
use strata_core::catalog::planner::RestoreTarget;
use strata_core::lifecycle::BackupResult;
use strata_core::plugin::{BackupRequest, DatabaseRef, PushedInput};
use strata_core::{Error, ErrorKind, IoResultExt, Result};
use strata_stream::{ENGINE, STREAM_NAME};

use crate::config::ByteSize;
use crate::context::{Context, cancel_on_interrupt};
use crate::engines;
use crate::output::{human_bytes, human_rate, print_json};

/// Arguments of `strata backup stream`.
#[derive(Debug, Args)]
pub struct BackupStreamArgs {
    /// The name to store the stream under (restore asks for it by this name).
    pub name: String,
    /// Read from this file or FIFO instead of standard input (`-` = stdin).
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// zstd compression level (overrides [writer] compression_level).
    #[arg(long)]
    pub level: Option<i32>,
    /// Raw bytes per part, e.g. 16MiB (overrides [writer] part_size).
    #[arg(long)]
    pub part_size: Option<ByteSize>,
    /// A label recorded in the manifest, as KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Commit the backup even when the input is empty (otherwise refused:
    /// an empty pipe usually means the producer failed).
    #[arg(long)]
    pub allow_empty: bool,
}

/// Arguments of `strata restore stream`.
#[derive(Debug, Args)]
pub struct RestoreStreamArgs {
    /// The name the stream was backed up under.
    pub name: String,
    /// Restore this backup id instead of the newest one.
    #[arg(long)]
    pub backup: Option<String>,
    /// Write to this file (`-` or absent = standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Serialize)]
struct BackupSummary<'a> {
    id: &'a BackupId,
    name: &'a str,
    raw_bytes: u64,
    stored_bytes: u64,
    parts: usize,
    segments: usize,
    blake3: Option<&'a str>,
    seconds: f64,
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::config(format!("label `{l}` is not KEY=VALUE")))
        })
        .collect()
}

async fn open_input(input: Option<&Path>) -> Result<PushedInput> {
    match input {
        None => Ok(stdin()),
        Some(p) if p == Path::new("-") => Ok(stdin()),
        Some(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|e| {
                Error::io_doing_at("cannot open", path, e)
                    .hint("check the path and its permissions")
            })?;
            let meta = file.metadata().await.at_path(path)?;
            Ok(PushedInput {
                size: meta.is_file().then_some(meta.len()),
                reader: Box::new(file),
            })
        }
    }
}

fn stdin() -> PushedInput {
    PushedInput {
        reader: Box::new(tokio::io::stdin()),
        size: None,
    }
}

/// Runs `strata backup stream`.
pub async fn backup(args: BackupStreamArgs, ctx: &Context) -> Result<()> {
    let plugin = engines::plugin(ctx, ENGINE, &args.name)?;
    let mut request = BackupRequest::new(DatabaseRef::instance(&args.name), BackupKind::Full);
    request.labels = parse_labels(&args.labels)?;
    request.options = serde_json::json!({ "allow_empty": args.allow_empty });
    let mut writer = ctx.writer_config();
    if let Some(level) = args.level {
        writer.compression_level = level;
    }
    let part_size_set = args.part_size.is_some() || ctx.config.writer.part_size.is_some();
    if let Some(size) = args.part_size {
        writer.part_size = size.0 as usize;
    }
    let host = ctx.host().await?.with_writer(writer, part_size_set);
    request.input = Some(open_input(args.input.as_deref()).await?);
    let started = Instant::now();
    let bar = ctx.progress(None, &format!("backing up {}", args.name));
    let result = host
        .backup(plugin.as_ref(), request, Some(&bar), cancel_on_interrupt())
        .await;
    bar.finish();
    let BackupResult::Committed(manifest) = result? else {
        return Err(Error::engine("the stream engine delivered no backup"));
    };
    let record = manifest.stream(STREAM_NAME)?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = BackupSummary {
        id: &manifest.id,
        name: &args.name,
        raw_bytes: record.raw_size,
        stored_bytes: record.stored_size,
        parts: record.part_count(),
        segments: record.segments.len(),
        blake3: record.blake3.as_deref(),
        seconds,
    };
    if ctx.json {
        print_json(&summary)?;
    } else if !ctx.quiet {
        eprintln!(
            "backup {} committed: {} read, {} stored, {} parts in {} segment(s), {:.1} s ({})",
            manifest.id,
            human_bytes(record.raw_size),
            human_bytes(record.stored_size),
            record.part_count(),
            record.segments.len(),
            seconds,
            human_rate(record.raw_size, seconds)
        );
        println!("{}", manifest.id);
    }
    Ok(())
}

/// Runs `strata restore stream`.
pub async fn restore(args: RestoreStreamArgs, ctx: &Context) -> Result<()> {
    let plugin = engines::plugin(ctx, ENGINE, &args.name)?;
    let host = ctx.host().await?;
    let target = match &args.backup {
        Some(id) => RestoreTarget::Backup(id.parse()?),
        None => RestoreTarget::Latest,
    };
    let to_stdout =
        args.output.as_deref().is_none() || args.output.as_deref() == Some(Path::new("-"));
    let destination = serde_json::json!({ "output": args.output, "force": args.force });
    let started = Instant::now();
    let bar = Arc::new(ctx.progress(None, &format!("restoring {}", args.name)));
    let outcome = host
        .restore(
            plugin.as_ref(),
            DatabaseRef::instance(&args.name),
            target,
            destination,
            Some(bar.clone()),
        )
        .await;
    // "Not found" means no backup of that name only when there is none: a
    // backup whose segment is missing is also "not found", and that
    // error names the object.
    let outcome = match outcome {
        Err(err)
            if err.kind() == ErrorKind::NotFound
                && args.backup.is_none()
                && host
                    .backups(plugin.as_ref(), &DatabaseRef::instance(&args.name))
                    .await
                    .is_ok_and(|backups| backups.is_empty()) =>
        {
            Err(Error::not_found(format!("there is no stream backup called `{}`", args.name))
                .hint("`strata list stream` shows the stream backups in this vault, `strata list --deleted` the deleted ones that `strata undelete` can bring back"))
        }
        other => other,
    };
    bar.finish();
    let outcome = outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let raw_bytes = outcome.details["raw_bytes"].as_u64().unwrap_or(0);
    if ctx.json && !to_stdout {
        let mut details = outcome.details.clone();
        details["seconds"] = serde_json::json!(seconds);
        print_json(&details)?;
    } else if !ctx.quiet {
        eprintln!(
            "{} ({}) in {:.1} s ({})",
            outcome.summary,
            human_bytes(raw_bytes),
            seconds,
            human_rate(raw_bytes, seconds)
        );
    }
    Ok(())
}

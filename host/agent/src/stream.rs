//! `strata backup stream` and `strata restore stream`: any byte stream (stdin,
//! a file, a FIFO) as a full backup under a name, and back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest};
use strata_core::vault::reader::read_stream;
use strata_core::vault::writer::{BackupOutcome, BackupTarget, BackupWriter};
use strata_core::vault::{Vault, layout};
use strata_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::config::ByteSize;
use crate::context::Context;
use crate::output::{human_bytes, human_rate, print_json};

/// The engine name of generic streams.
pub const STREAM_ENGINE: &str = "stream";
/// The name of the single stream inside a stream backup.
const STREAM_NAME: &str = "data";

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

fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 200 || name.contains('\0') {
        return Err(
            Error::config(format!("`{name}` is not a usable stream name"))
                .hint("use a short name such as nightly-dump"),
        );
    }
    Ok(())
}

fn parse_labels(labels: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
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

async fn open_input(
    input: Option<&Path>,
) -> Result<(Box<dyn AsyncRead + Send + Unpin>, Option<u64>)> {
    match input {
        None => Ok((Box::new(tokio::io::stdin()), None)),
        Some(p) if p == Path::new("-") => Ok((Box::new(tokio::io::stdin()), None)),
        Some(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|e| {
                Error::io(format!("cannot open {}: {e}", path.display()))
                    .hint("check the path and its permissions")
            })?;
            let meta = file.metadata().await?;
            let size = meta.is_file().then_some(meta.len());
            Ok((Box::new(file), size))
        }
    }
}

/// Runs `strata backup stream`.
pub async fn backup(args: BackupStreamArgs, ctx: &Context) -> Result<()> {
    validate_name(&args.name)?;
    let labels = parse_labels(&args.labels)?;
    let vault = ctx.vault().await?;
    let mut config = ctx.writer_config();
    if let Some(level) = args.level {
        config.compression_level = level;
    }
    if let Some(size) = args.part_size {
        config.part_size = size.0 as usize;
    }
    let (reader, total) = open_input(args.input.as_deref()).await?;
    let writer = BackupWriter::start(
        &vault,
        BackupTarget {
            engine: STREAM_ENGINE.into(),
            instance: args.name.clone(),
            database: None,
            kind: BackupKind::Full,
        },
        config,
    )?;
    let started = Instant::now();
    let bar = ctx.progress(total, &format!("backing up {}", args.name));
    let written = tokio::select! {
        result = writer.write_stream(STREAM_NAME, reader, Some(&bar)) => result,
        _ = tokio::signal::ctrl_c() => Err(Error::cancelled("interrupted: the backup was not committed")),
    };
    bar.finish();
    let record = match written {
        Ok(record) => record,
        Err(err) => {
            if let Err(cleanup) = writer.abort().await {
                tracing::warn!(error = %cleanup, "cleaning up the failed backup's objects failed; they are unreferenced and invisible");
            }
            return Err(err);
        }
    };
    let manifest = writer
        .commit(BackupOutcome {
            consistent_at: Some(chrono::Utc::now()),
            labels,
            ..Default::default()
        })
        .await?;
    ctx.record(&vault, &manifest);
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

/// The committed stream backups called `name`, oldest first, read from the vault.
pub async fn stream_backups(vault: &Vault, name: &str) -> Result<Vec<Manifest>> {
    vault
        .read_manifests(&layout::manifest_prefix(STREAM_ENGINE, name))
        .await
}

/// Runs `strata restore stream`.
pub async fn restore(args: RestoreStreamArgs, ctx: &Context) -> Result<()> {
    validate_name(&args.name)?;
    let vault = ctx.vault().await?;
    let manifest = match &args.backup {
        Some(id) => {
            let id: BackupId = id.parse()?;
            vault.read_manifest(STREAM_ENGINE, &args.name, &id).await?
        }
        None => stream_backups(&vault, &args.name)
            .await?
            .pop()
            .ok_or_else(|| {
                Error::not_found(format!("there is no stream backup called `{}`", args.name))
                    .hint("`strata list stream` shows the stream backups in this vault")
            })?,
    };
    let total = manifest.raw_size();
    let started = Instant::now();
    let to_stdout =
        args.output.as_deref().is_none() || args.output.as_deref() == Some(Path::new("-"));
    let bar = ctx.progress(Some(total), &format!("restoring {}", args.name));
    let stats = if to_stdout {
        let mut out = tokio::io::stdout();
        let stats = read_stream(
            &vault,
            &manifest,
            STREAM_NAME,
            &mut out,
            &ctx.reader_config(),
            Some(&bar),
        )
        .await?;
        out.flush().await?;
        stats
    } else {
        let path = args.output.as_deref().expect("output path checked above");
        restore_to_file(&vault, &manifest, path, args.force, ctx, &bar).await?
    };
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    if ctx.json && !to_stdout {
        print_json(&serde_json::json!({
            "id": manifest.id, "name": args.name, "raw_bytes": stats.raw_bytes,
            "stored_bytes": stats.stored_bytes, "seconds": seconds,
            "blake3": manifest.stream(STREAM_NAME)?.blake3,
        }))?;
    } else if !ctx.quiet {
        eprintln!(
            "restored backup {} ({}) in {:.1} s ({}); digest verified",
            manifest.id,
            human_bytes(stats.raw_bytes),
            seconds,
            human_rate(stats.raw_bytes, seconds)
        );
    }
    Ok(())
}

/// Writes the stream into `<path>.partial` and renames it into place only
/// once every part and the digest are verified, so a failed restore never
/// leaves a file that looks complete.
async fn restore_to_file(
    vault: &Vault,
    manifest: &Manifest,
    path: &Path,
    force: bool,
    ctx: &Context,
    bar: &crate::progress::Bar,
) -> Result<strata_core::vault::reader::ReadStats> {
    if path.exists() && !force {
        return Err(
            Error::conflict(format!("{} already exists", path.display()))
                .hint("choose another --output, or pass --force to replace it"),
        );
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| {
        Error::io(format!("cannot create {}: {e}", partial.display()))
            .hint("check that the directory exists and is writable")
    })?;
    let result = async {
        let stats = read_stream(
            vault,
            manifest,
            STREAM_NAME,
            &mut file,
            &ctx.reader_config(),
            Some(bar),
        )
        .await?;
        file.flush().await?;
        file.sync_all().await?;
        Ok::<_, Error>(stats)
    }
    .await;
    match result {
        Ok(stats) => {
            tokio::fs::rename(&partial, path).await.map_err(|e| {
                Error::io(format!("cannot move {} into place: {e}", partial.display()))
            })?;
            Ok(stats)
        }
        Err(err) => {
            let _ = tokio::fs::remove_file(&partial).await;
            if err.kind() == ErrorKind::Integrity {
                Err(err.hint("nothing was written to the output; run `strata verify` on this backup and restore an older one"))
            } else {
                Err(err)
            }
        }
    }
}

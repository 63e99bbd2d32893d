//! # strata-stream
//!
//! The generic stream engine: any byte stream (a `pg_dump`, a tar, a file, a
//! FIFO) kept as a full backup under a name, and given back byte for byte.
//! It is the smallest [`EnginePlugin`]: a pushed backup of one stream
//! (`data`), no positions, no log, so every backup is a window of a single
//! instant and a time target restores the newest backup at or before it.
//!
//! ## Options
//!
//! Backup ([`BackupRequest::options`]):
//! `{"allow_empty": bool}`. An empty input is refused unless
//! `allow_empty` is true: a producer that failed before writing a byte
//! (`pg_dump` of a database that does not exist, piped in) must not leave a
//! backup that looks like a success. An empty backup that was allowed is
//! labelled `empty=true`, which `strata list` shows.
//!
//! Restore ([`RestoreRequest::destination`]):
//! `{"output": "/path" | null, "force": bool}`. Without an output the
//! stream goes to standard output. A file is written as `<output>.partial`
//! and renamed into place only once every part and the stream's digest are
//! verified, so a failed restore never leaves a file that looks complete;
//! an existing output is replaced only with `force`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::error::PathWriter;
use strata_core::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, EnginePlugin,
    RestoreOutcome, RestoreRequest, RestoreSource, parse_options, refuse_protected,
};
use strata_core::{Error, ErrorKind, IoResultExt, Result};
use tokio::io::AsyncWriteExt;

/// The engine name of generic streams, in vault keys and manifests.
pub const ENGINE: &str = "stream";
/// The name of the single stream inside a stream backup.
pub const STREAM_NAME: &str = "data";
/// The label an allowed empty backup carries.
pub const EMPTY_LABEL: &str = "empty";

/// The stream engine for one name.
#[derive(Debug, Clone)]
pub struct StreamEngine {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupOptions {
    #[serde(default)]
    allow_empty: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    #[serde(default)]
    output: Option<PathBuf>,
    #[serde(default)]
    force: bool,
}

/// What a stream restore did, for `--json`.
#[derive(Debug, serde::Serialize)]
struct RestoreDetails<'a> {
    id: String,
    name: &'a str,
    raw_bytes: u64,
    stored_bytes: u64,
    blake3: Option<&'a str>,
    output: Option<&'a Path>,
}

impl StreamEngine {
    /// The engine for streams named `name`; refuses names that cannot be
    /// typed back (blank, or holding a NUL byte). Any other name is stored:
    /// the vault's keys hold a bounded form of it, the manifest the name itself.
    pub fn new(name: &str) -> Result<Self> {
        if name.trim().is_empty() || name.contains('\0') {
            return Err(Error::config(format!(
                "`{name}` is not a usable stream name: it is empty, blank or holds a NUL byte"
            ))
            .hint("use a name such as nightly-dump"));
        }
        Ok(StreamEngine {
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl EnginePlugin for StreamEngine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn instance(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![BackupKind::Full],
            point_in_time: false,
            alternate_target: true,
            ..Capabilities::default()
        }
    }

    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome> {
        let options: BackupOptions = parse_options(&request.options, "stream backup options")?;
        let input = request.input.ok_or_else(|| {
            Error::config(format!("the backup of stream `{}` has no input", self.name))
                .hint("pipe the bytes into `strata backup stream NAME`, or pass --input FILE")
        })?;
        let record = sink.write_stream(STREAM_NAME, input.reader).await?;
        let mut outcome = BackupOutcome {
            consistent_at: Some(chrono::Utc::now()),
            ..BackupOutcome::default()
        };
        if record.raw_size == 0 {
            if !options.allow_empty {
                return Err(Error::config(format!(
                    "the input of stream `{}` was empty; nothing was committed",
                    self.name
                ))
                .hint("check that the program writing into the pipe succeeded; pass --allow-empty to keep an empty backup on purpose"));
            }
            outcome.labels.insert(EMPTY_LABEL.into(), "true".into());
        }
        Ok(outcome)
    }

    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome> {
        let destination: Destination =
            parse_options(&request.destination, "stream restore options")?;
        let manifest = request.backups.first().ok_or_else(|| {
            Error::not_found(format!("there is no stream backup called `{}`", self.name))
                .hint("`strata list stream` shows the stream backups in this vault, `strata list --deleted` the deleted ones that `strata undelete` can bring back")
        })?;
        if let Some(path) = destination
            .output
            .as_deref()
            .filter(|p| *p != Path::new("-"))
        {
            refuse_protected(path, &request.protected)?;
        }
        let raw_bytes = match &destination.output {
            None => to_stdout(source, manifest).await?,
            Some(path) if path == Path::new("-") => to_stdout(source, manifest).await?,
            Some(path) => to_file(source, manifest, path, destination.force).await?,
        };
        let output = destination
            .output
            .as_deref()
            .filter(|p| *p != Path::new("-"));
        let details = RestoreDetails {
            id: manifest.id.to_string(),
            name: &self.name,
            raw_bytes,
            stored_bytes: manifest.stored_size(),
            blake3: manifest.stream(STREAM_NAME)?.blake3.as_deref(),
            output,
        };
        Ok(RestoreOutcome {
            position: None,
            time: manifest.consistent_at,
            summary: format!("restored backup {}; digest verified", manifest.id),
            details: serde_json::to_value(&details)?,
        })
    }
}

async fn to_stdout(source: &dyn RestoreSource, manifest: &Manifest) -> Result<u64> {
    let mut out = tokio::io::stdout();
    let bytes = source
        .read_stream(&manifest.id, STREAM_NAME, &mut out)
        .await?;
    out.flush().await?;
    Ok(bytes)
}

/// Writes the stream into `<path>.partial` and renames it into place only
/// once every part and the digest are verified.
async fn to_file(
    source: &dyn RestoreSource,
    manifest: &Manifest,
    path: &Path,
    force: bool,
) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::config(format!("{} is a directory", path.display()))
                .hint("give --output the path of a file to create, e.g. DIR/dump.sql"));
        }
        // A device or a pipe (/dev/null, a FIFO a loader reads): written in
        // place, since it cannot be replaced by a renamed file.
        Ok(meta) if !meta.is_file() => {
            let out = tokio::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .await
                .doing_at("cannot open", path)?;
            let mut out = PathWriter::new(out, path);
            let bytes = source
                .read_stream(&manifest.id, STREAM_NAME, &mut out)
                .await?;
            out.flush().await?;
            return Ok(bytes);
        }
        _ => {}
    }
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
        Error::io_doing_at("cannot create", &partial, e)
            .hint("check that the directory exists and is writable")
    })?;
    let written = async {
        let mut out = PathWriter::new(&mut file, &partial);
        let bytes = source
            .read_stream(&manifest.id, STREAM_NAME, &mut out)
            .await?;
        out.flush().await?;
        file.sync_all().await.doing_at("flushing", &partial)?;
        Ok::<_, Error>(bytes)
    }
    .await;
    match written {
        Ok(bytes) => {
            tokio::fs::rename(&partial, path)
                .await
                .map_err(|e| Error::io_doing_at("cannot move into place", &partial, e))?;
            Ok(bytes)
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

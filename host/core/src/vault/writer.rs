//! The streaming writer: one backup, any number of byte streams, into the vault.
//!
//! # Pipeline
//!
//! ```text
//! AsyncRead ─► fixed raw parts ─► zstd frame per part ─► AEAD (encrypted vaults) ─► CRC-32C
//!   (part_size)                   (`workers` threads)                                  │
//!        │                                                                             ▼
//!        └──► BLAKE3 of the raw stream (own thread)          segment objects, multipart upload,
//!                                                            `parts_in_flight` chunks at a time
//! ```
//!
//! A [`BackupWriter`] is one backup attempt with its own [`BackupId`]. Each
//! call to [`BackupWriter::write_stream`] reads its `AsyncRead` to the end
//! in parts of [`WriterConfig::part_size`] raw bytes. Every part becomes one
//! independent zstd frame, compressed on a pool of blocking threads shared by
//! all streams of the backup; when the vault is encrypted the frame is sealed
//! with the backup's data key (the stream index and part index are bound
//! into the nonce and associated data); the CRC-32C of the stored bytes is
//! recorded. Parts are appended, in order, to segment objects under
//! [`layout::segment_key`]; a segment is cut before it would exceed
//! [`WriterConfig::segment_size`], so segments always end on part
//! boundaries. A segment that fits in one upload chunk is written with a
//! single put; larger ones use a multipart upload with at most
//! [`WriterConfig::parts_in_flight`] chunks of [`UPLOAD_CHUNK_SIZE`] in flight.
//!
//! Memory stays bounded by roughly `(workers + parts_in_flight + 2) ×
//! part_size` per stream, whatever the stream's length.
//!
//! # Commit and failure
//!
//! [`BackupWriter::commit`] writes the manifest last, create-only: that is
//! the commit point. Before it, nothing of the backup is visible to listing,
//! planning or restore. If a stream fails (the reader errors, the store
//! fails) or its future is dropped, its multipart upload is aborted and its
//! completed segments are deleted, and [`BackupWriter::commit`] refuses.
//! [`BackupWriter::abort`] deletes every segment of the backup; dropping a
//! writer without committing or aborting does the same in the background.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::{Progress, Vault, layout};
use crate::catalog::manifest::{
    BackupId, BackupKind, Compression, Encryption, MANIFEST_FORMAT, Manifest, PartRecord, Position,
    SegmentRecord, StreamRecord,
};
use crate::crypto::{DataKey, PART_ALGORITHM};
use crate::error::{Error, ErrorKind, Result};

/// The default raw size of a part: 16 MiB.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// The smallest part size accepted: 64 KiB.
pub const MIN_PART_SIZE: usize = 64 << 10;
/// The largest part size accepted: 1 GiB.
pub const MAX_PART_SIZE: usize = 1 << 30;
/// The size of one multipart upload chunk: 8 MiB, above every store's 5 MiB minimum.
pub const UPLOAD_CHUNK_SIZE: usize = 8 << 20;
/// The default largest stored size of one segment object: 4 GiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 << 30;
/// The largest segment size accepted: 9,000 upload chunks (about 70 GiB),
/// safely under the 10,000-part limit of S3 multipart uploads.
pub const MAX_SEGMENT_SIZE: u64 = 9_000 * UPLOAD_CHUNK_SIZE as u64;

/// How a [`BackupWriter`] cuts, compresses and uploads its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Raw bytes per part (the unit of compression, checksum and
    /// encryption). Default 16 MiB, at least 64 KiB, at most 1 GiB.
    pub part_size: usize,
    /// The zstd level of every part. Default 3.
    pub compression_level: i32,
    /// Compression threads shared by the streams of one backup; 0 means
    /// one per core (the default).
    pub workers: usize,
    /// Upload chunks in flight per stream. Default 4.
    pub parts_in_flight: usize,
    /// The largest stored size of one segment object. Default 4 GiB. At least
    /// `part_size`; a single part that compresses to more than this (random
    /// data in a tiny segment size) gets a segment of its own.
    pub segment_size: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            part_size: DEFAULT_PART_SIZE,
            compression_level: 3,
            workers: 0,
            parts_in_flight: 4,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

impl WriterConfig {
    /// Checks the settings and resolves `workers = 0` to the number of cores.
    fn resolved(&self) -> Result<WriterConfig> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::config(format!(
                "part size {} bytes is out of range",
                self.part_size
            ))
            .hint(format!(
                "choose a part size between {} KiB and {} MiB (the default is {} MiB)",
                MIN_PART_SIZE >> 10,
                MAX_PART_SIZE >> 20,
                DEFAULT_PART_SIZE >> 20
            )));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.compression_level) {
            return Err(Error::config(format!(
                "compression level {} is not a zstd level",
                self.compression_level
            ))
            .hint(format!(
                "choose a level from {} to {} (1 is fastest, 3 is the default, 19 and above are slow)",
                levels.start(),
                levels.end()
            )));
        }
        if self.parts_in_flight == 0 {
            return Err(Error::config("parts in flight must be at least 1")
                .hint("4 uploads in flight per stream is the default"));
        }
        if self.segment_size < self.part_size as u64 || self.segment_size > MAX_SEGMENT_SIZE {
            return Err(Error::config(format!(
                "segment size {} bytes is out of range",
                self.segment_size
            ))
            .hint(format!(
                "choose a segment size between the part size ({} bytes) and {} GiB (the default is 4 GiB)",
                self.part_size,
                MAX_SEGMENT_SIZE >> 30
            )));
        }
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        };
        Ok(WriterConfig {
            workers,
            ..self.clone()
        })
    }
}

/// What a backup is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTarget {
    /// The engine (`postgres`, `sqlserver`, `hana`, `stream`).
    pub engine: String,
    /// The protected instance.
    pub instance: String,
    /// The database within the instance, when the engine has several.
    pub database: Option<String>,
    /// Full, diff, incr or log.
    pub kind: BackupKind,
}

/// The engine's details of a finished backup, recorded in its manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitDetails {
    /// The fork the backup belongs to.
    pub fork: String,
    /// The chain position at the start.
    pub start: Option<Position>,
    /// The chain position at the end.
    pub end: Option<Position>,
    /// When the data is consistent (data backups) or the newest commit the log holds.
    pub consistent_at: Option<DateTime<Utc>>,
    /// The backup a diff or incr applies on.
    pub base: Option<BackupId>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Engine-specific details.
    pub engine_meta: serde_json::Value,
}

/// One backup being written. See the [module docs](self).
///
/// The writer is `Send + Sync`: several streams of one backup may be written
/// concurrently through `&BackupWriter`. It ends with [`commit`](Self::commit)
/// or [`abort`](Self::abort); dropped without either, it deletes what it
/// wrote in the background.
pub struct BackupWriter {
    shared: Arc<Shared>,
    settled: bool,
}

struct Shared {
    vault: Vault,
    target: BackupTarget,
    config: WriterConfig,
    id: BackupId,
    started_at: DateTime<Utc>,
    data_key: Option<DataKey>,
    wrapped_key: Option<String>,
    /// Compression jobs running or queued on the blocking pool, for all streams.
    compress_slots: Arc<Semaphore>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_index: u32,
    names: HashSet<String>,
    finished: BTreeMap<u32, StreamRecord>,
    running: usize,
    failure: Option<String>,
    /// Every segment key any stream began, for cleanup.
    segments: BTreeSet<String>,
    /// Cleanups started by dropped stream futures.
    cleanups: Vec<JoinHandle<()>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_failure(&self, message: String) {
        let mut state = self.state();
        state.running = state.running.saturating_sub(1);
        if state.failure.is_none() {
            state.failure = Some(message);
        }
    }

    fn failed_elsewhere(&self) -> Result<()> {
        match &self.state().failure {
            Some(failure) => Err(Error::cancelled(format!(
                "backup {} was abandoned: {failure}",
                self.id
            ))),
            None => Ok(()),
        }
    }

    /// Waits for background cleanups, then deletes every segment of the
    /// backup: those the streams recorded and whatever is listed under the
    /// backup's data prefix.
    async fn delete_everything(&self) -> Result<()> {
        let (handles, mut keys) = {
            let mut state = self.state();
            (std::mem::take(&mut state.cleanups), state.segments.clone())
        };
        for handle in handles {
            // A cleanup task that panicked has nothing left to report; the
            // deletes below cover its segments.
            let _ = handle.await;
        }
        let prefix =
            layout::backup_data_prefix(&self.target.engine, &self.target.instance, &self.id);
        keys.extend(self.vault.list_keys(&prefix).await?);
        let paths: Vec<Path> = keys.iter().map(|k| self.vault.path(k)).collect();
        delete_paths(self.vault.store(), paths).await
    }
}

async fn delete_paths(store: &Arc<dyn ObjectStore>, paths: Vec<Path>) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut results = store.delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::from(e)
                    .context("deleting the segments of an unfinished backup")
                    .hint("the segments are not part of any committed backup and can be deleted later"));
            }
        }
    }
    Ok(())
}

/// One compressed (and sealed) part, ready to upload.
struct StoredPart {
    raw: u64,
    bytes: Bytes,
    crc32c: u32,
}

fn compress_part(
    shared: &Shared,
    stream_index: u32,
    part_index: u64,
    raw: &[u8],
) -> Result<StoredPart> {
    let mut frame = zstd::bulk::Compressor::new(shared.config.compression_level)
        .and_then(|mut c| c.compress(raw))
        .map_err(|e| {
            Error::io(format!(
                "compressing part {part_index} of backup {}: {e}",
                shared.id
            ))
        })?;
    let stored = match &shared.data_key {
        Some(key) => key.seal_part(shared.id.as_str(), stream_index, part_index, &frame),
        None => {
            // The frame was allocated for the worst case; keep only what is used
            // so that queued uploads hold no slack.
            if frame.len() < frame.capacity() / 2 {
                frame.shrink_to_fit();
            }
            frame
        }
    };
    Ok(StoredPart {
        raw: raw.len() as u64,
        crc32c: crc32c::crc32c(&stored),
        bytes: Bytes::from(stored),
    })
}

/// Reads up to `size` bytes; fewer only at the end of the input.
async fn read_part<R: AsyncRead + Unpin>(reader: &mut R, size: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        if reader.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::io(format!("a background task of the writer failed: {err}"))
}

/// A segment being written: buffered until it outgrows one upload chunk,
/// then a multipart upload.
struct OpenSegment {
    key: String,
    path: Path,
    parts: Vec<PartRecord>,
    stored: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
    upload: Option<WriteMultipart>,
}

/// The upload side of one stream. If it is dropped before it is settled
/// (the `write_stream` future was dropped), it aborts its upload, deletes its
/// segments in the background and marks the backup failed.
struct StreamUpload {
    shared: Arc<Shared>,
    name: String,
    index: u32,
    current: Option<OpenSegment>,
    done: Vec<SegmentRecord>,
    begun: Vec<Path>,
    settled: bool,
}

impl StreamUpload {
    async fn add_part(&mut self, part: StoredPart) -> Result<()> {
        let len = part.bytes.len() as u64;
        if let Some(segment) = &self.current
            && !segment.parts.is_empty()
            && segment.stored + len > self.shared.config.segment_size
        {
            self.finish_segment().await?;
        }
        if self.current.is_none() {
            let number = self.done.len();
            let key = layout::segment_key(
                &self.shared.target.engine,
                &self.shared.target.instance,
                &self.shared.id,
                self.index as usize,
                number,
            );
            let path = self.shared.vault.path(&key);
            self.shared.state().segments.insert(key.clone());
            self.begun.push(path.clone());
            self.current = Some(OpenSegment {
                key,
                path,
                parts: Vec::new(),
                stored: 0,
                pending: Vec::new(),
                pending_len: 0,
                upload: None,
            });
        }
        let in_flight = self.shared.config.parts_in_flight;
        let store = self.shared.vault.store().clone();
        let segment = self.current.as_mut().expect("a segment is open");
        segment.parts.push(PartRecord {
            raw: part.raw,
            stored: len,
            crc32c: part.crc32c,
        });
        segment.stored += len;
        if let Some(upload) = segment.upload.as_mut() {
            return put_bounded(upload, part.bytes, in_flight, &segment.key).await;
        }
        segment.pending_len += part.bytes.len();
        segment.pending.push(part.bytes);
        if segment.pending_len > UPLOAD_CHUNK_SIZE {
            let upload = store
                .put_multipart_opts(&segment.path, PutMultipartOptions::default())
                .await
                .map_err(|e| {
                    Error::from(e).context(format!("starting the upload of {}", segment.key))
                })?;
            let upload = segment.upload.insert(WriteMultipart::new_with_chunk_size(
                upload,
                UPLOAD_CHUNK_SIZE,
            ));
            segment.pending_len = 0;
            for bytes in std::mem::take(&mut segment.pending) {
                put_bounded(upload, bytes, in_flight, &segment.key).await?;
            }
        }
        Ok(())
    }

    async fn finish_segment(&mut self) -> Result<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        let context = || format!("writing segment {}", segment.key);
        match segment.upload {
            Some(upload) => {
                upload
                    .finish()
                    .await
                    .map_err(|e| Error::from(e).context(context()))?;
            }
            None => {
                let payload: PutPayload = segment.pending.into_iter().collect();
                self.shared
                    .vault
                    .store()
                    .put_opts(&segment.path, payload, PutOptions::default())
                    .await
                    .map_err(|e| Error::from(e).context(context()))?;
            }
        }
        self.done.push(SegmentRecord {
            key: segment.key,
            stored_size: segment.stored,
            parts: segment.parts,
        });
        Ok(())
    }

    /// Aborts the open upload and deletes the segments this stream wrote.
    async fn discard(&mut self) -> Result<()> {
        self.settled = true;
        let open = self.current.take().and_then(|s| s.upload);
        let paths = std::mem::take(&mut self.begun);
        discard(self.shared.vault.store().clone(), open, paths).await
    }
}

async fn discard(
    store: Arc<dyn ObjectStore>,
    open: Option<WriteMultipart>,
    paths: Vec<Path>,
) -> Result<()> {
    if let Some(upload) = open {
        // An abort that fails leaves an incomplete upload that the store's
        // lifecycle rules expire; it is never part of a backup.
        if let Err(e) = upload.abort().await {
            tracing::warn!(error = %e, "aborting a multipart upload failed");
        }
    }
    delete_paths(&store, paths).await
}

async fn put_bounded(
    upload: &mut WriteMultipart,
    mut bytes: Bytes,
    in_flight: usize,
    key: &str,
) -> Result<()> {
    // Handing over at most one chunk at a time lets at most one new upload
    // start per wait, so no more than `in_flight` are ever running.
    while !bytes.is_empty() {
        upload
            .wait_for_capacity(in_flight)
            .await
            .map_err(|e| Error::from(e).context(format!("uploading segment {key}")))?;
        let piece = bytes.split_to(bytes.len().min(UPLOAD_CHUNK_SIZE));
        upload.put(piece);
    }
    Ok(())
}

impl Drop for StreamUpload {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.shared.record_failure(format!(
            "stream `{}` was cancelled before it finished",
            self.name
        ));
        let open = self.current.take().and_then(|s| s.upload);
        let paths = std::mem::take(&mut self.begun);
        if open.is_none() && paths.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.shared.vault.store().clone();
                let task = handle.spawn(async move {
                    if let Err(e) = discard(store, open, paths).await {
                        tracing::warn!(error = %e, "cleaning up a cancelled stream failed");
                    }
                });
                self.shared.state().cleanups.push(task);
            }
            Err(_) => tracing::warn!(
                stream = %self.name,
                "a cancelled stream could not clean up its segments outside a runtime"
            ),
        }
    }
}

impl BackupWriter {
    /// Starts a backup of `target` in `vault`: a new [`BackupId`] from the
    /// current time and, when the vault is encrypted, a new data key.
    /// Nothing is written until a stream is.
    ///
    /// Fails with [`ErrorKind::Config`] when `config` is out of range.
    pub fn start(
        vault: &Vault,
        target: BackupTarget,
        config: WriterConfig,
    ) -> Result<BackupWriter> {
        let config = config.resolved()?;
        let started_at = Utc::now();
        let id = BackupId::generate(started_at);
        let (data_key, wrapped_key) = match vault.key() {
            Some(key) => {
                let (data_key, wrapped) = key.new_data_key(id.as_str())?;
                (Some(data_key), Some(wrapped))
            }
            None => (None, None),
        };
        Ok(BackupWriter {
            shared: Arc::new(Shared {
                vault: vault.clone(),
                target,
                compress_slots: Arc::new(Semaphore::new(config.workers)),
                config,
                id,
                started_at,
                data_key,
                wrapped_key,
                state: Mutex::new(State::default()),
            }),
            settled: false,
        })
    }

    /// The backup's identifier.
    pub fn id(&self) -> &BackupId {
        &self.shared.id
    }

    /// When the backup started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.shared.started_at
    }

    /// Stores the stream `name`, reading `reader` to its end, and returns its
    /// record once every byte is durable in the vault.
    ///
    /// Takes `&self`: several streams of one backup may be written
    /// concurrently (HANA channels, PostgreSQL parallel file streams). The
    /// stream's index in the backup (which orders the manifest and binds
    /// its encrypted parts) is assigned when this call starts.
    ///
    /// Names must be unique within the backup ([`ErrorKind::Conflict`]
    /// otherwise). On any failure, and when the returned future is dropped
    /// before it completes, the stream's uploads are aborted, its segments
    /// deleted, and the backup can no longer be committed.
    pub async fn write_stream<R: AsyncRead + Send + Unpin>(
        &self,
        name: &str,
        reader: R,
        progress: Option<&dyn Progress>,
    ) -> Result<StreamRecord> {
        let index = {
            let mut state = self.shared.state();
            if let Some(failure) = &state.failure {
                return Err(Error::cancelled(format!(
                    "backup {} cannot take stream `{name}`: {failure}",
                    self.shared.id
                ))
                .hint("the backup was abandoned; run it again"));
            }
            if !state.names.insert(name.to_owned()) {
                return Err(Error::conflict(format!(
                    "backup {} already has a stream named `{name}`",
                    self.shared.id
                ))
                .hint("stream names must be unique within a backup"));
            }
            let index = state.next_index;
            state.next_index += 1;
            state.running += 1;
            index
        };
        let mut upload = StreamUpload {
            shared: self.shared.clone(),
            name: name.to_owned(),
            index,
            current: None,
            done: Vec::new(),
            begun: Vec::new(),
            settled: false,
        };
        match run_stream(&self.shared, index, name, reader, progress, &mut upload).await {
            Ok(record) => {
                upload.settled = true;
                let mut state = self.shared.state();
                state.running -= 1;
                state.finished.insert(index, record.clone());
                Ok(record)
            }
            Err(err) => {
                self.shared
                    .record_failure(format!("stream `{name}` failed: {err}"));
                if let Err(cleanup) = upload.discard().await {
                    tracing::warn!(error = %cleanup, stream = name, "cleaning up a failed stream failed");
                }
                Err(err.context(format!("backup {}, stream `{name}`", self.shared.id)))
            }
        }
    }

    /// Commits the backup: writes its manifest last, with a create-only put
    /// ([`Vault::put_manifest`]), and returns it.
    ///
    /// Refuses ([`ErrorKind::Cancelled`]) when a stream failed or was
    /// cancelled; the backup's segments are then deleted. If the manifest
    /// put fails, the manifest is read back: when it is ours the commit
    /// succeeded after all; when none is there the segments are deleted;
    /// otherwise they are left untouched, so that a committed backup is
    /// never harmed.
    pub async fn commit(mut self, details: CommitDetails) -> Result<Manifest> {
        self.settled = true;
        let shared = self.shared.clone();
        let refusal = {
            let state = shared.state();
            if let Some(failure) = &state.failure {
                Some(failure.clone())
            } else if state.running > 0 {
                Some(format!(
                    "{} stream(s) are still being written",
                    state.running
                ))
            } else if state.finished.len() != state.next_index as usize {
                Some("a stream did not finish".to_owned())
            } else {
                None
            }
        };
        if let Some(reason) = refusal {
            let cleanup = shared.delete_everything().await;
            let err = Error::cancelled(format!(
                "backup {} cannot be committed: {reason}",
                shared.id
            ))
            .hint("nothing was committed and its segments were deleted; run the backup again");
            if let Err(e) = cleanup {
                tracing::warn!(error = %e, backup = %shared.id, "deleting the segments of a refused backup failed");
            }
            return Err(err);
        }
        let streams: Vec<StreamRecord> = shared.state().finished.values().cloned().collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: shared.id.clone(),
            engine: shared.target.engine.clone(),
            instance: shared.target.instance.clone(),
            database: shared.target.database.clone(),
            kind: shared.target.kind,
            started_at: shared.started_at,
            ended_at: Utc::now(),
            consistent_at: details.consistent_at,
            fork: details.fork,
            start: details.start,
            end: details.end,
            base: details.base,
            compression: Compression {
                algorithm: "zstd".to_owned(),
                level: shared.config.compression_level,
            },
            encryption: shared.wrapped_key.as_ref().map(|wrapped| Encryption {
                algorithm: PART_ALGORITHM.to_owned(),
                wrapped_key: wrapped.clone(),
            }),
            streams,
            labels: details.labels,
            engine_meta: details.engine_meta,
        };
        manifest.check(&format!("new manifest of backup {}", shared.id))?;
        let put_error = match shared.vault.put_manifest(&manifest).await {
            Ok(_) => return Ok(manifest),
            Err(e) => e,
        };
        let target = &shared.target;
        match shared
            .vault
            .read_manifest(&target.engine, &target.instance, &shared.id)
            .await
        {
            Ok(existing) if existing == manifest => Ok(manifest),
            Ok(_) => Err(put_error
                .context(format!("committing backup {}", shared.id))
                .hint("another manifest with this id exists; this backup was not committed and its segments were left in place")),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Err(e) = shared.delete_everything().await {
                    tracing::warn!(error = %e, backup = %shared.id, "deleting the segments of an uncommitted backup failed");
                }
                Err(put_error
                    .context(format!("committing backup {}", shared.id))
                    .hint("nothing was committed and the backup's segments were deleted; run the backup again"))
            }
            Err(_) => Err(put_error
                .context(format!("committing backup {}", shared.id))
                .hint("whether the manifest was written is unknown; `strata list` shows it if it was, and the segments were left in place")),
        }
    }

    /// Abandons the backup: aborts uploads left by cancelled streams and
    /// deletes every segment written. Nothing of the backup remains.
    pub async fn abort(mut self) -> Result<()> {
        self.settled = true;
        self.shared.delete_everything().await
    }
}

async fn run_stream<R: AsyncRead + Send + Unpin>(
    shared: &Arc<Shared>,
    index: u32,
    name: &str,
    mut reader: R,
    progress: Option<&dyn Progress>,
    upload: &mut StreamUpload,
) -> Result<StreamRecord> {
    let config = &shared.config;
    // Compression jobs in stream order; the consumer awaits them in that order.
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<JoinHandle<Result<StoredPart>>>(config.workers);
    // Raw parts for the digest, hashed on a thread of their own.
    let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(2);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        while let Some(raw) = hash_rx.blocking_recv() {
            hasher.update(&raw);
        }
        hasher.finalize()
    });

    let produce = async move {
        let mut part_index = 0u64;
        loop {
            let raw = read_part(&mut reader, config.part_size)
                .await
                .map_err(|e| {
                    Error::from(e).context(format!("reading the input of stream `{name}`"))
                })?;
            if raw.is_empty() {
                break;
            }
            let last = raw.len() < config.part_size;
            if hash_tx.send(raw.clone()).await.is_err() {
                return Err(Error::io("the digest thread of the writer stopped"));
            }
            let permit = shared
                .compress_slots
                .clone()
                .acquire_owned()
                .await
                .expect("the compression semaphore is never closed");
            let job_shared = shared.clone();
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                compress_part(&job_shared, index, part_index, &raw)
            });
            if jobs_tx.send(job).await.is_err() {
                // The consumer stopped; it reports why.
                break;
            }
            part_index += 1;
            if last {
                break;
            }
        }
        Ok::<(), Error>(())
    };

    let consume = async {
        while let Some(job) = jobs_rx.recv().await {
            let part = job.await.map_err(join_error)??;
            shared.failed_elsewhere()?;
            let raw = part.raw;
            upload.add_part(part).await?;
            if let Some(progress) = progress {
                progress.add(raw);
            }
        }
        Ok::<(), Error>(())
    };

    futures::future::try_join(produce, consume).await?;
    let digest = hasher.await.map_err(join_error)?;
    upload.finish_segment().await?;
    let segments = std::mem::take(&mut upload.done);
    let raw_size = segments.iter().flat_map(|s| &s.parts).map(|p| p.raw).sum();
    Ok(StreamRecord {
        name: name.to_owned(),
        raw_size,
        stored_size: segments.iter().map(|s| s.stored_size).sum(),
        blake3: digest.to_hex().to_string(),
        segments,
    })
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = shared.delete_everything().await {
                        tracing::warn!(error = %e, backup = %shared.id, "cleaning up an abandoned backup failed");
                    }
                });
            }
            Err(_) => tracing::warn!(
                backup = %self.shared.id,
                "an abandoned backup could not delete its segments outside a runtime"
            ),
        }
    }
}

#[async_trait]
impl crate::plugin::BackupSink for BackupWriter {
    async fn write_stream(
        &self,
        name: &str,
        reader: Box<dyn AsyncRead + Send + Unpin + 'static>,
    ) -> Result<StreamRecord> {
        BackupWriter::write_stream(self, name, reader, None).await
    }
}

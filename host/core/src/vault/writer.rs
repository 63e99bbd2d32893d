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
//! all streams of the backup by compression time (see `slots.rs`); when the
//! vault is encrypted the frame is sealed with the backup's data key (the
//! stream index and part index are bound into the nonce and associated
//! data); the CRC-32C of the stored bytes is recorded. Parts are appended,
//! in order, to segment objects under [`layout::segment_key`]; a segment is
//! cut before it would exceed [`WriterConfig::segment_size`], so segments
//! always end on part boundaries. A segment that fits in one upload chunk is written with a
//! single put; larger ones use a multipart upload with at most
//! [`WriterConfig::parts_in_flight`] chunks of [`UPLOAD_CHUNK_SIZE`] in flight.
//!
//! A producer that can fill buffers in place (a file reader) uses
//! [`BackupWriter::part_channel`] and [`BackupWriter::write_parts`] instead:
//! it takes part buffers from the writer's pool, reads into them and hands
//! them over whole ([`PartFeed`]), so raw bytes are never copied between the
//! disk and the compressor. A stream whose content carries digests of its
//! own may skip the stream digest ([`StreamDigest::Skip`]); its parts keep
//! their CRC-32C.
//!
//! Memory stays bounded by roughly `(workers + parts_in_flight + 2) ×
//! part_size` per stream, whatever the stream's length: reading stops while
//! `workers` parts are being compressed and the upload has no room. Part
//! buffers and compression contexts are reused from part to part, so a long
//! stream does not churn the allocator (which, left to itself, keeps freed
//! parts in per-thread arenas and inflates the footprint).
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
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::slots::FairSlots;
use super::{Progress, Vault, layout};
use crate::catalog::manifest::{
    BackupId, BackupKind, Compression, Encryption, MANIFEST_FORMAT, Manifest, PartRecord,
    SegmentRecord, StreamRecord,
};
use crate::crypto::{DataKey, PART_ALGORITHM};
use crate::error::{Error, ErrorKind, Result};
use crate::plugin::PartBuffers;
pub use crate::plugin::{BackupOutcome, PartFeed, PartStream, StreamDigest};

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
    /// Compression jobs running on the blocking pool, for all streams,
    /// shared by compression time ([`FairSlots`]).
    compress_slots: Arc<FairSlots>,
    /// Raw part buffers.
    raw_pool: Arc<BufferPool>,
    /// Compressed frame buffers.
    frame_pool: Arc<BufferPool>,
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

/// Reuses part-sized buffers, so that a long stream allocates (and faults in)
/// its working memory once rather than once per part, and the process keeps
/// a steady footprint instead of leaving freed parts scattered over the
/// allocator's per-thread arenas.
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `keep` spares.
    pub(crate) fn new(capacity: usize, keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            capacity,
            keep,
        }
    }

    /// An empty buffer with room for the pool's capacity.
    pub(crate) fn take(&self) -> Vec<u8> {
        let spare = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        buf.clear();
        buf
    }

    /// A buffer of exactly the pool's capacity, to be filled in place. Its
    /// contents are whatever it held before: only bytes the caller writes
    /// mean anything. (A reused buffer that was full needs no zeroing.)
    pub(crate) fn take_full(&self) -> Vec<u8> {
        let spare = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_default();
        buf.resize(self.capacity, 0);
        buf
    }

    /// Returns a buffer to the pool (dropped if it is too small or the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < self.capacity {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Takes back the buffer behind `bytes` if this is its last handle;
    /// otherwise just drops the handle.
    pub(crate) fn reclaim(&self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.give(Vec::from(buf));
        }
    }
}

impl PartBuffers for BufferPool {
    fn take_full(&self) -> Vec<u8> {
        BufferPool::take_full(self)
    }

    fn give(&self, buffer: Vec<u8>) {
        BufferPool::give(self, buffer)
    }
}

/// Where a stream's raw parts come from.
enum PartSource<R> {
    /// Cut from a reader, `part_size` bytes at a time (copied into pooled buffers).
    Reader(R),
    /// Handed over whole by a [`PartFeed`].
    Feed(PartStream),
}

impl<R: AsyncRead + Unpin> PartSource<R> {
    /// The next raw part; empty at the end of the stream.
    async fn next(&mut self, config: &WriterConfig, pool: &BufferPool) -> Result<Bytes> {
        match self {
            PartSource::Reader(reader) => read_part(reader, config.part_size, pool)
                .await
                .map_err(|e| Error::from(e).context("reading the input")),
            PartSource::Feed(stream) => match stream.recv().await {
                None => Ok(Bytes::new()),
                Some(Ok(part)) if part.len() <= stream.part_size() => Ok(part),
                Some(Ok(part)) => Err(Error::io(format!(
                    "a part of {} bytes is larger than the part size ({})",
                    part.len(),
                    stream.part_size()
                ))),
                Some(Err(e)) => Err(Error::from(e).context("reading the input")),
            },
        }
    }

    /// Whether `raw` is known to be the last part.
    fn is_last(&self, raw: &Bytes, config: &WriterConfig) -> bool {
        matches!(self, PartSource::Reader(_)) && raw.len() < config.part_size
    }
}

/// Hashes the raw parts sent to it, in order, on a thread of its own, and
/// gives each part's buffer back to `pool`; the digest is ready once the
/// sender is dropped.
pub(crate) fn spawn_digest(
    pool: Arc<BufferPool>,
) -> (mpsc::Sender<Bytes>, JoinHandle<blake3::Hash>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let handle = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        while let Some(raw) = rx.blocking_recv() {
            hasher.update(&raw);
            pool.reclaim(raw);
        }
        hasher.finalize()
    });
    (tx, handle)
}

/// One compressed (and sealed) part, ready to upload.
struct StoredPart {
    raw: u64,
    bytes: Bytes,
    crc32c: u32,
}

thread_local! {
    /// A compression context per worker thread and level, reused across parts.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `raw` as one zstd frame into `out` (whose contents are replaced).
fn compress_frame(level: i32, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, compressor)) if *l == level => compressor,
            other => &mut other.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        compressor.compress_to_buffer(raw, out)?;
        Ok(())
    })
}

fn compress_part(
    shared: &Shared,
    stream_index: u32,
    part_index: u64,
    raw: &[u8],
) -> Result<StoredPart> {
    let mut frame = shared.frame_pool.take();
    compress_frame(shared.config.compression_level, raw, &mut frame).map_err(|e| {
        Error::io(format!(
            "compressing part {part_index} of backup {}: {e}",
            shared.id
        ))
    })?;
    let stored = match &shared.data_key {
        Some(key) => {
            let sealed = key.seal_part(shared.id.as_str(), stream_index, part_index, &frame);
            shared.frame_pool.give(frame);
            sealed
        }
        None => frame,
    };
    Ok(StoredPart {
        raw: raw.len() as u64,
        crc32c: crc32c::crc32c(&stored),
        bytes: Bytes::from(stored),
    })
}

/// Reads up to `size` bytes into a pooled buffer; fewer only at the end of the input.
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    pool: &BufferPool,
) -> std::io::Result<Bytes> {
    use bytes::BufMut;
    let mut buf = pool.take();
    while buf.len() < size {
        let room = size - buf.len();
        if reader.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::from(err).with_message("a background task of the writer failed")
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
                compress_slots: FairSlots::new(config.workers),
                // Enough spares for every part in flight (parts being filled
                // and queued by two streams, plus those being compressed), so
                // that buffers are reused rather than freed and faulted in again.
                raw_pool: Arc::new(BufferPool::new(config.part_size, 2 * config.workers + 4)),
                frame_pool: Arc::new(BufferPool::new(
                    zstd::zstd_safe::compress_bound(config.part_size),
                    config.workers + 2,
                )),
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
        self.write_from(
            name,
            PartSource::Reader(reader),
            StreamDigest::Blake3,
            progress,
        )
        .await
    }

    /// A channel to feed a stream part by part from a blocking producer;
    /// pass the [`PartStream`] to [`write_parts`](Self::write_parts).
    pub fn part_channel(&self) -> (PartFeed, PartStream) {
        crate::plugin::part_channel(self.shared.config.part_size, self.shared.raw_pool.clone())
    }

    /// Stores the stream `name` from the parts sent through the
    /// [`PartFeed`] of `parts`, until the feed is dropped, like
    /// [`write_stream`](Self::write_stream) (same naming, failure and
    /// cleanup rules). With [`StreamDigest::Skip`] no stream digest is
    /// computed or recorded.
    pub async fn write_parts(
        &self,
        name: &str,
        parts: PartStream,
        digest: StreamDigest,
        progress: Option<&dyn Progress>,
    ) -> Result<StreamRecord> {
        self.write_from::<tokio::io::Empty>(name, PartSource::Feed(parts), digest, progress)
            .await
    }

    async fn write_from<R: AsyncRead + Send + Unpin>(
        &self,
        name: &str,
        source: PartSource<R>,
        digest: StreamDigest,
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
        match run_stream(
            &self.shared,
            index,
            name,
            source,
            digest,
            progress,
            &mut upload,
        )
        .await
        {
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
                let err = err.context(format!("backup {}, stream `{name}`", self.shared.id));
                Err(if err.hint_text().is_none() {
                    err.hint("the stream's segments were deleted and the backup cannot be committed; run it again")
                } else {
                    err
                })
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
    pub async fn commit(mut self, details: BackupOutcome) -> Result<Manifest> {
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
    mut source: PartSource<R>,
    digest: StreamDigest,
    progress: Option<&dyn Progress>,
    upload: &mut StreamUpload,
) -> Result<StreamRecord> {
    let config = &shared.config;
    // Compression jobs in stream order; the consumer awaits them in that
    // order. With the one the consumer holds, `workers` jobs can run.
    let (jobs_tx, mut jobs_rx) =
        mpsc::channel::<JoinHandle<Result<StoredPart>>>(config.workers.saturating_sub(1).max(1));
    // Raw parts for the digest, hashed on a thread of their own.
    let (hash_tx, hasher) = match digest {
        StreamDigest::Blake3 => {
            let (hash_tx, hasher) = spawn_digest(shared.raw_pool.clone());
            (Some(hash_tx), Some(hasher))
        }
        StreamDigest::Skip => (None, None),
    };

    let account = shared.compress_slots.account();
    let produce_account = account.clone();
    let produce = async move {
        let account = produce_account;
        let mut part_index = 0u64;
        loop {
            let raw = source.next(config, &shared.raw_pool).await?;
            if raw.is_empty() {
                break;
            }
            let last = source.is_last(&raw, config);
            if let Some(hash_tx) = &hash_tx
                && hash_tx.send(raw.clone()).await.is_err()
            {
                return Err(Error::io("the digest thread of the writer stopped"));
            }
            let permit = shared.compress_slots.acquire(&account).await;
            let job_shared = shared.clone();
            let job_account = account.clone();
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let part =
                    job_account.charge(|| compress_part(&job_shared, index, part_index, &raw));
                job_shared.raw_pool.reclaim(raw);
                part
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

    // Frames handed to the upload, taken back into the pool once the
    // upload has let go of them.
    let mut uploading: Vec<Bytes> = Vec::new();
    let consume = async {
        while let Some(job) = jobs_rx.recv().await {
            let part = job.await.map_err(join_error)??;
            shared.failed_elsewhere()?;
            let raw = part.raw;
            if shared.data_key.is_none() {
                uploading.push(part.bytes.clone());
            }
            upload.add_part(part).await?;
            if let Some(progress) = progress {
                progress.add(raw);
            }
            let mut i = 0;
            while i < uploading.len() {
                if uploading[i].is_unique() {
                    shared.frame_pool.reclaim(uploading.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        Ok::<(), Error>(())
    };

    futures::future::try_join(produce, consume).await?;
    let digest = match hasher {
        Some(hasher) => Some(hasher.await.map_err(join_error)?.to_hex().to_string()),
        None => None,
    };
    upload.finish_segment().await?;
    for frame in uploading {
        shared.frame_pool.reclaim(frame);
    }
    let segments = std::mem::take(&mut upload.done);
    let raw_size: u64 = segments.iter().flat_map(|s| &s.parts).map(|p| p.raw).sum();
    tracing::debug!(
        stream = name,
        raw_bytes = raw_size,
        compress_seconds = account.seconds(),
        "stream written"
    );
    Ok(StreamRecord {
        name: name.to_owned(),
        raw_size,
        stored_size: segments.iter().map(|s| s.stored_size).sum(),
        blake3: digest,
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

/// The [`BackupSink`](crate::plugin::BackupSink) an engine plugin writes
/// into: a [`BackupWriter`], and optionally one [`Progress`] that counts the
/// raw bytes of every stream (what the CLI shows as a progress bar).
pub struct ProgressSink<'a> {
    writer: &'a BackupWriter,
    progress: Option<&'a dyn Progress>,
}

impl<'a> ProgressSink<'a> {
    /// Streams go to `writer`; their raw bytes are counted on `progress`.
    pub fn new(writer: &'a BackupWriter, progress: &'a dyn Progress) -> Self {
        ProgressSink {
            writer,
            progress: Some(progress),
        }
    }

    /// Streams go to `writer`, uncounted.
    pub fn quiet(writer: &'a BackupWriter) -> Self {
        ProgressSink {
            writer,
            progress: None,
        }
    }
}

#[async_trait]
impl crate::plugin::BackupSink for ProgressSink<'_> {
    async fn write_stream(
        &self,
        name: &str,
        reader: Box<dyn AsyncRead + Send + Unpin + 'static>,
    ) -> Result<StreamRecord> {
        self.writer.write_stream(name, reader, self.progress).await
    }

    fn part_channel(&self) -> (PartFeed, PartStream) {
        self.writer.part_channel()
    }

    async fn write_parts(
        &self,
        name: &str,
        parts: PartStream,
        digest: StreamDigest,
    ) -> Result<StreamRecord> {
        self.writer
            .write_parts(name, parts, digest, self.progress)
            .await
    }

    fn expect_bytes(&self, total: u64) {
        if let Some(progress) = self.progress {
            progress.set_total(total);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use object_store::ObjectStoreExt;
    use tokio::io::{AsyncWriteExt, ReadBuf};

    use crate::catalog::manifest::Position;

    use super::*;
    use crate::vault::VaultConfig;
    use crate::vault::reader::{ReaderConfig, read_stream};

    /// Deterministic test data: 4 KiB blocks alternating between text that
    /// compresses well and pseudo-random bytes that do not.
    pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let words = [
            "checkpoint ",
            "wal ",
            "lsn=0/1A2B3C ",
            "INSERT INTO t VALUES ",
            "(42, 'x') ",
        ];
        let mut out = Vec::with_capacity(len);
        let mut block = 0usize;
        while out.len() < len {
            let end = (out.len() + 4096).min(len);
            while out.len() < end {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if block.is_multiple_of(2) {
                    let word = words[(state % words.len() as u64) as usize].as_bytes();
                    let n = word.len().min(end - out.len());
                    out.extend_from_slice(&word[..n]);
                } else {
                    let n = 8.min(end - out.len());
                    out.extend_from_slice(&state.to_le_bytes()[..n]);
                }
            }
            block += 1;
        }
        out
    }

    pub(crate) async fn memory_vault(key: Option<crate::crypto::VaultKey>) -> Vault {
        let name = format!("memory://writer-test-{:016x}", rand::random::<u64>());
        Vault::init(&VaultConfig::from_url(name), key)
            .await
            .unwrap()
    }

    pub(crate) async fn file_vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/vault", dir.path().display());
        let vault = Vault::init(&VaultConfig::from_url(url), None)
            .await
            .unwrap();
        (dir, vault)
    }

    /// 64 KiB parts, segments of at most three parts.
    pub(crate) fn small_config() -> WriterConfig {
        WriterConfig {
            part_size: MIN_PART_SIZE,
            compression_level: 3,
            workers: 2,
            parts_in_flight: 2,
            segment_size: 3 * MIN_PART_SIZE as u64,
        }
    }

    pub(crate) fn target() -> BackupTarget {
        BackupTarget {
            engine: "stream".into(),
            instance: "test/instance".into(),
            database: None,
            kind: BackupKind::Full,
        }
    }

    /// Writes `streams` one after another in one backup and commits it.
    pub(crate) async fn backup(
        vault: &Vault,
        config: WriterConfig,
        streams: &[(&str, &[u8])],
    ) -> Manifest {
        let writer = BackupWriter::start(vault, target(), config).unwrap();
        for (name, bytes) in streams {
            writer.write_stream(name, *bytes, None).await.unwrap();
        }
        writer.commit(BackupOutcome::default()).await.unwrap()
    }

    pub(crate) async fn restore(vault: &Vault, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        read_stream(
            vault,
            manifest,
            name,
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await?;
        Ok(out)
    }

    fn blake3_hex(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    /// Every key in the vault, and for a file vault every file on disk
    /// (staging files of unfinished uploads included).
    async fn leftovers(vault: &Vault, dir: Option<&std::path::Path>) -> Vec<String> {
        let mut keys = vault.list_keys("").await.unwrap();
        if let Some(dir) = dir {
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        keys.push(format!(
                            "file {}",
                            path.strip_prefix(dir).unwrap().display()
                        ));
                    }
                }
            }
        }
        keys.sort();
        keys
    }

    async fn roundtrip_edge_sizes(vault: &Vault) {
        let p = MIN_PART_SIZE;
        let sizes = [0, 1, p - 1, p, p + 1, 7 * p + 3];
        let inputs: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("s{n}"), data(n, i as u64)))
            .collect();
        let streams: Vec<(&str, &[u8])> = inputs
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let manifest = backup(vault, small_config(), &streams).await;
        assert_eq!(manifest.streams.len(), sizes.len());
        for ((name, input), record) in inputs.iter().zip(&manifest.streams) {
            assert_eq!(&record.name, name, "streams are in index order");
            assert_eq!(record.raw_size, input.len() as u64);
            assert_eq!(record.blake3, Some(blake3_hex(input)), "digest of {name}");
            assert_eq!(record.part_count(), input.len().div_ceil(p), "{name}");
            for segment in &record.segments {
                assert!(segment.stored_size <= 3 * p as u64 || segment.parts.len() == 1);
            }
            let restored = restore(vault, &manifest, name).await.unwrap();
            assert!(restored == *input, "stream {name} restored byte for byte");
            assert_eq!(blake3_hex(&restored), blake3_hex(input));
        }
        let big = &manifest.streams[5];
        assert!(
            big.segments.len() >= 2,
            "7 parts need several segments of 192 KiB"
        );
        // A segment is cut only when the next part would not fit.
        for pair in big.segments.windows(2) {
            assert!(pair[0].stored_size + pair[1].parts[0].stored > 3 * p as u64);
        }
        assert!(
            manifest.streams[0].segments.is_empty(),
            "an empty stream stores no object"
        );
        // The stored objects are exactly the segments the manifest records.
        let mut recorded: Vec<String> = manifest
            .streams
            .iter()
            .flat_map(|s| s.segments.iter().map(|g| g.key.clone()))
            .collect();
        recorded.sort();
        let prefix = layout::backup_data_prefix("stream", "test/instance", &manifest.id);
        assert_eq!(vault.list_keys(&prefix).await.unwrap(), recorded);
        for segment in manifest.streams.iter().flat_map(|s| &s.segments) {
            let bytes = vault.get_bytes(&segment.key).await.unwrap();
            assert_eq!(bytes.len() as u64, segment.stored_size, "{}", segment.key);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edge_sizes_round_trip_in_memory() {
        roundtrip_edge_sizes(&memory_vault(None).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edge_sizes_round_trip_on_files() {
        let (_dir, vault) = file_vault().await;
        roundtrip_edge_sizes(&vault).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_segments_use_multipart_and_cut_on_part_boundaries() {
        let (_dir, vault) = file_vault().await;
        // Random data barely compresses: 1 MiB parts store at a little over
        // 1 MiB, so 11 fit in a 12 MiB segment and 24 parts need 3 segments.
        let mut input = vec![0u8; 24 << 20];
        let mut state = 0x1234_5678_9abc_def1u64;
        for chunk in input.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let config = WriterConfig {
            part_size: 1 << 20,
            compression_level: 1,
            workers: 2,
            parts_in_flight: 2,
            segment_size: 12 << 20,
        };
        let manifest = backup(&vault, config, &[("big", &input)]).await;
        let record = &manifest.streams[0];
        assert_eq!(record.segments.len(), 3);
        assert_eq!(record.segments[0].parts.len(), 11);
        assert!(record.segments[0].stored_size > UPLOAD_CHUNK_SIZE as u64);
        for segment in &record.segments {
            assert!(segment.stored_size <= 12 << 20);
            let meta = vault.store().head(&vault.path(&segment.key)).await.unwrap();
            assert_eq!(meta.size, segment.stored_size);
        }
        let restored = restore(&vault, &manifest, "big").await.unwrap();
        assert!(restored == input);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_round_trip_stores_no_plaintext() {
        let key = crate::crypto::VaultKey::generate();
        let vault = memory_vault(Some(key)).await;
        let input = data(5 * MIN_PART_SIZE + 17, 7);
        let manifest = backup(&vault, small_config(), &[("db", &input)]).await;
        let encryption = manifest.encryption.as_ref().expect("encrypted manifest");
        assert_eq!(encryption.algorithm, PART_ALGORITHM);
        for segment in &manifest.streams[0].segments {
            let stored = vault.get_bytes(&segment.key).await.unwrap();
            assert_ne!(
                &stored[..4],
                &[0x28, 0xb5, 0x2f, 0xfd],
                "not a bare zstd frame"
            );
            assert!(
                !stored.windows(11).any(|w| w == b"checkpoint "),
                "no plaintext stored"
            );
        }
        assert!(restore(&vault, &manifest, "db").await.unwrap() == input);
    }

    /// Parts handed over whole through a [`PartFeed`], of any size up to the
    /// part size (the producer decides), round trip on plain and encrypted
    /// vaults; with [`StreamDigest::Skip`] the manifest records no digest and
    /// reads and `verify` still check every part.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fed_parts_round_trip_without_a_stream_digest() {
        let p = MIN_PART_SIZE;
        for key in [None, Some(crate::crypto::VaultKey::generate())] {
            let vault = memory_vault(key).await;
            let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
            let lengths = [p, 1, p - 1, p, 0, 3 * p / 2, 7];
            let input = data(lengths.iter().filter(|l| **l <= p).sum(), 11);
            let (feed, parts) = writer.part_channel();
            assert_eq!(feed.part_size(), p);
            let fed = input.clone();
            let producer = tokio::task::spawn_blocking(move || {
                let mut at = 0;
                for len in lengths {
                    let mut buf = feed.buffer();
                    assert_eq!(buf.len(), p);
                    if len > p {
                        let err = feed.send(buf, len).unwrap_err();
                        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
                        continue;
                    }
                    buf[..len].copy_from_slice(&fed[at..at + len]);
                    at += len;
                    feed.send(buf, len).unwrap();
                }
            });
            let record = writer
                .write_parts("bundle", parts, StreamDigest::Skip, None)
                .await
                .unwrap();
            producer.await.unwrap();
            assert_eq!(record.blake3, None);
            assert_eq!(record.raw_size, input.len() as u64);
            assert_eq!(
                record.part_count(),
                5,
                "the empty and the oversized part add nothing"
            );
            let manifest = writer.commit(BackupOutcome::default()).await.unwrap();
            assert_eq!(restore(&vault, &manifest, "bundle").await.unwrap(), input);
            let report = crate::vault::reader::verify_backup(
                &vault,
                &manifest,
                &ReaderConfig::default(),
                None,
            )
            .await
            .unwrap();
            assert!(report.is_ok(), "{:?}", report.problems);
            assert_eq!(report.raw_bytes, input.len() as u64);
        }
    }

    /// A producer that fails its feed leaves nothing behind, and the backup
    /// cannot be committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_feed_leaves_nothing() {
        let vault = memory_vault(None).await;
        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        let (feed, parts) = writer.part_channel();
        let producer = tokio::task::spawn_blocking(move || {
            let buf = feed.buffer();
            feed.send(buf, MIN_PART_SIZE).unwrap();
            feed.fail(std::io::Error::other(
                "cannot read base/5/16384: disk on fire",
            ));
        });
        let err = writer
            .write_parts("bundle", parts, StreamDigest::Skip, None)
            .await
            .unwrap_err();
        producer.await.unwrap();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(
            writer
                .commit(BackupOutcome::default())
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Cancelled
        );
        assert_eq!(vault.list_keys("").await.unwrap(), ["strata-vault.json"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_streams_of_one_backup() {
        let vault = memory_vault(None).await;
        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        let inputs: Vec<Vec<u8>> = (0..4)
            .map(|i| data(3 * MIN_PART_SIZE + i * 1000, i as u64))
            .collect();
        let names = ["ch0", "ch1", "ch2", "ch3"];
        let records = futures::future::try_join_all(
            names
                .iter()
                .zip(&inputs)
                .map(|(name, input)| writer.write_stream(name, input.as_slice(), None)),
        )
        .await
        .unwrap();
        let manifest = writer.commit(BackupOutcome::default()).await.unwrap();
        assert_eq!(manifest.streams.len(), 4);
        for (name, input) in names.iter().zip(&inputs) {
            let record = manifest.stream(name).unwrap();
            assert!(records.contains(record));
            assert_eq!(record.blake3, Some(blake3_hex(input)));
            assert!(restore(&vault, &manifest, name).await.unwrap() == *input);
        }
        // Stream indexes are distinct: no two streams share a segment key.
        let mut keys: Vec<&str> = manifest
            .streams
            .iter()
            .flat_map(|s| s.segments.iter().map(|g| g.key.as_str()))
            .collect();
        let count = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_records_details_and_cannot_be_overwritten() {
        let vault = memory_vault(None).await;
        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        let id = writer.id().clone();
        let input = data(100_000, 3);
        writer
            .write_stream("db", input.as_slice(), None)
            .await
            .unwrap();
        let details = BackupOutcome {
            fork: "timeline-1".into(),
            start: Some(Position(100)),
            end: Some(Position(200)),
            labels: [("host".to_owned(), "db1".to_owned())].into(),
            engine_meta: serde_json::json!({"label": "START WAL LOCATION"}),
            ..Default::default()
        };
        let manifest = writer.commit(details).await.unwrap();
        assert_eq!(manifest.id, id);
        assert_eq!(manifest.format, MANIFEST_FORMAT);
        assert_eq!(
            manifest.compression,
            Compression {
                algorithm: "zstd".into(),
                level: 3
            }
        );
        assert!(manifest.encryption.is_none());
        assert_eq!(
            (manifest.start, manifest.end),
            (Some(Position(100)), Some(Position(200)))
        );
        assert_eq!(manifest.raw_size(), input.len() as u64);
        let stored = vault
            .read_manifest("stream", "test/instance", &id)
            .await
            .unwrap();
        assert_eq!(stored, manifest);

        let mut other = manifest.clone();
        other.fork = "forged".into();
        let err = vault.put_manifest(&other).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let stored = vault
            .read_manifest("stream", "test/instance", &id)
            .await
            .unwrap();
        assert_eq!(
            stored.fork, "timeline-1",
            "the committed manifest is untouched"
        );
    }

    struct FailingReader {
        left: usize,
    }

    impl AsyncRead for FailingReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.left == 0 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "engine went away",
                )));
            }
            let n = self.left.min(buf.remaining()).min(10_000);
            buf.put_slice(&vec![b'x'; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_input_leaves_nothing_and_commit_refuses() {
        let (dir, vault) = file_vault().await;
        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        writer
            .write_stream("ok", data(200_000, 1).as_slice(), None)
            .await
            .unwrap();
        let err = writer
            .write_stream(
                "db",
                FailingReader {
                    left: 10 * MIN_PART_SIZE,
                },
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("stream `db`"), "{err}");
        assert!(err.to_string().contains("engine went away"), "{err}");
        let err = writer
            .write_stream("late", &b"abc"[..], None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        let err = writer.commit(BackupOutcome::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert!(err.to_string().contains("stream `db` failed"), "{err}");
        assert_eq!(
            leftovers(&vault, Some(dir.path())).await,
            ["file vault/strata-vault.json", "strata-vault.json"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_settings_and_duplicate_names_are_refused() {
        let vault = memory_vault(None).await;
        let config = WriterConfig {
            part_size: 1000,
            ..Default::default()
        };
        let err = BackupWriter::start(&vault, target(), config).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("part size 1000"), "{err}");
        assert!(err.hint_text().unwrap().contains("64 KiB"));
        let config = WriterConfig {
            compression_level: 99,
            ..Default::default()
        };
        let err = BackupWriter::start(&vault, target(), config).err().unwrap();
        assert!(err.to_string().contains("compression level 99"), "{err}");

        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        writer.write_stream("a", &b"one"[..], None).await.unwrap();
        let err = writer
            .write_stream("a", &b"two"[..], None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        writer.abort().await.unwrap();
        assert_eq!(vault.list_keys("").await.unwrap(), ["strata-vault.json"]);
    }

    #[test]
    fn buffer_pool_takes_back_the_last_handle_only() {
        let pool = BufferPool::new(1 << 20, 2);
        let mut buf = pool.take();
        buf.extend_from_slice(&[7u8; 1000]);
        let address = buf.as_ptr();
        let bytes = Bytes::from(buf);
        let shared = bytes.clone();
        pool.reclaim(shared);
        assert_eq!(pool.free.lock().unwrap().len(), 0, "still in use elsewhere");
        pool.reclaim(bytes);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "the same allocation is reused");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        pool.give(Vec::with_capacity(10));
        assert_eq!(
            pool.free.lock().unwrap().len(),
            0,
            "small buffers are not kept"
        );
    }

    #[derive(Default)]
    struct Counter(AtomicU64);

    impl Progress for Counter {
        fn add(&self, raw_bytes: u64) {
            self.0.fetch_add(raw_bytes, Ordering::Relaxed);
        }
    }

    /// How a test ends a backup whose stream future it dropped.
    #[derive(Clone, Copy, Debug)]
    enum AfterDrop {
        Abort,
        Commit,
        DropWriter,
    }

    /// Feeds 20 MiB (enough for a finished segment and an open multipart
    /// upload) through a pipe that then stalls, drops the stream future
    /// midway, and checks that only the vault metadata remains.
    async fn cancel_midway(vault: Vault, dir: Option<&std::path::Path>, after: AfterDrop) {
        let config = WriterConfig {
            part_size: 1 << 20,
            compression_level: 1,
            workers: 2,
            parts_in_flight: 2,
            segment_size: 9 << 20,
        };
        let writer = BackupWriter::start(&vault, target(), config).unwrap();
        let (mut feed, pipe) = tokio::io::duplex(1 << 20);
        let total = 20u64 << 20;
        let feeder = tokio::spawn(async move {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut chunk = vec![0u8; 1 << 20];
            for _ in 0..20 {
                for word in chunk.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    word.copy_from_slice(&state.to_le_bytes());
                }
                feed.write_all(&chunk).await.unwrap();
            }
            // Keep the pipe open: the engine stalls.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(feed);
        });
        let counter = Counter::default();
        {
            let stream = writer.write_stream("stalled", pipe, Some(&counter));
            tokio::pin!(stream);
            loop {
                tokio::select! {
                    result = &mut stream => panic!("the stream cannot finish: {result:?}"),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if counter.0.load(Ordering::Relaxed) >= total - (1 << 20) {
                    break;
                }
            }
            let prefix = layout::backup_data_prefix("stream", "test/instance", writer.id());
            assert!(
                !vault.list_keys(&prefix).await.unwrap().is_empty(),
                "a segment was completed before the drop"
            );
        } // the stream future is dropped here
        feeder.abort();
        match after {
            AfterDrop::Abort => writer.abort().await.unwrap(),
            AfterDrop::Commit => {
                let err = writer.commit(BackupOutcome::default()).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Cancelled);
                assert!(
                    err.to_string().contains("stream `stalled` was cancelled"),
                    "{err}"
                );
            }
            AfterDrop::DropWriter => {
                drop(writer);
                // Cleanup runs in the background; wait for it (bounded).
                for _ in 0..200 {
                    if leftovers(&vault, dir).await.len() <= 2 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let expected: &[&str] = if dir.is_some() {
            &["file vault/strata-vault.json", "strata-vault.json"]
        } else {
            &["strata-vault.json"]
        };
        assert_eq!(leftovers(&vault, dir).await, expected, "after {after:?}");
        assert!(vault.all_manifests().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_stream_leaves_nothing_in_memory() {
        for after in [AfterDrop::Abort, AfterDrop::Commit, AfterDrop::DropWriter] {
            cancel_midway(memory_vault(None).await, None, after).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_stream_leaves_nothing_on_files() {
        for after in [AfterDrop::Abort, AfterDrop::Commit, AfterDrop::DropWriter] {
            let (dir, vault) = file_vault().await;
            cancel_midway(vault, Some(dir.path()), after).await;
        }
    }
}

//! The streaming reader: a committed backup's streams, back out of the vault.
//!
//! ```text
//! ranged GETs, `readahead` parts in flight ─► CRC-32C ─► AEAD open ─► zstd ─► raw size
//!                                            (`workers` threads)                 │
//!                                   in-order output ◄── BLAKE3 of the stream ◄───┘
//! ```
//!
//! Every part is fetched with a bounded range request (never a suffix range,
//! which Azure does not support), and checked before a byte of it is handed
//! on: the CRC-32C of the stored bytes, the AEAD tag when the backup is
//! encrypted, the zstd frame, and the raw length. A part that fails any check
//! is an [`ErrorKind::Integrity`] error (a missing object is
//! [`ErrorKind::NotFound`]) naming the segment object and the part, and none
//! of its bytes are written. At the end of a stream the BLAKE3 digest of
//! everything written is compared with the manifest's.
//!
//! [`read_range`] gives back a piece of a stream (SQL Server's `RESTORE ...
//! FROM URL` asks for byte ranges of a blob): it fetches only the parts that
//! hold the range, checks each of them the same way before writing the bytes
//! of it that the range covers, and compares no stream digest (it reads a
//! piece, not the whole).
//!
//! [`verify_backup`] runs the same checks over every part of a backup without
//! writing anything, and reports every problem instead of stopping at the
//! first. [`VaultRestoreSource`] hands streams to engine plugins.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetResult, GetResultPayload, ObjectStore};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::writer::BufferPool;
use super::{Progress, Vault};
use crate::catalog::manifest::{BackupId, Manifest, PartRecord, StreamRecord};
use crate::crypto::DataKey;
use crate::error::{Error, ErrorKind, Result};
use crate::plugin::ContentCheck;

/// The largest raw part a reader accepts: a manifest asking for more is damaged.
const MAX_RAW_PART: u64 = 1 << 30;

const DAMAGED_HINT: &str = "the stored backup is damaged; restore from another backup, and run `strata verify` to check the others";

/// How a reader fetches and decompresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    /// Parts fetched ahead of the one being written. Default `2 × cores + 2`.
    pub readahead: usize,
    /// Decompression threads; 0 means one per core (the default).
    pub workers: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            readahead: 2 * cores() + 2,
            workers: 0,
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What reading a stream moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Raw bytes written out.
    pub raw_bytes: u64,
    /// Stored bytes fetched.
    pub stored_bytes: u64,
    /// Parts read.
    pub parts: u64,
}

/// The outcome of [`verify_backup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The backup checked.
    pub backup: BackupId,
    /// Streams checked.
    pub streams: usize,
    /// Parts checked.
    pub parts: u64,
    /// Raw bytes checked.
    pub raw_bytes: u64,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// Every problem found, each naming the object and part (empty when sound).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether the backup is sound: every part and every stream digest checked out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where one part lives.
#[derive(Clone)]
struct PartLocation {
    key: Arc<str>,
    path: Path,
    range: Range<u64>,
    record: PartRecord,
    /// The part's index within its stream.
    index: u64,
    /// Where the part's raw bytes start in the raw stream.
    raw_start: u64,
}

/// Everything a part check needs, shareable with blocking threads.
struct StreamContext {
    store: Arc<dyn ObjectStore>,
    backup: BackupId,
    stream_index: u32,
    stream_name: String,
    data_key: Option<Arc<DataKey>>,
    /// Decompression threads.
    workers: usize,
    /// Raw part buffers, reused across parts.
    pool: Arc<BufferPool>,
    /// Stored part buffers, reused across parts.
    stored_pool: Arc<BufferPool>,
    /// The vault is an immutable S3 vault, whose bucket is versioned: a
    /// missing object may be hidden by a delete marker.
    versioned: bool,
}

/// Why one part could not be read back. Each becomes an [`Error`] naming
/// the backup, stream, part and object (see [`StreamContext::part_error`]).
#[derive(Debug, thiserror::Error)]
enum PartFailure {
    /// The segment object is gone.
    #[error("the object is missing")]
    Missing,
    /// The segment object is not the size the manifest records.
    #[error("the object is {actual} bytes, the manifest records {recorded}")]
    ObjectSize { actual: u64, recorded: u64 },
    /// Fewer stored bytes came back than the part has.
    #[error("the object ends early ({got} of {recorded} bytes)")]
    Truncated { got: u64, recorded: u64 },
    /// The stored bytes do not match their checksum.
    #[error("CRC-32C mismatch (stored {actual:08x}, manifest {recorded:08x})")]
    Crc { actual: u32, recorded: u32 },
    /// The AEAD tag did not verify under the backup's data key.
    #[error("authenticated decryption failed")]
    Aead,
    /// The manifest asks for a part larger than any writer produces.
    #[error("the manifest records an impossible raw size of {0} bytes")]
    ImpossibleSize(u64),
    /// The stored frame is not valid zstd.
    #[error("the zstd frame is invalid: {0}")]
    Zstd(#[source] std::io::Error),
    /// The frame decompressed to another length than the manifest records.
    #[error("the part decompresses to {actual} bytes, the manifest records {recorded}")]
    RawSize { actual: u64, recorded: u64 },
}

impl PartFailure {
    /// A missing object is [`ErrorKind::NotFound`]; everything else,
    /// including an AEAD failure, is [`ErrorKind::Integrity`]: the data key
    /// was already unwrapped with the vault key (a wrong vault key fails
    /// there, as [`ErrorKind::Crypto`]), so a part that does not open was
    /// altered or belongs to another backup.
    fn kind(&self) -> ErrorKind {
        match self {
            PartFailure::Missing => ErrorKind::NotFound,
            _ => ErrorKind::Integrity,
        }
    }
}

impl StreamContext {
    /// What names a part in errors: `backup B, stream `s`: part N in object K`.
    fn part_label(&self, loc: &PartLocation) -> String {
        format!(
            "backup {}, stream `{}`: part {} in object {}",
            self.backup, self.stream_name, loc.index, loc.key
        )
    }

    /// A part failure as an error: the part's label and the problem in the
    /// message, the backup, stream, part and object as fields, never
    /// retryable (stored data does not heal), and the damage hint.
    fn part_error(&self, loc: &PartLocation, failure: PartFailure) -> Error {
        Error::new(
            failure.kind(),
            format!("{}: {failure}", self.part_label(loc)),
        )
        .in_message("backup", &self.backup)
        .in_message("stream", &self.stream_name)
        .in_message("part", loc.index)
        .in_message("object", &loc.key)
        .hint(DAMAGED_HINT)
        .with_source(failure)
    }

    /// Fetches the stored bytes of one part into a pooled buffer.
    async fn fetch_stored(&self, loc: &PartLocation, segment_size: u64) -> Result<Vec<u8>> {
        let options = GetOptions::new().with_range(Some(loc.range.clone()));
        let fetched = match self.store.get_opts(&loc.path, options).await {
            // A ranged GET reports the whole object's size (S3, Azure and
            // GCS from `Content-Range`, files and memory from their
            // metadata). A longer object under the key whose first bytes
            // happen to match (a segment of an older backup of the same
            // files) would pass every part check: its size gives it away.
            // A shorter one fails at the part the cut runs through, which
            // the error below then names.
            Ok(result) if result.meta.size > segment_size => {
                return Err(self.part_error(
                    loc,
                    PartFailure::ObjectSize {
                        actual: result.meta.size,
                        recorded: segment_size,
                    },
                ));
            }
            Ok(result) => read_payload(result, self.stored_pool.take()).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => {
                let error = self.part_error(loc, PartFailure::Missing);
                Err(if self.versioned {
                    error.hint(delete_marker_hint(&loc.key))
                } else {
                    error
                })
            }
            Err(err) => {
                // A range past the end of a truncated object fails in a
                // store-specific way: tell it apart from an unreachable store.
                let options = GetOptions::new().with_head(true);
                if let Ok(head) = self.store.get_opts(&loc.path, options).await
                    && head.meta.size != segment_size
                {
                    return Err(self.part_error(
                        loc,
                        PartFailure::ObjectSize {
                            actual: head.meta.size,
                            recorded: segment_size,
                        },
                    ));
                }
                Err(self.store_error(loc, err))
            }
        }
    }

    /// The store failed while fetching a part: its conversion decides the
    /// kind, whether to retry and the hint; the part's label is the context.
    fn store_error(&self, loc: &PartLocation, err: object_store::Error) -> Error {
        Error::from(err)
            .context(self.part_label(loc))
            .in_message("backup", &self.backup)
            .in_message("stream", &self.stream_name)
            .in_message("part", loc.index)
            .in_message("object", &loc.key)
    }

    /// Checks a stored part and returns its raw bytes.
    fn open(&self, loc: &PartLocation, stored: &[u8]) -> Result<Bytes> {
        self.check(loc, stored)
            .map_err(|failure| self.part_error(loc, failure))
    }

    fn check(&self, loc: &PartLocation, stored: &[u8]) -> Result<Bytes, PartFailure> {
        let seal = self.data_key.as_deref().map(|key| PartSeal {
            key,
            backup: self.backup.as_str(),
            stream: self.stream_index,
            part: loc.index,
        });
        let mut raw = self.pool.take();
        match decode_part_into(stored, &loc.record, seal, &mut raw) {
            Ok(()) => Ok(Bytes::from(raw)),
            Err(failure) => {
                self.pool.give(raw);
                Err(failure)
            }
        }
    }
}

/// What opens a sealed part: the backup's data key and the part's place,
/// which are its nonce and associated data (see [`crate::crypto`]).
#[derive(Debug, Clone, Copy)]
pub struct PartSeal<'a> {
    /// The backup's data key.
    pub key: &'a DataKey,
    /// The backup's identifier.
    pub backup: &'a str,
    /// The stream's index within the backup.
    pub stream: u32,
    /// The part's index within its stream.
    pub part: u64,
}

/// Checks the stored bytes of one part against its record and decodes them,
/// as every read does: the length, the CRC-32C, the AEAD tag (with `seal`,
/// for an encrypted backup), the zstd frame and the raw length. Returns
/// exactly `record.raw` bytes, or an [`ErrorKind::Integrity`] error saying
/// which check failed (the reader's errors add the backup, stream, part and
/// object).
pub fn decode_part(
    stored: &[u8],
    record: &PartRecord,
    seal: Option<PartSeal<'_>>,
) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    decode_part_into(stored, record, seal, &mut raw)
        .map_err(|failure| Error::new(failure.kind(), failure.to_string()).with_source(failure))?;
    Ok(raw)
}

/// [`decode_part`] into `raw` (whose contents are replaced), so that the
/// reader reuses its pooled buffers.
fn decode_part_into(
    stored: &[u8],
    record: &PartRecord,
    seal: Option<PartSeal<'_>>,
    raw: &mut Vec<u8>,
) -> Result<(), PartFailure> {
    if stored.len() as u64 != record.stored {
        return Err(PartFailure::Truncated {
            got: stored.len() as u64,
            recorded: record.stored,
        });
    }
    let crc = crc32c::crc32c(stored);
    if crc != record.crc32c {
        return Err(PartFailure::Crc {
            actual: crc,
            recorded: record.crc32c,
        });
    }
    let opened;
    let frame: &[u8] = match seal {
        Some(seal) => {
            opened = seal
                .key
                .open_part(seal.backup, seal.stream, seal.part, stored)
                .map_err(|_| PartFailure::Aead)?;
            &opened
        }
        None => stored,
    };
    if record.raw > MAX_RAW_PART {
        return Err(PartFailure::ImpossibleSize(record.raw));
    }
    decompress_frame(frame, raw, record.raw as usize).map_err(PartFailure::Zstd)?;
    if raw.len() as u64 != record.raw {
        return Err(PartFailure::RawSize {
            actual: raw.len() as u64,
            recorded: record.raw,
        });
    }
    Ok(())
}

thread_local! {
    /// A decompression context per worker thread, reused across parts.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame into `out` (whose contents are replaced). A
/// frame larger than `out`'s capacity (at least `limit`) fails here; one
/// between `limit` and that capacity is caught by the caller's length check.
fn decompress_frame(frame: &[u8], out: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(decompressor) => decompressor,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        out.clear();
        out.reserve(limit);
        decompressor.decompress_to_buffer(frame, out)?;
        Ok(())
    })
}

/// The checked raw parts of a stream, in order. Fetches run ahead as tasks
/// of their own (`readahead` of them, so that they progress while the
/// output is being written); checks and decompression run on `workers`
/// blocking threads.
fn checked_parts(
    ctx: Arc<StreamContext>,
    parts: Vec<(PartLocation, u64)>,
    config: &ReaderConfig,
) -> impl futures::Stream<Item = Result<(PartLocation, Bytes)>> {
    let workers = ctx.workers;
    futures::stream::iter(parts)
        .map(move |(loc, segment_size)| {
            let ctx = ctx.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let stored = ctx.fetch_stored(&loc, segment_size).await;
                (ctx, loc, stored)
            }))
        })
        .buffered(config.readahead.max(1))
        .map(move |fetched| async move {
            let (ctx, loc, stored) = fetched.map_err(task_error)?;
            let stored = stored?;
            tokio::task::spawn_blocking(move || {
                let raw = ctx.open(&loc, &stored);
                ctx.stored_pool.give(stored);
                raw.map(|raw| (loc, raw))
            })
            .await
            .map_err(task_error)?
        })
        .buffered(workers)
}

/// Reads a ranged GET's body into `buf` (whose contents are replaced).
async fn read_payload(result: GetResult, mut buf: Vec<u8>) -> object_store::Result<Vec<u8>> {
    let len = (result.range.end - result.range.start) as usize;
    buf.clear();
    buf.reserve(len);
    match result.payload {
        GetResultPayload::File(file, path) => {
            let start = result.range.start;
            let read = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut file = file;
                file.seek(SeekFrom::Start(start))?;
                file.take(len as u64).read_to_end(&mut buf)?;
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            match read {
                Ok(Ok(buf)) => Ok(buf),
                // The io::Error stays in the chain, so that the conversion
                // into Strata's error sees its kind.
                Ok(Err(source)) => Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(Error::io_doing_at("reading", &path, source)),
                }),
                Err(source) => Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(source),
                }),
            }
        }
        GetResultPayload::Stream(mut chunks) => {
            while let Some(chunk) = chunks.next().await {
                buf.extend_from_slice(&chunk?);
            }
            Ok(buf)
        }
    }
}

fn task_error(err: tokio::task::JoinError) -> Error {
    Error::from(err).with_message("a background task of the reader failed")
}

fn data_key(vault: &Vault, manifest: &Manifest) -> Result<Option<Arc<DataKey>>> {
    let Some(encryption) = &manifest.encryption else {
        return Ok(None);
    };
    if encryption.algorithm != crate::crypto::PART_ALGORITHM {
        return Err(Error::integrity(format!(
            "backup {} uses the unknown part cipher `{}`",
            manifest.id, encryption.algorithm
        ))
        .hint("upgrade Strata to read this backup"));
    }
    let key = vault.key().ok_or_else(|| {
        Error::crypto(format!(
            "backup {} is encrypted and no key was given",
            manifest.id
        ))
        .hint("set [vault] key_file in the config or pass --key-file")
    })?;
    Ok(Some(Arc::new(key.open_data_key(
        manifest.id.as_str(),
        &encryption.wrapped_key,
    )?)))
}

fn stream_context(
    vault: &Vault,
    manifest: &Manifest,
    index: usize,
    data_key: Option<Arc<DataKey>>,
    config: &ReaderConfig,
) -> Arc<StreamContext> {
    let workers = if config.workers == 0 {
        cores()
    } else {
        config.workers
    };
    let parts = || {
        manifest.streams[index]
            .segments
            .iter()
            .flat_map(|s| &s.parts)
    };
    let largest = parts().map(|p| p.raw.min(MAX_RAW_PART)).max().unwrap_or(0);
    let largest_stored = parts()
        .map(|p| p.stored.min(MAX_RAW_PART + (1 << 20)))
        .max()
        .unwrap_or(0);
    Arc::new(StreamContext {
        store: vault.store().clone(),
        backup: manifest.id.clone(),
        stream_index: index as u32,
        stream_name: manifest.streams[index].name.clone(),
        data_key,
        workers,
        pool: Arc::new(BufferPool::new(largest as usize, workers + 4)),
        stored_pool: Arc::new(BufferPool::new(
            largest_stored as usize,
            config.readahead + workers + 1,
        )),
        versioned: vault.is_versioned(),
    })
}

/// The parts of a stream with their segment's stored size, in order: every
/// part when `raw` is `None`, else those holding raw bytes of the stream's
/// range `raw` (found from the parts' raw lengths in the manifest; segments
/// wholly outside it are skipped without a look at their parts).
fn locate(
    vault: &Vault,
    stream: &StreamRecord,
    raw: Option<&Range<u64>>,
) -> Vec<(PartLocation, u64)> {
    let holds = |start: u64, len: u64| {
        raw.is_none_or(|raw| start < raw.end && start.saturating_add(len) > raw.start)
    };
    let mut parts = Vec::with_capacity(if raw.is_none() {
        stream.part_count()
    } else {
        0
    });
    let mut index = 0u64;
    let mut raw_start = 0u64;
    for segment in &stream.segments {
        let segment_raw = segment
            .parts
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.raw));
        if !holds(raw_start, segment_raw) {
            index += segment.parts.len() as u64;
            raw_start = raw_start.saturating_add(segment_raw);
            continue;
        }
        let key: Arc<str> = Arc::from(segment.key.as_str());
        let path = vault.path(&segment.key);
        let mut offset = 0u64;
        for record in &segment.parts {
            if holds(raw_start, record.raw) {
                parts.push((
                    PartLocation {
                        key: key.clone(),
                        path: path.clone(),
                        range: offset..offset + record.stored,
                        record: *record,
                        index,
                        raw_start,
                    },
                    segment.stored_size,
                ));
            }
            offset += record.stored;
            index += 1;
            raw_start = raw_start.saturating_add(record.raw);
        }
    }
    parts
}

/// Hashes raw parts, in order, on a thread of its own, and compares the
/// result with the digest the manifest records. Streams recorded without a
/// digest are not hashed (their content checks itself).
struct DigestCheck {
    tx: mpsc::Sender<Bytes>,
    handle: tokio::task::JoinHandle<blake3::Hash>,
}

impl DigestCheck {
    fn start(record: &StreamRecord, pool: Arc<BufferPool>) -> Option<DigestCheck> {
        record.blake3.as_ref()?;
        let (tx, handle) = super::writer::spawn_digest(pool);
        Some(DigestCheck { tx, handle })
    }

    async fn add(&self, raw: Bytes) -> Result<()> {
        self.tx
            .send(raw)
            .await
            .map_err(|_| Error::io("the digest task of the reader stopped"))
    }

    /// Finishes hashing; returns the mismatch, if any, as an error.
    async fn finish(self, manifest: &Manifest, record: &StreamRecord) -> Result<()> {
        drop(self.tx);
        let digest = self
            .handle
            .await
            .map_err(|e| Error::from(e).with_message("the digest task failed"))?
            .to_hex()
            .to_string();
        match &record.blake3 {
            Some(expected) if *expected != digest => Err(Error::integrity(format!(
                "backup {}, stream `{}`: the BLAKE3 digest of the restored bytes is {digest}, the manifest records {expected}",
                manifest.id, record.name
            ))
            .hint(DAMAGED_HINT)),
            _ => Ok(()),
        }
    }
}

/// Writes stream `stream` of the backup into `out`, in order.
///
/// Every part's CRC-32C is checked (and, for encrypted backups, its AEAD tag
/// opened) before its bytes are written; at the end the BLAKE3 digest of
/// everything written is compared with the manifest. Errors name the segment
/// object key and the part index: [`ErrorKind::Integrity`] for damaged data,
/// [`ErrorKind::NotFound`] for a missing object or stream,
/// [`ErrorKind::Crypto`] when the backup is encrypted and the vault was
/// opened without its key. `out` is flushed, not shut down.
pub async fn read_stream<W: AsyncWrite + Unpin + Send + ?Sized>(
    vault: &Vault,
    manifest: &Manifest,
    stream: &str,
    out: &mut W,
    config: &ReaderConfig,
    progress: Option<&dyn Progress>,
) -> Result<ReadStats> {
    copy_out(vault, manifest, stream, None, out, config, progress).await
}

/// Writes the raw bytes `raw` (offsets into the raw stream) of stream
/// `stream` into `out`, clamped to the stream's end (a range starting at
/// the end, or empty, writes nothing). [`ReadStats::raw_bytes`] is the
/// number of bytes written.
///
/// Only the parts holding the range are fetched, with the read-ahead of
/// [`read_stream`]; each is checked as there (CRC-32C, AEAD, zstd frame, raw
/// length) before any of its bytes are written. The stream's BLAKE3 digest
/// is not compared: it covers the whole stream, and a range is a piece of
/// it.
///
/// # Errors
/// [`ErrorKind::Config`] naming the stream and its size when `raw` starts
/// past the stream's end; [`ErrorKind::Integrity`] when the manifest's parts
/// do not add up to the stream's size; otherwise those of [`read_stream`],
/// for the parts the range touches only.
pub async fn read_range<W: AsyncWrite + Unpin + Send + ?Sized>(
    vault: &Vault,
    manifest: &Manifest,
    stream: &str,
    raw: Range<u64>,
    out: &mut W,
    config: &ReaderConfig,
    progress: Option<&dyn Progress>,
) -> Result<ReadStats> {
    let record = manifest.stream(stream)?;
    let size = record.raw_size;
    let offset = raw.start;
    if offset > size {
        return Err(Error::config(format!(
            "backup {}, stream `{stream}` holds {size} bytes; a read from offset {offset} is past its end",
            manifest.id
        ))
        .in_message("backup", &manifest.id)
        .in_message("stream", stream)
        .hint(format!("read from an offset of at most {size}")));
    }
    let parts_raw = record
        .segments
        .iter()
        .flat_map(|s| &s.parts)
        .fold(0u64, |sum, p| sum.saturating_add(p.raw));
    if parts_raw != size {
        return Err(Error::integrity(format!(
            "backup {}, stream `{stream}`: the manifest records {size} bytes, its parts hold {parts_raw}",
            manifest.id
        ))
        .hint(DAMAGED_HINT));
    }
    let window = offset..raw.end.clamp(offset, size);
    copy_out(vault, manifest, stream, Some(window), out, config, progress).await
}

/// The one output loop of [`read_stream`] and [`read_range`]: writes the
/// raw bytes of `stream` inside `window` (the whole stream, its digest
/// compared at the end, when `None`) into `out`, part by part as each is
/// checked, and flushes `out`.
async fn copy_out<W: AsyncWrite + Unpin + Send + ?Sized>(
    vault: &Vault,
    manifest: &Manifest,
    stream: &str,
    window: Option<Range<u64>>,
    out: &mut W,
    config: &ReaderConfig,
    progress: Option<&dyn Progress>,
) -> Result<ReadStats> {
    let record = manifest.stream(stream)?;
    let index = manifest
        .streams
        .iter()
        .position(|s| s.name == stream)
        .expect("the stream was found");
    let writing = |e: std::io::Error| {
        Error::from(e).context(format!(
            "writing stream `{stream}` of backup {}",
            manifest.id
        ))
    };
    let mut stats = ReadStats::default();
    if window.as_ref().is_some_and(|w| w.is_empty()) {
        out.flush().await.map_err(writing)?;
        return Ok(stats);
    }
    let ctx = stream_context(vault, manifest, index, data_key(vault, manifest)?, config);
    let digest = match window {
        None => DigestCheck::start(record, ctx.pool.clone()),
        Some(_) => None,
    };
    let pool = ctx.pool.clone();
    let parts = checked_parts(ctx, locate(vault, record, window.as_ref()), config);
    futures::pin_mut!(parts);
    while let Some(part) = parts.next().await {
        let (loc, raw) = part?;
        if let Some(digest) = &digest {
            digest.add(raw.clone()).await?;
        }
        // The piece of this part inside the window, as offsets into the part.
        let piece = match &window {
            None => 0..raw.len(),
            Some(window) => {
                let from = window.start.saturating_sub(loc.raw_start);
                let to = (window.end - loc.raw_start).min(raw.len() as u64);
                from as usize..to as usize
            }
        };
        out.write_all(&raw[piece.clone()]).await.map_err(writing)?;
        pool.reclaim(raw);
        stats.raw_bytes += piece.len() as u64;
        stats.stored_bytes += loc.record.stored;
        stats.parts += 1;
        if let Some(progress) = progress {
            progress.add(piece.len() as u64);
        }
    }
    out.flush().await.map_err(writing)?;
    if let Some(digest) = digest {
        digest.finish(manifest, record).await?;
    }
    Ok(stats)
}

/// Whether a part error is a finding about the backup (recorded by
/// [`verify_backup`]) rather than a failure to reach the vault.
fn is_finding(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Integrity | ErrorKind::NotFound | ErrorKind::Crypto
    )
}

/// Reads every part of every stream of the backup and checks CRC-32C, AEAD,
/// decompression, raw sizes, segment sizes and each stream's digest. Each
/// problem is recorded (naming the object and part) and the check goes on;
/// nothing is written anywhere.
///
/// Returns `Err` only when the check itself cannot proceed: the vault is
/// unreachable, or the backup is encrypted and the vault was opened without
/// a key.
pub async fn verify_backup(
    vault: &Vault,
    manifest: &Manifest,
    config: &ReaderConfig,
    progress: Option<&dyn Progress>,
) -> Result<VerifyReport> {
    verify_backup_with(vault, manifest, config, progress, None).await
}

/// [`verify_backup`], and with `content` the content check of the streams
/// it accepts (a PostgreSQL file bundle: every file's digest).
pub async fn verify_backup_with(
    vault: &Vault,
    manifest: &Manifest,
    config: &ReaderConfig,
    progress: Option<&dyn Progress>,
    content: Option<&dyn ContentCheck>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        backup: manifest.id.clone(),
        streams: 0,
        parts: 0,
        raw_bytes: 0,
        stored_bytes: 0,
        problems: Vec::new(),
    };
    let data_key = match data_key(vault, manifest) {
        Ok(key) => key,
        Err(e) if e.kind() == ErrorKind::Crypto && vault.key().is_none() => return Err(e),
        Err(e) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
    };
    for (index, record) in manifest.streams.iter().enumerate() {
        report.streams += 1;
        for segment in &record.segments {
            let head = vault
                .store()
                .get_opts(&vault.path(&segment.key), GetOptions::new().with_head(true))
                .await;
            match head {
                Ok(head) if head.meta.size != segment.stored_size => report.problems.push(format!(
                    "backup {}, stream `{}`: object {} is {} bytes, the manifest records {}",
                    manifest.id, record.name, segment.key, head.meta.size, segment.stored_size
                )),
                // Missing objects are reported part by part below.
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(Error::from(e).context(format!("checking object {}", segment.key)));
                }
            }
        }
        let ctx = stream_context(vault, manifest, index, data_key.clone(), config);
        let digest = DigestCheck::start(record, ctx.pool.clone());
        let mut sink = content.and_then(|c| c.start(manifest, record));
        let mut sink_failed = false;
        let parts = checked_parts(ctx, locate(vault, record, None), config);
        futures::pin_mut!(parts);
        let mut sound = true;
        while let Some(part) = parts.next().await {
            match part {
                Ok((loc, raw)) => {
                    report.parts += 1;
                    report.raw_bytes += loc.record.raw;
                    report.stored_bytes += loc.record.stored;
                    if let Some(progress) = progress {
                        progress.add(loc.record.raw);
                    }
                    if let (true, Some(digest)) = (sound, &digest) {
                        digest.add(raw.clone()).await?;
                    }
                    if let (true, false, Some(sink)) = (sound, sink_failed, &mut sink) {
                        sink_failed = sink.add(raw).await.is_err();
                    }
                }
                Err(e) if is_finding(&e) => {
                    report.parts += 1;
                    sound = false;
                    // A hint beyond "the backup is damaged" tells the
                    // operator something about this very object.
                    let specific: Vec<&str> = e
                        .hints()
                        .iter()
                        .map(String::as_str)
                        .filter(|h| *h != DAMAGED_HINT)
                        .collect();
                    report.problems.push(if specific.is_empty() {
                        e.to_string()
                    } else {
                        format!("{e} ({})", specific.join("; "))
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(digest) = digest
            && let Err(mismatch) = digest.finish(manifest, record).await
        {
            if sound && mismatch.kind() == ErrorKind::Integrity {
                report.problems.push(mismatch.to_string());
            } else if mismatch.kind() != ErrorKind::Integrity {
                return Err(mismatch);
            }
        }
        // A stream with a damaged part is already reported; its content
        // check would only echo the gap.
        if let (true, Some(sink)) = (sound, sink)
            && let Err(finding) = sink.finish().await
        {
            if finding.kind() != ErrorKind::Integrity {
                return Err(finding);
            }
            report.problems.push(format!(
                "backup {}, stream `{}`: {finding}",
                manifest.id, record.name
            ));
        }
    }
    Ok(report)
}

/// The hint for an object missing from an immutable (versioned) S3 vault.
fn delete_marker_hint(key: &str) -> String {
    format!(
        "on this versioned bucket a delete through the S3 API may only hide the object behind a delete marker, its locked version kept: `aws s3api list-object-versions --prefix <vault prefix>/{key}` shows it, and deleting the marker's version brings it back"
    )
}

/// Checks that every segment object of `manifest` is stored with the size
/// the manifest records, without reading it (one HEAD request per segment).
///
/// # Errors
/// [`ErrorKind::NotFound`] naming the backup, stream and object when a
/// segment is gone; [`ErrorKind::Integrity`] when one has another size;
/// [`ErrorKind::Storage`] when the vault cannot be reached.
pub async fn check_stored(vault: &Vault, manifest: &Manifest) -> Result<()> {
    for stream in &manifest.streams {
        for segment in &stream.segments {
            let label = format!(
                "backup {}, stream `{}`: object {}",
                manifest.id, stream.name, segment.key
            );
            let problem = match vault.head(&segment.key).await? {
                Some(meta) if meta.size == segment.stored_size => continue,
                Some(meta) => Error::integrity(format!(
                    "{label} is {} bytes, the manifest records {}",
                    meta.size, segment.stored_size
                )),
                None => {
                    let error = Error::not_found(format!("{label} is missing from the vault"));
                    if vault.is_versioned() {
                        error.hint(delete_marker_hint(&segment.key))
                    } else {
                        error
                    }
                }
            };
            return Err(problem
                .in_message("backup", &manifest.id)
                .in_message("stream", &stream.name)
                .in_message("object", &segment.key)
                .hint(DAMAGED_HINT));
        }
    }
    Ok(())
}

/// A [`RestoreSource`](crate::plugin::RestoreSource) over committed
/// manifests, for engine plugins: streams are looked up by backup id and
/// name and read with [`read_stream`] and [`read_range`].
pub struct VaultRestoreSource {
    vault: Vault,
    manifests: Vec<Manifest>,
    config: ReaderConfig,
    progress: Option<Arc<dyn Progress>>,
}

impl VaultRestoreSource {
    /// A source over `manifests` (typically the backups a restore plan chose).
    pub fn new(vault: Vault, manifests: Vec<Manifest>, config: ReaderConfig) -> Self {
        VaultRestoreSource {
            vault,
            manifests,
            config,
            progress: None,
        }
    }

    /// Counts the raw bytes of every stream read on `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    fn manifest(&self, backup: &BackupId) -> Result<&Manifest> {
        self.manifests
            .iter()
            .find(|m| &m.id == backup)
            .ok_or_else(|| {
                Error::not_found(format!("backup {backup} is not part of this restore"))
                    .hint("the restore plan lists the backups a restore may read")
            })
    }
}

#[async_trait]
impl crate::plugin::RestoreSource for VaultRestoreSource {
    async fn read_stream(
        &self,
        backup: &BackupId,
        name: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        let manifest = self.manifest(backup)?;
        let stats = read_stream(
            &self.vault,
            manifest,
            name,
            out,
            &self.config,
            self.progress.as_deref(),
        )
        .await?;
        Ok(stats.raw_bytes)
    }

    async fn read_range(
        &self,
        backup: &BackupId,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        let manifest = self.manifest(backup)?;
        let stats = read_range(
            &self.vault,
            manifest,
            name,
            offset..offset.saturating_add(len),
            out,
            &self.config,
            self.progress.as_deref(),
        )
        .await?;
        Ok(stats.raw_bytes)
    }

    async fn check_stored(&self, backup: &BackupId) -> Result<()> {
        check_stored(&self.vault, self.manifest(backup)?).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::crypto::VaultKey;
    use crate::plugin::RestoreSource;
    use crate::vault::writer::MIN_PART_SIZE;
    use crate::vault::writer::tests::{
        backup, data, file_vault, memory_vault, restore, small_config,
    };

    const P: usize = MIN_PART_SIZE;

    /// A backup of one stream of 8 parts, in segments of up to 8 parts.
    async fn eight_parts(vault: &Vault) -> (Vec<u8>, Manifest) {
        let input = data(8 * P - 100, 11);
        let config = crate::vault::writer::WriterConfig {
            segment_size: 8 * P as u64,
            ..small_config()
        };
        let manifest = backup(vault, config, &[("db", &input)]).await;
        (input, manifest)
    }

    /// Where part `index` of the first stream lives: its segment key and byte range.
    fn part_range(manifest: &Manifest, index: usize) -> (String, Range<u64>) {
        let mut n = 0;
        for segment in &manifest.streams[0].segments {
            let mut offset = 0;
            for part in &segment.parts {
                if n == index {
                    return (segment.key.clone(), offset..offset + part.stored);
                }
                n += 1;
                offset += part.stored;
            }
        }
        panic!("no part {index}");
    }

    async fn rewrite(vault: &Vault, key: &str, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = vault.get_bytes(key).await.unwrap().to_vec();
        edit(&mut bytes);
        vault
            .store()
            .put(&vault.path(key), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    async fn flipped_byte_is_caught(vault: &Vault) {
        let (input, manifest) = eight_parts(vault).await;
        let (key, range) = part_range(&manifest, 5);
        rewrite(vault, &key, |b| {
            b[(range.start + range.end) as usize / 2] ^= 0x01
        })
        .await;

        let mut out = Vec::new();
        let err = read_stream(
            vault,
            &manifest,
            "db",
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        let text = err.to_string();
        assert!(text.contains(&key), "{text}");
        assert!(text.contains("part 5 "), "{text}");
        assert!(text.contains("CRC-32C mismatch"), "{text}");
        assert!(err.hint_text().unwrap().contains("another backup"));
        assert!(
            out == input[..5 * P],
            "exactly the five good parts were written ({} bytes)",
            out.len()
        );

        let report = verify_backup(vault, &manifest, &ReaderConfig::default(), None)
            .await
            .unwrap();
        assert!(!report.is_ok());
        assert_eq!(report.parts, 8);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains(&key) && report.problems[0].contains("part 5 "));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flipped_byte_is_caught_in_memory() {
        flipped_byte_is_caught(&memory_vault(None).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flipped_byte_is_caught_on_files() {
        let (_dir, vault) = file_vault().await;
        flipped_byte_is_caught(&vault).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sound_backup_verifies() {
        let vault = memory_vault(None).await;
        let (input, manifest) = eight_parts(&vault).await;
        let report = verify_backup(&vault, &manifest, &ReaderConfig::default(), None)
            .await
            .unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.streams, report.parts), (1, 8));
        assert_eq!(report.raw_bytes, input.len() as u64);
        assert_eq!(report.stored_bytes, manifest.stored_size());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_and_truncated_objects_are_named_in_memory() {
        missing_and_truncated_objects_are_named(memory_vault(None).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_and_truncated_objects_are_named_on_files() {
        let (_dir, vault) = file_vault().await;
        missing_and_truncated_objects_are_named(vault).await;
    }

    async fn missing_and_truncated_objects_are_named(vault: Vault) {
        let input = data(7 * P, 5);
        let manifest = backup(&vault, small_config(), &[("db", &input)]).await;
        let segments = &manifest.streams[0].segments;
        assert!(segments.len() >= 2);
        let last = segments.last().unwrap().key.clone();
        rewrite(&vault, &last, |b| b.truncate(b.len() - 3)).await;
        let err = restore(&vault, &manifest, "db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(err.to_string().contains(&last), "{err}");

        let first = segments[0].key.clone();
        vault.store().delete(&vault.path(&first)).await.unwrap();
        let mut out = Vec::new();
        let err = read_stream(
            &vault,
            &manifest,
            "db",
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&first) && err.to_string().contains("part 0 "),
            "{err}"
        );
        assert!(out.is_empty());

        let report = verify_backup(&vault, &manifest, &ReaderConfig::default(), None)
            .await
            .unwrap();
        let missing = report
            .problems
            .iter()
            .filter(|p| p.contains(&first))
            .count();
        assert_eq!(missing, segments[0].parts.len(), "{:?}", report.problems);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains(&last) && p.contains("bytes")),
            "{:?}",
            report.problems
        );
    }

    /// Found by the damage campaign (`pg/segment-first x replacement`): a
    /// segment replaced by a longer object that starts with the same bytes
    /// passed every part check and restored with exit 0.
    async fn a_longer_object_with_the_same_first_bytes_is_refused(vault: Vault) {
        let input = data(7 * P, 5);
        let manifest = backup(&vault, small_config(), &[("db", &input)]).await;
        let first = manifest.streams[0].segments[0].key.clone();
        rewrite(&vault, &first, |b| b.extend_from_slice(b"more bytes")).await;
        let err = restore(&vault, &manifest, "db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&first) && text.contains("the manifest records"),
            "{text}"
        );
        let report = verify_backup(&vault, &manifest, &ReaderConfig::default(), None)
            .await
            .unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains(&first)),
            "{:?}",
            report.problems
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_longer_object_with_the_same_first_bytes_is_refused_in_memory() {
        a_longer_object_with_the_same_first_bytes_is_refused(memory_vault(None).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_longer_object_with_the_same_first_bytes_is_refused_on_files() {
        let (_dir, vault) = file_vault().await;
        a_longer_object_with_the_same_first_bytes_is_refused(vault).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digest_and_size_mismatches_are_refused() {
        let vault = memory_vault(None).await;
        let input = data(3 * P, 9);
        let manifest = backup(&vault, small_config(), &[("db", &input)]).await;

        let mut forged = manifest.clone();
        forged.streams[0].blake3 = Some("00".repeat(32));
        let err = restore(&vault, &forged, "db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains("BLAKE3"), "{err}");
        let report = verify_backup(&vault, &forged, &ReaderConfig::default(), None)
            .await
            .unwrap();
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].contains("BLAKE3"));

        // A part recorded as longer than it decompresses to.
        let mut forged = manifest.clone();
        forged.streams[0].segments[0].parts[1].raw += 1;
        let err = restore(&vault, &forged, "db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(
            err.to_string().contains("part 1 ") && err.to_string().contains("decompresses to"),
            "{err}"
        );

        let err = restore(&vault, &manifest, "nope").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().ends_with("has no stream `nope`"), "{err}");
        assert_eq!(err.hint_text().unwrap(), "its streams are: db");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_parts_need_the_right_key() {
        let vault = memory_vault(Some(VaultKey::generate())).await;
        let input = data(4 * P, 2);
        let manifest = backup(&vault, small_config(), &[("db", &input)]).await;
        let other = backup(&vault, small_config(), &[("db", &input)]).await;

        // Another backup's data key: refused before anything is written.
        let mut forged = manifest.clone();
        forged.encryption = other.encryption.clone();
        let mut out = Vec::new();
        let err = read_stream(
            &vault,
            &forged,
            "db",
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Crypto);
        assert!(out.is_empty());

        // The other backup's parts under this backup's key: AEAD fails on part 0.
        let mut forged = manifest.clone();
        forged.streams = other.streams.clone();
        let err = read_stream(
            &vault,
            &forged,
            "db",
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(
            err.to_string().contains("part 0 ")
                && err.to_string().contains("authenticated decryption"),
            "{err}"
        );
        assert!(out.is_empty());
        let report = verify_backup(&vault, &forged, &ReaderConfig::default(), None)
            .await
            .unwrap();
        assert_eq!(
            report.problems.len(),
            4,
            "every part fails: {:?}",
            report.problems
        );

        // The vault opened without its key cannot read or verify.
        // (Opening an encrypted vault without a key is refused, so build one.)
        let keyless = Vault {
            inner: Arc::new(crate::vault::VaultInner {
                url: vault.url().to_owned(),
                store: vault.store().clone(),
                root: Path::default(),
                meta: vault.meta().clone(),
                key: None,
                s3: None,
                clock: None,
            }),
        };
        let err = restore(&keyless, &manifest, "db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Crypto);
        assert!(
            verify_backup(&keyless, &manifest, &ReaderConfig::default(), None)
                .await
                .is_err()
        );
        assert!(restore(&vault, &manifest, "db").await.unwrap() == input);
    }

    /// A context and a location for part 3 of `data/seg`, and the stored
    /// (zstd, optionally sealed) bytes of `raw` as a writer would store them.
    fn one_part(raw: &[u8], key: Option<&DataKey>) -> (StreamContext, PartLocation, Vec<u8>) {
        let backup: BackupId = "20200101T000000.000Z-00000000".parse().unwrap();
        let frame = zstd::bulk::compress(raw, 1).unwrap();
        let stored = match key {
            Some(key) => key.seal_part(backup.as_str(), 0, 3, &frame),
            None => frame,
        };
        let ctx = StreamContext {
            store: Arc::new(object_store::memory::InMemory::new()),
            backup,
            stream_index: 0,
            stream_name: "db".to_owned(),
            data_key: key.map(|k| Arc::new(k.clone())),
            workers: 1,
            pool: Arc::new(BufferPool::new(raw.len(), 1)),
            stored_pool: Arc::new(BufferPool::new(stored.len(), 1)),
            versioned: false,
        };
        let loc = PartLocation {
            key: Arc::from("data/seg"),
            path: Path::from("data/seg"),
            range: 0..stored.len() as u64,
            record: PartRecord {
                raw: raw.len() as u64,
                stored: stored.len() as u64,
                crc32c: crc32c::crc32c(&stored),
            },
            index: 3,
            raw_start: 3 * raw.len() as u64,
        };
        (ctx, loc, stored)
    }

    const LABEL: &str =
        "backup 20200101T000000.000Z-00000000, stream `db`: part 3 in object data/seg: ";

    /// Kind, message, fields, hint and retry of one part failure.
    fn assert_part_error(err: &Error, kind: ErrorKind, problem: &str) {
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.to_string(), format!("{LABEL}{problem}"));
        assert!(!err.is_retryable(), "{err}");
        assert_eq!(err.hints(), [DAMAGED_HINT]);
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            [
                ("backup", "20200101T000000.000Z-00000000"),
                ("stream", "db"),
                ("part", "3"),
                ("object", "data/seg"),
            ]
        );
    }

    #[test]
    fn every_part_failure_names_the_part_and_object() {
        let raw = data(1000, 3);
        let (ctx, loc, stored) = one_part(&raw, None);
        assert!(ctx.open(&loc, &stored).unwrap() == raw);

        let err = ctx.open(&loc, &stored[..stored.len() - 1]).unwrap_err();
        let problem = format!(
            "the object ends early ({} of {} bytes)",
            stored.len() - 1,
            stored.len()
        );
        assert_part_error(&err, ErrorKind::Integrity, &problem);

        let mut flipped = stored.clone();
        flipped[0] ^= 1;
        let err = ctx.open(&loc, &flipped).unwrap_err();
        let problem = format!(
            "CRC-32C mismatch (stored {:08x}, manifest {:08x})",
            crc32c::crc32c(&flipped),
            loc.record.crc32c
        );
        assert_part_error(&err, ErrorKind::Integrity, &problem);

        let mut garbage = loc.clone();
        let junk = vec![7u8; stored.len()];
        garbage.record.crc32c = crc32c::crc32c(&junk);
        let err = ctx.open(&garbage, &junk).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{LABEL}the zstd frame is invalid: ")),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(!err.is_retryable());
        assert_eq!(err.field("part"), Some("3"));

        let mut longer = loc.clone();
        longer.record.raw += 1;
        let err = ctx.open(&longer, &stored).unwrap_err();
        let problem = "the part decompresses to 1000 bytes, the manifest records 1001";
        assert_part_error(&err, ErrorKind::Integrity, problem);

        let mut huge = loc.clone();
        huge.record.raw = MAX_RAW_PART + 1;
        let err = ctx.open(&huge, &stored).unwrap_err();
        let problem = format!(
            "the manifest records an impossible raw size of {} bytes",
            MAX_RAW_PART + 1
        );
        assert_part_error(&err, ErrorKind::Integrity, &problem);

        let err = ctx.part_error(&loc, PartFailure::Missing);
        assert_part_error(&err, ErrorKind::NotFound, "the object is missing");
        let err = ctx.part_error(
            &loc,
            PartFailure::ObjectSize {
                actual: 5,
                recorded: 9,
            },
        );
        assert_part_error(
            &err,
            ErrorKind::Integrity,
            "the object is 5 bytes, the manifest records 9",
        );
    }

    #[test]
    fn a_part_that_does_not_open_is_damage() {
        let vault_key = VaultKey::generate();
        let (key, _) = vault_key
            .new_data_key("20200101T000000.000Z-00000000")
            .unwrap();
        let raw = data(1000, 4);
        let (ctx, loc, stored) = one_part(&raw, Some(&key));
        assert!(ctx.open(&loc, &stored).unwrap() == raw);
        // Sealed for another part index: the tag does not verify.
        let mut other = loc.clone();
        other.index = 4;
        let err = ctx.open(&other, &stored).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert_eq!(
            err.to_string(),
            "backup 20200101T000000.000Z-00000000, stream `db`: part 4 in object data/seg: authenticated decryption failed"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.hints(), [DAMAGED_HINT]);
        assert_eq!(err.field("part"), Some("4"));
    }

    #[test]
    fn a_store_failure_keeps_its_retry_and_names_the_part() {
        let (ctx, loc, _) = one_part(&data(100, 5), None);
        let failed = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable: busy".into(),
        };
        let err = ctx.store_error(&loc, failed);
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            format!(
                "{LABEL}object storage request failed: Generic S3 error: Server returned non-2xx status code: 503 Service Unavailable: busy"
            )
        );
        assert!(err.hint_text().unwrap().contains("can be retried"));
        assert_eq!(err.field("object"), Some("data/seg"));
        assert_eq!(err.field("part"), Some("3"));
    }

    /// A backup of one stream of 20 parts and a few bytes (64 KiB parts,
    /// segments of at most 192 KiB stored), and the raw offsets where its
    /// parts start, each with whether it also starts a segment.
    async fn many_segments(vault: &Vault) -> (Vec<u8>, Manifest, Vec<(u64, bool)>) {
        let input = data(20 * P + 321, 17);
        let manifest = backup(vault, small_config(), &[("stripe-000", &input)]).await;
        let mut starts = Vec::new();
        let mut offset = 0;
        for segment in &manifest.streams[0].segments {
            for (i, part) in segment.parts.iter().enumerate() {
                starts.push((offset, i == 0));
                offset += part.raw;
            }
        }
        assert_eq!(offset, input.len() as u64);
        assert_eq!(starts.len(), 21);
        (input, manifest, starts)
    }

    fn range_source(vault: &Vault, manifest: &Manifest) -> VaultRestoreSource {
        VaultRestoreSource::new(
            vault.clone(),
            vec![manifest.clone()],
            ReaderConfig {
                readahead: 3,
                workers: 2,
            },
        )
    }

    /// `len` bytes from `offset` through the [`RestoreSource`], checking
    /// that the count returned is what was written.
    async fn range_of(
        source: &VaultRestoreSource,
        manifest: &Manifest,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let n =
            RestoreSource::read_range(source, &manifest.id, "stripe-000", offset, len, &mut out)
                .await?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    async fn ranges_read_the_bytes_asked_for(vault: Vault) {
        let (input, manifest, starts) = many_segments(&vault).await;
        let size = input.len() as u64;
        let source = range_source(&vault, &manifest);
        // A boundary between parts of one segment, and one between segments.
        let (in_segment, _) = *starts.iter().skip(1).find(|(_, first)| !first).unwrap();
        let (between, _) = *starts.iter().skip(1).find(|(_, first)| *first).unwrap();
        let p = P as u64;
        let cases = [
            ("at 0", 0, 10),
            ("inside a part", p + 5, 100),
            ("a whole part", p, p),
            ("across parts of a segment", in_segment - 7, 20),
            ("across segments", between - 3, 10),
            ("across many parts", 100, 7 * p),
            ("the last byte", size - 1, 1),
            ("everything", 0, size),
        ];
        for (what, offset, len) in cases {
            let out = range_of(&source, &manifest, offset, len).await.unwrap();
            let want = &input[offset as usize..(offset + len) as usize];
            assert!(out == want, "{what}: {} bytes from {offset}", out.len());
        }
        // A length past the end is clamped; so is one that overflows.
        let out = range_of(&source, &manifest, size - 10, 1000).await.unwrap();
        assert!(out == input[input.len() - 10..]);
        let out = range_of(&source, &manifest, 3, u64::MAX).await.unwrap();
        assert!(out == input[3..]);
        // Nothing from the end, nothing of length 0.
        assert!(
            range_of(&source, &manifest, size, 5)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(range_of(&source, &manifest, 7, 0).await.unwrap().is_empty());

        // Past the end: a config error naming the stream and its size.
        let err = range_of(&source, &manifest, size + 1, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "backup {}, stream `stripe-000` holds {size} bytes; a read from offset {} is past its end",
                manifest.id,
                size + 1
            )
        );
        assert_eq!(err.field("stream"), Some("stripe-000"));

        // Only the parts holding the range are fetched.
        let fetched = |offset: u64, len: u64| {
            let (vault, manifest) = (vault.clone(), manifest.clone());
            async move {
                let mut out = Vec::new();
                read_range(
                    &vault,
                    &manifest,
                    "stripe-000",
                    offset..offset + len,
                    &mut out,
                    &ReaderConfig::default(),
                    None,
                )
                .await
                .unwrap()
            }
        };
        let inside = fetched(p + 5, 100).await;
        assert_eq!((inside.parts, inside.raw_bytes), (1, 100));
        let (_, part_1) = part_range(&manifest, 1);
        assert_eq!(inside.stored_bytes, part_1.end - part_1.start);
        assert_eq!(fetched(between - 3, 10).await.parts, 2);
        assert_eq!(fetched(size - 1, 1).await.parts, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_read_the_bytes_asked_for_in_memory() {
        ranges_read_the_bytes_asked_for(memory_vault(None).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_read_the_bytes_asked_for_encrypted() {
        ranges_read_the_bytes_asked_for(memory_vault(Some(VaultKey::generate())).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_read_the_bytes_asked_for_on_files() {
        let (_dir, vault) = file_vault().await;
        ranges_read_the_bytes_asked_for(vault).await;
    }

    /// A damaged part fails every range that touches it, naming the object
    /// and the part, with none of its bytes written; ranges elsewhere read.
    async fn a_damaged_part_fails_only_the_ranges_it_holds(vault: Vault) {
        let (input, manifest, starts) = many_segments(&vault).await;
        let source = range_source(&vault, &manifest);
        let (key, stored) = part_range(&manifest, 9);
        rewrite(&vault, &key, |b| {
            b[(stored.start + stored.end) as usize / 2] ^= 0x40
        })
        .await;
        let (from, to) = (starts[9].0, starts[10].0);

        let err = range_of(&source, &manifest, from + 10, 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&key) && text.contains("part 9 ") && text.contains("CRC-32C"),
            "{text}"
        );
        assert_eq!(err.field("object"), Some(key.as_str()));

        // From the part before into the damaged one: the first piece is
        // written, nothing of the damaged part.
        let mut out = Vec::new();
        let begin = starts[8].0 + 5;
        let err = RestoreSource::read_range(
            &source,
            &manifest.id,
            "stripe-000",
            begin,
            to - begin,
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("part 9 "), "{err}");
        assert!(
            out == input[begin as usize..from as usize],
            "{} bytes",
            out.len()
        );

        // Ranges that end before it or start after it read.
        let out = range_of(&source, &manifest, 0, from).await.unwrap();
        assert!(out == input[..from as usize]);
        let out = range_of(&source, &manifest, to, u64::MAX).await.unwrap();
        assert!(out == input[to as usize..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_part_fails_only_the_ranges_it_holds_encrypted() {
        let vault = memory_vault(Some(VaultKey::generate())).await;
        a_damaged_part_fails_only_the_ranges_it_holds(vault).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_part_fails_only_the_ranges_it_holds_on_files() {
        let (_dir, vault) = file_vault().await;
        a_damaged_part_fails_only_the_ranges_it_holds(vault).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_of_a_manifest_whose_parts_miss_bytes_is_refused() {
        let vault = memory_vault(None).await;
        let (_, manifest, _) = many_segments(&vault).await;
        let mut forged = manifest.clone();
        forged.streams[0].raw_size += 1;
        let mut out = Vec::new();
        let err = read_range(
            &vault,
            &forged,
            "stripe-000",
            0..1,
            &mut out,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains("its parts hold"), "{err}");
        assert!(out.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_source_serves_planned_backups() {
        let vault = memory_vault(None).await;
        let input = data(2 * P + 5, 4);
        let manifest = backup(&vault, small_config(), &[("base/1", &input)]).await;
        let id = manifest.id.clone();
        let source = VaultRestoreSource::new(
            vault,
            vec![manifest],
            ReaderConfig {
                readahead: 1,
                workers: 1,
            },
        );
        let mut out: Vec<u8> = Vec::new();
        let n = RestoreSource::read_stream(&source, &id, "base/1", &mut out)
            .await
            .unwrap();
        assert_eq!(n, input.len() as u64);
        assert!(out == input);
        let other: BackupId = "20200101T000000.000Z-00000000".parse().unwrap();
        let err = RestoreSource::read_stream(&source, &other, "base/1", &mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}

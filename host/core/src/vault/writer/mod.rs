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

mod commit;
mod compress;
mod config;
mod parts;
#[cfg(test)]
pub(crate) mod tests;
mod upload;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use super::slots::FairSlots;
use super::{Progress, Vault, layout};
use crate::catalog::manifest::{BackupId, StreamRecord};
use crate::crypto::DataKey;
use crate::error::{Error, Result};
pub use crate::plugin::{BackupOutcome, PartFeed, PartStream, StreamDigest};
pub use config::{
    BackupTarget, DEFAULT_PART_SIZE, DEFAULT_SEGMENT_SIZE, MAX_PART_SIZE, MAX_SEGMENT_SIZE,
    MIN_PART_SIZE, UPLOAD_CHUNK_SIZE, WriterConfig,
};
use parts::PartSource;
pub(crate) use parts::{BufferPool, spawn_digest};
use upload::StreamUpload;

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
}

impl BackupWriter {
    /// Starts a backup of `target` in `vault`: a new [`BackupId`] from the
    /// current time and, when the vault is encrypted, a new data key.
    /// Nothing is written until a stream is.
    ///
    /// Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) when `config` is out of range.
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
    /// Names must be unique within the backup ([`ErrorKind::Conflict`](crate::ErrorKind::Conflict)
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
        match compress::run_stream(
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
}

/// The [`BackupSink`](crate::plugin::BackupSink) an engine plugin writes
/// into: a [`BackupWriter`], and optionally one [`Progress`] that counts the
/// raw bytes of every stream (what the CLI shows as a progress bar).
pub struct ProgressSink<'a> {
    writer: &'a BackupWriter,
    progress: Option<&'a dyn Progress>,
    base: Option<crate::vault::reader::VaultRestoreSource>,
}

impl<'a> ProgressSink<'a> {
    /// Streams go to `writer`; their raw bytes are counted on `progress`.
    pub fn new(writer: &'a BackupWriter, progress: &'a dyn Progress) -> Self {
        ProgressSink {
            writer,
            progress: Some(progress),
            base: None,
        }
    }

    /// Streams go to `writer`, uncounted.
    pub fn quiet(writer: &'a BackupWriter) -> Self {
        ProgressSink {
            writer,
            progress: None,
            base: None,
        }
    }

    /// Offers the streams of `base` (the committed backup this one builds
    /// on) to the plugin, read through `source`.
    pub fn with_base(mut self, source: crate::vault::reader::VaultRestoreSource) -> Self {
        self.base = Some(source);
        self
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

    fn base_source(&self) -> Option<&dyn crate::plugin::RestoreSource> {
        self.base
            .as_ref()
            .map(|b| b as &dyn crate::plugin::RestoreSource)
    }
}

//! The contract between the host and an engine plugin.
//!
//! The host owns the data plane (vault, parts, compression, encryption,
//! manifests, catalog); a plugin owns only the engine's semantics: how to ask
//! the engine for a native backup, where its positions and forks are, and how
//! to lay the bytes back down. A plugin never talks to object storage: it
//! writes byte streams into a [`BackupSink`], reads them back from a
//! [`RestoreSource`], and keeps small engine-pushed objects (PostgreSQL WAL
//! segments, Backint name markers) in an [`ArchiveStore`]. The host side of
//! each trait lives in [`crate::vault`]; the one backup and restore lifecycle
//! that drives every plugin is [`crate::lifecycle`].
//!
//! # Two shapes of backup
//!
//! Reality has two shapes, and the contract names both:
//!
//! - **Pulled**: Strata asks the engine for a backup and the plugin writes
//!   its bytes (PostgreSQL's `pg_backup_start` .. `pg_backup_stop`, SQL
//!   Server's `BACKUP ... TO URL`). [`EnginePlugin::backup`] does the whole
//!   job and returns a [`BackupOutcome`]; the host commits it.
//! - **Pushed**: the engine calls Strata with bytes in hand: a pipe HANA
//!   opened for `hdbbackint`, standard input of `strata backup stream`, a
//!   WAL file PostgreSQL's `archive_command` names. Streams arrive through
//!   [`BackupRequest::input`] and go through the same lifecycle; single
//!   files that are the engine's own log (WAL) go to the [`ArchiveStore`]
//!   with no manifest of their own, and the plugin turns them into log
//!   records for the planner in [`EnginePlugin::chain`].
//!
//! Some engines start their backups themselves and push the data through
//! another entry point: `strata backup hana` asks HANA over SQL to back up
//! through Backint, and `hdbbackint` receives the bytes. Such a plugin says
//! [`Capabilities::engine_delivers`], and the lifecycle commits nothing of
//! its own for that call.
//!
//! The required methods are few; each says exactly what it promises.
//!
//! # How the contract changed once engines used it
//!
//! The first sketch of this trait had no implementation. Wiring PostgreSQL,
//! SAP HANA and plain streams through it changed it where reality disagreed:
//!
//! - `backup` takes the instance's [`ArchiveStore`]: a PostgreSQL backup is
//!   complete only once the WAL from its start to its stop is archived, and
//!   a Backint object records a name marker, both outside the backup's own
//!   streams. Pushed bytes come in [`BackupRequest::input`], and
//!   [`Capabilities::engine_delivers`] names engines whose backups arrive
//!   through another entry point.
//! - `chain_rules()` became [`EnginePlugin::chain`]: rules alone were not
//!   enough, because an engine that archives its own log (PostgreSQL WAL)
//!   has log records that no manifest describes; the plugin reads them from
//!   its archive and hands the planner records and rules together.
//! - `chain_position()` is gone until the service's RPO monitor needs it: no
//!   caller existed, and its shape is better decided by that caller.
//! - [`EnginePlugin::instance`], [`Capabilities::part_size`] (an engine's
//!   memory policy used to sit in the CLI), [`EnginePlugin::content_check`]
//!   (verify asks the plugin, not a hard-wired PostgreSQL check) and
//!   [`Capabilities::engine_plans_restore`] (HANA chooses its own backups
//!   through Backint `inquire`) were added.
//! - The writer's part channel, [`Progress`] and the content check moved
//!   here from the vault module, so that the contract depends on nothing of
//!   the writer's internals and plugins build without the vault at all.
//! - SQL Server added two: [`RestoreSource::read_range`] (its `RESTORE ...
//!   FROM URL` reads a blob by byte ranges, not in one pass), and
//!   [`EnginePlugin::settle_kind`] with [`Capabilities::settles_kind`] (a
//!   log or differential backup whose chain is broken becomes a full before
//!   the host chooses a base, and the manifest says why).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::catalog::manifest::{BackupId, BackupKind, Manifest, Position, StreamRecord};
use crate::catalog::planner::{
    BackupRecord, ChainRules, DefaultChainRules, RestorePlan, RestoreTarget,
};
use crate::error::Result;

/// What an engine can do, and how the host should treat its backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backup kinds [`EnginePlugin::backup`] accepts.
    pub kinds: Vec<BackupKind>,
    /// Whether restores can stop at an arbitrary time.
    pub point_in_time: bool,
    /// Whether restores can target another database name, data directory or host.
    pub alternate_target: bool,
    /// The engine writes its own backups through another entry point (HANA
    /// through `hdbbackint`): [`EnginePlugin::backup`] without an input only
    /// asks the engine to start one and waits, and the host commits nothing.
    pub engine_delivers: bool,
    /// The engine chooses what a restore reads by itself (HANA asks Backint
    /// for the backups it needs): the host does not plan, and the plugin's
    /// [`RestoreRequest::plan`] is `None`.
    pub engine_plans_restore: bool,
    /// The part size (raw bytes) this engine's backups use unless the
    /// operator configured one: an engine that writes many streams at once
    /// keeps its memory bounded with smaller parts.
    pub part_size: Option<usize>,
    /// The engine may change the kind of a requested backup before it runs
    /// (SQL Server turns a log backup of a broken chain into a full): the
    /// host asks [`EnginePlugin::settle_kind`] for every backup, and never
    /// when this is `false`.
    #[serde(default)]
    pub settles_kind: bool,
}

/// The kind a backup is taken as, from [`EnginePlugin::settle_kind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindDecision {
    /// The kind to take; one of [`Capabilities::kinds`].
    pub kind: BackupKind,
    /// Why it differs from the requested kind, in words for the operator
    /// (recorded in the manifest's `strata.kind_reason` label).
    pub reason: Option<String>,
}

impl KindDecision {
    /// The requested kind, unchanged.
    pub fn keep(kind: BackupKind) -> Self {
        KindDecision { kind, reason: None }
    }
}

/// A database (or cluster) a plugin can protect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRef {
    /// The configured instance name.
    pub instance: String,
    /// The database within the instance, when the engine has several.
    pub database: Option<String>,
}

impl DatabaseRef {
    /// The whole instance (engines with one database per instance).
    pub fn instance(instance: impl Into<String>) -> Self {
        DatabaseRef {
            instance: instance.into(),
            database: None,
        }
    }
}

/// Where a database's log chain stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    /// The current fork (PostgreSQL timeline, SQL Server recovery fork...).
    pub fork: String,
    /// The current log position.
    pub position: Position,
    /// When it was read.
    pub at: DateTime<Utc>,
}

/// Bytes the engine pushed at Strata for one backup: a pipe, standard input.
pub struct PushedInput {
    /// The bytes, read to their end.
    pub reader: Box<dyn AsyncRead + Send + Unpin + 'static>,
    /// How many bytes it holds, when known (a regular file), for progress.
    pub size: Option<u64>,
}

impl std::fmt::Debug for PushedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushedInput")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A request to back up one database.
#[derive(Debug)]
pub struct BackupRequest {
    /// What to back up.
    pub database: DatabaseRef,
    /// The kind of backup.
    pub kind: BackupKind,
    /// The backup's identifier, assigned by the host before the plugin runs
    /// (an engine may record it in its own history, e.g. a backup label).
    pub id: BackupId,
    /// The backup a diff or incr applies on, chosen by the host from the
    /// catalog: the newest full for a diff, the newest data backup for an incr.
    pub base: Option<Manifest>,
    /// Engine-specific options, as the engine's documentation describes them
    /// (PostgreSQL: `{"spread_checkpoint": true}`; Backint: the object's name).
    pub options: serde_json::Value,
    /// Pushed bytes, for engines that call Strata with their backup in hand.
    pub input: Option<PushedInput>,
    /// The operator's labels, recorded in the manifest over the plugin's own.
    pub labels: BTreeMap<String, String>,
}

impl BackupRequest {
    /// A request for a backup of `kind` of `database` with no options.
    pub fn new(database: DatabaseRef, kind: BackupKind) -> Self {
        BackupRequest {
            database,
            kind,
            id: BackupId::generate(Utc::now()),
            base: None,
            options: serde_json::Value::Null,
            input: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Reads engine-specific options ([`BackupRequest::options`],
/// [`RestoreRequest::destination`]) into the engine's own type; `null`
/// reads as `{}`. A mismatch is a configuration error naming `what`.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T> {
    let value = if value.is_null() {
        serde_json::json!({})
    } else {
        value.clone()
    };
    serde_json::from_value(value)
        .map_err(|e| crate::Error::config(format!("the {what} are not valid: {e}")))
}

/// What a plugin reports once its streams are written; the host records it
/// in the manifest and commits. The one outcome type of every backup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupOutcome {
    /// The fork the backup belongs to.
    pub fork: String,
    /// Chain position at the start.
    pub start: Option<Position>,
    /// Chain position at the end (where a restore of this backup is consistent).
    pub end: Option<Position>,
    /// When the data is consistent (data backups) or the newest commit in the log.
    pub consistent_at: Option<DateTime<Utc>>,
    /// The backup a diff or incr applies on.
    pub base: Option<BackupId>,
    /// Engine-specific details recorded in the manifest.
    pub engine_meta: serde_json::Value,
    /// Labels recorded in the manifest.
    pub labels: BTreeMap<String, String>,
}

/// A request to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The source database.
    pub source: DatabaseRef,
    /// What to restore to.
    pub target: RestoreTarget,
    /// The planner's choice, or `None` for engines that plan their own
    /// restores ([`Capabilities::engine_plans_restore`]).
    pub plan: Option<RestorePlan>,
    /// The manifests of the planned backups, in apply order (base, diffs,
    /// logs); log records that have no manifest (archived WAL) are only in
    /// the plan. For an engine that plans its own restores: every committed
    /// backup of the source database, oldest first, so that the plugin can
    /// refuse a target nothing in the vault reaches before asking the engine.
    pub backups: Vec<Manifest>,
    /// Engine-specific destination, as the engine documents it (PostgreSQL:
    /// data directory, port, tablespace map; a stream: an output file).
    pub destination: serde_json::Value,
    /// Local paths the restore must never write into, replace or delete
    /// (the directory of a `file://` vault, the catalog index, the
    /// configuration file): a destination that is one of them or contains
    /// one is refused before anything is written ([`is_protected`]).
    pub protected: Vec<std::path::PathBuf>,
}

/// Fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when
/// writing, replacing or clearing `destination` would harm one of
/// `protected` ([`is_protected`]); what every plugin checks before a restore
/// writes a byte.
pub fn refuse_protected(
    destination: &std::path::Path,
    protected: &[std::path::PathBuf],
) -> Result<()> {
    match is_protected(destination, protected) {
        None => Ok(()),
        Some(kept) => Err(crate::Error::conflict(format!(
            "restoring into {} would overwrite or delete {}",
            destination.display(),
            kept.display()
        ))
        .hint("choose a destination that holds neither the vault, the catalog index nor the configuration")),
    }
}

/// The first of `protected` that `destination` is, contains or lies inside
/// (compared after resolving both, as far as they exist): a restore that
/// writes, replaces or clears `destination` would harm it.
pub fn is_protected<'a>(
    destination: &std::path::Path,
    protected: &'a [std::path::PathBuf],
) -> Option<&'a std::path::Path> {
    let resolve = |path: &std::path::Path| {
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = existing.canonicalize().unwrap_or(existing);
        resolved.extend(rest.iter().rev());
        resolved
    };
    let destination = resolve(destination);
    protected.iter().map(|p| p.as_path()).find(|p| {
        let p = resolve(p);
        p.starts_with(&destination) || destination.starts_with(&p)
    })
}

/// What a restore reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The position the restored database reached, if known.
    pub position: Option<Position>,
    /// The time the restored database reached, if known.
    pub time: Option<DateTime<Utc>>,
    /// A human summary (where it was restored, how to connect), one or more lines.
    pub summary: String,
    /// The engine's report, for `--json` output.
    pub details: serde_json::Value,
}

/// A database's backups as the planner sees them, with the engine's rules.
pub struct Chain {
    /// Every committed backup and every log the engine archived itself, as records.
    pub records: Vec<BackupRecord>,
    /// The engine's chain rules.
    pub rules: Arc<dyn ChainRules>,
}

impl Chain {
    /// The records of committed manifests under the default rules: what an
    /// engine whose every backup has a manifest needs.
    pub fn of_manifests(manifests: &[Manifest]) -> Chain {
        Chain {
            records: manifests.iter().map(BackupRecord::from).collect(),
            rules: Arc::new(DefaultChainRules),
        }
    }
}

/// Receives progress of long work, in raw (uncompressed) bytes.
///
/// The writer calls [`Progress::add`] as each part is handed to the upload,
/// the reader as each verified part is written out. Calls come from the task
/// doing the work, so an implementation must be cheap (an atomic add, a
/// progress bar increment).
pub trait Progress: Send + Sync {
    /// Adds `raw_bytes` more bytes of finished work.
    fn add(&self, raw_bytes: u64);

    /// Sets how many raw bytes the whole work holds, once known (a backup
    /// learns it only after listing its files). The default ignores it.
    fn set_total(&self, _total: u64) {}
}

/// Whether the writer hashes a stream's raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamDigest {
    /// BLAKE3 of the whole raw stream, recorded in the manifest and checked
    /// by every read and by `verify`. What every stream gets unless its
    /// writer says otherwise.
    Blake3,
    /// No stream digest: the content carries digests of its own that every
    /// read checks (a PostgreSQL file bundle has a checksum per file), so a
    /// second pass over every byte would only cost CPU. Each part's CRC-32C
    /// (and AEAD tag) still guards the stored bytes.
    Skip,
}

/// Part-sized buffers a [`PartFeed`] hands out and takes back (the
/// writer's pool, so a long stream allocates its working memory once).
pub trait PartBuffers: Send + Sync {
    /// A buffer of exactly the part size; its contents are unspecified.
    fn take_full(&self) -> Vec<u8>;
    /// Takes a buffer back (or drops it).
    fn give(&self, buffer: Vec<u8>);
}

/// The producing end of a stream fed part by part (see
/// [`BackupSink::part_channel`]): a blocking producer fills buffers taken
/// from the writer's pool in place (reading a file straight into them) and
/// hands them over whole, so the raw bytes are never copied on their way to
/// the compressor.
pub struct PartFeed {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    pool: Arc<dyn PartBuffers>,
    part_size: usize,
}

/// The consuming end of a part channel, given to [`BackupSink::write_parts`].
pub struct PartStream {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    part_size: usize,
}

/// A part channel of parts of at most `part_size` bytes, whose buffers come
/// from `pool`. For [`BackupSink`] implementations.
pub fn part_channel(part_size: usize, pool: Arc<dyn PartBuffers>) -> (PartFeed, PartStream) {
    let (tx, rx) = mpsc::channel(1);
    (
        PartFeed {
            tx,
            pool,
            part_size,
        },
        PartStream { rx, part_size },
    )
}

impl PartStream {
    /// The next part, `None` once the feed is dropped.
    pub async fn recv(&mut self) -> Option<std::io::Result<Bytes>> {
        self.rx.recv().await
    }

    /// The largest part the feed may send.
    pub fn part_size(&self) -> usize {
        self.part_size
    }
}

impl PartFeed {
    /// The largest part the writer takes (the writer's part size).
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// A buffer of exactly [`part_size`](Self::part_size) bytes to fill.
    /// Its initial contents are unspecified; [`send`](Self::send) says how
    /// many of its bytes are the part.
    pub fn buffer(&self) -> Vec<u8> {
        self.pool.take_full()
    }

    /// Hands over the first `len` bytes of `buffer` as the stream's next
    /// part (nothing when `len` is 0). Blocks while the writer has no room;
    /// fails when the writer stopped reading.
    pub fn send(&self, mut buffer: Vec<u8>, len: usize) -> std::io::Result<()> {
        if len == 0 {
            self.pool.give(buffer);
            return Ok(());
        }
        if len > self.part_size || len > buffer.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a part of {len} bytes is larger than the part size ({})",
                    self.part_size
                ),
            ));
        }
        buffer.truncate(len);
        self.send_bytes(Bytes::from(buffer))
    }

    /// Hands over `part` as the stream's next part: for a producer with
    /// buffers of its own (aligned for direct I/O, say), which it gets back
    /// when the writer drops the part. Blocks and fails like
    /// [`send`](Self::send).
    pub fn send_bytes(&self, part: Bytes) -> std::io::Result<()> {
        if part.is_empty() {
            return Ok(());
        }
        if part.len() > self.part_size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a part of {} bytes is larger than the part size ({})",
                    part.len(),
                    self.part_size
                ),
            ));
        }
        self.tx.blocking_send(Ok(part)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the vault writer stopped reading this stream",
            )
        })
    }

    /// Fails the stream with `err` (the writer reports it and keeps nothing).
    pub fn fail(self, err: std::io::Error) {
        let _ = self.tx.blocking_send(Err(err));
    }
}

/// Receives a backup's byte streams. Implemented by the host's vault writer.
#[async_trait]
pub trait BackupSink: Send + Sync {
    /// Stores one named stream, reading `reader` to its end. Names are unique
    /// within a backup; several streams may be written concurrently. Returns
    /// the stream's record once every byte is durable in the vault.
    async fn write_stream(
        &self,
        name: &str,
        reader: Box<dyn AsyncRead + Send + Unpin + 'static>,
    ) -> Result<StreamRecord>;

    /// A channel to feed a stream part by part, for producers that can fill
    /// the writer's buffers in place (no copy of the raw bytes); give the
    /// [`PartStream`] to [`write_parts`](Self::write_parts).
    fn part_channel(&self) -> (PartFeed, PartStream);

    /// Stores one named stream from the parts sent through the feed of
    /// `parts`, until the feed is dropped; `digest` says whether the stream
    /// gets a BLAKE3 digest of its own.
    async fn write_parts(
        &self,
        name: &str,
        parts: PartStream,
        digest: StreamDigest,
    ) -> Result<StreamRecord>;

    /// Says how many raw bytes the backup's streams will hold in all, as far
    /// as the plugin knows, for progress display. The default ignores it.
    fn expect_bytes(&self, _total: u64) {}

    /// The committed backup a differential or incremental builds on
    /// ([`BackupRequest::base`]), to read its streams (a PostgreSQL
    /// differential reads its base's file index), or `None` when the host
    /// offers none. The default: none.
    fn base_source(&self) -> Option<&dyn RestoreSource> {
        None
    }
}

/// Gives back the streams of committed backups. Implemented by the host.
#[async_trait]
pub trait RestoreSource: Send + Sync {
    /// Writes stream `name` of `backup` into `out`, in order, every part
    /// verified before its bytes are written. Returns the bytes written.
    async fn read_stream(
        &self,
        backup: &BackupId,
        name: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64>;

    /// Writes the raw bytes `[offset, offset + len)` of stream `name` of
    /// `backup` into `out`, clamped to the stream's end, and returns the
    /// bytes written (`0` for a range starting at the end or of length 0).
    /// For an engine that reads its backups by byte ranges (SQL Server's
    /// `RESTORE ... FROM URL` issues ranged Get Blob requests).
    ///
    /// Only the parts holding the range are read, each verified (CRC-32C,
    /// AEAD, decompression, raw length) before any of its bytes are
    /// written. The stream's digest is not checked: it covers the whole
    /// stream, and this reads a piece; a restore that must know the stream
    /// is whole reads it with [`read_stream`](Self::read_stream).
    ///
    /// Required rather than defaulted, so that no source silently lacks it.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the stream and
    /// its size when `offset` is past its end; otherwise as
    /// [`read_stream`](Self::read_stream), for the parts the range touches.
    async fn read_range(
        &self,
        backup: &BackupId,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64>;

    /// Checks that every object of `backup` is stored with its recorded
    /// size, without reading it: for an engine whose own recovery reads the
    /// backups later (SAP HANA through Backint), so that a missing object
    /// stops the restore before the operator starts the recovery.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) naming the object
    /// when one is gone, [`ErrorKind::Integrity`](crate::ErrorKind::Integrity)
    /// when one has another size.
    async fn check_stored(&self, backup: &BackupId) -> Result<()>;
}

/// Checks the raw content of streams whose content carries digests of its
/// own (recorded without a stream digest, see [`StreamDigest::Skip`]): an
/// engine plugin provides one so that `verify` checks what a restore would.
pub trait ContentCheck: Send + Sync {
    /// A sink for the raw bytes of `stream`, or `None` when this check has
    /// nothing to say about it.
    fn start(&self, manifest: &Manifest, stream: &StreamRecord) -> Option<Box<dyn ContentSink>>;
}

/// Takes one stream's raw bytes, in order, and judges them at the end.
#[async_trait]
pub trait ContentSink: Send {
    /// The next raw part. An error means the check already failed; the
    /// finding is reported by [`finish`](Self::finish).
    async fn add(&mut self, raw: Bytes) -> Result<()>;
    /// The verdict: `Err` of kind [`ErrorKind::Integrity`](crate::ErrorKind::Integrity)
    /// is a finding about the backup; any other error means the check could not run.
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// The longest key component [`escape_key_component`] makes, in bytes: well
/// under the 255-byte file name limit of local file systems, so a `file://`
/// vault stores any name the object stores do.
pub const MAX_KEY_COMPONENT: usize = 200;

/// How many bytes of the escaped name a shortened component keeps before its digest.
const SHORTENED_PREFIX: usize = 150;

/// Makes any text a key component an [`ArchiveStore`] (and the vault's
/// layout) accepts: anything but `[A-Za-z0-9.-]` becomes `_` followed by its
/// two hex digits, so distinct names stay distinct; an empty component or
/// one starting with `.` gets a leading `_`.
///
/// The result is at most [`MAX_KEY_COMPONENT`] bytes whatever the name: an
/// escaped name longer than that keeps its first escaped characters (up to
/// 150 bytes, never half an escape) followed by `_h` and the 32 hex digits
/// of the BLAKE3 digest of the whole name. Escaping never writes `_h` (after
/// `_` come two hex digits, or `.`, or nothing), so a shortened component is
/// never the component of another name; two names share one only if their
/// 128-bit digests collide. Keys are never read back into names: whoever
/// needs the full name keeps it in the manifest or object.
pub fn escape_key_component(name: &str) -> String {
    let mut out = escaped_prefix(name, usize::MAX);
    if out.len() > MAX_KEY_COMPONENT {
        out = escaped_prefix(name, SHORTENED_PREFIX);
        out.push_str("_h");
        out.push_str(&blake3::hash(name.as_bytes()).to_hex()[..32]);
    }
    out
}

/// The escaped form of `name` (see [`escape_key_component`]), cut before
/// the first escaped byte that would take it past `limit` bytes.
fn escaped_prefix(name: &str, limit: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(name.len().min(limit));
    if name.is_empty() || name.starts_with('.') {
        out.push('_');
    }
    for b in name.bytes() {
        let before = out.len();
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
        if out.len() > limit {
            out.truncate(before);
            break;
        }
    }
    out
}

/// Attributes of an archive object: small engine facts kept beside its bytes
/// (PostgreSQL: the system identifier and the file's modification time).
pub type Attributes = BTreeMap<String, String>;

/// What [`ArchiveStore::put_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOnce {
    /// The object was stored; `stored_bytes` is its size in the vault.
    Stored {
        /// Bytes stored (compressed, sealed, with header).
        stored_bytes: u64,
    },
    /// An object with byte-identical content was already stored under the key.
    Identical,
}

/// One object listed by [`ArchiveStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The key, relative to the store (as given to `put_once`).
    pub key: String,
    /// Bytes stored in the vault (not the raw size).
    pub stored_bytes: u64,
    /// When the vault last wrote it.
    pub stored_at: DateTime<Utc>,
}

/// An object read back by [`ArchiveStore::get`]: its raw bytes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveObject {
    /// The raw bytes, checked against their digest.
    pub bytes: Bytes,
    /// The attributes given at `put_once`.
    pub attributes: Attributes,
}

/// An archived log object that retention deletes
/// ([`EnginePlugin::expired_log`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredLog {
    /// Its key in the instance's archive.
    pub key: String,
    /// Bytes stored in the vault.
    pub stored_bytes: u64,
    /// Why no kept backup needs it.
    pub reason: String,
}

/// Small create-only objects of one engine instance, kept in the vault:
/// PostgreSQL WAL segments and history files, Backint name markers.
/// Implemented by the host; stored compressed, encrypted when the vault is,
/// and checked on every read like parts of a backup.
///
/// Keys are `/`-separated relative paths chosen by the plugin, each
/// component 1 to 200 bytes of `[A-Za-z0-9._-]` and neither `.` nor `..`
/// (anything else fails with [`ErrorKind::Config`](crate::ErrorKind::Config));
/// the host places them under the instance.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Stores `bytes` under `key` once. A second put of byte-identical
    /// content returns [`PutOnce::Identical`] (an engine that archives a
    /// file again after a crash must succeed); different content fails with
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) naming both
    /// digests, and the stored object is never replaced. Returns only once
    /// the object is durable.
    async fn put_once(&self, key: &str, bytes: Bytes, attributes: Attributes) -> Result<PutOnce>;

    /// The object under `key`, its bytes checked; `None` when there is none.
    /// A damaged object fails with [`ErrorKind::Integrity`](crate::ErrorKind::Integrity).
    async fn get(&self, key: &str) -> Result<Option<ArchiveObject>>;

    /// The attributes of the object under `key` without reading its bytes
    /// (one small ranged read); `None` when there is none.
    async fn attributes(&self, key: &str) -> Result<Option<Attributes>>;

    /// Every object whose key starts with `prefix` (a whole component path,
    /// `""` for all), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ArchiveEntry>>;

    /// Deletes the object under `key`; deleting what is not there succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Where the object under `key` lives, for messages that must name it
    /// so an operator can find it (a vault archive: its key from the vault
    /// root). The default: the key itself.
    fn location(&self, key: &str) -> String {
        key.to_owned()
    }
}

/// An engine plugin. Built from its configuration section, registered
/// explicitly by the agent; the host drives it through
/// [`crate::lifecycle`].
#[async_trait]
pub trait EnginePlugin: Send + Sync {
    /// The engine's name as used in vault keys and manifests (`postgres`...).
    fn engine(&self) -> &'static str;

    /// The configured instance this plugin protects.
    fn instance(&self) -> &str;

    /// What the engine supports.
    fn capabilities(&self) -> Capabilities;

    /// The databases this plugin instance protects. The default: the
    /// instance as a whole.
    async fn discover(&self) -> Result<Vec<DatabaseRef>> {
        Ok(vec![DatabaseRef::instance(self.instance())])
    }

    /// Runs one backup: asks the engine for its native backup (or takes the
    /// pushed [`BackupRequest::input`]) and writes the bytes into `sink`.
    /// `archive` is the instance's archive, for engines whose backups depend
    /// on objects they archive themselves (a PostgreSQL backup is complete
    /// only once its WAL is archived). Must fail (never return a partial
    /// outcome) if the engine's backup did not complete; the host then
    /// discards the streams and commits nothing.
    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome>;

    /// The kind a requested `kind` backup of `database` is taken as,
    /// decided before the host chooses a base; asked only of engines that
    /// say [`Capabilities::settles_kind`]. `options` are the request's
    /// [`BackupRequest::options`]; `backups` are the committed backups of
    /// `database`, oldest first (what
    /// [`Host::backups`](crate::lifecycle::Host::backups) lists), and
    /// `archive` the instance's archive. (The request's parts come one by
    /// one because a [`BackupRequest`] with pushed input cannot be shared
    /// across threads.)
    ///
    /// SQL Server uses it the way Azure Backup's auto-heal does: a log
    /// backup whose log chain is broken (an out-of-band backup, a switch to
    /// SIMPLE recovery, a new recovery fork), or a differential whose base
    /// (the database's `differential_base_guid`) is not a full in the vault,
    /// cannot be restored from what the vault holds, so it is taken as a
    /// full instead.
    ///
    /// The returned kind must be one of [`Capabilities::kinds`] (another is
    /// refused with [`ErrorKind::Config`](crate::ErrorKind::Config) and
    /// nothing is written). When it differs from `kind`, the host logs a
    /// warning naming both kinds and the reason, the plugin's
    /// [`backup`](Self::backup) gets a request of the settled kind (with a
    /// base chosen for it), and the committed manifest carries the labels
    /// `strata.requested_kind` (the kind asked for) and `strata.kind_reason`
    /// (the reason, when given). An error fails the backup before anything
    /// is written. The default: the requested kind, no reason.
    async fn settle_kind(
        &self,
        database: &DatabaseRef,
        kind: BackupKind,
        options: &serde_json::Value,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<KindDecision> {
        let _ = (database, options, backups, archive);
        Ok(KindDecision::keep(kind))
    }

    /// Which of `candidates` a new `kind` backup (diff or incr) builds on,
    /// by index; `None` when none can be. The host offers the committed
    /// data backups of the database that could be a base, newest first:
    /// the fulls for a differential; for an incremental, every data backup
    /// whose chain of bases reaches a full in the vault. An engine refines
    /// the choice with what only it knows (PostgreSQL: the same system
    /// identifier and a timeline the cluster's history passes through).
    /// The default: the newest.
    async fn choose_base(
        &self,
        kind: BackupKind,
        candidates: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Option<usize>> {
        let _ = (kind, archive);
        Ok((!candidates.is_empty()).then_some(0))
    }

    /// The chain of `database` for the planner: `backups` are its committed
    /// manifests (oldest first); an engine that archives its log itself adds
    /// those logs as records from `archive`, and supplies its rules (fork
    /// origins, where replay starts). The default: the manifests under
    /// [`DefaultChainRules`].
    async fn chain(
        &self,
        database: &DatabaseRef,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Chain> {
        let _ = (database, archive);
        Ok(Chain::of_manifests(backups))
    }

    /// The archived log objects (keys of `archive`) that no kept backup of
    /// `database` needs any more, with the reason for each, for retention
    /// ([`crate::catalog::retention`]). `kept` are the backups retention
    /// keeps (oldest first); `anchor` is the one point-in-time restores of
    /// the log window replay from, when the policy keeps a window: log from
    /// its start onwards stays. Everything an engine returns here is
    /// deleted. The default: nothing (engines whose log backups are
    /// manifests leave them to retention's own rules).
    async fn expired_log(
        &self,
        database: &DatabaseRef,
        kept: &[Manifest],
        anchor: Option<&Manifest>,
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Vec<ExpiredLog>> {
        let _ = (database, kept, anchor, archive);
        Ok(Vec::new())
    }

    /// Restores the planned backups from `source` to the requested destination.
    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome>;

    /// The check of this engine's stream contents for `verify`, when its
    /// streams carry digests of their own. The default: none.
    fn content_check(&self) -> Option<Arc<dyn ContentCheck>> {
        None
    }

    /// Checks the instance's archive objects for `verify`: that those a
    /// restore reads are sound (read whole), and that none a restore needs
    /// is missing. `backups` are the instance's committed manifests (oldest
    /// first). Returns one finding per problem; an error only when the
    /// check cannot run (an unreachable vault). The default: nothing to
    /// check (engines that archive nothing).
    async fn verify_archive(
        &self,
        backups: &[Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Vec<ArchiveFinding>> {
        let _ = (backups, archive);
        Ok(Vec::new())
    }
}

/// A problem [`EnginePlugin::verify_archive`] found with one archive object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFinding {
    /// The object's key in the archive (as given to `put_once`).
    pub key: String,
    /// What is wrong with it, and what a restore loses by it.
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn a_destination_holding_or_inside_a_protected_path_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        std::fs::create_dir(&vault).unwrap();
        let protected = vec![vault.clone(), PathBuf::from("/etc/strata/strata.toml")];
        // The vault inside the target, the target inside the vault, the vault itself.
        assert_eq!(is_protected(dir.path(), &protected), Some(vault.as_path()));
        assert_eq!(
            is_protected(&vault.join("x/y"), &protected),
            Some(vault.as_path())
        );
        assert_eq!(
            is_protected(&dir.path().join("./vault/../vault"), &protected),
            Some(vault.as_path())
        );
        assert_eq!(
            is_protected(Path::new("/etc/strata"), &protected),
            Some(Path::new("/etc/strata/strata.toml"))
        );
        // A sibling is fine, even one whose name starts the same way.
        assert_eq!(is_protected(&dir.path().join("vault2"), &protected), None);
        assert_eq!(is_protected(&dir.path().join("copy"), &protected), None);
    }
}

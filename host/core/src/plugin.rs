//! The contract between the host and an engine plugin.
//!
//! The host owns the data plane (vault, parts, compression, encryption,
//! manifests, catalog); a plugin owns only the engine's semantics: how to ask
//! the engine for a native backup, where its positions and forks are, and how
//! to lay the bytes back down. A plugin never talks to object storage: it
//! writes byte streams into a [`BackupSink`] and reads them back from a
//! [`RestoreSource`].
//!
//! The required methods are few; each says exactly what it promises.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::catalog::manifest::{BackupId, BackupKind, Manifest, Position, StreamRecord};
use crate::catalog::planner::{ChainRules, RestoreTarget};
use crate::error::Result;
pub use crate::vault::writer::{PartFeed, PartStream, StreamDigest};

/// What an engine can do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backup kinds the engine supports.
    pub kinds: Vec<BackupKind>,
    /// Whether restores can stop at an arbitrary time.
    pub point_in_time: bool,
    /// Whether restores can target another database name or data directory.
    pub alternate_target: bool,
}

/// A database (or cluster) a plugin can protect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRef {
    /// The configured instance name.
    pub instance: String,
    /// The database within the instance, when the engine has several.
    pub database: Option<String>,
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

/// A request to back up one database.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// What to back up.
    pub database: DatabaseRef,
    /// The kind of backup.
    pub kind: BackupKind,
    /// The backup a diff or incr applies on (chosen by the host from the catalog).
    pub base: Option<Manifest>,
}

/// What a plugin reports after its streams were written; the host puts it in
/// the manifest and commits.
#[derive(Debug, Clone, Default)]
pub struct BackupOutcome {
    /// The fork the backup belongs to.
    pub fork: String,
    /// Chain position at the start.
    pub start: Option<Position>,
    /// Chain position at the end (where a restore of this backup is consistent).
    pub end: Option<Position>,
    /// When the data is consistent (data backups) or the newest commit in the log.
    pub consistent_at: Option<DateTime<Utc>>,
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
    /// The backups to apply, in order (base, diffs, logs), as the planner chose.
    pub backups: Vec<Manifest>,
    /// Engine-specific destination options (data directory, port, new name...).
    pub destination: BTreeMap<String, String>,
}

/// What a restore reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The position the restored database reached, if known.
    pub position: Option<Position>,
    /// The time the restored database reached, if known.
    pub time: Option<DateTime<Utc>>,
    /// A human summary (where it was restored, how to connect).
    pub summary: String,
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
}

/// An engine plugin. Built from its configuration section, registered
/// explicitly by the agent.
#[async_trait]
pub trait EnginePlugin: Send + Sync {
    /// The engine's name as used in vault keys and manifests (`postgres`...).
    fn engine(&self) -> &'static str;

    /// What the engine supports.
    fn capabilities(&self) -> Capabilities;

    /// The databases this plugin instance protects.
    async fn discover(&self) -> Result<Vec<DatabaseRef>>;

    /// Where the log chain of `database` stands now.
    async fn chain_position(&self, database: &DatabaseRef) -> Result<ChainPoint>;

    /// Runs one backup: asks the engine for its native backup and writes the
    /// bytes into `sink`. Must fail (never return a partial outcome) if the
    /// engine's backup did not complete; the host then discards the streams.
    async fn backup(&self, request: BackupRequest, sink: &dyn BackupSink) -> Result<BackupOutcome>;

    /// Restores the planned backups from `source` to the requested destination.
    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome>;

    /// The engine's chain rules for the planner.
    fn chain_rules(&self) -> Arc<dyn ChainRules>;
}

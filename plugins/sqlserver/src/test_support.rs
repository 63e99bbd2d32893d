//! Builders for unit tests that need no server: manifests as the plugin
//! commits them, and a restore source in memory.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use strata_core::catalog::manifest::{
    BackupId, Compression, MANIFEST_FORMAT, Manifest, StreamRecord,
};
use strata_core::plugin::RestoreSource;
use strata_core::{Error, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::chain;
use crate::history::BackupSet;

pub const FORK: u128 = 0xf0;
pub const DB_GUID: u128 = 0xdb;
pub const FAMILY: u128 = 0xfa;

pub fn guid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// 2026-12-01 10:`minute`:00, the server's local time (UTC in these tests).
pub fn at(minute: u32) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(
        &format!("2026-12-01 10:{minute:02}:00"),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap()
}

/// A manifest of database `Sales` as the plugin commits it: backup set
/// `uuid` of `kind` (`D`, `I`, `L`) covering LSNs `first..last`, taken at
/// minute `n`, the history row in `engine_meta.backup_set` (with `extra`
/// columns over the defaults), and no streams.
pub fn manifest(
    n: u32,
    kind: &str,
    uuid: u128,
    first: u128,
    last: u128,
    extra: serde_json::Value,
) -> Manifest {
    let mut row = serde_json::json!({
        "backup_set_uuid": guid(uuid).to_string(),
        "type": kind,
        "is_copy_only": false,
        "first_lsn": first.to_string(),
        "last_lsn": last.to_string(),
        "checkpoint_lsn": first.to_string(),
        "first_recovery_fork_guid": guid(FORK).to_string(),
        "last_recovery_fork_guid": guid(FORK).to_string(),
        "database_guid": guid(DB_GUID).to_string(),
        "family_guid": guid(FAMILY).to_string(),
        "backup_start_date": at(n).format("%Y-%m-%dT%H:%M:%S").to_string(),
        "backup_finish_date": at(n + 1).format("%Y-%m-%dT%H:%M:%S").to_string(),
        "time_zone": 0,
        "database_name": "Sales",
    });
    for (k, v) in extra.as_object().unwrap() {
        row[k] = v.clone();
    }
    let set: BackupSet = serde_json::from_str(&row.to_string()).unwrap();
    let outcome = chain::backup_outcome(&set, None).unwrap();
    Manifest {
        format: MANIFEST_FORMAT,
        id: format!("20261201T10{n:02}00.000Z-0000{n:04}")
            .parse()
            .unwrap(),
        engine: crate::ENGINE.into(),
        instance: "main".into(),
        database: Some("Sales".into()),
        kind: set.kind().unwrap(),
        started_at: at(n).and_utc(),
        ended_at: at(n + 1).and_utc(),
        consistent_at: outcome.consistent_at,
        fork: outcome.fork,
        start: outcome.start,
        end: outcome.end,
        base: None,
        compression: Compression {
            algorithm: "zstd".into(),
            level: 3,
        },
        encryption: None,
        streams: Vec::new(),
        labels: Default::default(),
        engine_meta: outcome.engine_meta,
    }
}

/// Streams of committed backups, in memory, logging every read; a stream
/// named in `broken` fails its reads as a damaged part would.
#[derive(Default)]
pub struct MemorySource {
    streams: HashMap<(BackupId, String), Vec<u8>>,
    reads: std::sync::Mutex<Vec<String>>,
    /// A stream whose reads fail with an integrity error.
    pub broken: Option<String>,
}

impl MemorySource {
    /// Adds stream `name` holding `bytes` to `manifest` and to the source.
    pub fn add(&mut self, manifest: &mut Manifest, name: &str, bytes: Vec<u8>) {
        manifest.streams.push(StreamRecord {
            name: name.into(),
            raw_size: bytes.len() as u64,
            stored_size: bytes.len() as u64,
            blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
            segments: Vec::new(),
        });
        self.insert(&manifest.id, name, bytes);
    }

    /// Adds stream `name` of `backup` holding `bytes`.
    pub fn insert(&mut self, backup: &BackupId, name: &str, bytes: Vec<u8>) {
        self.streams
            .insert((backup.clone(), name.to_owned()), bytes);
    }

    /// The bytes of stream `name` of `backup`.
    pub fn get(&self, backup: &BackupId, name: &str) -> Result<&[u8]> {
        if self.broken.as_deref() == Some(name) {
            return Err(Error::integrity(format!(
                "part 0 of {name} fails its CRC-32C"
            )));
        }
        self.streams
            .get(&(backup.clone(), name.to_owned()))
            .map(Vec::as_slice)
            .ok_or_else(|| Error::not_found(format!("no stream {name} in backup {backup}")))
    }

    /// The reads so far: `stream NAME` or `range NAME OFFSET LEN`.
    pub fn reads(&self) -> Vec<String> {
        self.reads.lock().unwrap().clone()
    }
}

#[async_trait]
impl RestoreSource for MemorySource {
    async fn read_stream(
        &self,
        backup: &BackupId,
        name: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        self.reads.lock().unwrap().push(format!("stream {name}"));
        let bytes = self.get(backup, name)?;
        for chunk in bytes.chunks(100_000) {
            out.write_all(chunk)
                .await
                .map_err(|e| Error::io(e.to_string()))?;
        }
        Ok(bytes.len() as u64)
    }

    async fn read_range(
        &self,
        backup: &BackupId,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        self.reads
            .lock()
            .unwrap()
            .push(format!("range {name} {offset} {len}"));
        let bytes = self.get(backup, name)?;
        let start = (offset as usize).min(bytes.len());
        let end = (offset.saturating_add(len) as usize).min(bytes.len());
        out.write_all(&bytes[start..end])
            .await
            .map_err(|e| Error::io(e.to_string()))?;
        Ok((end - start) as u64)
    }

    async fn check_stored(&self, _backup: &BackupId) -> Result<()> {
        Ok(())
    }
}

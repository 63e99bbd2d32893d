//! The manifest: the record of one committed backup, stored in the vault.
//!
//! # Format (version 1)
//!
//! A manifest is a JSON object written with a create-only put at
//! `manifests/<engine>/<instance>/<id>.json` (see [`crate::vault::layout`])
//! after every byte of the backup is durable. Its presence is the commit
//! point: a backup without a manifest does not exist for listing, planning or
//! restore. Fields:
//!
//! - `format`: the manifest format version, [`MANIFEST_FORMAT`]. A reader
//!   refuses a newer format with a clear error.
//! - `id`, `engine`, `instance`, `database`, `kind`: what was backed up.
//! - `started_at`, `ended_at`: wall-clock times (UTC) of the backup.
//! - `fork`, `start`, `end`: the engine's chain coordinates. Positions are
//!   unsigned integers written as decimal strings (PostgreSQL LSNs, SQL Server
//!   LSNs, HANA log positions); they are totally ordered within one fork.
//! - `consistent_at`: for data backups, the time the restored data is
//!   consistent at (the end of the backup); for log backups, the newest
//!   commit time the log holds, if the engine knows it.
//! - `base`: the backup a differential or incremental applies on top of.
//! - `compression`: algorithm and level of every part.
//! - `encryption`: absent for a plaintext vault; otherwise the algorithm and
//!   the per-backup data key wrapped by the vault key.
//! - `streams`: the logical byte streams of the backup, each split into
//!   segment objects, each segment a concatenation of parts. A part is one
//!   independent zstd frame (sealed with the data key when encrypted) with its
//!   raw and stored lengths and the CRC-32C of the stored bytes. A stream also
//!   records the BLAKE3 digest of its raw bytes.
//! - `engine_meta`: engine-specific details (PostgreSQL `backup_label`,
//!   system identifier, HANA EBIDs...) as a free JSON value.
//! - `checksum`: last, `blake3:<hex>` of the manifest's text without it
//!   ([`crate::checksum`]): a manifest altered in the vault is refused
//!   rather than planned and restored by. Manifests written before it have
//!   none and are read as they are.
//!
//! A manifest is only valid at its own key: a reader checks that the
//! engine, instance and id it holds give back the key it was read from
//! (`vault::manifest_at`), so another backup's manifest copied
//! over it is refused too.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checksum;
use crate::error::{Error, Result};

/// The manifest format this build writes and the newest it reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// A backup's identifier: time-sortable and unique, such as
/// `20261122T001500.123Z-003fa9c1` (UTC start time to the millisecond, then
/// 8 hex digits: a sequence number of 8 bits and 24 random bits).
/// Identifiers sort in start order as plain strings; up to 256 that a
/// process makes for the same millisecond sort in the order it made them
/// (the sequence number), where random bits alone would order them by
/// chance and let an older backup pass for the newest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// A new identifier for a backup starting at `at`.
    pub fn generate(at: DateTime<Utc>) -> Self {
        // The millisecond of the last identifier made, and how many were
        // made for it before this one.
        static LAST: std::sync::Mutex<(i64, u8)> = std::sync::Mutex::new((i64::MIN, 0));
        let millis = at.timestamp_millis();
        let sequence = {
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            if last.0 == millis {
                last.1 = last.1.saturating_add(1);
            } else {
                *last = (millis, 0);
            }
            last.1
        };
        let random = rand::random::<u32>() & 0x00ff_ffff;
        BackupId(format!(
            "{}-{sequence:02x}{random:06x}",
            at.format("%Y%m%dT%H%M%S%.3fZ")
        ))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if valid {
            Ok(BackupId(s.to_owned()))
        } else {
            Err(
                Error::config(format!("`{s}` is not a valid backup id")).hint(
                    "backup ids look like 20261122T001500.123Z-3fa9c1d2; `strata list` shows them",
                ),
            )
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// A complete copy of the data.
    Full,
    /// Changes since the last full backup.
    Diff,
    /// Changes since the last backup of any data kind.
    Incr,
    /// A piece of the transaction log.
    Log,
}

impl BackupKind {
    /// The lowercase name (`full`, `diff`, `incr`, `log`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
            BackupKind::Log => "log",
        }
    }

    /// Whether this kind carries data pages (full, diff, incr), as opposed to log.
    pub fn is_data(self) -> bool {
        !matches!(self, BackupKind::Log)
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(BackupKind::Full),
            "diff" | "differential" => Ok(BackupKind::Diff),
            "incr" | "incremental" => Ok(BackupKind::Incr),
            "log" => Ok(BackupKind::Log),
            _ => Err(Error::config(format!(
                "unknown backup kind `{s}`: expected full, diff, incr or log"
            ))),
        }
    }
}

/// A position in an engine's log, totally ordered within one fork
/// (a PostgreSQL LSN, a SQL Server LSN, a HANA log position).
/// Serialised as a decimal string so that 128-bit values survive JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u128);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<u128>()
            .map(Position)
            .map_err(|_| serde::de::Error::custom(format!("invalid position `{text}`")))
    }
}

/// How the parts of a backup are compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always `zstd` in format 1.
    pub algorithm: String,
    /// The zstd level used.
    pub level: i32,
}

/// How the parts of a backup are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// The AEAD used for parts (`chacha20poly1305`).
    pub algorithm: String,
    /// The per-backup data key, sealed with the vault key (base64).
    pub wrapped_key: String,
}

/// One part: an independent zstd frame (sealed when encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Length of the part's raw (uncompressed) bytes.
    pub raw: u64,
    /// Length of the part as stored in its segment.
    pub stored: u64,
    /// CRC-32C of the stored bytes.
    pub crc32c: u32,
}

/// One segment object: the parts of a stream stored back to back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The object's key relative to the vault root.
    pub key: String,
    /// The object's size in bytes.
    pub stored_size: u64,
    /// The parts, in stream order; each starts where the previous ended.
    pub parts: Vec<PartRecord>,
}

/// One logical byte stream of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The stream's name within the backup (a file name, a HANA pipe name...).
    pub name: String,
    /// Total raw bytes.
    pub raw_size: u64,
    /// Total stored bytes (sum of segment sizes).
    pub stored_size: u64,
    /// BLAKE3 digest of the raw bytes, lowercase hex. Absent when the
    /// stream's content carries digests of its own that every read checks
    /// (a PostgreSQL file bundle has one per file; see
    /// [`StreamDigest::Skip`](crate::vault::writer::StreamDigest::Skip)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The segment objects, in order.
    pub segments: Vec<SegmentRecord>,
}

impl StreamRecord {
    /// Number of parts across all segments.
    pub fn part_count(&self) -> usize {
        self.segments.iter().map(|s| s.parts.len()).sum()
    }
}

/// The committed record of one backup. See the module docs for the format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup's identifier.
    pub id: BackupId,
    /// The engine (`postgres`, `sqlserver`, `hana`, `stream`).
    pub engine: String,
    /// The protected instance (a configured cluster name, a SID, a host\instance).
    pub instance: String,
    /// The database within the instance, if the engine has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Full, diff, incr or log.
    pub kind: BackupKind,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the backup ended.
    pub ended_at: DateTime<Utc>,
    /// The time the data is consistent at (data backups) or the newest commit
    /// time the log holds (log backups), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_at: Option<DateTime<Utc>>,
    /// The fork (PostgreSQL timeline, SQL Server recovery fork, HANA lineage).
    #[serde(default)]
    pub fork: String,
    /// The chain position at the start of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Position>,
    /// The chain position at the end of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Position>,
    /// The backup a diff or incr applies on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BackupId>,
    /// Part compression.
    pub compression: Compression,
    /// Part encryption; absent in a plaintext vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The streams.
    pub streams: Vec<StreamRecord>,
    /// Free-form labels (host name, tool version, user-supplied tags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Engine-specific details.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub engine_meta: serde_json::Value,
}

impl Manifest {
    /// Total raw bytes over all streams.
    pub fn raw_size(&self) -> u64 {
        self.streams.iter().map(|s| s.raw_size).sum()
    }

    /// Total stored bytes over all streams.
    pub fn stored_size(&self) -> u64 {
        self.streams.iter().map(|s| s.stored_size).sum()
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Result<&StreamRecord> {
        self.streams.iter().find(|s| s.name == name).ok_or_else(|| {
            Error::not_found(format!("backup {} has no stream `{name}`", self.id)).hint(format!(
                "its streams are: {}",
                self.streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Serialises the manifest (pretty JSON), its [`checksum`] last.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(checksum::append(&serde_json::to_vec_pretty(self)?))
    }

    /// Parses and checks a manifest read from `origin` (named in errors):
    /// its [`checksum`] when it has one (manifests written before checksums
    /// have none), its format, and that its sizes add up.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Manifest> {
        let checked = checksum::check(bytes).map_err(|why| {
            Error::integrity(format!("manifest {origin} is damaged: {why}")).hint(
                "the object was altered in the vault; `strata verify` checks the rest of the vault",
            )
        })?;
        let bytes = match &checked {
            checksum::Checked::Sound(original) => original.as_slice(),
            checksum::Checked::Absent => bytes,
        };
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
            Error::from(e)
                .with_message(format!("manifest {origin} is not valid JSON"))
                .hint("the object may be corrupted; `strata verify` checks the rest of the vault")
        })?;
        if probe.format > MANIFEST_FORMAT {
            return Err(Error::integrity(format!(
                "manifest {origin} has format {}, newer than this Strata understands ({MANIFEST_FORMAT})",
                probe.format
            ))
            .hint("upgrade Strata to read this vault"));
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::from(e)
                .with_message(format!("manifest {origin} is malformed"))
                .hint("the object may be corrupted or written by an incompatible tool")
        })?;
        manifest.check(origin)?;
        Ok(manifest)
    }

    /// Checks internal consistency (sizes add up, digests are well formed).
    pub fn check(&self, origin: &str) -> Result<()> {
        // Sums that overflow do not add up either: unchecked, they panicked
        // (debug builds) or wrapped around to a total that matched (release).
        // Found by fuzzing (fuzz/corpus/manifest/overflowing-*).
        fn total(sizes: impl IntoIterator<Item = u64>) -> Option<u64> {
            sizes.into_iter().try_fold(0u64, u64::checked_add)
        }
        let (mut all_raw, mut all_stored) = (Some(0u64), Some(0u64));
        for stream in &self.streams {
            let stored = total(stream.segments.iter().map(|s| s.stored_size));
            let raw = total(stream.segments.iter().flat_map(|s| &s.parts).map(|p| p.raw));
            let seg_ok = stream
                .segments
                .iter()
                .all(|s| total(s.parts.iter().map(|p| p.stored)) == Some(s.stored_size));
            all_raw = all_raw.and_then(|t| t.checked_add(stream.raw_size));
            all_stored = all_stored.and_then(|t| t.checked_add(stream.stored_size));
            if stored != Some(stream.stored_size)
                || raw != Some(stream.raw_size)
                || !seg_ok
                || all_raw.is_none()
                || all_stored.is_none()
            {
                return Err(Error::integrity(format!(
                    "manifest {origin}: the sizes of stream `{}` do not add up",
                    stream.name
                )));
            }
            if let Some(digest) = &stream.blake3
                && (digest.len() != 64 || hex::decode(digest).is_err())
            {
                return Err(Error::integrity(format!(
                    "manifest {origin}: stream `{}` has a malformed digest",
                    stream.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a CI run on a fast machine: two backups made in the same
    /// millisecond sorted by their random bits, so the older one was taken
    /// for the newest now and then.
    #[test]
    fn identifiers_of_one_millisecond_sort_in_the_order_they_were_made() {
        let at = Utc::now();
        let ids: Vec<BackupId> = (0..256).map(|_| BackupId::generate(at)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        let distinct: std::collections::BTreeSet<&BackupId> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.as_str().len(), 29, "{id}");
            assert_eq!(id.as_str().parse::<BackupId>().unwrap(), *id);
        }
        // Another millisecond starts the sequence again.
        let later = BackupId::generate(at + chrono::Duration::milliseconds(1));
        assert!(later > *ids.last().unwrap());
        assert_eq!(&later.as_str()[21..23], "00", "{later}");
    }

    /// Found by fuzzing (fuzz/corpus/manifest/overflowing-*): part sizes
    /// whose sum overflows u64 panicked the check in debug builds, and in
    /// release builds wrapped around to a total that passed it; stream
    /// totals that overflow panicked `raw_size`.
    #[test]
    fn sizes_that_overflow_do_not_add_up() {
        let part = |raw: u64| PartRecord {
            raw,
            stored: 1,
            crc32c: 0,
        };
        let stream = |name: &str, parts: Vec<PartRecord>, raw_size: u64| StreamRecord {
            name: name.into(),
            raw_size,
            stored_size: parts.len() as u64,
            blake3: None,
            segments: vec![SegmentRecord {
                key: format!("data/{name}"),
                stored_size: parts.len() as u64,
                parts,
            }],
        };
        let manifest = |streams: Vec<StreamRecord>| Manifest {
            format: MANIFEST_FORMAT,
            id: "20261201T000000.000Z-00000000".parse().unwrap(),
            engine: "stream".into(),
            instance: "s".into(),
            database: None,
            kind: BackupKind::Full,
            started_at: "2026-12-01T00:00:00Z".parse().unwrap(),
            ended_at: "2026-12-01T00:00:01Z".parse().unwrap(),
            consistent_at: None,
            fork: String::new(),
            start: None,
            end: None,
            base: None,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: None,
            streams,
            labels: BTreeMap::new(),
            engine_meta: serde_json::Value::Null,
        };
        let sound = manifest(vec![stream("a", vec![part(7), part(9)], 16)]);
        sound.check("m.json").unwrap();
        for (what, damaged) in [
            (
                "parts wrapping around to the stream's size",
                manifest(vec![stream("a", vec![part(u64::MAX), part(1)], 0)]),
            ),
            (
                "streams whose total overflows",
                manifest(vec![
                    stream("a", vec![part(u64::MAX)], u64::MAX),
                    stream("b", vec![part(1)], 1),
                ]),
            ),
        ] {
            let err = damaged.check("m.json").expect_err(what);
            assert_eq!(err.kind(), crate::ErrorKind::Integrity, "{what}: {err}");
            assert!(err.to_string().contains("do not add up"), "{what}: {err}");
            let json = serde_json::to_vec(&damaged).unwrap();
            assert!(Manifest::from_json(&json, "m.json").is_err(), "{what}");
        }
    }

    #[test]
    fn backup_ids_sort_by_time() {
        let a = BackupId::generate("2026-11-22T00:15:00.100Z".parse().unwrap());
        let b = BackupId::generate("2026-11-22T00:15:00.200Z".parse().unwrap());
        assert!(a < b, "{a} < {b}");
        assert!(a.as_str().starts_with("20261122T001500.100Z-"));
        assert!("../etc".parse::<BackupId>().is_err());
    }

    #[test]
    fn newer_format_is_refused_with_hint() {
        let err = Manifest::from_json(br#"{"format": 99}"#, "m.json").unwrap_err();
        assert!(err.to_string().contains("format 99"));
        assert_eq!(err.hint_text(), Some("upgrade Strata to read this vault"));
    }

    #[test]
    fn positions_roundtrip_as_strings() {
        let p = Position(u128::MAX);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{}\"", u128::MAX));
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
    }
}

//! The WAL archive: `archive_command` (`wal-push`) and `restore_command` (`wal-fetch`).
//!
//! # Layout
//!
//! Every file PostgreSQL archives becomes one object of the cluster's
//! [`ArchiveStore`], written once:
//!
//! ```text
//! wal/<system-identifier>/<timeline>/<file name>
//! ```
//!
//! (in a vault, the host keeps them under `engines/postgres/<instance>/`).
//!
//! The system identifier and the timeline are part of the key, so the WAL of
//! two clusters (or of two timelines) can never mix, and a restored copy that
//! was misconfigured to archive into the same vault cannot overwrite anything:
//! a create-only put of an existing name fails, and Strata then compares the
//! contents. A byte-identical duplicate (PostgreSQL re-archives a segment after
//! a crash) is a success; different contents under an existing name are an
//! error that names both. `.history` files are never overwritten, `.partial` and
//! `.backup` files are kept like segments.
//!
//! One object per file, rather than one backup manifest per segment, makes a
//! push a single create-only request: the duplicate check is atomic, and a
//! crash can never leave a half-registered segment behind. The segment names
//! are the catalog of the archive: a listing gives every timeline's LSN ranges
//! (see [`crate::chain`]).
//!
//! # Attributes
//!
//! The objects live in the instance's [`ArchiveStore`], which compresses,
//! seals and checks them (its object format is documented with the host's
//! implementation). Each WAL object carries the attributes `system_id`
//! (decimal) and `mtime` (RFC 3339), and each segment what its records say
//! about the transactions that ended in it ([`SegmentCommits`], read by
//! [`crate::walrecords::scan_segment`] when it is pushed):
//!
//! | attribute | value |
//! |---|---|
//! | `commit_scan` | `complete`, or `uncertain` when the record that crosses into the next segment could not be read (the next segment was not in `pg_wal` yet); absent when the segment could not be scanned or was pushed by an older Strata |
//! | `first_commit_time` | the oldest `xact_time` of the commit and abort records that start and end in the segment (RFC 3339) |
//! | `last_commit_time` | the newest such `xact_time` |
//! | `last_commit_lsn` | where the last of them (in LSN order) starts: what `recovery_target_lsn` names to stop right after it |
//! | `last_commit_end_lsn` | where it ends (the LSN right after it) |
//! | `crossing_commit_time`, `_lsn`, `_end_lsn` | the commit or abort record that starts in the segment and ends in a later one, if it is one |
//!
//! The commit attributes are absent when the segment holds no commit or
//! abort record. A scan never fails a push: a segment Strata cannot read is
//! archived without them, and the catalog then falls back on `mtime`
//! (archiving must not stop because of Strata's reading of the WAL).
//!
//! `mtime` is the file's modification time in `pg_wal`: PostgreSQL writes a
//! segment up to its last record and then closes it, so no commit inside it is
//! newer than its mtime, and a commit after it is in a later segment (up to
//! a transaction whose commit time was taken just before the segment was
//! switched and whose record followed the switch, a race of microseconds).
//! It bounds the times the segment can restore to. The push time would be
//! wrong: a target between the mtime and the push time may need commits of
//! the *next* segment, which is not archived yet.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use strata_core::plugin::{ArchiveStore, Attributes, PutOnce};
use strata_core::{Error, ErrorKind, Result};

use crate::walname::{Lsn, WalFileKind, WalFileName};
use crate::walrecords::{Crossing, SegmentScan, XactEnd, scan_segment};

/// The attribute holding the cluster's system identifier (decimal).
pub const SYSTEM_ID_ATTRIBUTE: &str = "system_id";
/// The attribute holding the file's modification time (RFC 3339).
pub const MTIME_ATTRIBUTE: &str = "mtime";
/// The attribute saying a segment's records were scanned, and how well.
pub const COMMIT_SCAN_ATTRIBUTE: &str = "commit_scan";
/// The oldest `xact_time` of a segment (RFC 3339).
pub const FIRST_COMMIT_TIME_ATTRIBUTE: &str = "first_commit_time";
/// The newest `xact_time` of a segment (RFC 3339).
pub const LAST_COMMIT_TIME_ATTRIBUTE: &str = "last_commit_time";
/// Where the last commit or abort record of a segment starts.
pub const LAST_COMMIT_LSN_ATTRIBUTE: &str = "last_commit_lsn";
/// Where the last commit or abort record of a segment ends.
pub const LAST_COMMIT_END_LSN_ATTRIBUTE: &str = "last_commit_end_lsn";
const CROSSING_COMMIT_TIME_ATTRIBUTE: &str = "crossing_commit_time";
const CROSSING_COMMIT_LSN_ATTRIBUTE: &str = "crossing_commit_lsn";
const CROSSING_COMMIT_END_LSN_ATTRIBUTE: &str = "crossing_commit_end_lsn";
const SCAN_COMPLETE: &str = "complete";
const SCAN_UNCERTAIN: &str = "uncertain";
/// How much of the next segment a push reads, when the record crossing
/// into it cannot be read from the segment alone.
const NEXT_SEGMENT_HEAD: u64 = 64 * 1024;

/// `xlp_magic` of PostgreSQL 15 WAL pages.
const XLOG_PAGE_MAGIC_PG15: u16 = 0xD110;

/// What the archive records about an archived WAL file beside its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFileInfo {
    /// The cluster's system identifier.
    pub system_id: u64,
    /// The file's modification time when it was pushed.
    pub mtime: DateTime<Utc>,
    /// What the segment's records say about the transactions that ended
    /// in it; `None` for other files, and for segments that were not
    /// scanned (pushed by an older Strata, or not readable).
    pub commits: Option<SegmentCommits>,
}

/// A commit or abort record as the catalog keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CommitPoint {
    /// Its `xact_time`.
    pub time: DateTime<Utc>,
    /// Where it starts.
    pub lsn: Lsn,
    /// Where it ends.
    pub end_lsn: Lsn,
}

impl From<&XactEnd> for CommitPoint {
    fn from(x: &XactEnd) -> Self {
        CommitPoint {
            time: x.time,
            lsn: x.lsn,
            end_lsn: x.end_lsn,
        }
    }
}

/// The transaction ends of one segment (commit and abort records: both are
/// where a time target can stop), from its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCommits {
    /// Whether every record starting in the segment was read: `false` when
    /// the one crossing into the next segment could not be told apart.
    pub complete: bool,
    /// The oldest `xact_time` of the records that start and end in it.
    pub first_time: Option<DateTime<Utc>>,
    /// The newest `xact_time` of those records.
    pub last_time: Option<DateTime<Utc>>,
    /// The last of those records in LSN order, with `last_time` as its
    /// time (its own may be older by the time between taking a commit's
    /// timestamp and inserting its record; only the newest is kept, which
    /// is what bounds the targets it can stop at).
    pub last: Option<CommitPoint>,
    /// The commit or abort record that starts in the segment and ends in a
    /// later one.
    pub crossing: Option<CommitPoint>,
}

impl SegmentCommits {
    /// The summary of a scan.
    pub fn of_scan(scan: &SegmentScan) -> SegmentCommits {
        SegmentCommits {
            complete: !matches!(scan.crossing, Some(Crossing::Unknown { .. })),
            first_time: scan.oldest_time(),
            last_time: scan.newest_time(),
            last: scan.xact_ends.last().map(|x| CommitPoint {
                time: scan.newest_time().unwrap_or(x.time),
                ..CommitPoint::from(x)
            }),
            crossing: match &scan.crossing {
                Some(Crossing::XactEnd(x)) => Some(CommitPoint::from(x)),
                _ => None,
            },
        }
    }

    fn add_attributes(&self, attributes: &mut Attributes) {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        attributes.insert(
            COMMIT_SCAN_ATTRIBUTE.to_owned(),
            if self.complete {
                SCAN_COMPLETE
            } else {
                SCAN_UNCERTAIN
            }
            .to_owned(),
        );
        if let Some(t) = self.first_time {
            attributes.insert(FIRST_COMMIT_TIME_ATTRIBUTE.to_owned(), time(t));
        }
        if let Some(t) = self.last_time {
            attributes.insert(LAST_COMMIT_TIME_ATTRIBUTE.to_owned(), time(t));
        }
        if let Some(last) = &self.last {
            attributes.insert(LAST_COMMIT_LSN_ATTRIBUTE.to_owned(), last.lsn.to_string());
            attributes.insert(
                LAST_COMMIT_END_LSN_ATTRIBUTE.to_owned(),
                last.end_lsn.to_string(),
            );
        }
        if let Some(crossing) = &self.crossing {
            attributes.insert(
                CROSSING_COMMIT_TIME_ATTRIBUTE.to_owned(),
                time(crossing.time),
            );
            attributes.insert(
                CROSSING_COMMIT_LSN_ATTRIBUTE.to_owned(),
                crossing.lsn.to_string(),
            );
            attributes.insert(
                CROSSING_COMMIT_END_LSN_ATTRIBUTE.to_owned(),
                crossing.end_lsn.to_string(),
            );
        }
    }

    /// Reads the commit attributes; `None` when the segment was not
    /// scanned, or when they are malformed (the catalog then treats the
    /// segment as unscanned).
    fn from_attributes(attributes: &Attributes) -> Option<SegmentCommits> {
        let complete = match attributes.get(COMMIT_SCAN_ATTRIBUTE)?.as_str() {
            SCAN_COMPLETE => true,
            SCAN_UNCERTAIN => false,
            _ => return None,
        };
        // Absent is `Some(None)`; malformed fails the whole reading.
        let time = |name: &str| -> Option<Option<DateTime<Utc>>> {
            match attributes.get(name) {
                None => Some(None),
                Some(v) => v.parse().ok().map(Some),
            }
        };
        let lsn = |name: &str| -> Option<Option<Lsn>> {
            match attributes.get(name) {
                None => Some(None),
                Some(v) => v.parse().ok().map(Some),
            }
        };
        let point = |t: &str, l: &str, e: &str| -> Option<Option<CommitPoint>> {
            Some(match (time(t)?, lsn(l)?, lsn(e)?) {
                (Some(time), Some(lsn), Some(end_lsn)) => Some(CommitPoint { time, lsn, end_lsn }),
                (None, None, None) => None,
                _ => return None,
            })
        };
        let last = point(
            LAST_COMMIT_TIME_ATTRIBUTE,
            LAST_COMMIT_LSN_ATTRIBUTE,
            LAST_COMMIT_END_LSN_ATTRIBUTE,
        )?;
        Some(SegmentCommits {
            complete,
            first_time: time(FIRST_COMMIT_TIME_ATTRIBUTE)?,
            last_time: last.map(|l| l.time),
            last,
            crossing: point(
                CROSSING_COMMIT_TIME_ATTRIBUTE,
                CROSSING_COMMIT_LSN_ATTRIBUTE,
                CROSSING_COMMIT_END_LSN_ATTRIBUTE,
            )?,
        })
    }
}

impl WalFileInfo {
    /// The attributes of an archive object.
    fn to_attributes(&self) -> Attributes {
        let mut attributes = Attributes::from([
            (SYSTEM_ID_ATTRIBUTE.to_owned(), self.system_id.to_string()),
            (
                MTIME_ATTRIBUTE.to_owned(),
                self.mtime.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
        ]);
        if let Some(commits) = &self.commits {
            commits.add_attributes(&mut attributes);
        }
        attributes
    }

    /// Reads the attributes of the archive object at `key`.
    fn from_attributes(attributes: &Attributes, key: &str) -> Result<WalFileInfo> {
        let field = |name: &str| {
            attributes.get(name).ok_or_else(|| {
                Error::integrity(format!(
                    "the archived WAL file {key} has no `{name}` attribute"
                ))
                .hint("the object was not written by `strata pg wal-push`")
            })
        };
        let system_id = field(SYSTEM_ID_ATTRIBUTE)?.parse().map_err(|_| {
            Error::integrity(format!(
                "the archived WAL file {key} has a malformed system_id"
            ))
        })?;
        let mtime = field(MTIME_ATTRIBUTE)?.parse().map_err(|_| {
            Error::integrity(format!("the archived WAL file {key} has a malformed mtime"))
        })?;
        let commits = SegmentCommits::from_attributes(attributes);
        if commits.is_none() && attributes.contains_key(COMMIT_SCAN_ATTRIBUTE) {
            tracing::warn!(%key, "the archived segment's commit attributes are malformed; using its mtime");
        }
        Ok(WalFileInfo {
            system_id,
            mtime,
            commits,
        })
    }
}

/// Scans the records of segment `name` (its bytes, read from `path`) for
/// its transaction ends. When the record crossing into the next segment
/// cannot be read from this one, the start of the next segment is read
/// from beside `path` in `pg_wal`, if it is there. Never fails: a segment
/// that cannot be scanned is logged and gets no commit attributes.
fn scan_pushed_segment(bytes: &[u8], name: &WalFileName, path: &Path) -> Option<SegmentCommits> {
    let seg_size = bytes.len() as u64;
    if !seg_size.is_power_of_two() {
        tracing::warn!(segment = %name, size = seg_size, "not a whole WAL segment; archived without commit attributes");
        return None;
    }
    let start = name.start_lsn(seg_size);
    let mut scan = match scan_segment(bytes, start, &[]) {
        Ok(scan) => scan,
        Err(e) => {
            tracing::warn!(segment = %name, error = %e, "cannot read the segment's records; archived without commit attributes");
            return None;
        }
    };
    if matches!(scan.crossing, Some(Crossing::Unknown { .. })) {
        let next = WalFileName::segment(name.timeline, name.segno(seg_size) + 1, seg_size);
        let mut head = Vec::new();
        let read = std::fs::File::open(path.with_file_name(next.to_string()))
            .and_then(|f| f.take(NEXT_SEGMENT_HEAD).read_to_end(&mut head));
        if read.is_ok()
            && let Ok(rescanned) = scan_segment(bytes, start, &head)
        {
            scan = rescanned;
        }
    }
    Some(SegmentCommits::of_scan(&scan))
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file was stored under `key`.
    Stored {
        /// The object key.
        key: String,
        /// Bytes stored.
        stored: u64,
    },
    /// A byte-identical file was already archived under `key`.
    Duplicate {
        /// The object key.
        key: String,
    },
}

/// What a fetch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was written to the destination (from the vault or the prefetch spool).
    Found,
    /// The archive has no such file (recovery uses this to find the end of WAL).
    NotFound,
}

/// The WAL archive of one configured cluster, in its [`ArchiveStore`]
/// (borrowed: the host owns the store and lends it, as
/// [`EnginePlugin`](strata_core::plugin::EnginePlugin) methods do).
#[derive(Clone, Copy)]
pub struct WalArchive<'a> {
    archive: &'a dyn ArchiveStore,
}

impl std::fmt::Debug for WalArchive<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalArchive").finish_non_exhaustive()
    }
}

/// The system identifier in `global/pg_control` of `data_directory`.
pub fn control_system_id(data_directory: &Path) -> Result<u64> {
    let path = data_directory.join("global/pg_control");
    let mut buf = [0u8; 8];
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| {
            Error::io_doing_at("cannot read", &path, e)
                .hint("check data_directory in the [postgres.<name>] config section")
        })?;
    Ok(u64::from_le_bytes(buf))
}

/// The system identifier in the long header of a WAL segment's first page.
pub fn segment_system_id(bytes: &[u8], name: &str) -> Result<u64> {
    if bytes.len() < 40 {
        return Err(Error::integrity(format!(
            "{name} is too short ({} bytes) to be a WAL segment",
            bytes.len()
        )));
    }
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic != XLOG_PAGE_MAGIC_PG15 {
        return Err(Error::integrity(format!(
            "{name} does not start with a PostgreSQL 15 WAL page header (magic {magic:#06x})"
        ))
        .hint("archive_command must pass %p of a PostgreSQL 15 cluster"));
    }
    Ok(u64::from_le_bytes(
        bytes[24..32].try_into().expect("8 bytes"),
    ))
}

impl<'a> WalArchive<'a> {
    /// The WAL archive kept in `archive`, the cluster's archive store.
    pub fn new(archive: &'a dyn ArchiveStore) -> Self {
        WalArchive { archive }
    }

    /// The key prefix of the WAL of system `system_id`.
    pub fn prefix(&self, system_id: u64) -> String {
        format!("wal/{system_id}")
    }

    /// Where the WAL of system `system_id` lives, for messages (in a vault:
    /// `engines/postgres/<cluster>/wal/<system-id>`).
    pub fn location(&self, system_id: u64) -> String {
        self.archive.location(&self.prefix(system_id))
    }

    /// The key of archived file `name` of system `system_id`.
    pub fn key(&self, system_id: u64, name: &WalFileName) -> String {
        format!("{}/{:08X}/{name}", self.prefix(system_id), name.timeline)
    }

    /// Archives the file at `path` (`%p`). `data_directory` is where
    /// `global/pg_control` is read for history and backup files; `%p` is
    /// relative to it. Returns only once the object is durable.
    pub async fn push(&self, path: &Path, data_directory: &Path) -> Result<PushOutcome> {
        let full = if path.is_absolute() {
            path.to_path_buf()
        } else {
            data_directory.join(path)
        };
        let file_name = full
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::config(format!("`{}` has no file name", path.display())))?
            .to_owned();
        let name = WalFileName::parse(&file_name)?;
        let (bytes, mtime) = {
            let full = full.clone();
            tokio::task::spawn_blocking(move || -> Result<(Bytes, DateTime<Utc>)> {
                let bytes = std::fs::read(&full).map_err(|e| {
                    Error::io_doing_at("cannot read", &full, e)
                        .hint("archive_command must pass %p; run it from the data directory or give an absolute path")
                })?;
                let mtime = std::fs::metadata(&full)
                    .and_then(|m| m.modified())
                    .map_err(|e| Error::io_doing_at("cannot read the modification time of", &full, e))?;
                Ok((Bytes::from(bytes), DateTime::<Utc>::from(mtime)))
            })
            .await
            .map_err(|e| Error::from(e).context(format!("reading {file_name}")))??
        };
        let system_id = match name.kind {
            WalFileKind::Segment | WalFileKind::Partial => {
                let id = segment_system_id(&bytes, &file_name)?;
                if let Ok(control) = control_system_id(data_directory)
                    && control != id
                {
                    return Err(Error::integrity(format!(
                        "{file_name} belongs to system {id}, but the cluster at {} is system {control}",
                        data_directory.display()
                    ))
                    .hint("archive_command of each cluster must name that cluster's section (--cluster)"));
                }
                id
            }
            WalFileKind::History | WalFileKind::BackupHistory => control_system_id(data_directory)?,
        };
        let key = self.key(system_id, &name);
        let size = bytes.len() as u64;
        let commits = if name.kind == WalFileKind::Segment {
            let (bytes, full) = (bytes.clone(), full.clone());
            // A panic in the scan must not fail the push either.
            tokio::task::spawn_blocking(move || scan_pushed_segment(&bytes, &name, &full))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(segment = %name, error = %e, "the scan of the segment's records failed; archived without commit attributes");
                    None
                })
        } else {
            None
        };
        let info = WalFileInfo {
            system_id,
            mtime,
            commits,
        };
        match self
            .archive
            .put_once(&key, bytes, info.to_attributes())
            .await
        {
            Ok(PutOnce::Stored { stored_bytes }) => {
                if name.kind == WalFileKind::Segment && name.timeline > 1 {
                    self.ensure_history(system_id, name.timeline, data_directory)
                        .await?;
                }
                Ok(PushOutcome::Stored {
                    key,
                    stored: stored_bytes,
                })
            }
            Ok(PutOnce::Identical) => Ok(PushOutcome::Duplicate { key }),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                let what = if name.kind == WalFileKind::History {
                    "timeline history files are never overwritten"
                } else {
                    "an archived WAL file is never overwritten"
                };
                let archived_from = match self.header(system_id, &name).await {
                    Ok(Some(info)) => format!(
                        " (the archived one was pushed from a file modified at {})",
                        info.mtime.to_rfc3339()
                    ),
                    _ => String::new(),
                };
                Err(Error::conflict(format!(
                    "{} ({size} bytes) differs from the archived file of that name ({what}): {}{archived_from}",
                    full.display(),
                    e.message(),
                ))
                .hint("two servers are archiving the same system and timeline into this cluster's WAL archive; \
                       give each cluster its own [postgres.<name>] section, or turn archiving off on the copy"))
            }
            Err(e) => Err(e.context(format!("archiving {file_name}"))),
        }
    }

    /// Archives timeline `timeline`'s history file from `pg_wal` if the vault
    /// lacks it. A cluster promoted while archiving was off (a restored copy
    /// later made the primary) never marks its history file ready, yet later
    /// restores need it to follow the timeline.
    async fn ensure_history(
        &self,
        system_id: u64,
        timeline: u32,
        data_directory: &Path,
    ) -> Result<()> {
        let history = WalFileName::history(timeline);
        if self.header(system_id, &history).await?.is_some() {
            return Ok(());
        }
        let local = data_directory.join("pg_wal").join(history.to_string());
        if local.is_file() {
            Box::pin(self.push(&local, data_directory)).await?;
        } else {
            tracing::warn!(%history, "the timeline's history file is neither archived nor in pg_wal");
        }
        Ok(())
    }

    /// What the archive records about file `name` of system `system_id`
    /// (without reading the file), if archived.
    pub async fn header(&self, system_id: u64, name: &WalFileName) -> Result<Option<WalFileInfo>> {
        let key = self.key(system_id, name);
        match self.archive.attributes(&key).await? {
            Some(attributes) => Ok(Some(WalFileInfo::from_attributes(&attributes, &key)?)),
            None => Ok(None),
        }
    }

    /// Reads and verifies archived file `name`, returning its bytes, or `None`
    /// when it is not archived.
    pub async fn read(&self, system_id: u64, name: &WalFileName) -> Result<Option<Vec<u8>>> {
        let key = self.key(system_id, name);
        Ok(self
            .archive
            .get(&key)
            .await?
            .map(|object| Vec::from(object.bytes)))
    }

    /// Restores archived file `name` (`%f`) to `dest` (`%p`), and fetches the
    /// next `prefetch` segments of the same timeline into a spool directory
    /// beside `dest`, in parallel, so that the following calls are a rename.
    pub async fn fetch(
        &self,
        system_id: u64,
        name: &str,
        dest: &Path,
        prefetch: usize,
    ) -> Result<FetchOutcome> {
        let parsed = WalFileName::parse(name)?;
        let spool = dest
            .parent()
            .map(|p| p.join(".strata-prefetch"))
            .unwrap_or_else(|| PathBuf::from(".strata-prefetch"));
        let spooled = spool.join(name);
        // The fetched file's size is the cluster's segment size, which names
        // the segments that follow.
        // The spool is only a cache: a file that is not there (never
        // fetched, or removed meanwhile by another call's clean-up; a
        // check before the rename would race with it) is read from the
        // archive instead.
        let moved = match std::fs::rename(&spooled, dest) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(Error::io_doing_at(
                    format!("moving {} to", spooled.display()),
                    dest,
                    e,
                ));
            }
        };
        let size = if moved {
            std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0)
        } else {
            match self.read(system_id, &parsed).await? {
                Some(data) => {
                    write_atomically(dest, &data)?;
                    data.len() as u64
                }
                None => return Ok(FetchOutcome::NotFound),
            }
        };
        if parsed.kind == WalFileKind::Segment && prefetch > 0 {
            self.prefetch(system_id, &parsed, size, &spool, prefetch)
                .await;
        }
        Ok(FetchOutcome::Found)
    }

    async fn prefetch(
        &self,
        system_id: u64,
        current: &WalFileName,
        seg_size: u64,
        spool: &Path,
        count: usize,
    ) {
        // Segment numbers only need the split of the name; any segment size
        // gives the same successor as long as it matches the cluster's.
        if seg_size == 0 || !seg_size.is_power_of_two() {
            return;
        }
        if std::fs::create_dir_all(spool).is_err() {
            return;
        }
        // Old spooled segments of this timeline are no longer needed.
        let current_name = current.to_string();
        if let Ok(entries) = std::fs::read_dir(spool) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().to_string();
                if n.len() == 24 && n[..8] == current_name[..8] && n <= current_name {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let segno = current.segno(seg_size);
        let wanted: Vec<WalFileName> = (1..=count as u64)
            .map(|i| WalFileName::segment(current.timeline, segno + i, seg_size))
            .filter(|n| !spool.join(n.to_string()).exists())
            .collect();
        let results: Vec<_> = futures::stream::iter(wanted)
            .map(|n| async move { (n, self.read(system_id, &n).await) })
            .buffered(count.max(1))
            .collect()
            .await;
        for (n, result) in results {
            match result {
                Ok(Some(data)) => {
                    if let Err(e) = write_atomically(&spool.join(n.to_string()), &data) {
                        tracing::warn!(segment = %n, error = %e, "prefetch failed");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(segment = %n, error = %e, "prefetch failed");
                    break;
                }
            }
        }
    }

    /// Every archived file of system `system_id`, by timeline, in name order.
    pub async fn list(&self, system_id: u64) -> Result<BTreeMap<u32, Vec<WalFileName>>> {
        let mut out: BTreeMap<u32, Vec<WalFileName>> = BTreeMap::new();
        for entry in self.archive.list(&self.prefix(system_id)).await? {
            let Some(name) = entry.key.rsplit('/').next() else {
                continue;
            };
            if let Ok(parsed) = WalFileName::parse(name) {
                out.entry(parsed.timeline).or_default().push(parsed);
            }
        }
        for names in out.values_mut() {
            names.sort();
        }
        Ok(out)
    }

    /// The system identifiers that have WAL in this archive.
    pub async fn system_ids(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .archive
            .list("wal")
            .await?
            .iter()
            .filter_map(|entry| entry.key.split('/').nth(1)?.parse().ok())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// Writes `data` to `dest` through a temporary file and a rename, flushed.
fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    let tmp = dest.with_extension("strata-tmp");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_doing_at("writing", dest, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use strata_core::vault::{Vault, VaultArchive, VaultConfig};

    const SEG: u64 = 16 * 1024 * 1024;

    fn fake_segment(system_id: u64, fill: u8) -> Vec<u8> {
        let mut data = vec![fill; 64 * 1024];
        data[0..2].copy_from_slice(&XLOG_PAGE_MAGIC_PG15.to_le_bytes());
        data[24..32].copy_from_slice(&system_id.to_le_bytes());
        data
    }

    async fn setup() -> (tempfile::TempDir, VaultArchive, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/vault", dir.path().display());
        let vault = Vault::init(&VaultConfig::from_url(&url), None)
            .await
            .unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("global")).unwrap();
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        let mut control = vec![0u8; 512];
        control[..8].copy_from_slice(&42u64.to_le_bytes());
        std::fs::write(pgdata.join("global/pg_control"), control).unwrap();
        (dir, VaultArchive::new(vault, crate::ENGINE, "main"), pgdata)
    }

    #[tokio::test]
    async fn push_fetch_duplicates_and_conflicts() {
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        let seg = "000000010000000000000003";
        std::fs::write(pgdata.join("pg_wal").join(seg), fake_segment(42, 7)).unwrap();
        let rel = PathBuf::from("pg_wal").join(seg);
        let out = archive.push(&rel, &pgdata).await.unwrap();
        assert!(matches!(out, PushOutcome::Stored { .. }), "{out:?}");
        assert_eq!(
            archive.push(&rel, &pgdata).await.unwrap(),
            PushOutcome::Duplicate {
                key: format!("wal/42/00000001/{seg}")
            }
        );
        // Different bytes under the same name fail and name both sides.
        std::fs::write(pgdata.join("pg_wal").join(seg), fake_segment(42, 9)).unwrap();
        let err = archive.push(&rel, &pgdata).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let text = err.to_string();
        assert!(text.contains("pg_wal/000000010000000000000003"), "{text}");
        assert!(
            text.contains("engines/postgres/main/wal/42/00000001/000000010000000000000003"),
            "{text}"
        );

        // Fetch gives back the first version, byte for byte; a missing file is NotFound.
        let dest = pgdata.join("pg_wal/RECOVERYXLOG");
        assert_eq!(
            archive.fetch(42, seg, &dest, 2).await.unwrap(),
            FetchOutcome::Found
        );
        assert_eq!(std::fs::read(&dest).unwrap(), fake_segment(42, 7));
        assert_eq!(
            archive
                .fetch(42, "000000010000000000000004", &dest, 2)
                .await
                .unwrap(),
            FetchOutcome::NotFound
        );
        assert_eq!(
            archive.fetch(43, seg, &dest, 2).await.unwrap(),
            FetchOutcome::NotFound,
            "another system's WAL is never served"
        );
    }

    #[tokio::test]
    async fn history_files_are_never_overwritten() {
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        let path = pgdata.join("pg_wal/00000002.history");
        std::fs::write(&path, "1\t0/3000000\tbefore 2026-11-22\n").unwrap();
        archive.push(&path, &pgdata).await.unwrap();
        assert!(matches!(
            archive.push(&path, &pgdata).await.unwrap(),
            PushOutcome::Duplicate { .. }
        ));
        std::fs::write(&path, "1\t0/4000000\tother\n").unwrap();
        let err = archive.push(&path, &pgdata).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "{} (18 bytes) differs from the archived file of that name (timeline history files are never overwritten)",
                path.display()
            )) && text.contains("engines/postgres/main/wal/42/00000002/00000002.history"),
            "{text}"
        );
        let dest = pgdata.join("pg_wal/RECOVERYHISTORY");
        archive
            .fetch(42, "00000002.history", &dest, 0)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dest).unwrap(),
            "1\t0/3000000\tbefore 2026-11-22\n"
        );
    }

    /// A damaged archived segment is an integrity error naming its object,
    /// never "not archived": `wal-fetch` turns the one into exit 126 (recovery
    /// stops) and the other into exit 1 (recovery ends there and promotes).
    /// Prefetch leaves it unspooled, so the fetch that needs it reads it.
    /// Archives full-size segments `0000000100000000000000<i>` of system 42
    /// for each `i` of `range`, written into `pg_wal` first.
    async fn push_full_segments(archive: &WalArchive<'_>, pgdata: &Path, range: Range<u8>) {
        for i in range {
            let name = format!("0000000100000000000000{i:02X}");
            let mut data = fake_segment(42, i);
            data.resize(SEG as usize, i);
            std::fs::write(pgdata.join("pg_wal").join(&name), data).unwrap();
            archive
                .push(&pgdata.join("pg_wal").join(&name), pgdata)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_damaged_segment_is_an_integrity_error_not_a_missing_one() {
        let (dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        push_full_segments(&archive, &pgdata, 3..5).await;
        let damaged = "000000010000000000000004";
        let object = dir
            .path()
            .join("vault/engines/postgres/main/wal/42/00000001")
            .join(damaged);
        let mut bytes = std::fs::read(&object).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&object, bytes).unwrap();

        let dest = pgdata.join("pg_wal/RECOVERYXLOG");
        archive
            .fetch(42, "000000010000000000000003", &dest, 4)
            .await
            .unwrap();
        let spool = pgdata.join("pg_wal/.strata-prefetch");
        assert!(
            !spool.join(damaged).exists(),
            "a damaged segment is never spooled"
        );
        std::fs::remove_file(&dest).unwrap();
        let err = archive.fetch(42, damaged, &dest, 4).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("engines/postgres/main/wal/42/00000001/{damaged}")),
            "{err}"
        );
        assert!(!dest.exists(), "nothing was written");
    }

    #[tokio::test]
    async fn prefetch_spools_following_segments() {
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        // Real segments are SEG bytes long; the header's size drives successor names.
        push_full_segments(&archive, &pgdata, 3..6).await;
        let dest = pgdata.join("pg_wal/RECOVERYXLOG");
        archive
            .fetch(42, "000000010000000000000003", &dest, 4)
            .await
            .unwrap();
        let spool = pgdata.join("pg_wal/.strata-prefetch");
        assert!(spool.join("000000010000000000000004").is_file());
        assert!(spool.join("000000010000000000000005").is_file());
        archive
            .fetch(42, "000000010000000000000004", &dest, 4)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap()[100], 4);
        assert!(!spool.join("000000010000000000000004").exists());
        let listed = archive.list(42).await.unwrap();
        assert_eq!(listed[&1].len(), 3);
        assert_eq!(archive.system_ids().await.unwrap(), vec![42]);
    }

    #[tokio::test]
    async fn a_new_timeline_brings_its_history_file_along() {
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        std::fs::write(
            pgdata.join("pg_wal/00000002.history"),
            "1\t0/3000000\tpromoted\n",
        )
        .unwrap();
        let seg = pgdata.join("pg_wal/000000020000000000000003");
        std::fs::write(&seg, fake_segment(42, 2)).unwrap();
        archive.push(&seg, &pgdata).await.unwrap();
        let history = archive.read(42, &WalFileName::history(2)).await.unwrap();
        assert_eq!(history.as_deref(), Some(&b"1\t0/3000000\tpromoted\n"[..]));
    }

    #[tokio::test]
    async fn pushed_segments_carry_their_transaction_ends() {
        use crate::walrecords::tests::{PAGE, SEG, WalWriter, commit, heap};
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        let seg = SEG as u64;
        // Segment 3 of 8 KiB segments: two commits, then one that crosses
        // into segment 4 with its header cut by the boundary.
        let mut w = WalWriter::new(3 * seg);
        let (_, _) = w.append(&commit("2026-11-22T01:00:00Z", 0));
        let (c2, c2_end) = w.append(&commit("2026-11-22T01:00:01.5Z", 0));
        w.fill_to(SEG - 16);
        let (crossing, crossing_end) = w.append(&commit("2026-11-22T01:00:02Z", 30));
        w.append(&heap(10));
        w.pad_segment();
        let name3 = WalFileName::segment(1, 3, seg);
        let name4 = WalFileName::segment(1, 4, seg);
        let path3 = pgdata.join("pg_wal").join(name3.to_string());
        let path4 = pgdata.join("pg_wal").join(name4.to_string());
        std::fs::write(&path3, w.segment(0)).unwrap();

        // Without segment 4 in pg_wal, the crossing record is unknown.
        archive.push(&path3, &pgdata).await.unwrap();
        let info = archive.header(42, &name3).await.unwrap().unwrap();
        let commits = info.commits.expect("scanned");
        assert!(!commits.complete);
        assert_eq!(
            commits.first_time,
            Some("2026-11-22T01:00:00Z".parse().unwrap())
        );
        assert_eq!(
            commits.last_time,
            Some("2026-11-22T01:00:01.5Z".parse().unwrap())
        );
        assert_eq!(commits.last.map(|l| (l.lsn, l.end_lsn)), Some((c2, c2_end)));
        assert_eq!(commits.crossing, None);
        let attributes = store
            .attributes(&archive.key(42, &name3))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            attributes[LAST_COMMIT_TIME_ATTRIBUTE],
            "2026-11-22T01:00:01.500000Z"
        );
        assert_eq!(attributes[LAST_COMMIT_LSN_ATTRIBUTE], c2.to_string());

        // With the start of segment 4 beside it in pg_wal, it is read from there.
        std::fs::write(&path4, &w.bytes[SEG..(SEG + PAGE).min(w.bytes.len())]).unwrap();
        let scanned = scan_pushed_segment(w.segment(0), &name3, &path3).unwrap();
        assert!(scanned.complete);
        let crossed = scanned.crossing.expect("a crossing commit");
        assert_eq!((crossed.lsn, crossed.end_lsn), (crossing, crossing_end));
        assert_eq!(
            crossed.time,
            "2026-11-22T01:00:02Z".parse::<DateTime<Utc>>().unwrap()
        );
        let mut attributes = Attributes::new();
        scanned.add_attributes(&mut attributes);
        assert_eq!(SegmentCommits::from_attributes(&attributes), Some(scanned));

        // A segment Strata cannot read is archived without commit attributes.
        let name5 = WalFileName::segment(1, 5, seg);
        let path5 = pgdata.join("pg_wal").join(name5.to_string());
        std::fs::write(&path5, fake_segment(42, 5)).unwrap();
        archive.push(&path5, &pgdata).await.unwrap();
        let info = archive.header(42, &name5).await.unwrap().unwrap();
        assert_eq!(info.commits, None);
        // Malformed commit attributes read as unscanned.
        let mut attributes =
            Attributes::from([(COMMIT_SCAN_ATTRIBUTE.to_owned(), "complete".to_owned())]);
        attributes.insert(
            LAST_COMMIT_TIME_ATTRIBUTE.to_owned(),
            "yesterday".to_owned(),
        );
        assert_eq!(SegmentCommits::from_attributes(&attributes), None);
    }

    #[tokio::test]
    async fn a_foreign_segment_is_refused() {
        let (_dir, store, pgdata) = setup().await;
        let archive = WalArchive::new(&store);
        let path = pgdata.join("pg_wal/000000010000000000000003");
        std::fs::write(&path, fake_segment(7, 1)).unwrap();
        let err = archive.push(&path, &pgdata).await.unwrap_err();
        assert!(err.to_string().contains("belongs to system 7"), "{err}");
    }
}

//! Differential and incremental backups: what changed since a base backup,
//! page by page.
//!
//! PostgreSQL 15 has no incremental backup of its own, so Strata takes
//! them the way pg_probackup's DELTA mode and WAL-G's delta backups do: a
//! full read of the cluster that stores only what the page LSNs cannot
//! vouch for. A **differential** builds on the newest full backup, an
//! **incremental** on the newest data backup of any kind; a restore lays
//! down the full, applies each backup built on it in order, and replays
//! WAL from the start LSN of the last one only.
//!
//! # The rules (`reference/postgres.md` section 4.5)
//!
//! For each file the backup lists (the exclusions of a full backup apply):
//! - A **relation file of the main fork** (`16384`, `16384.1`, see
//!   [`main_fork_segment`]) that the base holds under the same path and the
//!   same [`FileIdentity`], in a database whose `pg_database` row did not
//!   change, is stored as a **pages** entry: its size now (a truncation or
//!   an extension is replayed exactly, 4.5.3) and the pages
//!   [`page_change`] finds changed since the base's start LSN (new and
//!   zeroed pages, torn or damaged ones, pages newer than that LSN) or past
//!   the base's size.
//! - Everything else is stored **whole**: the `_fsm`, `_vm` and `_init`
//!   forks (the free space map is not WAL-logged, and clearing a
//!   visibility-map bit does not move its page's LSN: 4.5.6), every
//!   non-relation file, files that are new or whose identity changed
//!   (4.5.3: a relfilenode reused after OID wraparound; 4.5.4: `CREATE
//!   DATABASE ... STRATEGY FILE_COPY` copies pages that keep the template's
//!   old LSNs), and every file of a database whose `pg_database` row
//!   changed (a database dropped and re-created under the same OID, 4.5.4 (b)).
//! - A file or directory of the base that is gone is recorded as
//!   **removed**, so that a restore does not resurrect it (4.5.3).
//! - Unlogged relations are left out as in a full, their `_init` fork kept
//!   (4.5.2).
//! - Pages must not change without their LSN moving (4.5.1): with neither
//!   data checksums nor `wal_log_hints`, hint bits and VACUUM's all-visible
//!   page flag are set without WAL, and a restore could pair a visibility
//!   map with heap pages that disagree with it. Differentials are refused
//!   then, and on a base taken so (`backup::hint_bits_logged`). With them,
//!   the first hint bit set on a page after a checkpoint logs a full-page
//!   image, so the first differential after a bulk load that was then read
//!   or vacuumed holds most of its pages.
//! - A timeline switch is accepted only when the base lies on the current
//!   timeline's history before the switch (4.5.9); otherwise, and for a
//!   base of another system, the backup is refused.
//! - `wal_level = minimal` periods (4.5.10) skip WAL only for relfilenodes
//!   created in the same transaction: new files, which are stored whole.
//!
//! # The file index
//!
//! Every backup stores the list of what it holds, with each file's size
//! and identity, as the stream [`FILE_INDEX_STREAM`], sorted by path bytes
//! so that a later backup compares its own sorted listing with it in one
//! pass. `global/pg_control`, which every backup stores, is not in it.
//!
//! ```text
//! index := "SPGI" version:u8 (1) entry* end
//! entry := kind:u8 (1 = file, 2 = directory) path_len:u16 path:[u8; path_len]
//!          size:u64 inode:u64 born_ns:i64
//! end   := kind:u8 (0)
//! ```
//!
//! Integers are little-endian; `born_ns` is the file's creation time
//! (`statx` birth time) in nanoseconds since the Unix epoch, 0 where the
//! file system does not record one.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use strata_core::{Error, Result};

use crate::bundle::{BundleOut, PageSink};
use crate::pages::{PAGE_SIZE, PAGES_PER_SEGMENT, PageChange, main_fork_segment, page_change};

/// The stream holding a backup's file index.
pub const FILE_INDEX_STREAM: &str = "file_index";
/// The stream of a differential's removed entries (a bundle), applied
/// before its data streams.
pub const REMOVED_STREAM: &str = "removed";

const INDEX_MAGIC: &[u8; 4] = b"SPGI";
const INDEX_VERSION: u8 = 1;
const INDEX_END: u8 = 0;
const INDEX_FILE: u8 = 1;
const INDEX_DIR: u8 = 2;
/// How much of a relation file is read at once: the length of the buffer
/// [`scan_pages`] reads into.
pub const READ_CHUNK: usize = 1 << 20;

/// What tells a file from another one later created under the same path:
/// its inode number and, where the file system records it, its birth time
/// (an inode number alone can be reused as soon as it is freed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileIdentity {
    /// `st_ino`.
    pub inode: u64,
    /// Birth time in nanoseconds since the Unix epoch; 0 when unknown.
    pub born_ns: i64,
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(0);
        FileIdentity {
            inode: meta.ino(),
            born_ns,
        }
    }

    /// Whether both describe the same file (a birth time known on one side
    /// only does not tell them apart).
    pub fn same_file(&self, other: &FileIdentity) -> bool {
        self.inode == other.inode
            && (self.born_ns == other.born_ns || self.born_ns == 0 || other.born_ns == 0)
    }
}

/// One entry of a file index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry<'a> {
    /// Path relative to the data directory, as bytes.
    pub path: &'a [u8],
    /// A directory (size and identity unused) or a file.
    pub is_dir: bool,
    /// The size the backup stored.
    pub size: u64,
    /// The file's identity when it was listed.
    pub identity: FileIdentity,
}

/// Encodes `entries` as a file index, sorted by path bytes.
pub fn encode_index(mut entries: Vec<IndexEntry<'_>>) -> Vec<u8> {
    entries.sort_by(|a, b| a.path.cmp(b.path));
    let mut out = Vec::with_capacity(5 + entries.len() * 48);
    out.extend_from_slice(INDEX_MAGIC);
    out.push(INDEX_VERSION);
    for e in entries {
        out.push(if e.is_dir { INDEX_DIR } else { INDEX_FILE });
        // Paths come from bundle entries, whose length is a u16 too.
        let len = u16::try_from(e.path.len()).expect("a path of at most 65535 bytes");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e.path);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.identity.inode.to_le_bytes());
        out.extend_from_slice(&e.identity.born_ns.to_le_bytes());
    }
    out.push(INDEX_END);
    out
}

/// Reads a file index entry by entry, checking its order.
pub struct IndexReader<'a> {
    bytes: &'a [u8],
    at: usize,
    origin: String,
    last: Option<&'a [u8]>,
    done: bool,
}

impl<'a> IndexReader<'a> {
    /// A reader of `bytes`, the index of backup `origin` (named in errors).
    pub fn new(bytes: &'a [u8], origin: &str) -> Result<Self> {
        let reader = IndexReader {
            bytes,
            at: 5,
            origin: origin.to_owned(),
            last: None,
            done: false,
        };
        if bytes.len() < 5 || &bytes[..4] != INDEX_MAGIC {
            return Err(reader.corrupt("no index header"));
        }
        if bytes[4] != INDEX_VERSION {
            return Err(reader.corrupt(&format!(
                "version {} (written by a newer Strata?)",
                bytes[4]
            )));
        }
        Ok(reader)
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::integrity(format!(
            "the file index of backup {} is damaged: {what}",
            self.origin
        ))
        .hint("run `strata verify` on it; take a full backup to start a new chain")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let bytes: &'a [u8] = self.bytes;
        let piece = bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| self.corrupt("truncated"))?;
        self.at += n;
        Ok(piece)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// The next entry, `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<IndexEntry<'a>>> {
        if self.done {
            return Ok(None);
        }
        let kind = self.take(1)?[0];
        let is_dir = match kind {
            INDEX_END => {
                self.done = true;
                return Ok(None);
            }
            INDEX_FILE => false,
            INDEX_DIR => true,
            other => return Err(self.corrupt(&format!("unknown entry kind {other}"))),
        };
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let path = self.take(len)?;
        if self.last.is_some_and(|last| last >= path) {
            return Err(self.corrupt("entries out of order"));
        }
        self.last = Some(path);
        let size = self.u64()?;
        let inode = self.u64()?;
        let born_ns = self.u64()? as i64;
        Ok(Some(IndexEntry {
            path,
            is_dir,
            size,
            identity: FileIdentity { inode, born_ns },
        }))
    }
}

/// A database as `pg_database` knew it when a backup started: a row that
/// changed (its `xmin` moved) under the same OID may be a database dropped
/// and re-created, whose files a differential must store whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DatabaseIdentity {
    /// `pg_database.oid`: the name of its directory under `base/`.
    pub oid: u32,
    /// The `xmin` of its `pg_database` row.
    pub xmin: u32,
}

/// The OIDs of the databases of `now` whose row is not the one the base saw.
pub fn changed_databases(base: &[DatabaseIdentity], now: &[DatabaseIdentity]) -> HashSet<u32> {
    let before: BTreeMap<u32, u32> = base.iter().map(|d| (d.oid, d.xmin)).collect();
    now.iter()
        .filter(|d| before.get(&d.oid) != Some(&d.xmin))
        .map(|d| d.oid)
        .collect()
}

/// The database OID of a file in a database directory (`base/<oid>/...`,
/// `pg_tblspc/<spc>/<version>/<oid>/...`).
fn database_of(rel: &[u8]) -> Option<u32> {
    let mut parts = rel.split(|&b| b == b'/');
    let oid = match parts.next()? {
        b"base" => parts.next()?,
        b"pg_tblspc" => parts.nth(2)?,
        _ => return None,
    };
    std::str::from_utf8(oid).ok()?.parse().ok()
}

/// How a differential stores one listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Whole (a file), or as a directory entry.
    Whole,
    /// A pages entry against the base's copy of `base_size` bytes.
    Pages {
        /// The size of the file in the base.
        base_size: u64,
    },
}

/// An entry of the current listing, as [`compare_with_base`] sees it.
pub struct Listed<'a> {
    /// Path relative to the data directory.
    pub rel: &'a Path,
    /// A directory.
    pub is_dir: bool,
    /// Its size now.
    pub size: u64,
    /// Its identity now.
    pub identity: FileIdentity,
}

/// Compares the current listing, sorted by path bytes, with the base's
/// file index: how each listed entry is stored (in the listing's order),
/// and the paths of the base that are gone (a directory's contents are not
/// named when the directory itself is).
pub fn compare_with_base(
    listed: &[Listed<'_>],
    index: &mut IndexReader<'_>,
    changed_dbs: &HashSet<u32>,
) -> Result<(Vec<Stored>, Vec<Vec<u8>>)> {
    let mut copies = Vec::with_capacity(listed.len());
    let mut removed: Vec<Vec<u8>> = Vec::new();
    let mut removed_dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut gone = |entry: &IndexEntry<'_>, removed: &mut Vec<Vec<u8>>| {
        let path = Path::new(std::ffi::OsStr::from_bytes(entry.path));
        let inside_removed = path
            .ancestors()
            .skip(1)
            .any(|a| removed_dirs.contains(a.as_os_str().as_bytes()));
        if !inside_removed {
            removed.push(entry.path.to_vec());
            if entry.is_dir {
                removed_dirs.insert(entry.path.to_vec());
            }
        }
    };
    let mut base = index.next_entry()?;
    for now in listed {
        let path = now.rel.as_os_str().as_bytes();
        while let Some(old) = base.as_ref().filter(|old| old.path < path) {
            gone(old, &mut removed);
            base = index.next_entry()?;
        }
        let same = base.as_ref().filter(|old| old.path == path);
        let copy = match same {
            Some(old) if old.is_dir != now.is_dir => {
                // A file became a directory or the other way round: the
                // base's entry goes first (removed entries apply before
                // the data streams).
                gone(old, &mut removed);
                Stored::Whole
            }
            Some(old)
                if !now.is_dir
                    && old.identity.same_file(&now.identity)
                    && old.size.is_multiple_of(PAGE_SIZE as u64)
                    && now.size.is_multiple_of(PAGE_SIZE as u64)
                    && now.rel.to_str().and_then(main_fork_segment).is_some()
                    && !database_of(path).is_some_and(|db| changed_dbs.contains(&db)) =>
            {
                Stored::Pages {
                    base_size: old.size,
                }
            }
            _ => Stored::Whole,
        };
        if same.is_some() {
            base = index.next_entry()?;
        }
        copies.push(copy);
    }
    while let Some(old) = base {
        gone(&old, &mut removed);
        base = index.next_entry()?;
    }
    Ok((copies, removed))
}

/// What the page scans of a differential found, per cause of a stored page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaReport {
    /// The backup this one applies on.
    pub base: String,
    /// The base's start LSN: pages at or past it are stored.
    pub since_lsn: String,
    /// Files stored whole.
    pub whole_files: u64,
    /// Relation files scanned and stored as pages entries.
    pub paged_files: u64,
    /// Pages of those files read.
    pub pages_scanned: u64,
    /// Pages of those files stored.
    pub pages_stored: u64,
    /// Stored because their LSN is at or past `since_lsn`.
    pub pages_newer: u64,
    /// Stored because PostgreSQL had not initialised them (`pd_upper == 0`).
    pub pages_new: u64,
    /// Stored because they lie past the file's size in the base.
    pub pages_extended: u64,
    /// Stored because the header is not sane (torn or damaged).
    pub pages_bad_header: u64,
    /// Stored because the checksum failed under an old LSN (torn or damaged).
    pub pages_bad_checksum: u64,
    /// Files and directories of the base that are gone.
    pub removed: u64,
}

impl DeltaReport {
    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &DeltaReport) {
        self.whole_files += other.whole_files;
        self.paged_files += other.paged_files;
        self.pages_scanned += other.pages_scanned;
        self.pages_stored += other.pages_stored;
        self.pages_newer += other.pages_newer;
        self.pages_new += other.pages_new;
        self.pages_extended += other.pages_extended;
        self.pages_bad_header += other.pages_bad_header;
        self.pages_bad_checksum += other.pages_bad_checksum;
        self.removed += other.removed;
    }

    fn count(&mut self, change: Option<PageChange>, extended: bool) -> bool {
        self.pages_scanned += 1;
        let counter = if extended {
            &mut self.pages_extended
        } else {
            match change {
                None => return false,
                Some(PageChange::Newer) => &mut self.pages_newer,
                Some(PageChange::New) => &mut self.pages_new,
                Some(PageChange::BadHeader) => &mut self.pages_bad_header,
                Some(PageChange::BadChecksum) => &mut self.pages_bad_checksum,
            }
        };
        *counter += 1;
        self.pages_stored += 1;
        true
    }
}

/// What a scan needs to know of the base and the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    /// The base's start LSN.
    pub lsn: u64,
    /// Whether the cluster has data checksums.
    pub checksums: bool,
}

/// Reads relation file `file` (`rel`, `size` bytes when listed; `base_size`
/// in the base) through `buf` ([`READ_CHUNK`] bytes, reused from file to
/// file) and gives its changed pages to `sink`. Returns the blocks (of this
/// file) whose checksum failed twice under an old LSN: damaged, stored as
/// read and reported as a full backup reports them.
#[allow(clippy::too_many_arguments)]
pub fn scan_pages<W: BundleOut>(
    file: &std::fs::File,
    rel: &str,
    size: u64,
    base_size: u64,
    since: Since,
    buf: &mut [u8],
    sink: &mut PageSink<'_, W>,
    report: &mut DeltaReport,
) -> std::io::Result<Vec<u64>> {
    let first_block = main_fork_segment(rel).unwrap_or(0) * PAGES_PER_SEGMENT;
    let mut damaged = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(buf.len() as u64) as usize;
        let got = read_at_most(file, &mut buf[..want], offset)?;
        // A file truncated while it is read: the rest is stored as zeros
        // (new pages), and WAL replay truncates it again.
        buf[got..want].fill(0);
        for (i, page) in buf[..want].chunks_exact_mut(PAGE_SIZE).enumerate() {
            let page: &mut [u8; PAGE_SIZE] = page.try_into().expect("a whole page");
            let block = offset / PAGE_SIZE as u64 + i as u64;
            let at = block * PAGE_SIZE as u64;
            let extended = at >= base_size;
            let mut change = page_change(page, first_block + block, since.lsn, since.checksums);
            if change == Some(PageChange::BadChecksum) {
                // Read again once: it may have been written while it was read.
                if file.read_exact_at(page, at).is_ok() {
                    change = page_change(page, first_block + block, since.lsn, since.checksums);
                }
                if change == Some(PageChange::BadChecksum) {
                    damaged.push(block);
                }
            }
            if report.count(change, extended) {
                let number = u32::try_from(block).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{rel} has more than 2^32 pages"),
                    )
                })?;
                sink.page(number, page)?;
            }
        }
        offset += want as u64;
    }
    Ok(damaged)
}

/// Reads into `buf` from `offset` until it is full or the file ends.
fn read_at_most(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(inode: u64) -> FileIdentity {
        FileIdentity {
            inode,
            born_ns: 1_000 + inode as i64,
        }
    }

    fn entry(path: &str, is_dir: bool, size: u64, identity: FileIdentity) -> IndexEntry<'_> {
        IndexEntry {
            path: path.as_bytes(),
            is_dir,
            size,
            identity,
        }
    }

    #[test]
    fn the_index_round_trips_sorted_by_path_bytes() {
        let index = encode_index(vec![
            entry("base/5/16384.1", false, 8192, id(3)),
            entry("base/5", true, 0, FileIdentity::default()),
            entry("base/5/16384", false, 16384, id(2)),
        ]);
        let mut reader = IndexReader::new(&index, "b1").unwrap();
        let mut paths = Vec::new();
        while let Some(e) = reader.next_entry().unwrap() {
            paths.push((
                String::from_utf8(e.path.to_vec()).unwrap(),
                e.size,
                e.identity,
            ));
        }
        assert_eq!(
            paths,
            [
                ("base/5".to_owned(), 0, FileIdentity::default()),
                ("base/5/16384".to_owned(), 16384, id(2)),
                ("base/5/16384.1".to_owned(), 8192, id(3)),
            ]
        );
        // Damage is named, never read as an empty index.
        for bad in [
            &index[..index.len() - 1],
            &index[..3],
            b"SPGI\x09\x00".as_slice(),
        ] {
            let err = IndexReader::new(bad, "b1").and_then(|mut r| {
                while r.next_entry()?.is_some() {}
                Ok(())
            });
            let err = err.unwrap_err();
            assert_eq!(err.kind(), strata_core::ErrorKind::Integrity);
            assert!(err.to_string().contains("file index of backup b1"), "{err}");
        }
    }

    #[test]
    fn each_file_is_stored_by_the_rules_and_the_gone_ones_are_removed() {
        let index = encode_index(vec![
            entry("PG_VERSION", false, 3, id(1)),
            entry("base", true, 0, id(0)),
            entry("base/5", true, 0, id(0)),
            entry("base/5/16384", false, 16384, id(10)),
            entry("base/5/16384_vm", false, 8192, id(11)),
            entry("base/5/16385", false, 8192, id(12)),
            entry("base/5/16386", false, 8192, id(13)),
            entry("base/6", true, 0, id(0)),
            entry("base/6/2000", false, 8192, id(20)),
            entry("base/7", true, 0, id(0)),
            entry("base/7/3000", false, 8192, id(30)),
            entry("base/7/3001", false, 8192, id(31)),
            entry("base/8", true, 0, id(0)),
            entry("base/8/4000", false, 8192, id(40)),
        ]);
        let listed = [
            ("PG_VERSION", false, 3, id(1)),
            ("base", true, 0, id(0)),
            ("base/5", true, 0, id(0)),
            // Grew: pages against the base's 16384 bytes.
            ("base/5/16384", false, 24576, id(10)),
            ("base/5/16384_vm", false, 8192, id(11)),
            // Same path, another file (a relfilenode reused).
            ("base/5/16385", false, 8192, id(99)),
            // base/5/16386 dropped.
            ("base/5/16387", false, 8192, id(14)),
            ("base/6", true, 0, id(0)),
            ("base/6/2000", false, 8192, id(20)),
            // base/7 dropped with its files.
            // base/8 re-created under the same OID (pg_database row changed).
            ("base/8", true, 0, id(0)),
            ("base/8/4000", false, 8192, id(40)),
        ];
        let listed: Vec<Listed> = listed
            .iter()
            .map(|(rel, is_dir, size, identity)| Listed {
                rel: Path::new(rel),
                is_dir: *is_dir,
                size: *size,
                identity: *identity,
            })
            .collect();
        let mut reader = IndexReader::new(&index, "b1").unwrap();
        let changed = changed_databases(
            &[
                DatabaseIdentity { oid: 6, xmin: 1 },
                DatabaseIdentity { oid: 8, xmin: 1 },
            ],
            &[
                DatabaseIdentity { oid: 6, xmin: 1 },
                DatabaseIdentity { oid: 8, xmin: 7 },
            ],
        );
        assert_eq!(changed, HashSet::from([8]));
        let (copies, removed) = compare_with_base(&listed, &mut reader, &changed).unwrap();
        let shown: Vec<(&str, Stored)> = listed
            .iter()
            .map(|l| l.rel.to_str().unwrap())
            .zip(copies)
            .collect();
        assert_eq!(
            shown,
            [
                ("PG_VERSION", Stored::Whole),
                ("base", Stored::Whole),
                ("base/5", Stored::Whole),
                ("base/5/16384", Stored::Pages { base_size: 16384 }),
                ("base/5/16384_vm", Stored::Whole),
                ("base/5/16385", Stored::Whole),
                ("base/5/16387", Stored::Whole),
                ("base/6", Stored::Whole),
                ("base/6/2000", Stored::Pages { base_size: 8192 }),
                ("base/8", Stored::Whole),
                ("base/8/4000", Stored::Whole),
            ]
        );
        let removed: Vec<String> = removed
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(removed, ["base/5/16386", "base/7"]);
    }

    #[test]
    fn database_directories_are_found_in_base_and_tablespaces() {
        assert_eq!(database_of(b"base/16384/2619"), Some(16384));
        assert_eq!(
            database_of(b"pg_tblspc/16400/PG_15_202209061/16384/2619"),
            Some(16384)
        );
        assert_eq!(database_of(b"global/1262"), None);
        assert_eq!(database_of(b"base/pgsql_tmp/x"), None);
    }

    #[test]
    fn an_inode_reused_for_a_new_file_is_another_file() {
        let before = FileIdentity {
            inode: 7,
            born_ns: 100,
        };
        assert!(before.same_file(&before));
        assert!(!before.same_file(&FileIdentity {
            inode: 7,
            born_ns: 200
        }));
        assert!(before.same_file(&FileIdentity {
            inode: 7,
            born_ns: 0
        }));
        assert!(!before.same_file(&FileIdentity {
            inode: 8,
            born_ns: 100
        }));
    }
}

//! Full, differential and incremental backups with the non-exclusive
//! low-level API (what a differential stores is [`crate::delta`]'s).
//!
//! 1. On one session: `pg_backup_start(label, fast => true)`.
//! 2. List the data directory and every tablespace (following the
//!    `pg_tblspc` links), leaving out what `basebackup.c` leaves out, and
//!    split the files over `parallel` streams of roughly equal size. Each
//!    stream is a [`crate::bundle`] read by its own thread and written into the
//!    vault as it is read: nothing is staged on local disk.
//!    A differential first reads its base's file index, and after the
//!    listing stores the base's gone files as the stream `removed`; every
//!    backup stores its own file index (`file_index`).
//! 3. Copy `global/pg_control` last, in its own stream.
//! 4. On the same session: `pg_backup_stop(wait_for_archive => false)`, and
//!    store the returned `backup_label` and `tablespace_map` byte for byte,
//!    as the streams `backup_label` and `tablespace_map`. PostgreSQL's own
//!    wait polls the archiver once a second; step 5 waits for the same thing
//!    by watching the vault, which is both stricter and quicker.
//! 5. Wait until every WAL segment from the start LSN to the stop LSN is in the
//!    vault's WAL archive. Only then is the outcome returned, and the caller
//!    commits the manifest: a backup whose WAL is missing never becomes
//!    restorable. If the session is lost (a server restart, a dropped
//!    connection) `pg_backup_stop` fails, and so does the backup.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_core::error::pipe_outcome;
use strata_core::plugin::{BackupOutcome, BackupSink, StreamDigest};
use strata_core::{Error, IoResultExt, Result};

use crate::bundle::{BundleWriter, DIRECT_MIN, PartWriter, StoredFile};
use crate::check::{connect, pg_error};
use crate::config::ClusterConfig;
use crate::delta::{
    DatabaseIdentity, DeltaReport, FILE_INDEX_STREAM, FileIdentity, IndexEntry, IndexReader,
    Listed, REMOVED_STREAM, Since, Stored, changed_databases, compare_with_base, encode_index,
    scan_pages,
};
use crate::pages::{PageCheck, PageReport, relation_segment};
use crate::wal::WalArchive;
use crate::walname::{Lsn, WalFileName, segno_of};

/// The name of the stream holding `global/pg_control`.
pub const PG_CONTROL_STREAM: &str = "pg_control";
/// The stream holding the `backup_label` PostgreSQL returned.
pub const BACKUP_LABEL_STREAM: &str = "backup_label";
/// The stream holding the `tablespace_map` PostgreSQL returned (may be empty).
pub const TABLESPACE_MAP_STREAM: &str = "tablespace_map";

/// The PostgreSQL details of a full backup, stored as the manifest's `engine_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    /// The cluster's system identifier (decimal).
    pub system_id: String,
    /// `server_version_num` (e.g. 150018).
    pub server_version_num: u32,
    /// `server_version` as text.
    pub server_version: String,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// The start LSN (`pg_backup_start`).
    pub start_lsn: String,
    /// The stop LSN (`pg_backup_stop`).
    pub stop_lsn: String,
    /// When the backup started.
    pub start_time: DateTime<Utc>,
    /// When `pg_backup_stop` returned: the earliest time a restore of this backup can reach.
    pub stop_time: DateTime<Utc>,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// Whether data checksums are on.
    pub data_checksums: bool,
    /// Whether `wal_log_hints` was on; `None` for backups made before it
    /// was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_log_hints: Option<bool>,
    /// The `backup_label` PostgreSQL returned.
    pub backup_label: String,
    /// The `tablespace_map` PostgreSQL returned (empty without tablespaces).
    pub tablespace_map: String,
    /// The tablespaces (OID and location at backup time).
    pub tablespaces: Vec<Tablespace>,
    /// The data streams, in the order they were written.
    pub data_streams: Vec<String>,
    /// How many files the backup holds (directories not counted). Each
    /// file's path, size and checksum are in its bundle stream, so a
    /// manifest stays small, and reading it cheap, whatever the file count.
    #[serde(default)]
    pub file_count: u64,
    /// Every stored file, as backups made before `file_count` listed them
    /// (read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<StoredFile>,
    /// What the page checksum verification found; `None` when the cluster
    /// has no data checksums (or for backups made before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_check: Option<PageReport>,
    /// The databases (`pg_database` OID and row `xmin`) when the backup
    /// started: a later differential stores whole every file of a database
    /// whose row changed (see [`crate::delta`]). Empty for backups made
    /// before differentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseIdentity>,
    /// For a differential or incremental: the backup it applies on and what
    /// its page scans stored; `None` for a full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaReport>,
}

/// A tablespace at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Its OID (the name of its link in `pg_tblspc`).
    pub oid: String,
    /// Its location as text (what `--tablespace-map OLD=...` matches); bytes
    /// that are not UTF-8 show as U+FFFD here and are kept in `path_hex`.
    pub path: String,
    /// The location's bytes in lowercase hex, present only when they are
    /// not UTF-8 (a cluster whose encoding is `SQL_ASCII`): the link target
    /// exactly as the file system gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

impl Tablespace {
    /// The tablespace `oid` at `location`, kept losslessly.
    pub fn new(oid: String, location: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let bytes = location.as_os_str().as_bytes();
        Tablespace {
            oid,
            path: String::from_utf8_lossy(bytes).into_owned(),
            path_hex: std::str::from_utf8(bytes)
                .is_err()
                .then(|| hex::encode(bytes)),
        }
    }

    /// Its location, byte for byte.
    pub fn location(&self) -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        match self.path_hex.as_deref().and_then(|h| hex::decode(h).ok()) {
            Some(bytes) => PathBuf::from(std::ffi::OsString::from_vec(bytes)),
            None => PathBuf::from(&self.path),
        }
    }
}

impl BackupMeta {
    /// How many files the backup holds.
    pub fn files(&self) -> u64 {
        self.file_count.max(self.files.len() as u64)
    }

    /// Reads the metadata back from a manifest's `engine_meta`.
    pub fn from_manifest(manifest: &strata_core::catalog::manifest::Manifest) -> Result<Self> {
        serde_json::from_value(manifest.engine_meta.clone()).map_err(|e| {
            Error::integrity(format!(
                "backup {} has no valid PostgreSQL details: {e}",
                manifest.id
            ))
        })
    }

    /// The system identifier as a number.
    pub fn system_id(&self) -> u64 {
        self.system_id.parse().unwrap_or_default()
    }

    /// The start LSN.
    pub fn start(&self) -> Lsn {
        self.start_lsn.parse().unwrap_or_default()
    }

    /// The stop LSN.
    pub fn stop(&self) -> Lsn {
        self.stop_lsn.parse().unwrap_or_default()
    }
}

/// Options of a full backup.
#[derive(Debug, Clone)]
pub struct FullBackupOptions {
    /// The label given to `pg_backup_start`.
    pub label: String,
    /// Request an immediate checkpoint (`fast => true`).
    pub fast_checkpoint: bool,
    /// Number of data streams read in parallel.
    pub parallel: usize,
    /// How long to wait for the WAL up to the stop LSN to appear in the
    /// vault (`archive_wait` of the cluster's configuration).
    pub wal_wait: Duration,
}

/// A file to copy.
#[derive(Debug, Clone)]
struct SourceFile {
    /// Relative to the data directory: the bytes the file system gave. The
    /// file is read at the data directory joined with it (through the
    /// `pg_tblspc` links for tablespaces), so no second path is kept: a
    /// cluster of a million files is listed in about 80 MB.
    rel: Box<Path>,
    size: u64,
    mode: u32,
    is_dir: bool,
    /// Inode and birth time, which a later differential compares.
    identity: FileIdentity,
    /// How the backup stores it: whole, except in a differential.
    stored: Stored,
}

impl SourceFile {
    fn dir(rel: impl Into<Box<Path>>, mode: u32) -> Self {
        SourceFile {
            rel: rel.into(),
            size: 0,
            mode,
            is_dir: true,
            identity: FileIdentity::default(),
            stored: Stored::Whole,
        }
    }

    fn file(rel: impl Into<Box<Path>>, meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::PermissionsExt;
        SourceFile {
            rel: rel.into(),
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            is_dir: false,
            identity: FileIdentity::of(meta),
            stored: Stored::Whole,
        }
    }
}

/// Directories whose contents `basebackup.c` leaves out (the directory itself is kept).
const EXCLUDE_DIR_CONTENTS: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_wal",
];

/// Files left out at the top of the data directory.
const EXCLUDE_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
    // The server log of the restore that made this cluster (`restore pg
    // --start`): Strata's, not the database's.
    crate::restore::RESTORE_LOG,
];

fn excluded_name(name: &str) -> bool {
    name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init")
}

/// Whether `name` in a database directory is a temporary relation (`t<backend>_<relfilenode>...`).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && rel.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// The relfilenode of a relation file name (`16384`, `16384.1`, `16384_fsm`...).
fn relfilenode(name: &str) -> Option<&str> {
    let end = name.find(['.', '_']).unwrap_or(name.len());
    let node = &name[..end];
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some(node)
}

fn is_database_dir(rel: &Path) -> bool {
    let Some(rel) = rel.to_str() else {
        return false;
    };
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["base", db] => db.bytes().all(|b| b.is_ascii_digit()),
        ["pg_tblspc", _, _, db] => db.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// Lists what a full backup copies, applying `basebackup.c`'s exclusions.
/// Returns the entries (directories and files, `global/pg_control` not
/// included) and the tablespaces found in `pg_tblspc`.
fn list_cluster(data_dir: &Path) -> Result<(Vec<SourceFile>, Vec<Tablespace>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut tablespaces = Vec::new();
    // (relative dir, absolute dir)
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(PathBuf::new(), data_dir.to_path_buf())];
    while let Some((rel_dir, abs_dir)) = stack.pop() {
        let read = match std::fs::read_dir(&abs_dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::io_doing_at("cannot list", &abs_dir, e).hint(
                    "Strata must run as the cluster's OS user (or root) to read the data directory",
                ));
            }
        };
        // Names are bytes: one that is not UTF-8 is copied like any other
        // (`pg_basebackup` does); the rules below only match ASCII names.
        let mut names: Vec<std::ffi::OsString> =
            read.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        let in_db = is_database_dir(&rel_dir);
        let unlogged: HashSet<String> = if in_db {
            names
                .iter()
                .filter_map(|n| n.to_str()?.strip_suffix("_init").map(|r| r.to_owned()))
                .collect()
        } else {
            HashSet::new()
        };
        let at_top = rel_dir.as_os_str().is_empty();
        for name in names {
            let abs = abs_dir.join(&name);
            let rel = rel_dir.join(&name);
            let text = name.to_str().unwrap_or_default();
            if excluded_name(text) || (at_top && EXCLUDE_FILES.contains(&text)) {
                continue;
            }
            if rel == Path::new("global/pg_control") {
                continue;
            }
            if in_db {
                if is_temp_relation(text) {
                    continue;
                }
                if let Some(node) = relfilenode(text)
                    && unlogged.contains(node)
                    && !text.ends_with("_init")
                {
                    continue;
                }
            }
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io_doing_at("cannot stat", &abs, e)),
            };
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                if rel_dir == Path::new("pg_tblspc") {
                    let target = std::fs::read_link(&abs).doing_at("cannot read link", &abs)?;
                    tablespaces.push(Tablespace::new(
                        name.to_string_lossy().into_owned(),
                        &target,
                    ));
                    out.push(SourceFile::dir(rel.clone(), 0o700));
                    stack.push((rel, target));
                    continue;
                }
                // Other links (a symlinked pg_wal, log directory): follow them.
                let target = std::fs::metadata(&abs);
                match target {
                    Ok(m) if m.is_dir() => {
                        out.push(SourceFile::dir(
                            rel.clone(),
                            m.permissions().mode() & 0o7777,
                        ));
                        if !(at_top && EXCLUDE_DIR_CONTENTS.contains(&text)) {
                            stack.push((rel, abs));
                        } else if text == "pg_wal" {
                            out.push(archive_status_dir(&rel));
                        }
                    }
                    Ok(m) if m.is_file() => out.push(SourceFile::file(rel, &m)),
                    _ => {}
                }
                continue;
            }
            if meta.is_dir() {
                out.push(SourceFile::dir(rel.clone(), mode));
                if at_top && EXCLUDE_DIR_CONTENTS.contains(&text) {
                    if text == "pg_wal" {
                        out.push(archive_status_dir(&rel));
                    }
                    continue;
                }
                stack.push((rel, abs));
            } else if meta.is_file() {
                out.push(SourceFile::file(rel, &meta));
            }
        }
    }
    Ok((out, tablespaces))
}

fn archive_status_dir(rel: &Path) -> SourceFile {
    SourceFile::dir(rel.join("archive_status"), 0o700)
}

/// The files of a backup waiting to be copied, shared by its data streams.
///
/// Each stream takes the next entry as soon as it has written its last, so
/// the streams finish together even when their files read or compress at
/// different speeds, which a split by bytes fixed in advance cannot promise.
/// Directories come first, then files from the largest down, so the entries
/// taken last are the small ones.
struct FileQueue {
    /// The data directory the entries' paths are relative to.
    root: PathBuf,
    entries: std::sync::Mutex<std::vec::IntoIter<SourceFile>>,
}

impl FileQueue {
    fn new(root: &Path, mut entries: Vec<SourceFile>) -> Self {
        entries.sort_by(|a, b| {
            b.is_dir
                .cmp(&a.is_dir)
                .then_with(|| b.size.cmp(&a.size))
                .then_with(|| a.rel.cmp(&b.rel))
        });
        Self {
            root: root.to_path_buf(),
            entries: std::sync::Mutex::new(entries.into_iter()),
        }
    }

    /// Where `entry` is read.
    fn path_of(&self, entry: &SourceFile) -> PathBuf {
        self.root.join(&entry.rel)
    }

    /// The next entry to copy, or `None` once every one has been taken.
    fn next(&self) -> Option<SourceFile> {
        // A stream that panicked while holding the lock fails the backup on
        // its own; the others may still drain the queue.
        let mut queue = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        queue.next()
    }
}

/// `path` opened for direct reads (`O_DIRECT`), or `None` where the file
/// system does not offer them: the page cache is used then.
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// What one bundle stream holds.
#[derive(Default)]
struct BundleReport {
    files: u64,
    pages: PageReport,
    delta: DeltaReport,
}

/// Writes entries taken from `queue` as one bundle stream into `sink`;
/// returns the stored files and, with `check_pages_before` (the backup's
/// start LSN, when data checksums are on), what the page checksum
/// verification found.
///
/// Files are read straight into the writer's part buffers ([`PartWriter`]);
/// the stream gets no digest of its own, since every file in it carries one.
async fn write_bundle(
    sink: &dyn BackupSink,
    name: String,
    queue: Arc<FileQueue>,
    check_pages_before: Option<Lsn>,
    since: Option<Since>,
) -> Result<BundleReport> {
    let (feed, parts) = sink.part_channel();
    let stream_name = name.clone();
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<BundleReport> {
        let mut bundle = BundleWriter::new(PartWriter::new(feed));
        let mut stored = BundleReport::default();
        // The page scans' read buffer, one per stream.
        let mut scan_buf = if since.is_some() {
            vec![0u8; crate::delta::READ_CHUNK]
        } else {
            Vec::new()
        };
        let result = (|| -> std::io::Result<()> {
            while let Some(entry) = queue.next() {
                if entry.is_dir {
                    bundle.add_dir(&entry.rel, entry.mode)?;
                    continue;
                }
                let abs = queue.path_of(&entry);
                let file = match std::fs::File::open(&abs) {
                    Ok(f) => f,
                    // A file dropped during the backup is not needed: WAL replay removes it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(at_file("cannot read", &abs, e)),
                };
                let direct = (entry.size >= DIRECT_MIN)
                    .then(|| open_direct(&abs))
                    .flatten();
                if let (Stored::Pages { base_size }, Some(since)) = (entry.stored, since) {
                    crate::bundle::will_read_sequentially(&file);
                    let rel = entry.rel.to_string_lossy();
                    let (scanned_before, kept_before) =
                        (stored.delta.pages_scanned, stored.delta.pages_stored);
                    let mut damaged = Vec::new();
                    bundle
                        .add_pages(&entry.rel, entry.mode, entry.size, |pages| {
                            damaged = scan_pages(
                                &file,
                                &rel,
                                entry.size,
                                base_size,
                                since,
                                &mut scan_buf,
                                pages,
                                &mut stored.delta,
                            )?;
                            Ok(())
                        })
                        .map_err(|e| at_file("reading", &abs, e))?;
                    stored.delta.paged_files += 1;
                    if check_pages_before.is_some() {
                        // Every page left out had an old LSN and a good checksum.
                        let scanned = stored.delta.pages_scanned - scanned_before;
                        let kept = stored.delta.pages_stored - kept_before;
                        stored.pages.add(&rel, scanned - kept, damaged);
                    }
                    stored.files += 1;
                    continue;
                }
                if since.is_some() {
                    stored.delta.whole_files += 1;
                }
                // Read-ahead only helps the reads that go through the page cache.
                if direct.is_none() {
                    crate::bundle::will_read_sequentially(&file);
                }
                let mut pages = check_pages_before.and_then(|start| {
                    relation_segment(entry.rel.to_str()?)
                        .map(|segment| PageCheck::new(segment, start.0))
                });
                let started = std::time::Instant::now();
                bundle
                    .add_os_file(
                        &entry.rel,
                        entry.mode,
                        entry.size,
                        &file,
                        direct.as_ref(),
                        pages.as_mut(),
                    )
                    .map_err(|e| at_file("reading", &abs, e))?;
                let seconds = started.elapsed().as_secs_f64();
                tracing::debug!(
                    stream = %stream_name,
                    file = %entry.rel.display(),
                    bytes = entry.size,
                    seconds,
                    mb_per_s = entry.size as f64 / 1e6 / seconds.max(1e-9),
                    "file copied"
                );
                if let Some(pages) = pages {
                    let (sound, damaged) = pages.finish(&file);
                    stored
                        .pages
                        .add(&entry.rel.to_string_lossy(), sound, damaged);
                }
                stored.files += 1;
            }
            Ok(())
        })();
        match result {
            Ok(()) => bundle.finish().map(|_| stored),
            Err(e) => {
                bundle
                    .into_inner()
                    .fail(std::io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    });
    let upload = sink.write_parts(&name, parts, StreamDigest::Skip);
    let (uploaded, produced) = tokio::join!(upload, producer);
    let produced =
        produced.map_err(|e| Error::from(e).with_message(format!("reading files for {name}")))?;
    // A reader failure is the cause and the upload only echoes it, unless
    // the reader met a broken pipe: then the writer stopped taking parts.
    let uploaded = uploaded.map_err(|e| e.context(format!("storing stream {name}")));
    pipe_outcome(produced.map_err(file_error), uploaded).map(|(stored, _)| stored)
}

/// An I/O failure on a data directory file, as an `io::Error` (the bundle
/// writer's currency) that carries the path-aware [`Error`] (keeping the
/// kind, so that a stopped writer's `BrokenPipe` is still seen as one).
fn at_file(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    Error::io_doing_at(what, path, e).into_io()
}

/// The [`Error`] inside an `io::Error` made by [`at_file`], or the
/// conversion of any other one (worded as its own text, as before).
fn file_error(e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::from(e);
    }
    let text = e.to_string();
    Error::from(e).with_message(text)
}

/// The backup a differential or incremental applies on, as the host chose
/// it ([`strata_core::plugin::BackupRequest::base`]).
pub struct Base<'a> {
    /// Its manifest.
    pub manifest: &'a strata_core::catalog::manifest::Manifest,
    /// Its PostgreSQL details.
    pub meta: BackupMeta,
}

impl<'a> Base<'a> {
    /// Reads the details of `manifest`, refusing a backup a differential
    /// cannot build on.
    pub fn new(manifest: &'a strata_core::catalog::manifest::Manifest) -> Result<Self> {
        let meta = BackupMeta::from_manifest(manifest)?;
        if !manifest.streams.iter().any(|s| s.name == FILE_INDEX_STREAM) {
            return Err(Error::not_found(format!(
                "backup {} was made by a Strata that did not record file indexes, \
                 so a differential cannot tell what changed since",
                manifest.id
            ))
            .hint("take a full backup (--kind full); differentials build on it"));
        }
        Ok(Base { manifest, meta })
    }

    /// Whether every change of a page since this backup moved the page's
    /// LSN: see [`hint_bits_logged`].
    fn hints_logged(&self) -> bool {
        self.meta.data_checksums || self.meta.wal_log_hints == Some(true)
    }

    /// Refuses a base of another cluster, or one a timeline switch left
    /// behind (4.5.9): its pages are the cluster's only if the current
    /// timeline's history passes through the base's whole backup.
    /// The history file of `timeline` comes from the archive, or from
    /// the cluster's own `pg_wal` (a cluster promoted while `archive_mode`
    /// was off, as a restored copy is, never archived it).
    async fn check_lineage(
        &self,
        archive: &WalArchive<'_>,
        server: &crate::check::Identity,
        data_dir: &Path,
    ) -> Result<()> {
        let (system_id, timeline) = (server.system_id, server.timeline);
        let id = &self.manifest.id;
        if self.meta.system_id() != system_id {
            return Err(Error::not_found(format!(
                "backup {id}, the base chosen for this one, is of system {} but the cluster is now system {system_id} \
                 (re-created under the same name?)",
                self.meta.system_id
            ))
            .hint("take a full backup of this cluster first (--kind full)"));
        }
        if self.meta.timeline == timeline {
            return Ok(());
        }
        let name = WalFileName::history(timeline);
        let local = data_dir.join("pg_wal").join(name.to_string());
        let bytes = match archive.read(system_id, &name).await? {
            Some(bytes) => bytes,
            None => match std::fs::read(&local) {
                // Not archived from here: the backup may run as another OS
                // user than archive_command, and a vault directory it
                // created could stop PostgreSQL's own pushes.
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::not_found(format!(
                        "the cluster is on timeline {timeline}, backup {id} on timeline {}, \
                         and neither the vault nor {} holds {name} to relate them",
                        self.meta.timeline,
                        local.display()
                    ))
                    .hint("take a full backup (--kind full)"));
                }
                Err(e) => return Err(Error::io_doing_at("cannot read", &local, e)),
            },
        };
        let history =
            crate::chain::TimelineHistory::parse(timeline, &String::from_utf8_lossy(&bytes))?;
        if passes_through(&history, self.meta.timeline, self.meta.stop()) {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "backup {id} (timeline {}, up to LSN {}) is not in the history of timeline {timeline}, \
                 which the cluster is on now: its pages are not this cluster's",
                self.meta.timeline, self.meta.stop_lsn
            ))
            .hint("take a full backup (--kind full); differentials build on it"))
        }
    }

    /// Reads the base's file index through the host.
    async fn file_index(&self, sink: &dyn BackupSink) -> Result<Vec<u8>> {
        let source = sink.base_source().ok_or_else(|| {
            Error::engine("the host offered no way to read the base backup's file index")
        })?;
        let mut bytes = Vec::new();
        source
            .read_stream(&self.manifest.id, FILE_INDEX_STREAM, &mut bytes)
            .await
            .map_err(|e| {
                e.context(format!(
                    "reading the file index of backup {}",
                    self.manifest.id
                ))
                .hint("a differential cannot build on it: take a full backup (--kind full)")
            })?;
        Ok(bytes)
    }
}

/// The base of a new differential or incremental of `cluster` among
/// `candidates` (newest first, offered by the host): the newest one of
/// this cluster's system, with a file index, taken with hint bits logged,
/// on a timeline the cluster's history passes through (the newest full of
/// the same system identifier and timeline lineage, for a differential).
/// When none fits, the newest, so that the backup refuses it naming why.
pub async fn choose_base(
    cluster: &ClusterConfig,
    archive: &WalArchive<'_>,
    candidates: &[strata_core::catalog::manifest::Manifest],
) -> Result<Option<usize>> {
    let server = connect(cluster).await?;
    let info = server.identity().await?;
    for (i, manifest) in candidates.iter().enumerate() {
        let Ok(base) = Base::new(manifest) else {
            continue;
        };
        if base.hints_logged()
            && base
                .check_lineage(archive, &info, &cluster.data_directory)
                .await
                .is_ok()
        {
            return Ok(Some(i));
        }
    }
    Ok((!candidates.is_empty()).then_some(0))
}

/// Whether `history` (of the cluster's current timeline) holds timeline
/// `timeline` up to at least `lsn`: the timeline was left at or after
/// `lsn`, so everything written on it before `lsn` is the current
/// timeline's past.
fn passes_through(history: &crate::chain::TimelineHistory, timeline: u32, lsn: Lsn) -> bool {
    history
        .parents
        .iter()
        .any(|(tli, switch)| *tli == timeline && *switch >= lsn)
}

/// Refuses a differential where a page can change without its LSN moving.
///
/// With neither data checksums nor `wal_log_hints`, VACUUM sets a heap
/// page's all-visible flag (`PD_ALL_VISIBLE`) without WAL-logging the heap
/// page, so its LSN stays (`log_heap_visible` and `heap_xlog_visible` in
/// `src/backend/access/heap/heapam.c`; hint bits likewise, section 4.5.1).
/// A page-LSN differential would keep the base's copy of such a page while
/// the visibility map, stored whole, says the page is all-visible: after a
/// restore, a later DELETE would not clear the map bit and index-only
/// scans would return deleted rows. The base must have been taken with
/// the setting on as well, since the changes since then count.
fn hint_bits_logged(server: &crate::check::Identity, base: &Base<'_>) -> Result<()> {
    if !(server.data_checksums || server.wal_log_hints) {
        return Err(Error::config(
            "differential and incremental backups need data checksums or wal_log_hints = on: \
             without them PostgreSQL changes pages (hint bits, the all-visible flag) without moving their LSN, \
             so a page-LSN differential could restore a visibility map that disagrees with its tables",
        )
        .hint("set wal_log_hints = on in postgresql.conf, restart PostgreSQL, then take a full backup (--kind full) to build on; `strata pg check` says the same"));
    }
    if !base.hints_logged() {
        return Err(Error::not_found(format!(
            "backup {}, the base chosen for this one, was taken with neither data checksums nor wal_log_hints on, \
             so the pages changed since cannot all be told by their LSN",
            base.manifest.id
        ))
        .hint("take a full backup (--kind full) now that the setting is on; differentials and incrementals build on it"));
    }
    Ok(())
}

/// Decides how each listed entry is stored against `base` (see
/// [`crate::delta`]) and returns the paths of the base that are gone.
/// Sorts `entries` by path bytes.
fn against_base(
    entries: &mut [SourceFile],
    index: &[u8],
    base: &Base<'_>,
    databases: &[DatabaseIdentity],
) -> Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    entries.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    let listed: Vec<Listed> = entries
        .iter()
        .map(|e| Listed {
            rel: &e.rel,
            is_dir: e.is_dir,
            size: e.size,
            identity: e.identity,
        })
        .collect();
    let mut reader = IndexReader::new(index, base.manifest.id.as_str())?;
    let changed = changed_databases(&base.meta.databases, databases);
    let (stored, removed) = compare_with_base(&listed, &mut reader, &changed)?;
    for (entry, how) in entries.iter_mut().zip(stored) {
        entry.stored = how;
    }
    Ok(removed)
}

/// The file index of `entries` (see [`crate::delta`]).
fn file_index(entries: &[SourceFile]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    encode_index(
        entries
            .iter()
            .map(|e| IndexEntry {
                path: e.rel.as_os_str().as_bytes(),
                is_dir: e.is_dir,
                size: e.size,
                identity: e.identity,
            })
            .collect(),
    )
}

/// The removed entries of a differential, as a bundle.
fn removed_bundle(removed: &[Vec<u8>]) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut bundle = BundleWriter::new(Vec::new());
    for path in removed {
        bundle.add_removed(Path::new(std::ffi::OsStr::from_bytes(path)))?;
    }
    Ok(bundle.finish()?)
}

/// The databases of the cluster and the `xmin` of their `pg_database` rows.
async fn database_identities(server: &crate::check::Server) -> Result<Vec<DatabaseIdentity>> {
    let rows = server
        .client
        .query(
            "SELECT oid::int8, xmin::text::int8 FROM pg_database ORDER BY oid",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "reading pg_database failed"))?;
    Ok(rows
        .iter()
        .map(|row| DatabaseIdentity {
            oid: row.get::<_, i64>(0) as u32,
            xmin: row.get::<_, i64>(1) as u32,
        })
        .collect())
}

/// Runs a backup of `cluster` into `sink`: a full one, or with `base` a
/// differential or incremental that stores what changed since `base` (see
/// [`crate::delta`]); see the module docs for the steps. `archive` is the
/// cluster's WAL archive, checked before returning.
pub async fn backup(
    cluster: &ClusterConfig,
    archive: &WalArchive<'_>,
    sink: &dyn BackupSink,
    options: &FullBackupOptions,
    base: Option<&Base<'_>>,
) -> Result<BackupOutcome> {
    let server = connect(cluster).await?;
    let info = server.identity().await?;
    if !crate::check::runs_from(cluster, &info.data_directory) {
        // Files read from another directory than the server's would be a
        // backup of something else under this server's WAL and labels.
        return Err(Error::config(format!(
            "the server runs from {}, but data_directory in the config is {}",
            info.data_directory,
            cluster.data_directory.display()
        ))
        .hint(format!(
            "set data_directory = \"{}\" in the cluster's section of Strata's config (`strata pg check` shows it)",
            info.data_directory
        )));
    }
    let archive_mode = server.setting("archive_mode").await?;
    if archive_mode == "off" {
        return Err(Error::config(
            "archive_mode is off: a full backup is restorable only with the WAL written while it runs",
        )
        .hint("run `strata pg check <cluster>` and apply the lines it prints, then restart PostgreSQL"));
    }
    // The base's file index, read before the backup starts: a base that
    // cannot be used ends the backup before PostgreSQL enters backup mode.
    let base_index = match base {
        Some(base) => {
            hint_bits_logged(&info, base)?;
            base.check_lineage(archive, &info, &cluster.data_directory)
                .await?;
            Some(base.file_index(sink).await?)
        }
        None => None,
    };
    // Page checksums are checked with PostgreSQL's algorithm for its
    // standard 8 KiB pages; a server built with another page size is copied
    // without the check, and has no differentials.
    let standard_pages = server.setting("block_size").await? == "8192";
    if base.is_some() && !standard_pages {
        return Err(Error::config(
            "differential backups read PostgreSQL's standard 8 KiB pages; this server was built with another block_size",
        )
        .hint("take full backups (--kind full)"));
    }
    let check_pages = info.data_checksums && standard_pages;
    let data_dir = &cluster.data_directory;
    // Read before the backup starts, so that nothing runs on the backup's
    // session between pg_backup_start and pg_backup_stop but the copy. A
    // database re-created in between is still stored whole: its files are
    // new (their identity differs from the base's).
    let databases = database_identities(&server).await?;
    let start_time = Utc::now();
    let start_lsn: String = server
        .client
        .query_one(
            "SELECT pg_backup_start($1, $2)::text",
            &[&options.label, &options.fast_checkpoint],
        )
        .await
        .map_err(|e| pg_error(e, "pg_backup_start failed"))?
        .get(0);
    let start: Lsn = start_lsn.parse()?;
    let check_pages_before = check_pages.then_some(start);
    let since = base.map(|b| Since {
        lsn: b.meta.start().0,
        checksums: info.data_checksums,
    });
    let copy = async {
        let dir = data_dir.clone();
        let (mut entries, tablespaces) = tokio::task::spawn_blocking(move || list_cluster(&dir))
            .await
            .map_err(|e| Error::from(e).with_message("listing the data directory"))??;
        let mut delta = None;
        if let (Some(base), Some(index)) = (base, &base_index) {
            let removed = against_base(&mut entries, index, base, &databases)?;
            let bundle = removed_bundle(&removed)?;
            sink.write_stream(REMOVED_STREAM, Box::new(std::io::Cursor::new(bundle)))
                .await
                .map_err(|e| e.context(format!("storing {REMOVED_STREAM}")))?;
            delta = Some(DeltaReport {
                base: base.manifest.id.to_string(),
                since_lsn: base.meta.start_lsn.clone(),
                removed: removed.len() as u64,
                ..DeltaReport::default()
            });
        } else {
            let total: u64 = entries.iter().map(|e| e.size).sum();
            sink.expect_bytes(total);
        }
        let index = file_index(&entries);
        let queue = Arc::new(FileQueue::new(data_dir, entries));
        let names: Vec<String> = (0..options.parallel.max(1))
            .map(|i| format!("data.{i}"))
            .collect();
        let uploads = names
            .iter()
            .map(|name| write_bundle(sink, name.clone(), queue.clone(), check_pages_before, since));
        let mut files = 0;
        let mut pages = PageReport::default();
        for report in futures::future::try_join_all(uploads).await? {
            files += report.files;
            pages.merge(report.pages);
            if let Some(delta) = delta.as_mut() {
                delta.merge(&report.delta);
            }
        }
        sink.write_stream(FILE_INDEX_STREAM, Box::new(std::io::Cursor::new(index)))
            .await
            .map_err(|e| e.context(format!("storing {FILE_INDEX_STREAM}")))?;
        // pg_control last, after every other file is durable.
        let control_path = data_dir.join("global/pg_control");
        let control = SourceFile::file(
            Path::new("global/pg_control"),
            &std::fs::metadata(&control_path).doing_at("cannot stat", &control_path)?,
        );
        let control = FileQueue::new(data_dir, vec![control]);
        let control = write_bundle(
            sink,
            PG_CONTROL_STREAM.into(),
            Arc::new(control),
            None,
            None,
        )
        .await?;
        files += control.files;
        Ok::<_, Error>((files, tablespaces, names, pages, databases, delta))
    };
    let copied = copy.await;
    let (files, tablespaces, data_streams, pages, databases, delta) = match copied {
        Ok(c) => c,
        Err(e) => {
            // Leave backup mode; the session ends with the connection anyway.
            let _ = server
                .client
                .simple_query("SELECT pg_backup_stop(false)")
                .await;
            return Err(e);
        }
    };
    let row = server
        .client
        .query_one(
            "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .map_err(|e| {
            pg_error(e, "pg_backup_stop failed").hint(
                "the backup session was lost (a server restart or a dropped connection ends backup mode); \
                 nothing was committed: run the backup again",
            )
        })?;
    let stop_lsn: String = row.get(0);
    let label: String = row.get(1);
    let spcmap: String = row.get(2);
    let stop_time = Utc::now();
    for (name, text) in [
        (BACKUP_LABEL_STREAM, &label),
        (TABLESPACE_MAP_STREAM, &spcmap),
    ] {
        sink.write_stream(
            name,
            Box::new(std::io::Cursor::new(text.clone().into_bytes())),
        )
        .await
        .map_err(|e| e.context(format!("storing {name}")))?;
    }
    let timeline = label_timeline(&label)?;
    if let Some(base) = base
        && timeline != info.timeline
    {
        // The base was checked against the timeline the server was on
        // before the backup started.
        return Err(Error::engine(format!(
            "the cluster switched from timeline {} to {timeline} while the backup ran, so its base {} was checked against the wrong history",
            info.timeline, base.manifest.id
        ))
        .hint("run the backup again"));
    }
    let stop: Lsn = stop_lsn.parse()?;
    if let Err(missing) = wait_for_wal(
        archive,
        info.system_id,
        timeline,
        start,
        stop,
        info.wal_segment_size,
        options.wal_wait,
    )
    .await
    {
        return Err(match archiver_failing(&server.client).await {
            Some(failing) => {
                let message = format!("{}; {failing}", missing.message());
                missing.with_message(message)
            }
            None => missing,
        });
    }
    let meta = BackupMeta {
        system_id: info.system_id.to_string(),
        server_version_num: info.server_version_num,
        server_version: info.server_version.clone(),
        timeline,
        start_lsn: start.to_string(),
        stop_lsn: stop.to_string(),
        start_time,
        stop_time,
        wal_segment_size: info.wal_segment_size,
        data_checksums: info.data_checksums,
        wal_log_hints: Some(info.wal_log_hints),
        backup_label: label,
        tablespace_map: spcmap,
        tablespaces,
        data_streams,
        file_count: files,
        files: Vec::new(),
        page_check: check_pages.then_some(pages),
        databases,
        delta,
    };
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("system_id".into(), meta.system_id.clone());
    labels.insert("pg_version".into(), info.server_version.clone());
    Ok(BackupOutcome {
        fork: timeline.to_string(),
        start: Some(strata_core::catalog::manifest::Position(start.0 as u128)),
        end: Some(strata_core::catalog::manifest::Position(stop.0 as u128)),
        consistent_at: Some(stop_time),
        engine_meta: serde_json::to_value(&meta)?,
        labels,
        ..Default::default()
    })
}

/// The `START TIMELINE` of a backup label.
pub fn label_timeline(label: &str) -> Result<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| Error::engine("the backup_label PostgreSQL returned has no START TIMELINE"))
}

/// Waits until every segment from `start` to `stop` on `timeline` is archived.
async fn wait_for_wal(
    archive: &WalArchive<'_>,
    system_id: u64,
    timeline: u32,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
    wait: Duration,
) -> Result<()> {
    let first = segno_of(start, seg_size);
    let last = segno_of(Lsn(stop.0.saturating_sub(1)), seg_size).max(first);
    let deadline = tokio::time::Instant::now() + wait;
    // The last segment is usually archived within tens of milliseconds of
    // the switch `pg_backup_stop` forces: look often at first, then back off.
    let mut pause = Duration::from_millis(20);
    // A listing finds what is already there; when only a few segments are
    // still missing, they are looked up by key instead.
    let mut missing: Vec<u64> = (first..=last).collect();
    loop {
        if missing.len() > 16 {
            let have = archived_segments(archive, system_id, timeline, seg_size).await?;
            missing.retain(|s| !have.contains(s));
        } else {
            let mut still = Vec::with_capacity(missing.len());
            for segno in missing {
                let name = WalFileName::segment(timeline, segno, seg_size);
                if archive.header(system_id, &name).await?.is_none() {
                    still.push(segno);
                }
            }
            missing = still;
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = missing
                .iter()
                .take(5)
                .map(|s| WalFileName::segment(timeline, *s, seg_size).to_string())
                .collect();
            return Err(Error::engine(format!(
                "the WAL of the backup ({start} to {stop}) is not in the vault: missing {}",
                names.join(", ")
            ))
            .hint("archive_command must call `strata pg wal-push %p --cluster <name>` with this vault; \
                   `strata pg check <name>` shows the line. When it does, PostgreSQL's log has the \
                   error of each failed attempt (`SELECT * FROM pg_stat_archiver` shows the last): \
                   a full, read-only or unreachable vault fails it too. The backup was not committed."));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// What `pg_stat_archiver` says when PostgreSQL's archiver is failing (its
/// last failure is newer than its last success): `archive_command failed
/// for <file>, last at <time> (<n> failures)`; `None` when it is not, or
/// the view cannot be read.
async fn archiver_failing(client: &tokio_postgres::Client) -> Option<String> {
    let row = client
        .query_one(
            "SELECT failed_count, last_failed_wal, \
                    to_char(last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM pg_stat_archiver \
             WHERE last_failed_time IS NOT NULL \
               AND (last_archived_time IS NULL OR last_failed_time > last_archived_time)",
            &[],
        )
        .await
        .ok()?;
    let count: i64 = row.get(0);
    let wal: Option<String> = row.get(1);
    let at: Option<String> = row.get(2);
    Some(format!(
        "PostgreSQL's archive_command is failing: it failed for {}, last at {} UTC ({count} failures since the statistics were reset)",
        wal.as_deref().unwrap_or("a WAL file"),
        at.as_deref().unwrap_or("an unknown time")
    ))
}

/// The segment numbers archived on `timeline`.
async fn archived_segments(
    archive: &WalArchive<'_>,
    system_id: u64,
    timeline: u32,
    seg_size: u64,
) -> Result<HashSet<u64>> {
    let listed = archive.list(system_id).await?;
    Ok(listed
        .get(&timeline)
        .map(|names| {
            names
                .iter()
                .filter(|n| n.kind == crate::walname::WalFileKind::Segment)
                .map(|n| n.segno(seg_size))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory file that cannot be read: the error that ends the
    /// backup names it and keeps the OS error's kind (so a stopped writer's
    /// broken pipe is still told apart).
    #[test]
    fn file_failures_keep_the_path_and_the_kind() {
        let denied = std::io::Error::from_raw_os_error(13);
        let echoed = at_file("cannot read", Path::new("/pg/base/1/2"), denied);
        assert_eq!(echoed.kind(), std::io::ErrorKind::PermissionDenied);
        let err = file_error(echoed);
        assert_eq!(err.kind(), strata_core::ErrorKind::Io);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "cannot read /pg/base/1/2: Permission denied (os error 13)"
        );
        assert_eq!(err.field("path"), Some("/pg/base/1/2"));

        let full = at_file(
            "reading",
            Path::new("/pg/base/1/3"),
            std::io::Error::from_raw_os_error(28),
        );
        let err = file_error(full);
        assert_eq!(err.hints(), ["free space on /pg/base/1/3's file system"]);

        let pipe = at_file(
            "reading",
            Path::new("/pg/x"),
            std::io::ErrorKind::BrokenPipe.into(),
        );
        assert_eq!(pipe.kind(), std::io::ErrorKind::BrokenPipe);

        let bare = file_error(std::io::Error::other("the bundle writer failed"));
        assert_eq!(bare.to_string(), "the bundle writer failed");
        assert_eq!(bare.kind(), strata_core::ErrorKind::Io);
    }

    #[test]
    fn exclusions_follow_basebackup() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "base/5",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "pg_tblspc",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for file in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/1262",
            "global/pg_internal.init",
            "base/5/1259",
            "base/5/16384",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390_init",
            "base/5/16390_vm",
            "base/5/t3_16400",
            "base/5/pgsql_tmp123",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot/state",
        ] {
            std::fs::write(d.join(file), b"x").unwrap();
        }
        let space = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(space.path().join("PG_15_202209061/5")).unwrap();
        std::fs::write(space.path().join("PG_15_202209061/5/16500"), b"y").unwrap();
        std::fs::write(space.path().join("PG_15_202209061/5/t4_16501"), b"y").unwrap();
        std::os::unix::fs::symlink(space.path(), d.join("pg_tblspc/16499")).unwrap();

        let (entries, spaces) = list_cluster(d).unwrap();
        let files: Vec<&str> = entries
            .iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.rel.to_str().unwrap())
            .collect();
        let mut sorted = files.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                "PG_VERSION",
                "base/5/1259",
                "base/5/16384",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global/1262",
                "pg_tblspc/16499/PG_15_202209061/5/16500",
            ]
        );
        let dirs: HashSet<&str> = entries
            .iter()
            .filter(|e| e.is_dir)
            .map(|e| e.rel.to_str().unwrap())
            .collect();
        for kept in [
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_tblspc/16499",
        ] {
            assert!(dirs.contains(kept), "{kept} kept as an empty directory");
        }
        assert!(!dirs.contains("pg_replslot/slot"));
        assert_eq!(
            spaces,
            vec![Tablespace {
                oid: "16499".into(),
                path: space.path().display().to_string(),
                path_hex: None,
            }]
        );
    }

    #[test]
    fn queue_gives_directories_then_the_largest_files_first() {
        let entry = |rel: &str, size: u64, is_dir: bool| SourceFile {
            rel: Path::new(rel).into(),
            size,
            mode: 0o600,
            is_dir,
            identity: FileIdentity::default(),
            stored: Stored::Whole,
        };
        let queue = Arc::new(FileQueue::new(
            Path::new("/"),
            vec![
                entry("small", 10, false),
                entry("base", 0, true),
                entry("big", 100, false),
                entry("also-small", 10, false),
                entry("middle", 50, false),
            ],
        ));
        // However many streams take from it, each entry is given once, in this order.
        let taken: Vec<String> = std::iter::from_fn(|| queue.next())
            .map(|e| e.rel.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(taken, ["base", "big", "middle", "also-small", "small"]);
        assert!(queue.next().is_none());
    }

    #[test]
    fn a_base_counts_only_when_the_current_timeline_passed_through_all_of_it() {
        // Timeline 3 came from 2 at 0/5000000, which came from 1 at 0/3000000.
        let history = crate::chain::TimelineHistory::parse(
            3,
            "1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026-11-22 01:00:00+00\n",
        )
        .unwrap();
        assert!(passes_through(&history, 1, Lsn(0x300_0000)));
        assert!(passes_through(&history, 2, Lsn(0x400_0000)));
        // The base ran on past the switch: it holds pages timeline 3 never had.
        assert!(!passes_through(&history, 1, Lsn(0x300_0001)));
        assert!(!passes_through(&history, 2, Lsn(0x600_0000)));
        // A timeline not in the history.
        assert!(!passes_through(&history, 4, Lsn(0)));
    }

    #[test]
    fn a_base_without_a_file_index_is_refused_naming_it() {
        use strata_core::catalog::manifest::{
            BackupId, BackupKind, Compression, MANIFEST_FORMAT, Manifest,
        };
        let at = Utc::now();
        let meta = serde_json::json!({
            "system_id": "42", "server_version_num": 150000, "server_version": "15",
            "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
            "start_time": at, "stop_time": at, "wal_segment_size": 16777216,
            "data_checksums": true, "backup_label": "", "tablespace_map": "",
            "tablespaces": [], "data_streams": ["data.0"], "file_count": 3,
        });
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: BackupId::generate(at),
            engine: "postgres".into(),
            instance: "main".into(),
            database: None,
            kind: BackupKind::Full,
            started_at: at,
            ended_at: at,
            consistent_at: Some(at),
            fork: "1".into(),
            start: None,
            end: None,
            base: None,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: None,
            streams: vec![],
            labels: Default::default(),
            engine_meta: meta,
        };
        let err = Base::new(&manifest).err().expect("refused");
        assert_eq!(err.kind(), strata_core::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&format!(
                "backup {} was made by a Strata that did not record file indexes",
                manifest.id
            )),
            "{err}"
        );
        assert!(err.hints().iter().any(|h| h.contains("--kind full")));
    }

    #[test]
    fn label_timeline_is_read() {
        let label =
            "START WAL LOCATION: 1/51000028 (file 000000010000000100000051)\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label).unwrap(), 3);
        assert!(label_timeline("nothing").is_err());
    }
}

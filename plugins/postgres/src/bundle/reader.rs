//! Reading bundles back: [`extract`] lays the entries down for a restore,
//! [`check`] reads and checks them without writing anything.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use strata_core::{Error, Result};

use super::{
    CHUNK, END_MAGIC, ENTRY_MAGIC, FileHasher, KIND_DIR, KIND_FILE_XXH3, KIND_PAGES, KIND_REMOVED,
    PAGE, PAGES_END,
};

/// While a file is restored, its writeback is started every this many bytes.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// What reading a bundle found: counts only, so that reading a bundle of a
/// million files takes the memory of one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BundleSummary {
    /// Entries read (files and directories).
    pub entries: u64,
    /// Files read.
    pub files: u64,
    /// Bytes of file content read (whole files and stored pages).
    pub bytes: u64,
    /// Files patched with changed pages (pages entries).
    pub patched: u64,
    /// Files and directories removed (removed entries).
    pub removed: u64,
}

impl std::ops::AddAssign for BundleSummary {
    fn add_assign(&mut self, other: Self) {
        self.entries += other.entries;
        self.files += other.files;
        self.bytes += other.bytes;
        self.patched += other.patched;
        self.removed += other.removed;
    }
}

/// Reads a bundle from `input` and lays its entries down: `place` maps a
/// stored path (relative, the bytes PostgreSQL's file system gave) to the
/// local path to write. Every file's digest is checked before the file is
/// kept; with `fsync` every file is flushed to disk.
pub fn extract(
    input: &mut impl Read,
    place: &dyn Fn(&Path) -> PathBuf,
    fsync: bool,
    origin: &str,
) -> Result<BundleSummary> {
    walk(input, Some((place, fsync)), origin)
}

/// Reads a bundle from `input` to its end marker and checks its structure
/// and every file's digest, writing nothing: what `strata verify` does with
/// a PostgreSQL backup's file streams.
pub fn check(input: &mut impl Read, origin: &str) -> Result<BundleSummary> {
    walk(input, None, origin)
}

/// Where [`walk`] lays entries down: the path for a stored path, and whether
/// to fsync each file.
type Lay<'a> = (&'a dyn Fn(&Path) -> PathBuf, bool);

/// Walks a bundle; with `lay` it lays the entries down.
fn walk(input: &mut impl Read, lay: Option<Lay<'_>>, origin: &str) -> Result<BundleSummary> {
    let corrupt = |what: &str| {
        Error::integrity(format!(
            "stream {origin} is not a valid file bundle: {what}"
        ))
    };
    let mut summary = BundleSummary::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .map_err(|e| corrupt(&format!("truncated ({e})")))?;
        if &magic == END_MAGIC {
            return Ok(summary);
        }
        if &magic != ENTRY_MAGIC {
            return Err(corrupt("bad entry marker"));
        }
        let mut head = [0u8; 3];
        input
            .read_exact(&mut head)
            .map_err(|_| corrupt("truncated header"))?;
        let kind = head[0];
        let len = u16::from_le_bytes([head[1], head[2]]) as usize;
        let mut path = vec![0u8; len];
        input
            .read_exact(&mut path)
            .map_err(|_| corrupt("truncated path"))?;
        // A name is the bytes the file system gave, UTF-8 or not. No file
        // system gives `.` as a name either: a removed entry `.` would empty
        // the whole restore (found by fuzzing, fuzz/corpus/bundle/dot-removed).
        if path
            .split(|&b| b == b'/')
            .any(|c| c == b".." || c == b"." || c.is_empty())
            || path.contains(&0)
        {
            return Err(corrupt(&format!(
                "unsafe path `{}`",
                String::from_utf8_lossy(&path).escape_debug()
            )));
        }
        let path = PathBuf::from(std::ffi::OsString::from_vec(path));
        let shown = path.display();
        let mut mode = [0u8; 4];
        input
            .read_exact(&mut mode)
            .map_err(|_| corrupt("truncated mode"))?;
        let mode = u32::from_le_bytes(mode) & 0o7777;
        let target = lay.map(|(place, _)| place(&path));
        if let Some(mut hasher) = FileHasher::for_kind(kind) {
            let mut size = [0u8; 8];
            input
                .read_exact(&mut size)
                .map_err(|_| corrupt("truncated size"))?;
            let size = u64::from_le_bytes(size);
            let mut file = match &target {
                Some(target) => {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                    }
                    Some((
                        std::fs::File::create(target).map_err(|e| io_err(target, e))?,
                        target,
                    ))
                }
                None => None,
            };
            let mut left = size;
            let mut unflushed_from = 0u64;
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                input
                    .read_exact(&mut buf[..want])
                    .map_err(|_| corrupt(&format!("{shown} is truncated")))?;
                hasher.update(&buf[..want]);
                left -= want as u64;
                if let Some((file, target)) = &mut file {
                    file.write_all(&buf[..want])
                        .map_err(|e| io_err(target, e))?;
                    let written = size - left;
                    if written - unflushed_from >= WRITEBACK_EVERY || (left == 0 && written > 0) {
                        start_writeback(file, unflushed_from, written - unflushed_from);
                        unflushed_from = written;
                    }
                }
            }
            let mut digest = [0u8; 32];
            let digest = &mut digest[..hasher.digest_len()];
            input
                .read_exact(digest)
                .map_err(|_| corrupt(&format!("{shown} has no digest")))?;
            if hasher.finish().0 != digest {
                if let Some((file, target)) = file {
                    drop(file);
                    let _ = std::fs::remove_file(target);
                }
                return Err(damaged(format!(
                    "{shown} in stream {origin} does not match its checksum"
                )));
            }
            finish_laid(file, lay, mode)?;
            summary.entries += 1;
            summary.files += 1;
            summary.bytes += size;
            continue;
        }
        if kind == KIND_PAGES {
            let mut size = [0u8; 8];
            input
                .read_exact(&mut size)
                .map_err(|_| corrupt("truncated size"))?;
            let size = u64::from_le_bytes(size);
            let file = match &target {
                Some(target) => Some((open_base_file(target, &shown.to_string(), origin)?, target)),
                None => None,
            };
            if let Some((file, target)) = &file {
                file.set_len(size).map_err(|e| io_err(target, e))?;
            }
            let mut hasher = FileHasher::for_kind(KIND_FILE_XXH3).expect("a file kind");
            let page = &mut buf[..PAGE];
            let mut last: Option<u32> = None;
            loop {
                let mut block = [0u8; 4];
                input
                    .read_exact(&mut block)
                    .map_err(|_| corrupt(&format!("the pages of {shown} are truncated")))?;
                let number = u32::from_le_bytes(block);
                if number == PAGES_END {
                    break;
                }
                let offset = u64::from(number) * PAGE as u64;
                if last.is_some_and(|l| l >= number) || offset + PAGE as u64 > size {
                    return Err(corrupt(&format!(
                        "block {number} of {shown} is out of order or past its size"
                    )));
                }
                last = Some(number);
                input
                    .read_exact(page)
                    .map_err(|_| corrupt(&format!("the pages of {shown} are truncated")))?;
                hasher.update(&block);
                hasher.update(page);
                if let Some((file, target)) = &file {
                    use std::os::unix::fs::FileExt;
                    file.write_all_at(page, offset)
                        .map_err(|e| io_err(target, e))?;
                }
                summary.bytes += PAGE as u64;
            }
            let mut digest = [0u8; 16];
            input
                .read_exact(&mut digest)
                .map_err(|_| corrupt(&format!("{shown} has no digest")))?;
            if hasher.finish().0 != digest {
                return Err(damaged(format!(
                    "the pages of {shown} in stream {origin} do not match their checksum"
                )));
            }
            finish_laid(file, lay, mode)?;
            summary.entries += 1;
            summary.patched += 1;
            continue;
        }
        if kind == KIND_REMOVED {
            if let Some(target) = &target {
                remove_entry(target)?;
            }
            summary.entries += 1;
            summary.removed += 1;
            continue;
        }
        if kind != KIND_DIR {
            return Err(corrupt(&format!(
                "unknown entry kind {kind} (written by a newer Strata?)"
            )));
        }
        if let Some(target) = &target {
            std::fs::create_dir_all(target).map_err(|e| io_err(target, e))?;
            set_mode(target, mode)?;
        }
        summary.entries += 1;
    }
}

/// A file entry whose content does not match its digest.
fn damaged(what: String) -> Error {
    Error::integrity(what)
        .hint("the backup is damaged; restore an older backup or run `strata verify`")
}

/// Flushes a file written by an entry (when the restore asks for it) and
/// gives it the stored mode.
fn finish_laid(
    file: Option<(std::fs::File, &PathBuf)>,
    lay: Option<Lay<'_>>,
    mode: u32,
) -> Result<()> {
    let Some((file, target)) = file else {
        return Ok(());
    };
    if lay.is_some_and(|(_, fsync)| fsync) {
        file.sync_all().map_err(|e| io_err(target, e))?;
    }
    drop(file);
    set_mode(target, mode)
}

/// The file a pages entry patches, as the base laid it down.
fn open_base_file(target: &Path, shown: &str, origin: &str) -> Result<std::fs::File> {
    match std::fs::OpenOptions::new().write(true).open(target) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::integrity(format!(
            "stream {origin} patches {shown}, which the backup it applies on did not restore"
        ))
        .hint("the differential does not belong to this base, or the base is damaged; run `strata verify` on both")),
        Err(e) => Err(io_err(target, e)),
    }
}

/// Deletes what a removed entry names: a file, a link, or a directory with
/// its contents; one that is already gone is fine.
fn remove_entry(target: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(target),
        Ok(_) => std::fs::remove_file(target),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io_doing_at("cannot remove", target, e))
        }
        _ => Ok(()),
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to
/// disk now, without waiting (as PostgreSQL's `pg_flush_data` does where
/// `sync_file_range` is not at hand). Without it the page cache would hold
/// gigabytes of dirty pages until the final fsync, which then writes them
/// all while nothing else happens; with it, writing overlaps with reading
/// and decompressing the rest of the backup. Advisory: errors are ignored,
/// since the fsync that follows is what makes the data durable.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io_doing_at("writing", path, e)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(path, e))
}

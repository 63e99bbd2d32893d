//! The file bundle: how a full backup packs many files into a few streams.
//!
//! A full backup splits the cluster's files over a few streams (one per
//! reader, `parallel` in the config), so that a data directory of thousands
//! of small files becomes a handful of large sequential streams: few objects,
//! few requests, and the vault's writer compresses them on every core.
//!
//! # Format (version 2)
//!
//! A stream is a sequence of entries followed by an end marker. All integers
//! are little-endian.
//!
//! ```text
//! entry := "SPGF" kind:u8 path_len:u16 path:[u8; path_len] mode:u32 size:u64
//!          content:[u8; size] xxh3:[u8; 16]          (kind 2 = file)
//!        | "SPGF" kind:u8 path_len:u16 path mode:u32 (kind 1 = directory)
//!        | "SPGF" kind:u8 path_len:u16 path mode:u32 size:u64
//!          content:[u8; size] blake3:[u8; 32]        (kind 0 = file, version 1)
//! end   := "SPGE"
//! ```
//!
//! Version 1 stored a BLAKE3 digest after each file; version 2 stores the
//! 128-bit XXH3 instead (big-endian, as `xxhsum -H2` prints it), which costs
//! a fifth of BLAKE3's CPU time. The per-file digest is there to catch
//! accidental damage (a bad disk, a bug, a truncated object), for which a
//! 128-bit non-cryptographic hash is ample; deliberate tampering is the job
//! of the vault's authenticated encryption. Restores read both kinds, so
//! backups written before keep restoring.
//!
//! Paths are relative to the data directory, `/`-separated; files of a
//! tablespace are stored under `pg_tblspc/<oid>/...`. `size` is the size at
//! the time the file was listed: a file that grew since is read up to that
//! size, a file that shrank is padded with zeros (WAL replay repairs both, as
//! for `pg_basebackup`). The digest covers exactly the `size` bytes stored.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strata_core::catalog::manifest::{Manifest, StreamRecord};

use crate::pages::PageCheck;
use strata_core::plugin::PartFeed;
use strata_core::plugin::{ContentCheck, ContentSink};
use strata_core::{Error, Result};

const ENTRY_MAGIC: &[u8; 4] = b"SPGF";
const END_MAGIC: &[u8; 4] = b"SPGE";
/// A file followed by its BLAKE3 (format version 1, read only).
const KIND_FILE_BLAKE3: u8 = 0;
const KIND_DIR: u8 = 1;
/// A file followed by its XXH3-128 (format version 2).
const KIND_FILE_XXH3: u8 = 2;
/// The memory, length and file-offset alignment of direct reads: the
/// logical block size of the devices databases use is at most 4 KiB.
pub const DIRECT_ALIGN: usize = 4096;
/// Files at least this large are read with direct I/O where possible.
pub const DIRECT_MIN: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;
/// While a file is restored, its writeback is started every this many bytes.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A file stored in a bundle, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredFile {
    /// Path relative to the data directory.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// Checksum of the stored bytes.
    #[serde(flatten)]
    pub checksum: FileChecksum,
    /// The stream holding it.
    pub stream: String,
}

/// The checksum of a stored file, lowercase hex. In a manifest it reads
/// `"xxh3_128": "..."`, or `"blake3": "..."` for backups made before
/// format version 2.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileChecksum {
    /// XXH3-128, big-endian (what `xxhsum -H2` prints).
    #[serde(rename = "xxh3_128")]
    Xxh3(String),
    /// BLAKE3 (format version 1).
    #[serde(rename = "blake3")]
    Blake3(String),
}

/// Computes a file's checksum as its bytes go by.
pub struct FileHasher(HasherState);

enum HasherState {
    Xxh3(Box<twox_hash::XxHash3_128>),
    Blake3(Box<blake3::Hasher>),
}

impl FileHasher {
    /// The hasher for an entry of `kind`, or `None` for a kind without content.
    fn for_kind(kind: u8) -> Option<Self> {
        match kind {
            KIND_FILE_XXH3 => Some(FileHasher(HasherState::Xxh3(Box::default()))),
            KIND_FILE_BLAKE3 => Some(FileHasher(HasherState::Blake3(Box::default()))),
            _ => None,
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherState::Xxh3(h) => h.write(data),
            HasherState::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest as stored after the content.
    fn finish(self) -> (Vec<u8>, FileChecksum) {
        match self.0 {
            HasherState::Xxh3(h) => {
                let digest = h.finish_128();
                (
                    digest.to_be_bytes().to_vec(),
                    FileChecksum::Xxh3(format!("{digest:032x}")),
                )
            }
            HasherState::Blake3(h) => {
                let digest = h.finalize();
                (
                    digest.as_bytes().to_vec(),
                    FileChecksum::Blake3(digest.to_hex().to_string()),
                )
            }
        }
    }

    /// The number of digest bytes that follow the content.
    fn digest_len(&self) -> usize {
        match self.0 {
            HasherState::Xxh3(_) => 16,
            HasherState::Blake3(_) => 32,
        }
    }
}

/// Where a bundle is written: a `Write` that can also take a file's
/// content straight from its reader.
pub trait BundleOut: Write {
    /// Writes exactly `len` bytes read from `src` (zeros past its end, if it
    /// is shorter now), showing each piece written to `observe` (which
    /// hashes it, and checks its pages) while it is still in cache.
    fn copy_from(
        &mut self,
        src: &mut dyn Read,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()>;

    /// Like [`copy_from`](Self::copy_from), reading `file` from its start;
    /// `direct`, the same file opened with `O_DIRECT`, may be used for the
    /// reads that are aligned (see [`PartWriter`]).
    fn copy_file(
        &mut self,
        file: &std::fs::File,
        _direct: Option<&std::fs::File>,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut reader = file;
        self.copy_from(&mut reader, len, observe)
    }

    /// Called before the content of a file read with
    /// [`copy_file`](Self::copy_file) and a `direct` handle: an output that
    /// reads into aligned buffers starts a new one here.
    fn begin_direct_content(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BundleOut for Vec<u8> {
    fn copy_from(
        &mut self,
        src: &mut dyn Read,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let start = self.len();
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        self.resize(start + len, 0);
        read_full(src, &mut self[start..])?;
        observe(&self[start..]);
        Ok(())
    }
}

/// Writes bundle entries.
pub struct BundleWriter<W: BundleOut> {
    out: W,
}

impl<W: BundleOut> BundleWriter<W> {
    /// A bundle writing to `out`.
    pub fn new(out: W) -> Self {
        BundleWriter { out }
    }

    fn header(&mut self, kind: u8, path: &str, mode: u32) -> io::Result<()> {
        let len = u16::try_from(path.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
        self.out.write_all(ENTRY_MAGIC)?;
        self.out.write_all(&[kind])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(path.as_bytes())?;
        self.out.write_all(&mode.to_le_bytes())
    }

    /// Adds a directory entry.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.header(KIND_DIR, path, mode)
    }

    /// Adds a file of exactly `size` bytes read from `file` (zero-padded if
    /// the file is shorter now). Returns the checksum of the bytes stored.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        file: &mut impl Read,
    ) -> io::Result<FileChecksum> {
        self.add_with(path, mode, size, None, |out, observe| {
            out.copy_from(file, size, observe)
        })
    }

    /// Adds the file `file` of `size` bytes, as [`add_file`](Self::add_file)
    /// does, feeding its bytes to `pages` too when it is a relation whose
    /// page checksums are checked. `direct` is the same file opened with
    /// `O_DIRECT`, for outputs that can read into aligned memory (used for
    /// files of at least [`DIRECT_MIN`] bytes).
    pub fn add_os_file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        file: &std::fs::File,
        direct: Option<&std::fs::File>,
        pages: Option<&mut PageCheck>,
    ) -> io::Result<FileChecksum> {
        let direct = direct.filter(|_| size >= DIRECT_MIN);
        self.add_with(path, mode, size, pages, |out, observe| {
            if direct.is_some() {
                out.begin_direct_content()?;
            }
            out.copy_file(file, direct, size, observe)
        })
    }

    /// Writes a file entry whose content `copy` writes, feeding it to the
    /// checksum and to `pages`.
    fn add_with(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        mut pages: Option<&mut PageCheck>,
        copy: impl FnOnce(&mut W, &mut dyn FnMut(&[u8])) -> io::Result<()>,
    ) -> io::Result<FileChecksum> {
        self.header(KIND_FILE_XXH3, path, mode)?;
        self.out.write_all(&size.to_le_bytes())?;
        let mut hasher = FileHasher::for_kind(KIND_FILE_XXH3).expect("a file kind");
        copy(&mut self.out, &mut |piece| {
            hasher.update(piece);
            if let Some(pages) = pages.as_mut() {
                pages.feed(piece);
            }
        })?;
        let (digest, checksum) = hasher.finish();
        self.out.write_all(&digest)?;
        Ok(checksum)
    }

    /// Writes the end marker and flushes; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(END_MAGIC)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The inner writer, as it is (to fail it after an error).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A part buffer whose window of `len` bytes starts at an address aligned
/// for direct I/O.
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let vec = vec![0u8; len + DIRECT_ALIGN];
        let start = vec.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { vec, start, len }
    }

    fn window(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    fn window_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// The first `len` bytes of a buffer, handed to the vault writer as a part.
/// The [`PartWriter`] takes the buffer up again once the writer drops it.
struct SentPart {
    buf: Arc<AlignedBuf>,
    len: usize,
}

impl AsRef<[u8]> for SentPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf.window()[..self.len]
    }
}

/// At most this many buffers wait for reuse in a [`PartWriter`].
const SPARE_PARTS: usize = 8;

/// A [`BundleOut`] that writes into part buffers handed to the vault
/// writer: file contents are read from disk straight into the buffer that is
/// then compressed, and hashed while they are still in the CPU's cache, so
/// the raw bytes are never copied in user space.
///
/// The buffers are its own, aligned for direct I/O, and reused once the
/// writer is done with them. The content of a large file starts a new part
/// and is read with `O_DIRECT`: from the disk into the buffer, without the
/// kernel's copy out of the page cache, and without evicting the database's
/// cached pages.
/// Whatever cannot be read that way (the last partial block, a file system
/// without direct I/O) is read through the page cache.
pub struct PartWriter {
    feed: PartFeed,
    part_size: usize,
    current: Arc<AlignedBuf>,
    filled: usize,
    spares: Vec<Arc<AlignedBuf>>,
    direct_failed: bool,
}

impl PartWriter {
    /// A writer feeding `feed`.
    pub fn new(feed: PartFeed) -> Self {
        let part_size = feed.part_size();
        PartWriter {
            feed,
            part_size,
            current: Arc::new(AlignedBuf::new(part_size)),
            filled: 0,
            spares: Vec::new(),
            direct_failed: false,
        }
    }

    /// The buffer being filled.
    fn space(&mut self) -> &mut [u8] {
        Arc::get_mut(&mut self.current)
            .expect("the part being filled is not shared")
            .window_mut()
    }

    /// Hands the filled part over and starts the next.
    fn ship(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let next = match self
            .spares
            .iter()
            .position(|buf| Arc::strong_count(buf) == 1)
        {
            Some(free) => self.spares.swap_remove(free),
            None => Arc::new(AlignedBuf::new(self.part_size)),
        };
        let full = std::mem::replace(&mut self.current, next);
        let len = std::mem::take(&mut self.filled);
        let part = Bytes::from_owner(SentPart {
            buf: full.clone(),
            len,
        });
        if self.spares.len() < SPARE_PARTS {
            self.spares.push(full);
        }
        self.feed.send_bytes(part)
    }

    /// Fails the stream with `err`: the writer keeps nothing of it.
    pub fn fail(self, err: io::Error) {
        self.feed.fail(err);
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.filled == self.part_size {
            self.ship()?;
        }
        let filled = self.filled;
        let n = (self.part_size - filled).min(data.len());
        self.space()[filled..filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ship()
    }
}

/// Where [`PartWriter`] reads a chunk from.
enum ChunkSource<'a> {
    Reader(&'a mut dyn Read),
    File {
        file: &'a std::fs::File,
        direct: Option<&'a std::fs::File>,
    },
}

impl PartWriter {
    /// Copies `len` bytes from `src`, a chunk at a time, each shown to
    /// `observe` while it is in cache; zeros past the end of a file that
    /// shrank.
    fn copy_chunks(
        &mut self,
        mut src: ChunkSource<'_>,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut pos = 0u64;
        let mut eof = false;
        while pos < len {
            if self.filled == self.part_size {
                self.ship()?;
            }
            let filled = self.filled;
            let room = self.part_size - filled;
            let mut want = ((len - pos).min(CHUNK as u64) as usize).min(room);
            // Direct reads need the buffer position, the file offset and
            // the length aligned.
            let direct = match &src {
                ChunkSource::File {
                    direct: Some(direct),
                    ..
                } if !self.direct_failed
                    && filled.is_multiple_of(DIRECT_ALIGN)
                    && pos.is_multiple_of(DIRECT_ALIGN as u64)
                    && want >= DIRECT_ALIGN =>
                {
                    want -= want % DIRECT_ALIGN;
                    Some(*direct)
                }
                _ => None,
            };
            let mut direct_failed = false;
            let space = self.space();
            let dst = &mut space[filled..filled + want];
            let got = if eof {
                0
            } else {
                match (&mut src, direct) {
                    (ChunkSource::Reader(reader), _) => read_full(*reader, dst)?,
                    (ChunkSource::File { file, .. }, None) => read_full_at(file, dst, pos)?,
                    (ChunkSource::File { file, .. }, Some(direct)) => {
                        match read_direct(direct, dst, pos) {
                            Ok(n) => n,
                            // A file system or device that refuses these
                            // reads: the page cache it is.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                direct_failed = true;
                                read_full_at(file, dst, pos)?
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            };
            eof = got < want;
            dst[got..].fill(0);
            observe(dst);
            self.direct_failed |= direct_failed;
            self.filled += want;
            pos += want as u64;
        }
        Ok(())
    }
}

impl BundleOut for PartWriter {
    fn copy_from(
        &mut self,
        src: &mut dyn Read,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        self.copy_chunks(ChunkSource::Reader(src), len, observe)
    }

    fn copy_file(
        &mut self,
        file: &std::fs::File,
        direct: Option<&std::fs::File>,
        len: u64,
        observe: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        self.copy_chunks(ChunkSource::File { file, direct }, len, observe)
    }

    /// The content starts a part of its own: at the buffer's aligned start,
    /// so the file is read directly into it, and (parts being multiples of
    /// the alignment) into every part after it. Starting on a part boundary
    /// also makes the parts fall on the same file offsets in every backup,
    /// which keeps the compressed size stable from one backup to the next.
    fn begin_direct_content(&mut self) -> io::Result<()> {
        if self.direct_failed {
            return Ok(());
        }
        self.ship()
    }
}

/// Fills `buf` with `read(rest, offset)` calls (`offset` counts the bytes
/// already in `buf`) until it is full or a read returns nothing; with
/// `block`, also after a read that is not a whole number of blocks, which is
/// the end of a file opened with `O_DIRECT` (the next offset would not be
/// aligned). Returns the bytes read: fewer only at the end of the input.
fn fill(
    buf: &mut [u8],
    block: Option<usize>,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if block.is_some_and(|block| k % block != 0) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_full(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    fill(buf, None, |rest, _| r.read(rest))
}

/// Reads `file` at `pos` into all of `buf`; fewer bytes only at its end.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    fill(buf, None, |rest, n| file.read_at(rest, pos + n))
}

/// [`read_full_at`] for a file opened with `O_DIRECT`.
fn read_direct(file: &std::fs::File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    fill(buf, Some(DIRECT_ALIGN), |rest, n| {
        file.read_at(rest, pos + n)
    })
}

/// One entry read back from a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Its size.
    pub size: u64,
}

/// Reads a bundle from `input` and lays its entries down: `place` maps a
/// stored path to the local path to write. Every file's digest is checked
/// before the file is kept; with `fsync` every file is flushed to disk.
/// Returns the entries in stream order.
pub fn extract(
    input: &mut impl Read,
    place: &dyn Fn(&str) -> PathBuf,
    fsync: bool,
    origin: &str,
) -> Result<Vec<RestoredEntry>> {
    walk(input, Some((place, fsync)), origin)
}

/// Reads a bundle from `input` to its end marker and checks its structure
/// and every file's digest, writing nothing: what `strata verify` does with
/// a PostgreSQL backup's file streams. Returns the entries in stream order.
pub fn check(input: &mut impl Read, origin: &str) -> Result<Vec<RestoredEntry>> {
    walk(input, None, origin)
}

/// Where [`walk`] lays entries down: the path for a stored path, and whether
/// to fsync each file.
type Lay<'a> = (&'a dyn Fn(&str) -> PathBuf, bool);

/// Walks a bundle; with `lay` it lays the entries down.
fn walk(input: &mut impl Read, lay: Option<Lay<'_>>, origin: &str) -> Result<Vec<RestoredEntry>> {
    let corrupt = |what: &str| {
        Error::integrity(format!(
            "stream {origin} is not a valid file bundle: {what}"
        ))
    };
    let mut entries = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut magic = [0u8; 4];
        input
            .read_exact(&mut magic)
            .map_err(|e| corrupt(&format!("truncated ({e})")))?;
        if &magic == END_MAGIC {
            return Ok(entries);
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
        let path = String::from_utf8(path).map_err(|_| corrupt("path is not UTF-8"))?;
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(corrupt(&format!("unsafe path `{path}`")));
        }
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
                    .map_err(|_| corrupt(&format!("{path} is truncated")))?;
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
                .map_err(|_| corrupt(&format!("{path} has no digest")))?;
            if hasher.finish().0 != digest {
                if let Some((file, target)) = file {
                    drop(file);
                    let _ = std::fs::remove_file(target);
                }
                return Err(Error::integrity(format!(
                    "{path} in stream {origin} does not match its checksum"
                ))
                .hint("the backup is damaged; restore an older backup or run `strata verify`"));
            }
            if let Some((file, target)) = file {
                if lay.is_some_and(|(_, fsync)| fsync) {
                    file.sync_all().map_err(|e| io_err(target, e))?;
                }
                drop(file);
                set_mode(target, mode)?;
            }
            entries.push(RestoredEntry {
                path,
                is_dir: false,
                size,
            });
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
        entries.push(RestoredEntry {
            path,
            is_dir: true,
            size: 0,
        });
    }
}

/// The content check `strata verify` runs on PostgreSQL backups: each file
/// stream (recorded without a stream digest) is parsed as a bundle and every
/// file's checksum is checked, exactly as a restore would, writing nothing.
pub struct BundleCheck;

impl ContentCheck for BundleCheck {
    fn start(&self, manifest: &Manifest, stream: &StreamRecord) -> Option<Box<dyn ContentSink>> {
        if manifest.engine != "postgres" || stream.blake3.is_some() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let origin = stream.name.clone();
        let checker = tokio::task::spawn_blocking(move || {
            check(
                &mut ChannelRead {
                    rx,
                    current: Bytes::new(),
                },
                &origin,
            )
            .map(|_| ())
        });
        Some(Box::new(BundleSink { tx, checker }))
    }
}

struct BundleSink {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    checker: tokio::task::JoinHandle<Result<()>>,
}

#[async_trait::async_trait]
impl ContentSink for BundleSink {
    async fn add(&mut self, raw: Bytes) -> Result<()> {
        self.tx
            .send(raw)
            .await
            .map_err(|_| Error::integrity("the bundle check stopped early"))
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        let BundleSink { tx, checker } = *self;
        drop(tx);
        checker
            .await
            .map_err(|e| Error::from(e).with_message("the bundle check failed to run"))?
    }
}

/// A blocking [`Read`] over the raw parts sent on a channel.
struct ChannelRead {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
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

/// Tells the kernel that `file` is about to be read from start to end, so
/// that it reads ahead further. Advisory, like [`start_writeback`].
pub fn will_read_sequentially(file: &std::fs::File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
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

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::catalog::manifest::BackupKind;
    use strata_core::vault::reader::{ReaderConfig, read_stream};
    use strata_core::vault::writer::{
        BackupOutcome, BackupTarget, BackupWriter, MIN_PART_SIZE, StreamDigest, WriterConfig,
    };
    use strata_core::vault::{Vault, VaultConfig};

    /// XXH3-128 as `xxhsum -H2` prints it.
    fn xxh3_hex(data: &[u8]) -> String {
        format!("{:032x}", twox_hash::XxHash3_128::oneshot(data))
    }

    #[test]
    fn roundtrip_pads_shrunk_files_and_checks_digests() {
        let mut w = BundleWriter::new(Vec::new());
        w.add_dir("pg_wal", 0o700).unwrap();
        let d1 = w
            .add_file("base/1/1259", 0o600, 5, &mut &b"hello world"[..])
            .unwrap();
        let d2 = w
            .add_file("PG_VERSION", 0o600, 6, &mut &b"15\n"[..])
            .unwrap();
        let mut out = w.finish().unwrap();
        assert_eq!(d1, FileChecksum::Xxh3(xxh3_hex(b"hello")));
        assert_eq!(d2, FileChecksum::Xxh3(xxh3_hex(b"15\n\0\0\0")));

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let entries = extract(&mut &out[..], &|p| root.join(p), true, "data.0").unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(std::fs::read(root.join("base/1/1259")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(root.join("PG_VERSION")).unwrap(),
            b"15\n\0\0\0"
        );
        assert!(root.join("pg_wal").is_dir());

        // One flipped content byte is caught and the file is not left behind.
        let pos = out.windows(5).position(|w| w == b"hello").unwrap();
        out[pos] = b'j';
        let dir2 = tempfile::tempdir().unwrap();
        let root2 = dir2.path().to_path_buf();
        let err = extract(&mut &out[..], &|p| root2.join(p), false, "data.0").unwrap_err();
        assert!(err.to_string().contains("base/1/1259"), "{err}");
        assert!(!root2.join("base/1/1259").exists());
    }

    /// A restore onto a full disk names the file, keeps "No space left on
    /// device" and tells the operator which file system to free up
    /// (`/dev/full` fails every write with ENOSPC).
    #[test]
    fn a_full_disk_names_the_file_and_its_file_system() {
        if !Path::new("/dev/full").exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        let mut w = BundleWriter::new(Vec::new());
        w.add_file("base/1/1259", 0o600, 5, &mut &b"hello"[..])
            .unwrap();
        let out = w.finish().unwrap();
        let err = extract(
            &mut &out[..],
            &|_| PathBuf::from("/dev/full"),
            false,
            "data.0",
        )
        .unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Io);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "writing /dev/full: No space left on device (os error 28)"
        );
        assert_eq!(err.field("path"), Some("/dev/full"));
        assert_eq!(err.hints(), ["free space on /dev/full's file system"]);
    }

    /// A vault in memory named after `label`, and a backup writer into it
    /// with the smallest parts, so that a few files span many.
    async fn small_part_writer(label: &str) -> (Vault, BackupWriter) {
        let url = format!("memory://bundle-{label}-{}", std::process::id());
        let vault = Vault::init(&VaultConfig::from_url(url), None)
            .await
            .unwrap();
        let config = WriterConfig {
            part_size: MIN_PART_SIZE,
            compression_level: 1,
            ..WriterConfig::default()
        };
        let target = BackupTarget {
            engine: "postgres".into(),
            instance: "test".into(),
            database: None,
            kind: BackupKind::Full,
        };
        let writer = BackupWriter::start(&vault, target, config).unwrap();
        (vault, writer)
    }

    /// The raw bytes of stream `name` of a committed backup.
    async fn raw_stream(
        vault: &Vault,
        manifest: &strata_core::catalog::manifest::Manifest,
        name: &str,
    ) -> Vec<u8> {
        let mut stream = Vec::new();
        read_stream(
            vault,
            manifest,
            name,
            &mut stream,
            &ReaderConfig::default(),
            None,
        )
        .await
        .unwrap();
        stream
    }

    /// Through the vault writer's part buffers: headers and file contents
    /// that straddle part boundaries, an empty file, a file that shrank, and
    /// several parts' worth of one file come back byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn part_writer_round_trips_across_part_boundaries() {
        let p = MIN_PART_SIZE;
        let (vault, writer) = small_part_writer("test").await;
        let content = |len: usize, seed: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        };
        // (path, size recorded, bytes the file holds now)
        let files: Vec<(String, u64, Vec<u8>)> = vec![
            ("PG_VERSION".into(), 3, b"15\n".to_vec()),
            ("base/5/empty".into(), 0, Vec::new()),
            (
                "base/5/just_under".into(),
                (p - 40) as u64,
                content(p - 40, 1),
            ),
            ("base/5/exact".into(), p as u64, content(p, 2)),
            (
                "base/5/three_parts".into(),
                (3 * p + 5) as u64,
                content(3 * p + 5, 3),
            ),
            ("base/5/shrank".into(), 1000, content(10, 4)),
        ];
        let (feed, parts) = writer.part_channel();
        let fed = files.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let mut bundle = BundleWriter::new(PartWriter::new(feed));
            bundle.add_dir("base/5", 0o700).unwrap();
            let digests: Vec<FileChecksum> = fed
                .iter()
                .map(|(path, size, bytes)| {
                    bundle
                        .add_file(path, 0o600, *size, &mut &bytes[..])
                        .unwrap()
                })
                .collect();
            bundle.finish().unwrap();
            digests
        });
        let record = writer
            .write_parts("data.0", parts, StreamDigest::Skip, None)
            .await
            .unwrap();
        let digests = producer.await.unwrap();
        assert!(record.part_count() >= 5, "{} parts", record.part_count());
        // A second stream whose bundle is well formed and stored soundly
        // (every part's CRC is right) but one file's content does not match
        // its digest: only the bundle check can tell.
        let mut w = BundleWriter::new(Vec::new());
        w.add_file("base/5/16384", 0o600, 5, &mut &b"hello"[..])
            .unwrap();
        let mut forged = w.finish().unwrap();
        let at = forged.windows(5).position(|w| w == b"hello").unwrap();
        forged[at] = b'j';
        let (feed, parts) = writer.part_channel();
        let sender = tokio::task::spawn_blocking(move || {
            let mut buf = feed.buffer();
            buf[..forged.len()].copy_from_slice(&forged);
            feed.send(buf, forged.len()).unwrap();
        });
        writer
            .write_parts("data.1", parts, StreamDigest::Skip, None)
            .await
            .unwrap();
        sender.await.unwrap();
        let manifest = writer.commit(BackupOutcome::default()).await.unwrap();

        let report = strata_core::vault::reader::verify_backup_with(
            &vault,
            &manifest,
            &ReaderConfig::default(),
            None,
            Some(&BundleCheck),
        )
        .await
        .unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let problem = &report.problems[0];
        assert!(
            problem.contains("data.1")
                && problem.contains("base/5/16384 ")
                && problem.contains("checksum"),
            "{problem}"
        );

        let stream = raw_stream(&vault, &manifest, "data.0").await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let entries = extract(&mut &stream[..], &|p| root.join(p), true, "data.0").unwrap();
        assert_eq!(entries.len(), files.len() + 1);
        for ((path, size, bytes), digest) in files.iter().zip(&digests) {
            let mut expected = bytes.clone();
            expected.resize(*size as usize, 0);
            let restored = std::fs::read(root.join(path)).unwrap();
            assert!(
                restored == expected,
                "{path}: {} bytes back",
                restored.len()
            );
            assert_eq!(*digest, FileChecksum::Xxh3(xxh3_hex(&expected)), "{path}");
        }
    }

    /// Large files read with direct I/O into aligned part buffers, each
    /// starting a part, between small files, across part boundaries, with a
    /// last partial block: byte for byte back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_reads_round_trip_with_each_large_file_starting_a_part() {
        use std::os::unix::fs::OpenOptionsExt;

        let p = MIN_PART_SIZE;
        let (vault, writer) = small_part_writer("direct").await;
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            ("base/5/small", 999usize),
            ("base/5/large", DIRECT_MIN as usize + 12_345),
            ("base/5/tiny", 7),
            ("base/5/parts", 3 * p + 3 * DIRECT_ALIGN),
            ("base/5/under", DIRECT_MIN as usize - 1),
        ];
        let mut files = Vec::new();
        for (i, (name, size)) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..*size)
                .map(|j| ((j / 7) as u8).wrapping_mul(13) ^ i as u8)
                .collect();
            let path = dir.path().join(name.replace('/', "_"));
            std::fs::write(&path, &bytes).unwrap();
            files.push((name.to_string(), path, bytes));
        }
        // A file system without direct I/O (some tmpfs) is read through the
        // page cache, parts unaligned; the content must come back all the same.
        let direct_io = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&files[1].1)
            .is_ok();
        let (feed, parts) = writer.part_channel();
        let fed = files.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let mut bundle = BundleWriter::new(PartWriter::new(feed));
            for (name, path, bytes) in &fed {
                let file = std::fs::File::open(path).unwrap();
                let direct = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok();
                bundle
                    .add_os_file(
                        name,
                        0o600,
                        bytes.len() as u64,
                        &file,
                        direct.as_ref(),
                        None,
                    )
                    .unwrap();
            }
            bundle.finish().unwrap();
        });
        let record = writer
            .write_parts("data.0", parts, StreamDigest::Skip, None)
            .await
            .unwrap();
        producer.await.unwrap();
        let manifest = writer.commit(BackupOutcome::default()).await.unwrap();

        let stream = raw_stream(&vault, &manifest, "data.0").await;
        // Every large file's content starts a part.
        let mut starts = std::collections::HashSet::new();
        let mut at = 0u64;
        for segment in &record.segments {
            for part in &segment.parts {
                starts.insert(at);
                at += part.raw;
            }
        }
        for (name, _, bytes) in files.iter().filter(|_| direct_io) {
            if bytes.len() as u64 >= DIRECT_MIN {
                let header_end = stream
                    .windows(name.len())
                    .position(|w| w == name.as_bytes())
                    .unwrap()
                    + name.len()
                    + 12;
                assert!(starts.contains(&(header_end as u64)), "{name}");
            }
        }
        let out = tempfile::tempdir().unwrap();
        let root = out.path().to_path_buf();
        let entries = extract(&mut &stream[..], &|p| root.join(p), false, "data.0").unwrap();
        assert_eq!(entries.len(), files.len());
        for (name, _, bytes) in &files {
            let restored = std::fs::read(root.join(name)).unwrap();
            assert!(restored == *bytes, "{name}: {} bytes back", restored.len());
        }
    }

    /// A bundle exactly as format version 1 wrote it (BLAKE3 after each
    /// file) still restores, damage in it is still caught, and a manifest
    /// entry of that time still parses.
    #[test]
    fn version_1_bundles_still_restore() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"SPGF\x00");
        v1.extend_from_slice(&11u16.to_le_bytes());
        v1.extend_from_slice(b"base/1/1259");
        v1.extend_from_slice(&0o600u32.to_le_bytes());
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(b"hello");
        v1.extend_from_slice(blake3::hash(b"hello").as_bytes());
        v1.extend_from_slice(b"SPGE");

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let entries = extract(&mut &v1[..], &|p| root.join(p), false, "data.0").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(std::fs::read(root.join("base/1/1259")).unwrap(), b"hello");

        let at = v1.windows(5).position(|w| w == b"hello").unwrap();
        v1[at + 1] = b'a';
        let err = check(&mut &v1[..], "data.0").unwrap_err();
        assert!(
            err.to_string()
                .contains("base/1/1259 in stream data.0 does not match its checksum"),
            "{err}"
        );

        let old: StoredFile = serde_json::from_str(
            r#"{"path":"PG_VERSION","size":3,"blake3":"ab12","stream":"data.0"}"#,
        )
        .unwrap();
        assert_eq!(old.checksum, FileChecksum::Blake3("ab12".into()));
        let new = StoredFile {
            checksum: FileChecksum::Xxh3(xxh3_hex(b"15\n")),
            ..old
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["xxh3_128"], xxh3_hex(b"15\n"));
        assert_eq!(serde_json::from_value::<StoredFile>(json).unwrap(), new);
    }

    /// An entry kind this version does not know is refused by name, not
    /// misread as something else.
    #[test]
    fn unknown_entry_kinds_are_refused() {
        let mut out = Vec::new();
        out.extend_from_slice(b"SPGF\x07");
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(b"x");
        out.extend_from_slice(&0o600u32.to_le_bytes());
        let err = check(&mut &out[..], "data.3").unwrap_err();
        assert!(
            err.to_string().contains("data.3") && err.to_string().contains("unknown entry kind 7"),
            "{err}"
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let mut w = BundleWriter::new(Vec::new());
        w.add_file("../etc/passwd", 0o600, 1, &mut &b"x"[..])
            .unwrap();
        let out = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let err = extract(&mut &out[..], &|p| root.join(p), false, "s").unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
    }
}

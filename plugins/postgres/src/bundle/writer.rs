//! Writing bundles: [`BundleWriter`] and its outputs, among them the
//! [`PartWriter`] that reads file contents, directly where it can, into the
//! vault writer's part buffers.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_core::plugin::PartFeed;

use super::{
    CHUNK, DIRECT_ALIGN, DIRECT_MIN, END_MAGIC, ENTRY_MAGIC, FileChecksum, FileHasher, KIND_DIR,
    KIND_FILE_XXH3, KIND_PAGES, KIND_REMOVED, PAGE, PAGES_END,
};
use crate::pages::PageCheck;

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

    fn header(&mut self, kind: u8, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_os_str().as_bytes();
        let len = u16::try_from(path.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
        self.out.write_all(ENTRY_MAGIC)?;
        self.out.write_all(&[kind])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(path)?;
        self.out.write_all(&mode.to_le_bytes())
    }

    /// Adds a directory entry.
    pub fn add_dir(&mut self, path: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        self.header(KIND_DIR, path.as_ref(), mode)
    }

    /// Adds a file of exactly `size` bytes read from `file` (zero-padded if
    /// the file is shorter now). Returns the checksum of the bytes stored.
    pub fn add_file(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        size: u64,
        file: &mut impl Read,
    ) -> io::Result<FileChecksum> {
        self.add_with(path.as_ref(), mode, size, None, |out, observe| {
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
        path: &Path,
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
        path: &Path,
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

    /// Adds a pages entry: the file at `path` is `size` bytes long, and
    /// `fill` gives its changed pages to the [`PageSink`] in ascending block
    /// order. Returns how many pages were stored.
    pub fn add_pages(
        &mut self,
        path: &Path,
        mode: u32,
        size: u64,
        fill: impl FnOnce(&mut PageSink<'_, W>) -> io::Result<()>,
    ) -> io::Result<u64> {
        self.header(KIND_PAGES, path, mode)?;
        self.out.write_all(&size.to_le_bytes())?;
        let mut sink = PageSink {
            out: &mut self.out,
            hasher: FileHasher::for_kind(KIND_FILE_XXH3).expect("a file kind"),
            pages: 0,
        };
        fill(&mut sink)?;
        let PageSink { hasher, pages, .. } = sink;
        self.out.write_all(&PAGES_END.to_le_bytes())?;
        self.out.write_all(&hasher.finish().0)?;
        Ok(pages)
    }

    /// Adds a removed entry: `path` existed in the base and is gone.
    pub fn add_removed(&mut self, path: &Path) -> io::Result<()> {
        self.header(KIND_REMOVED, path, 0)
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

/// Takes the pages of one pages entry ([`BundleWriter::add_pages`]).
pub struct PageSink<'a, W: BundleOut> {
    out: &'a mut W,
    hasher: FileHasher,
    pages: u64,
}

impl<W: BundleOut> PageSink<'_, W> {
    /// Stores `page` as block `block` of the file (counted from its start).
    pub fn page(&mut self, block: u32, page: &[u8; PAGE]) -> io::Result<()> {
        debug_assert_ne!(block, PAGES_END);
        let block = block.to_le_bytes();
        self.hasher.update(&block);
        self.hasher.update(page);
        self.out.write_all(&block)?;
        self.out.write_all(page)?;
        self.pages += 1;
        Ok(())
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

/// Tells the kernel that `file` is about to be read from start to end, so
/// that it reads ahead further. Advisory, like `reader::start_writeback`.
pub fn will_read_sequentially(file: &std::fs::File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
}

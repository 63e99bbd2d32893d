//! The file bundle: how a full backup packs many files into a few streams.
//!
//! A full backup splits the cluster's files over a few streams (one per
//! reader, `parallel` in the config), so that a data directory of thousands
//! of small files becomes a handful of large sequential streams: few objects,
//! few requests, and the vault's writer compresses them on every core.
//!
//! # Format (version 1)
//!
//! A stream is a sequence of entries followed by an end marker. All integers
//! are little-endian.
//!
//! ```text
//! entry := "SPGF" kind:u8 path_len:u16 path:[u8; path_len] mode:u32 size:u64
//!          content:[u8; size] blake3:[u8; 32]        (kind 0 = file)
//!        | "SPGF" kind:u8 path_len:u16 path mode:u32 (kind 1 = directory)
//! end   := "SPGE"
//! ```
//!
//! Paths are relative to the data directory, `/`-separated; files of a
//! tablespace are stored under `pg_tblspc/<oid>/...`. `size` is the size at
//! the time the file was listed: a file that grew since is read up to that
//! size, a file that shrank is padded with zeros (WAL replay repairs both, as
//! for `pg_basebackup`). The digest covers exactly the `size` bytes stored.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_core::{Error, Result};
use tokio::sync::mpsc;

const ENTRY_MAGIC: &[u8; 4] = b"SPGF";
const END_MAGIC: &[u8; 4] = b"SPGE";
const KIND_FILE: u8 = 0;
const KIND_DIR: u8 = 1;
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
    /// BLAKE3 of the stored bytes, lowercase hex.
    pub blake3: String,
    /// The stream holding it.
    pub stream: String,
}

/// Writes bundle entries to any writer.
pub struct BundleWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> BundleWriter<W> {
    /// A bundle writing to `out`.
    pub fn new(out: W) -> Self {
        BundleWriter {
            out,
            buf: vec![0; CHUNK],
        }
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
    /// the file is shorter now). Returns the BLAKE3 digest of the bytes stored.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        file: &mut impl Read,
    ) -> io::Result<String> {
        self.header(KIND_FILE, path, mode)?;
        self.out.write_all(&size.to_le_bytes())?;
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        let mut eof = false;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let got = if eof {
                0
            } else {
                let n = read_full(file, &mut self.buf[..want])?;
                eof = n < want;
                n
            };
            self.buf[got..want].fill(0);
            hasher.update(&self.buf[..want]);
            self.out.write_all(&self.buf[..want])?;
            left -= want as u64;
        }
        let digest = hasher.finalize();
        self.out.write_all(digest.as_bytes())?;
        Ok(digest.to_hex().to_string())
    }

    /// Writes the end marker and flushes; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(END_MAGIC)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
        let target = place(&path);
        match kind {
            KIND_DIR => {
                std::fs::create_dir_all(&target).map_err(|e| io_err(&target, e))?;
                set_mode(&target, mode)?;
                entries.push(RestoredEntry {
                    path,
                    is_dir: true,
                    size: 0,
                });
            }
            KIND_FILE => {
                let mut size = [0u8; 8];
                input
                    .read_exact(&mut size)
                    .map_err(|_| corrupt("truncated size"))?;
                let size = u64::from_le_bytes(size);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                let mut file = std::fs::File::create(&target).map_err(|e| io_err(&target, e))?;
                let mut hasher = blake3::Hasher::new();
                let mut left = size;
                let mut unflushed_from = 0u64;
                while left > 0 {
                    let want = left.min(CHUNK as u64) as usize;
                    input
                        .read_exact(&mut buf[..want])
                        .map_err(|_| corrupt(&format!("{path} is truncated")))?;
                    hasher.update(&buf[..want]);
                    file.write_all(&buf[..want])
                        .map_err(|e| io_err(&target, e))?;
                    left -= want as u64;
                    let written = size - left;
                    if written - unflushed_from >= WRITEBACK_EVERY || (left == 0 && written > 0) {
                        start_writeback(&file, unflushed_from, written - unflushed_from);
                        unflushed_from = written;
                    }
                }
                let mut digest = [0u8; 32];
                input
                    .read_exact(&mut digest)
                    .map_err(|_| corrupt(&format!("{path} has no digest")))?;
                if hasher.finalize().as_bytes() != &digest {
                    drop(file);
                    let _ = std::fs::remove_file(&target);
                    return Err(Error::integrity(format!(
                        "{path} in stream {origin} does not match its checksum"
                    ))
                    .hint(
                        "the backup is damaged; restore an older backup or run `strata verify`",
                    ));
                }
                if fsync {
                    file.sync_all().map_err(|e| io_err(&target, e))?;
                }
                drop(file);
                set_mode(&target, mode)?;
                entries.push(RestoredEntry {
                    path,
                    is_dir: false,
                    size,
                });
            }
            _ => return Err(corrupt("unknown entry kind")),
        }
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
    Error::io(format!("writing {}: {e}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(path, e))
}

/// A [`Write`] that hands 1 MiB chunks to an async consumer over a bounded
/// channel: the bridge from a blocking file reader to the vault writer.
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer feeding `tx`.
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the vault writer stopped reading",
            )
        })
    }

    /// Passes an error to the consumer, failing its stream.
    pub fn fail(self, err: io::Error) {
        let _ = self.tx.blocking_send(Err(err));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A channel and the async reader of its chunks.
pub fn channel() -> (
    mpsc::Sender<io::Result<Bytes>>,
    impl tokio::io::AsyncRead + Send + Unpin + 'static,
) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, tokio_util::io::StreamReader::new(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_pads_shrunk_files_and_checks_digests() {
        let mut out = Vec::new();
        let mut w = BundleWriter::new(&mut out);
        w.add_dir("pg_wal", 0o700).unwrap();
        let d1 = w
            .add_file("base/1/1259", 0o600, 5, &mut &b"hello world"[..])
            .unwrap();
        let d2 = w
            .add_file("PG_VERSION", 0o600, 6, &mut &b"15\n"[..])
            .unwrap();
        w.finish().unwrap();
        assert_eq!(d1, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(d2, blake3::hash(b"15\n\0\0\0").to_hex().to_string());

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

    #[test]
    fn unsafe_paths_are_refused() {
        let mut out = Vec::new();
        let mut w = BundleWriter::new(&mut out);
        w.add_file("../etc/passwd", 0o600, 1, &mut &b"x"[..])
            .unwrap();
        w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let err = extract(&mut &out[..], &|p| root.join(p), false, "s").unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
    }
}

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
//!        | "SPGF" kind:u8 path_len:u16 path mode:u32 size:u64
//!          { block:u32 page:[u8; 8192] }* 0xFFFFFFFF
//!          xxh3:[u8; 16]                             (kind 3 = pages)
//!        | "SPGF" kind:u8 path_len:u16 path mode:u32 (kind 4 = removed)
//! end   := "SPGE"
//! ```
//!
//! Kinds 3 and 4 are written by differential and incremental backups
//! (see [`crate::delta`]) and apply on the files their base laid down:
//! - **pages**: the file becomes `size` bytes long (shorter or longer than
//!   in the base: a relation truncated or extended since) and each listed
//!   page is written at `block * 8192` (blocks counted from the start of
//!   this file, ascending). The XXH3-128 covers each block number (4 bytes,
//!   little-endian) followed by its page, in order. A restore refuses a
//!   pages entry for a file the base did not lay down.
//! - **removed**: the file or directory (with its contents) existed in the
//!   base and is gone; a restore deletes it, so that nothing dropped since
//!   the base comes back.
//!
//! Version 1 stored a BLAKE3 digest after each file; version 2 stores the
//! 128-bit XXH3 instead (big-endian, as `xxhsum -H2` prints it), which costs
//! a fifth of BLAKE3's CPU time. The per-file digest is there to catch
//! accidental damage (a bad disk, a bug, a truncated object), for which a
//! 128-bit non-cryptographic hash is ample; deliberate tampering is the job
//! of the vault's authenticated encryption. Restores read both kinds, so
//! backups written before keep restoring.
//!
//! Paths are relative to the data directory, `/`-separated, and are the
//! bytes the file system gave, UTF-8 or not (PostgreSQL's names are bytes;
//! `pg_basebackup` copies them all); a reader refuses an empty component,
//! `.`, `..` and NUL. Files of a tablespace are stored under
//! `pg_tblspc/<oid>/...`. The manifest records only how many files a
//! backup holds (`file_count`); the bundle is the list of its files. `size` is the size at
//! the time the file was listed: a file that grew since is read up to that
//! size, a file that shrank is padded with zeros (WAL replay repairs both, as
//! for `pg_basebackup`). The digest covers exactly the `size` bytes stored.

mod check;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub use check::BundleCheck;
pub use reader::{BundleSummary, check, extract};
pub use writer::{BundleOut, BundleWriter, PageSink, PartWriter, will_read_sequentially};

const ENTRY_MAGIC: &[u8; 4] = b"SPGF";
const END_MAGIC: &[u8; 4] = b"SPGE";
/// A file followed by its BLAKE3 (format version 1, read only).
const KIND_FILE_BLAKE3: u8 = 0;
const KIND_DIR: u8 = 1;
/// A file followed by its XXH3-128 (format version 2).
const KIND_FILE_XXH3: u8 = 2;
/// Changed pages of a file the base holds.
const KIND_PAGES: u8 = 3;
/// A file or directory of the base that no longer exists.
const KIND_REMOVED: u8 = 4;
/// Ends the pages of a [`KIND_PAGES`] entry.
const PAGES_END: u32 = u32::MAX;
/// The page size of pages entries (PostgreSQL's `BLCKSZ`).
const PAGE: usize = crate::pages::PAGE_SIZE;
/// The memory, length and file-offset alignment of direct reads: the
/// logical block size of the devices databases use is at most 4 KiB.
pub const DIRECT_ALIGN: usize = 4096;
/// Files at least this large are read with direct I/O where possible.
pub const DIRECT_MIN: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;

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

//! What a [`BackupWriter`](super::BackupWriter) is told: its limits, its
//! settings and the backup's target.

use crate::catalog::manifest::BackupKind;
use crate::error::{Error, Result};

/// The default raw size of a part: 16 MiB.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// The smallest part size accepted: 64 KiB.
pub const MIN_PART_SIZE: usize = 64 << 10;
/// The largest part size accepted: 1 GiB.
pub const MAX_PART_SIZE: usize = 1 << 30;
/// The size of one multipart upload chunk: 8 MiB, above every store's 5 MiB minimum.
pub const UPLOAD_CHUNK_SIZE: usize = 8 << 20;
/// The default largest stored size of one segment object: 4 GiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 << 30;
/// The largest segment size accepted: 9,000 upload chunks (about 70 GiB),
/// safely under the 10,000-part limit of S3 multipart uploads.
pub const MAX_SEGMENT_SIZE: u64 = 9_000 * UPLOAD_CHUNK_SIZE as u64;

/// How a [`BackupWriter`](super::BackupWriter) cuts, compresses and uploads its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Raw bytes per part (the unit of compression, checksum and
    /// encryption). Default 16 MiB, at least 64 KiB, at most 1 GiB.
    pub part_size: usize,
    /// The zstd level of every part. Default 3.
    pub compression_level: i32,
    /// Compression threads shared by the streams of one backup; 0 means
    /// one per core (the default).
    pub workers: usize,
    /// Upload chunks in flight per stream. Default 4.
    pub parts_in_flight: usize,
    /// The largest stored size of one segment object. Default 4 GiB. At least
    /// `part_size`; a single part that compresses to more than this (random
    /// data in a tiny segment size) gets a segment of its own.
    pub segment_size: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            part_size: DEFAULT_PART_SIZE,
            compression_level: 3,
            workers: 0,
            parts_in_flight: 4,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

impl WriterConfig {
    /// Checks the settings and resolves `workers = 0` to the number of cores.
    pub(super) fn resolved(&self) -> Result<WriterConfig> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::config(format!(
                "part size {} bytes is out of range",
                self.part_size
            ))
            .hint(format!(
                "choose a part size between {} KiB and {} MiB (the default is {} MiB)",
                MIN_PART_SIZE >> 10,
                MAX_PART_SIZE >> 20,
                DEFAULT_PART_SIZE >> 20
            )));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.compression_level) {
            return Err(Error::config(format!(
                "compression level {} is not a zstd level",
                self.compression_level
            ))
            .hint(format!(
                "choose a level from {} to {} (1 is fastest, 3 is the default, 19 and above are slow)",
                levels.start(),
                levels.end()
            )));
        }
        if self.parts_in_flight == 0 {
            return Err(Error::config("parts in flight must be at least 1")
                .hint("4 uploads in flight per stream is the default"));
        }
        if self.segment_size < self.part_size as u64 || self.segment_size > MAX_SEGMENT_SIZE {
            return Err(Error::config(format!(
                "segment size {} bytes is out of range",
                self.segment_size
            ))
            .hint(format!(
                "choose a segment size between the part size ({} bytes) and {} GiB (the default is 4 GiB)",
                self.part_size,
                MAX_SEGMENT_SIZE >> 30
            )));
        }
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        };
        Ok(WriterConfig {
            workers,
            ..self.clone()
        })
    }
}

/// What a backup is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTarget {
    /// The engine (`postgres`, `sqlserver`, `hana`, `stream`).
    pub engine: String,
    /// The protected instance.
    pub instance: String,
    /// The database within the instance, when the engine has several.
    pub database: Option<String>,
    /// Full, diff, incr or log.
    pub kind: BackupKind,
}

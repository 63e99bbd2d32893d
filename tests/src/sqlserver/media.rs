//! The emulator's backup media: what `BACKUP` writes to its devices and
//! `RESTORE` reads back.
//!
//! Strata never parses a backup stream of SQL Server; it stores and returns
//! the bytes. The emulator's media therefore only has to behave like a
//! native stream where Strata can see it: it is written in blocks of
//! `MAXTRANSFERSIZE`, spread round-robin over the devices of a stripe set,
//! its size follows the database's, its database pages compress like real
//! ones (or not at all, like a backup SQL Server compressed itself), and a
//! damaged or incomplete stream is refused with SQL Server's own errors.
//!
//! # Layout (all integers little-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `SQLEMUMF` |
//! | 4 | format version (1) |
//! | 4 | header length `h` |
//! | 8 | content length `c` |
//! | 8 | payload length `p` |
//! | 8 | payload seed |
//! | 4 | flags (bit 0: the payload is compressible) |
//! | 4 | reserved (0) |
//! | `h` | the [`SetHeader`] as JSON |
//! | `c` | the engine's content (a table snapshot, log records: opaque here) |
//! | `p` | the payload: 8 KiB database pages generated from the seed |
//! | 8 | magic `SQLEMUTR` |
//! | 8 | total length of the media, trailer included |
//! | 32 | BLAKE3 of every byte before the trailer |
//!
//! Block `i` of the media (bytes `[i * MAX_TRANSFER_SIZE, (i + 1) * MAX_TRANSFER_SIZE)`)
//! goes to device [`device_of`]`(i, devices)`; every block but the last is full.

use std::fmt;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use chrono::NaiveDateTime;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The size of one media block, the `MAXTRANSFERSIZE` the plugin asks for
/// (4 MiB, the largest SQL Server accepts and the size Microsoft recommends
/// for block blobs: "SQL Server back up to URL", best practices).
pub const MAX_TRANSFER_SIZE: usize = 4 * 1024 * 1024;

/// The size of a database page (8 KiB: "Pages and extents architecture guide").
pub const PAGE_SIZE: usize = 8192;

const MAGIC: &[u8; 8] = b"SQLEMUMF";
const TRAILER_MAGIC: &[u8; 8] = b"SQLEMUTR";
const FORMAT_VERSION: u32 = 1;
const PRELUDE_LEN: usize = 48;
const TRAILER_LEN: usize = 48;
const FLAG_COMPRESSIBLE: u32 = 1;

/// The kind of a backup set, as `msdb.dbo.backupset.type` and
/// `RESTORE HEADERONLY`'s `BackupType` record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackupType {
    /// A full database backup (`D`).
    Full,
    /// A differential database backup (`I`).
    Differential,
    /// A transaction log backup (`L`).
    Log,
}

impl BackupType {
    /// The one-letter code of `msdb.dbo.backupset.type`: `D`, `I` or `L`
    /// ("backupset (Transact-SQL)").
    pub fn code(self) -> char {
        match self {
            BackupType::Full => 'D',
            BackupType::Differential => 'I',
            BackupType::Log => 'L',
        }
    }

    /// The backup type of a `backupset.type` code; `None` for the codes the
    /// emulator does not take (file, partial backups).
    pub fn from_code(code: char) -> Option<BackupType> {
        match code {
            'D' => Some(BackupType::Full),
            'I' => Some(BackupType::Differential),
            'L' => Some(BackupType::Log),
            _ => None,
        }
    }
}

/// One database file in a backup set, as `RESTORE FILELISTONLY` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// `LogicalName`: the name `WITH MOVE` refers to.
    pub logical_name: String,
    /// `PhysicalName`: where the file was when the backup was taken.
    pub physical_name: String,
    /// `Type`: `'D'` (data) or `'L'` (log).
    pub file_type: char,
    /// `FileId`.
    pub file_id: i32,
    /// `Size`, in bytes.
    pub size_bytes: i64,
}

/// What a backup set says about itself (the fields of `RESTORE HEADERONLY`
/// and of its `msdb.dbo.backupset` row); dates are the server's local time.
///
/// LSNs are SQL Server's `numeric(25,0)` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetHeader {
    /// Full, differential or log.
    pub backup_type: BackupType,
    /// Taken `WITH COPY_ONLY`: outside the differential base and log chain.
    pub is_copy_only: bool,
    /// The database backed up.
    pub database_name: String,
    /// `@@SERVERNAME` of the server that took it.
    pub server_name: String,
    /// `backup_set_uuid`.
    pub backup_set_guid: Uuid,
    /// The first LSN the backup set holds (for a log: the end of the previous log backup).
    pub first_lsn: i128,
    /// The LSN after the last one the backup set holds.
    pub last_lsn: i128,
    /// The LSN of the checkpoint the backup started from.
    pub checkpoint_lsn: i128,
    /// The `checkpoint_lsn` of the full (or differential base) this backup depends on.
    pub database_backup_lsn: i128,
    /// For a differential: the `checkpoint_lsn` of its base.
    pub differential_base_lsn: Option<i128>,
    /// For a differential: the `backup_set_uuid` of its base.
    pub differential_base_guid: Option<Uuid>,
    /// The recovery fork at the first LSN.
    pub first_recovery_fork_guid: Uuid,
    /// The recovery fork at the last LSN.
    pub last_recovery_fork_guid: Uuid,
    /// Where the recovery fork changed within the backup, if it did.
    pub fork_point_lsn: Option<i128>,
    /// `database_guid`: this incarnation of the database.
    pub database_guid: Uuid,
    /// `family_guid`: the database as created, kept across restores.
    pub family_guid: Uuid,
    /// When the backup started (server's local time).
    pub backup_start_date: NaiveDateTime,
    /// When the backup finished (server's local time).
    pub backup_finish_date: NaiveDateTime,
    /// The server's offset from UTC, in 15-minute intervals east.
    pub time_zone: i16,
    /// `FULL`, `SIMPLE` or `BULK-LOGGED`.
    pub recovery_model: String,
    /// The first log backup after a full (or after a switch to FULL recovery).
    pub begins_log_chain: bool,
    /// Holds minimally logged changes (a log backup that cannot stop inside it).
    pub has_bulk_logged_data: bool,
    /// Taken `WITH CHECKSUM`.
    pub has_backup_checksums: bool,
    /// Taken `WITH COMPRESSION`.
    pub compressed: bool,
    /// The database files, as `RESTORE FILELISTONLY` lists them.
    pub files: Vec<FileEntry>,
}

/// The database pages a backup carries after its header: `len`
/// deterministic bytes from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Seeds the page generator: the same seed gives the same bytes.
    pub seed: u64,
    /// Length in bytes (need not be a multiple of a page).
    pub len: u64,
    /// `true`: pages that zstd compresses about 2.5x, like an uncompressed
    /// backup of table data; `false`: random bytes, like a backup that SQL
    /// Server compressed (or encrypted) itself.
    pub compressible: bool,
}

/// An error SQL Server raises reading backup media: its number and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaError {
    /// The error number (3241 malformed media, 3183 a damaged page, 3189 a
    /// damaged backup set, 3201/3203 a device that cannot be opened or read).
    pub number: u32,
    /// The message, as SQL Server words it.
    pub message: String,
}

impl MediaError {
    /// 3241: the bytes of a device are not (all) a media family.
    pub fn malformed(device: &str) -> MediaError {
        MediaError {
            number: 3241,
            message: format!(
                "The media family on device '{device}' is incorrectly formed. \
                 SQL Server cannot process this media family."
            ),
        }
    }

    /// 3183: a page read from the backup set does not hold what was written.
    pub fn damaged_page(page: u64, database: &str) -> MediaError {
        MediaError {
            number: 3183,
            message: format!(
                "RESTORE detected an error on page (1:{page}) in database \"{database}\" \
                 as read from the backup set."
            ),
        }
    }

    /// 3189: the backup set's checksum does not match its bytes.
    pub fn damaged_set() -> MediaError {
        MediaError {
            number: 3189,
            message: "Damage to the backup set was detected.".to_owned(),
        }
    }
}

impl fmt::Display for MediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msg {}: {}", self.number, self.message)
    }
}

impl std::error::Error for MediaError {}

/// The bytes of one device, in order, in chunks of any size.
pub type DeviceStream = Pin<Box<dyn Stream<Item = Result<Bytes, MediaError>> + Send>>;

/// Block `i` of the media goes to device `i % devices` (SQL Server spreads
/// its buffers over the devices of a stripe set in turn).
///
/// # Panics
/// When `devices` is 0.
pub fn device_of(block: u64, devices: usize) -> usize {
    assert!(devices > 0, "a media set has at least one device");
    (block % devices as u64) as usize
}

/// The media of one backup set as blocks of [`MAX_TRANSFER_SIZE`] (the last
/// shorter): header, `content`, payload, checksum trailer.
///
/// Generated lazily: memory is one block whatever `payload.len`.
///
/// # Panics
/// When the header cannot be serialised (it always can) or is larger than 4 GiB.
pub fn encode(header: &SetHeader, content: &[u8], payload: Payload) -> MediaBlocks {
    let header_json = serde_json::to_vec(header).expect("a SetHeader serialises to JSON");
    let header_len = u32::try_from(header_json.len()).expect("a set header under 4 GiB");
    let mut head = Vec::with_capacity(PRELUDE_LEN + header_json.len() + content.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&header_len.to_le_bytes());
    head.extend_from_slice(&(content.len() as u64).to_le_bytes());
    head.extend_from_slice(&payload.len.to_le_bytes());
    head.extend_from_slice(&payload.seed.to_le_bytes());
    let flags = if payload.compressible {
        FLAG_COMPRESSIBLE
    } else {
        0
    };
    head.extend_from_slice(&flags.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(head.len(), PRELUDE_LEN);
    head.extend_from_slice(&header_json);
    head.extend_from_slice(content);
    let total_len = head.len() as u64 + payload.len + TRAILER_LEN as u64;
    MediaBlocks {
        head: Bytes::from(head),
        payload,
        pages: PageGenerator::new(payload),
        total_len,
        offset: 0,
        hasher: blake3::Hasher::new(),
    }
}

/// The blocks of one backup set's media, generated as they are asked for
/// (see [`encode`]).
pub struct MediaBlocks {
    head: Bytes,
    payload: Payload,
    pages: PageGenerator,
    total_len: u64,
    offset: u64,
    hasher: blake3::Hasher,
}

impl MediaBlocks {
    /// The length of the whole media in bytes (header, content, payload, trailer).
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// How many blocks the media has in all.
    pub fn block_count(&self) -> u64 {
        self.total_len.div_ceil(MAX_TRANSFER_SIZE as u64)
    }

    fn trailer_start(&self) -> u64 {
        self.total_len - TRAILER_LEN as u64
    }
}

impl Iterator for MediaBlocks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.offset >= self.total_len {
            return None;
        }
        let start = self.offset;
        let len = (self.total_len - start).min(MAX_TRANSFER_SIZE as u64) as usize;
        let end = start + len as u64;
        let mut block = vec![0u8; len];

        let head_len = self.head.len() as u64;
        if start < head_len {
            let n = (head_len.min(end) - start) as usize;
            block[..n].copy_from_slice(&self.head[start as usize..start as usize + n]);
        }
        let payload_end = head_len + self.payload.len;
        let from = start.max(head_len);
        let to = end.min(payload_end);
        if from < to {
            let at = (from - start) as usize;
            self.pages
                .fill(from - head_len, &mut block[at..at + (to - from) as usize]);
        }
        let trailer_start = self.trailer_start();
        let hashed = (trailer_start.min(end) - start.min(trailer_start)) as usize;
        self.hasher.update(&block[..hashed]);
        if end > trailer_start {
            let mut trailer = [0u8; TRAILER_LEN];
            trailer[..8].copy_from_slice(TRAILER_MAGIC);
            trailer[8..16].copy_from_slice(&self.total_len.to_le_bytes());
            trailer[16..].copy_from_slice(self.hasher.finalize().as_bytes());
            let skip = start.saturating_sub(trailer_start) as usize;
            block[hashed..].copy_from_slice(&trailer[skip..]);
        }
        self.offset = end;
        Some(Bytes::from(block))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.total_len - self.offset).div_ceil(MAX_TRANSFER_SIZE as u64) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for MediaBlocks {}

/// Generates the payload's pages: page `n` depends only on the seed and `n`,
/// so any range can be generated (and checked) on its own.
struct PageGenerator {
    pages: Pages,
    scratch: Box<[u8; PAGE_SIZE]>,
}

impl PageGenerator {
    fn new(payload: Payload) -> PageGenerator {
        PageGenerator {
            pages: Pages::new(payload.seed, payload.compressible),
            scratch: Box::new([0u8; PAGE_SIZE]),
        }
    }

    /// Fills `out` with the payload bytes from `offset` on.
    fn fill(&mut self, offset: u64, out: &mut [u8]) {
        let mut offset = offset;
        let mut out = out;
        while !out.is_empty() {
            let page = offset / PAGE_SIZE as u64;
            let in_page = (offset % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(out.len());
            let (here, rest) = out.split_at_mut(n);
            if n == PAGE_SIZE {
                self.pages.write(page, here);
            } else {
                self.pages.write(page, &mut self.scratch[..]);
                here.copy_from_slice(&self.scratch[in_page..in_page + n]);
            }
            out = rest;
            offset += n as u64;
        }
    }
}

/// A compressible page holds rows of this size after its header: a 4-byte
/// row header, [`ROW_RANDOM`] bytes of key and numeric columns, then a
/// space-padded fixed-width text column: the mix that makes table pages
/// compress about 2.5x with zstd.
const ROW_LEN: usize = 64;
const ROW_HEADER: [u8; 4] = [0x30, 0x00, 0x08, 0x00];
const ROW_RANDOM: usize = 24;
const PAGE_HEADER_LEN: usize = 96;

/// The rule that makes the pages of one payload: page `n` is the BLAKE3
/// output stream of `n` keyed by the seed (defined by the BLAKE3
/// specification, so the same on every platform and version, and generated
/// at several GB/s by the `blake3` crate's SIMD code, even in a debug
/// build), shaped into rows when the payload is compressible.
#[derive(Clone, Copy)]
struct Pages {
    key: [u8; 32],
    compressible: bool,
}

impl Pages {
    fn new(seed: u64, compressible: bool) -> Pages {
        Pages {
            key: blake3::derive_key(
                "strata sqlserver emulator 2026 media payload pages",
                &seed.to_le_bytes(),
            ),
            compressible,
        }
    }

    /// Writes page `index` (exactly [`PAGE_SIZE`] bytes) into `out`.
    fn write(self, index: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), PAGE_SIZE);
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&index.to_le_bytes());
        hasher.finalize_xof().fill(out);
        if !self.compressible {
            return;
        }
        let (header, rows) = out.split_at_mut(PAGE_HEADER_LEN);
        // m_type 1 (a data page), the page number, a few random fields
        // (LSN, object id), zeros.
        header[..8].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        header[8..16].copy_from_slice(&index.to_le_bytes());
        header[40..].fill(0);
        for row in rows.chunks_mut(ROW_LEN) {
            let header_end = row.len().min(ROW_HEADER.len());
            row[..header_end].copy_from_slice(&ROW_HEADER[..header_end]);
            let random_end = row.len().min(ROW_HEADER.len() + ROW_RANDOM);
            row[random_end..].fill(b' ');
        }
    }
}

/// A backup set read back from its media.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// What the backup set says about itself.
    pub header: SetHeader,
    /// The engine's content, as given to [`encode`].
    pub content: Vec<u8>,
    /// The payload's length in bytes (its pages are checked, not kept).
    pub payload_len: u64,
}

/// Decodes the media from its devices' byte streams (each in order, the
/// devices in the order of the `RESTORE` statement), reading them
/// round-robin block by block as [`device_of`] spread them;
/// `header_only` stops after the header and the content (what
/// `RESTORE HEADERONLY` and `FILELISTONLY` read).
///
/// Devices are named `device 1`, `device 2`... in errors; see
/// [`decode_named`] to name them by their URL or path.
///
/// # Errors
/// See [`decode_named`].
pub async fn decode(devices: Vec<DeviceStream>, header_only: bool) -> Result<Decoded, MediaError> {
    let named = devices
        .into_iter()
        .enumerate()
        .map(|(i, stream)| (format!("device {}", i + 1), stream))
        .collect();
    decode_named(named, header_only).await
}

/// [`decode`], with each device's name (its URL or path) for the errors.
///
/// # Errors
/// - 3241 when a device's bytes are not this format (magic, version,
///   header), end early or go on past the media's end, or no device is given;
/// - 3183 naming the first page whose bytes differ from those written;
/// - 3189 when the checksum of the whole media does not match (a damaged
///   header or content);
/// - any error a device stream yields, unchanged.
pub async fn decode_named(
    devices: Vec<(String, DeviceStream)>,
    header_only: bool,
) -> Result<Decoded, MediaError> {
    if devices.is_empty() {
        return Err(MediaError::malformed(""));
    }
    let mut reader = MediaReader::new(devices);
    let prelude = reader.open().await?;
    let header_json = reader.read_hashed(prelude.header_len).await?;
    let header: SetHeader = serde_json::from_slice(&header_json)
        .map_err(|_| MediaError::malformed(&reader.devices[0].name))?;
    let content = reader.read_hashed(prelude.content_len).await?;
    let payload_len = prelude.payload_len;
    if header_only {
        return Ok(Decoded {
            header,
            content,
            payload_len,
        });
    }

    let mut generator = PageGenerator::new(Payload {
        seed: prelude.seed,
        len: payload_len,
        compressible: prelude.compressible,
    });
    let mut expected = vec![0u8; MAX_TRANSFER_SIZE];
    let mut position = 0u64;
    while position < payload_len {
        let chunk = reader.chunk(payload_len - position).await?;
        reader.hasher.update(&chunk);
        let expected = &mut expected[..chunk.len()];
        generator.fill(position, expected);
        if chunk[..] != expected[..] {
            let at = chunk
                .iter()
                .zip(expected.iter())
                .position(|(a, b)| a != b)
                .unwrap_or_default();
            let page = (position + at as u64) / PAGE_SIZE as u64;
            return Err(MediaError::damaged_page(page, &header.database_name));
        }
        position += chunk.len() as u64;
    }

    let trailer = reader.read(TRAILER_LEN).await?;
    let checksum = reader.hasher.finalize();
    if trailer[..8] != TRAILER_MAGIC[..] || trailer[8..16] != reader.total_len.to_le_bytes()[..] {
        return Err(MediaError::malformed(
            &reader.devices[device_of(reader.next_block - 1, reader.devices.len())].name,
        ));
    }
    if trailer[16..] != checksum.as_bytes()[..] {
        return Err(MediaError::damaged_set());
    }
    reader.expect_ends().await?;
    Ok(Decoded {
        header,
        content,
        payload_len,
    })
}

/// The fixed fields at the start of the media.
struct Prelude {
    header_len: usize,
    content_len: usize,
    payload_len: u64,
    seed: u64,
    compressible: bool,
}

/// One device's stream, cut into the media blocks it holds.
struct DeviceReader {
    name: String,
    stream: DeviceStream,
    pending: Bytes,
}

impl DeviceReader {
    /// The next `len` bytes of the device, or fewer when its stream ends
    /// first (the caller decides whether that is an error).
    async fn read_up_to(&mut self, len: usize) -> Result<Bytes, MediaError> {
        if self.pending.len() >= len {
            return Ok(self.pending.split_to(len));
        }
        let mut block = BytesMut::with_capacity(len);
        block.extend_from_slice(&std::mem::take(&mut self.pending));
        while block.len() < len {
            match self.stream.next().await {
                Some(chunk) => {
                    let mut chunk = chunk?;
                    if block.is_empty() && chunk.len() >= len {
                        // A whole block in one chunk: no copy.
                        let whole = chunk.split_to(len);
                        self.pending = chunk;
                        return Ok(whole);
                    }
                    let n = (len - block.len()).min(chunk.len());
                    block.extend_from_slice(&chunk.split_to(n));
                    self.pending = chunk;
                }
                None => break,
            }
        }
        Ok(block.freeze())
    }
}

/// Reads the media across its devices, block by block.
struct MediaReader {
    devices: Vec<DeviceReader>,
    /// The length of the media, from its prelude.
    total_len: u64,
    /// The index of the next block to read.
    next_block: u64,
    /// What is left of the current block.
    block: Bytes,
    hasher: blake3::Hasher,
}

impl MediaReader {
    fn new(devices: Vec<(String, DeviceStream)>) -> MediaReader {
        MediaReader {
            devices: devices
                .into_iter()
                .map(|(name, stream)| DeviceReader {
                    name,
                    stream,
                    pending: Bytes::new(),
                })
                .collect(),
            total_len: 0,
            next_block: 0,
            block: Bytes::new(),
            hasher: blake3::Hasher::new(),
        }
    }

    /// Reads block 0 and the prelude in it; learns the media's length.
    async fn open(&mut self) -> Result<Prelude, MediaError> {
        let first = &mut self.devices[0];
        let block = first.read_up_to(MAX_TRANSFER_SIZE).await?;
        let malformed = || MediaError::malformed(&first.name);
        if block.len() < PRELUDE_LEN
            || block[..8] != MAGIC[..]
            || u32_at(&block, 8) != FORMAT_VERSION
        {
            return Err(malformed());
        }
        let header_len = u32_at(&block, 12) as usize;
        let content_len = u64_at(&block, 16);
        let payload_len = u64_at(&block, 24);
        let prelude = Prelude {
            header_len,
            content_len: usize::try_from(content_len).map_err(|_| malformed())?,
            payload_len,
            seed: u64_at(&block, 32),
            compressible: u32_at(&block, 40) & FLAG_COMPRESSIBLE != 0,
        };
        self.total_len = (PRELUDE_LEN as u64 + header_len as u64)
            .checked_add(content_len)
            .and_then(|n| n.checked_add(payload_len))
            .and_then(|n| n.checked_add(TRAILER_LEN as u64))
            .ok_or_else(malformed)?;
        if block.len() as u64 != self.total_len.min(MAX_TRANSFER_SIZE as u64) {
            return Err(malformed());
        }
        self.hasher.update(&block[..PRELUDE_LEN]);
        self.block = block.slice(PRELUDE_LEN..);
        self.next_block = 1;
        Ok(prelude)
    }

    /// Up to `max` bytes (at least one) from the current block, reading the
    /// next block from its device when the current one is used up.
    async fn chunk(&mut self, max: u64) -> Result<Bytes, MediaError> {
        if self.block.is_empty() {
            let index = self.next_block;
            let start = index * MAX_TRANSFER_SIZE as u64;
            let devices = self.devices.len();
            let device = &mut self.devices[device_of(index, devices)];
            if start >= self.total_len {
                return Err(MediaError::malformed(&device.name));
            }
            let len = (self.total_len - start).min(MAX_TRANSFER_SIZE as u64) as usize;
            let block = device.read_up_to(len).await?;
            if block.len() != len {
                return Err(MediaError::malformed(&device.name));
            }
            self.block = block;
            self.next_block += 1;
        }
        let n = (self.block.len() as u64).min(max) as usize;
        Ok(self.block.split_to(n))
    }

    /// Exactly `len` bytes of the media.
    async fn read(&mut self, len: usize) -> Result<Vec<u8>, MediaError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let chunk = self.chunk((len - out.len()) as u64).await?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// [`Self::read`], counted in the checksum.
    async fn read_hashed(&mut self, len: usize) -> Result<Vec<u8>, MediaError> {
        let out = self.read(len).await?;
        self.hasher.update(&out);
        Ok(out)
    }

    /// After the last block, every device must be at its end.
    async fn expect_ends(&mut self) -> Result<(), MediaError> {
        for device in &mut self.devices {
            if !device.pending.is_empty() {
                return Err(MediaError::malformed(&device.name));
            }
            while let Some(chunk) = device.stream.next().await {
                if !chunk?.is_empty() {
                    return Err(MediaError::malformed(&device.name));
                }
            }
        }
        Ok(())
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use chrono::NaiveDate;
    use futures::stream;

    use super::*;

    /// A full backup's header, as the engine would write it.
    pub(crate) fn sample_header() -> SetHeader {
        let at = NaiveDate::from_ymd_opt(2026, 3, 1)
            .and_then(|d| d.and_hms_milli_opt(10, 15, 30, 250))
            .expect("a valid date");
        SetHeader {
            backup_type: BackupType::Full,
            is_copy_only: false,
            database_name: "sales".to_owned(),
            server_name: "SQL01".to_owned(),
            backup_set_guid: Uuid::from_u128(0x1111),
            first_lsn: 37_000_000_012_300_001,
            last_lsn: 37_000_000_014_500_001,
            checkpoint_lsn: 37_000_000_012_300_037,
            database_backup_lsn: 0,
            differential_base_lsn: None,
            differential_base_guid: None,
            first_recovery_fork_guid: Uuid::from_u128(0x2222),
            last_recovery_fork_guid: Uuid::from_u128(0x2222),
            fork_point_lsn: None,
            database_guid: Uuid::from_u128(0x3333),
            family_guid: Uuid::from_u128(0x4444),
            backup_start_date: at,
            backup_finish_date: at + chrono::Duration::seconds(42),
            time_zone: 4,
            recovery_model: "FULL".to_owned(),
            begins_log_chain: false,
            has_bulk_logged_data: false,
            has_backup_checksums: true,
            compressed: false,
            files: vec![
                FileEntry {
                    logical_name: "sales".to_owned(),
                    physical_name: "/var/opt/mssql/data/sales.mdf".to_owned(),
                    file_type: 'D',
                    file_id: 1,
                    size_bytes: 8 * 1024 * 1024,
                },
                FileEntry {
                    logical_name: "sales_log".to_owned(),
                    physical_name: "/var/opt/mssql/data/sales_log.ldf".to_owned(),
                    file_type: 'L',
                    file_id: 2,
                    size_bytes: 1024 * 1024,
                },
            ],
        }
    }

    const CONTENT: &[u8] = b"{\"tables\":{\"dbo.orders\":[[1,\"a\"],[2,\"b\"]]}}";

    fn payload(len: u64) -> Payload {
        Payload {
            seed: 7,
            len,
            compressible: true,
        }
    }

    /// The media's blocks spread over `devices`, as a writer would store them.
    fn striped(blocks: Vec<Bytes>, devices: usize) -> Vec<Vec<Bytes>> {
        let mut out = vec![Vec::new(); devices];
        for (i, block) in blocks.into_iter().enumerate() {
            out[device_of(i as u64, devices)].push(block);
        }
        out
    }

    /// A device that yields its bytes in chunks of `chunk` bytes (not
    /// aligned to blocks, as an HTTP body or a file read gives them).
    fn device(blocks: &[Bytes], chunk: usize) -> DeviceStream {
        let bytes: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
        let chunks: Vec<Result<Bytes, MediaError>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(stream::iter(chunks))
    }

    fn named(stripes: &[Vec<Bytes>], chunk: usize) -> Vec<(String, DeviceStream)> {
        stripes
            .iter()
            .enumerate()
            .map(|(i, blocks)| (format!("/backup/sales-{i}.bak"), device(blocks, chunk)))
            .collect()
    }

    #[tokio::test]
    async fn one_device_round_trip_returns_header_content_and_payload_length() {
        let payload_len = 9 * 1024 * 1024 + 123;
        let blocks: Vec<Bytes> = encode(&sample_header(), CONTENT, payload(payload_len)).collect();
        assert_eq!(blocks.len(), 3);
        assert!(blocks[..2].iter().all(|b| b.len() == MAX_TRANSFER_SIZE));

        let decoded = decode(vec![device(&blocks, 1 << 20)], false)
            .await
            .expect("the media decodes");
        assert_eq!(decoded.header, sample_header());
        assert_eq!(decoded.content, CONTENT);
        assert_eq!(decoded.payload_len, payload_len);
    }

    #[tokio::test]
    async fn three_devices_hold_the_blocks_round_robin_and_decode() {
        let media = encode(&sample_header(), CONTENT, payload(30 * 1024 * 1024));
        let total = media.total_len();
        let blocks: Vec<Bytes> = media.collect();
        assert_eq!(blocks.len(), 8);
        let stripes = striped(blocks, 3);
        let sizes: Vec<usize> = stripes.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 2]);
        let stored: u64 = stripes.iter().flatten().map(|b| b.len() as u64).sum();
        assert_eq!(stored, total);

        // Chunks that straddle block boundaries.
        let decoded = decode_named(named(&stripes, 1_000_003), false)
            .await
            .expect("the striped media decodes");
        assert_eq!(decoded.header, sample_header());
        assert_eq!(decoded.content, CONTENT);
        assert_eq!(decoded.payload_len, 30 * 1024 * 1024);
    }

    #[tokio::test]
    async fn devices_given_in_another_order_are_refused() {
        let blocks: Vec<Bytes> =
            encode(&sample_header(), CONTENT, payload(20 * 1024 * 1024)).collect();
        let mut stripes = striped(blocks, 2);
        stripes.swap(0, 1);
        let error = decode_named(named(&stripes, 1 << 20), false)
            .await
            .expect_err("swapped stripes");
        assert_eq!(error.number, 3241, "{error}");
        assert!(error.message.contains("'/backup/sales-0.bak'"), "{error}");
    }

    #[tokio::test]
    async fn a_flipped_payload_byte_names_its_page() {
        let blocks: Vec<Bytes> =
            encode(&sample_header(), CONTENT, payload(12 * 1024 * 1024)).collect();
        let head_len = blocks[0]
            .windows(CONTENT.len())
            .position(|w| w == CONTENT)
            .expect("the content is in block 0")
            + CONTENT.len();
        let mut stripes = striped(blocks, 3);
        // Media byte 5 MiB + 100 is in block 1 (device 1), payload page
        // (5 MiB + 100 - head) / 8 KiB.
        let at = 5 * 1024 * 1024 + 100;
        let mut damaged = stripes[1][0].to_vec();
        damaged[at - MAX_TRANSFER_SIZE] ^= 0x40;
        stripes[1][0] = Bytes::from(damaged);

        let error = decode_named(named(&stripes, 1 << 20), false)
            .await
            .expect_err("a damaged page");
        let page = (at - head_len) / PAGE_SIZE;
        assert_eq!(error.number, 3183, "{error}");
        assert_eq!(
            error.message,
            format!(
                "RESTORE detected an error on page (1:{page}) in database \"sales\" \
                 as read from the backup set."
            )
        );
    }

    #[tokio::test]
    async fn a_flipped_content_byte_fails_the_checksum() {
        let mut blocks: Vec<Bytes> =
            encode(&sample_header(), CONTENT, payload(1024 * 1024)).collect();
        let at = blocks[0]
            .windows(CONTENT.len())
            .position(|w| w == CONTENT)
            .expect("the content is in block 0");
        let mut damaged = blocks[0].to_vec();
        damaged[at + 3] ^= 0x01;
        blocks[0] = Bytes::from(damaged);

        let error = decode(vec![device(&blocks, 1 << 20)], false)
            .await
            .expect_err("damaged content");
        assert_eq!(error, MediaError::damaged_set());
        // RESTORE HEADERONLY does not read far enough to see it.
        let decoded = decode(vec![device(&blocks, 1 << 20)], true)
            .await
            .expect("the header still reads");
        assert_ne!(decoded.content, CONTENT);
    }

    #[tokio::test]
    async fn a_truncated_or_foreign_stream_is_incorrectly_formed() {
        let blocks: Vec<Bytes> =
            encode(&sample_header(), CONTENT, payload(10 * 1024 * 1024)).collect();
        let mut stripes = striped(blocks, 2);
        let last = stripes[0].pop().expect("device 0 has blocks");
        stripes[0].push(last.slice(..last.len() - 1));
        let error = decode_named(named(&stripes, 1 << 20), false)
            .await
            .expect_err("a truncated stripe");
        assert_eq!(
            error.message,
            "The media family on device '/backup/sales-0.bak' is incorrectly formed. \
             SQL Server cannot process this media family."
        );
        assert_eq!(error.number, 3241);

        let foreign = vec![Bytes::from_static(
            b"TAPE\0\0\0\0 not a backup at all, but long enough to hold a prelude",
        )];
        let error = decode(vec![device(&foreign, 16)], true)
            .await
            .expect_err("no magic");
        assert_eq!(error.number, 3241);
        assert!(error.message.contains("'device 1'"), "{error}");

        let empty: Vec<Bytes> = Vec::new();
        let error = decode(vec![device(&empty, 16)], true)
            .await
            .expect_err("an empty device");
        assert_eq!(error.number, 3241);
    }

    #[tokio::test]
    async fn extra_bytes_after_the_media_are_refused() {
        let mut blocks: Vec<Bytes> = encode(&sample_header(), CONTENT, payload(4096)).collect();
        blocks.push(Bytes::from_static(b"junk"));
        let error = decode(vec![device(&blocks, 1 << 20)], false)
            .await
            .expect_err("trailing junk");
        assert_eq!(error.number, 3241);
    }

    #[tokio::test]
    async fn header_only_reads_the_first_blocks_only() {
        let blocks: Vec<Bytes> =
            encode(&sample_header(), CONTENT, payload(60 * 1024 * 1024)).collect();
        let stripes = striped(blocks, 3);
        let polled = Arc::new(AtomicUsize::new(0));
        let devices = stripes
            .into_iter()
            .map(|blocks| {
                let polled = polled.clone();
                let stream = stream::iter(blocks).map(move |block| {
                    polled.fetch_add(1, Ordering::SeqCst);
                    Ok(block)
                });
                Box::pin(stream) as DeviceStream
            })
            .collect();
        let decoded = decode(devices, true).await.expect("the header decodes");
        assert_eq!(decoded.header.database_name, "sales");
        assert_eq!(decoded.payload_len, 60 * 1024 * 1024);
        assert_eq!(polled.load(Ordering::SeqCst), 1, "only block 0 was read");
    }

    #[test]
    fn the_same_inputs_give_the_same_media() {
        let digest = |seed| {
            let mut hasher = blake3::Hasher::new();
            let payload = Payload {
                seed,
                len: 5 * 1024 * 1024 + 17,
                compressible: false,
            };
            for block in encode(&sample_header(), CONTENT, payload) {
                hasher.update(&block);
            }
            hasher.finalize()
        };
        assert_eq!(digest(1), digest(1));
        assert_ne!(digest(1), digest(2));
    }

    #[test]
    fn compressible_pages_compress_like_table_data_and_others_do_not() {
        let ratio = |compressible| {
            let payload = Payload {
                seed: 3,
                len: 8 * 1024 * 1024,
                compressible,
            };
            let media: Vec<u8> = encode(&sample_header(), b"", payload).flatten().collect();
            let compressed = zstd::encode_all(&media[..], 3).expect("zstd compresses");
            media.len() as f64 / compressed.len() as f64
        };
        let pages = ratio(true);
        println!("zstd level 3 compresses the pages {pages:.2}x");
        assert!(
            (2.0..=3.0).contains(&pages),
            "compressible ratio {pages:.2}"
        );
        let random = ratio(false);
        assert!(random < 1.01, "incompressible ratio {random:.3}");
    }

    #[test]
    fn encoding_64_mib_holds_one_block_at_a_time() {
        let len = 64 * 1024 * 1024;
        for compressible in [true, false] {
            let payload = Payload {
                seed: 11,
                len,
                compressible,
            };
            let media = encode(&sample_header(), CONTENT, payload);
            let (total, count) = (media.total_len(), media.block_count());
            assert_eq!(media.len() as u64, count);
            let started = Instant::now();
            let (mut bytes, mut blocks) = (0u64, 0u64);
            for block in media {
                assert!(block.len() <= MAX_TRANSFER_SIZE);
                bytes += block.len() as u64;
                blocks += 1;
            }
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!((bytes, blocks), (total, count));
            assert!(total > len);
            // A figure for whoever tunes the generator; not an assertion
            // (debug builds are several times slower than the benchmark's).
            println!(
                "generated {} MiB (compressible: {compressible}) at {:.0} MiB/s",
                total >> 20,
                total as f64 / seconds / (1024.0 * 1024.0)
            );
        }
    }
}

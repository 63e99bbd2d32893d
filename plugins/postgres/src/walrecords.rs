//! Reading the records of a PostgreSQL 15 WAL segment: where its
//! transactions ended, and when.
//!
//! A point-in-time restore can only stop where the WAL holds a commit or
//! abort record: PostgreSQL's `recovery_target_time` stops *before* the
//! first commit or abort whose time is past the target
//! (`recoveryStopsBefore` in src/backend/access/transam/xlogrecovery.c), so
//! a target after the last one the archive holds never stops, and recovery
//! fails with "recovery ended before configured recovery target was
//! reached". [`scan_segment`] finds those records when a segment is
//! archived, so that the catalog knows the time and LSN of the last
//! transaction end of every segment (see [`crate::wal`] and
//! [`crate::chain`]).
//!
//! # The format (PostgreSQL 15)
//!
//! - A segment is a sequence of pages of `xlp_xlog_blcksz` bytes (8 KiB by
//!   default). Each page starts with an `XLogPageHeaderData` (24 bytes:
//!   `xlp_magic`, `xlp_info`, `xlp_tli`, `xlp_pageaddr`, `xlp_rem_len`);
//!   the first page of a segment has the long form,
//!   `XLogLongPageHeaderData` (40 bytes: also `xlp_sysid`, `xlp_seg_size`,
//!   `xlp_xlog_blcksz`), flagged `XLP_LONG_HEADER`
//!   (src/include/access/xlog_internal.h).
//! - Records follow each other at `MAXALIGN` (8-byte) boundaries of the WAL
//!   stream and may span pages and segments: a page whose first bytes
//!   continue a record from the previous page has `XLP_FIRST_IS_CONTRECORD`
//!   set and `xlp_rem_len` says how many bytes of that record remain. A
//!   page flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD` instead starts a new
//!   record where an unfinished one was abandoned after a crash.
//! - A record is an `XLogRecord` header (24 bytes: `xl_tot_len`, `xl_xid`,
//!   `xl_prev`, `xl_info`, `xl_rmid`, padding, `xl_crc`), then block
//!   headers, then the block images and data, then the record's main data
//!   (src/include/access/xlogrecord.h). Block headers are, by their first
//!   byte: a block reference (id 0 to `XLR_MAX_BLOCK_ID` = 32: fork and
//!   flags, data length, an `XLogRecordBlockImageHeader` when
//!   `BKPBLOCK_HAS_IMAGE`, with a hole length when the image is compressed
//!   and has a hole, a `RelFileNode` unless `BKPBLOCK_SAME_REL`, the block
//!   number), `XLR_BLOCK_ID_TOPLEVEL_XID` (252, 4 bytes),
//!   `XLR_BLOCK_ID_ORIGIN` (253, 2 bytes), and last the main data's
//!   length, `XLR_BLOCK_ID_DATA_LONG` (254, 4 bytes) or
//!   `XLR_BLOCK_ID_DATA_SHORT` (255, 1 byte). `xl_crc` is the CRC-32C of
//!   the record after the header, then of the header up to `xl_crc`
//!   (`ValidXLogRecord` in src/backend/access/transam/xlogreader.c, which
//!   also shows the decoding, `DecodeXLogRecord`).
//! - Transaction ends are records of resource manager `RM_XACT_ID` (1)
//!   whose `xl_info & XLOG_XACT_OPMASK` is `XLOG_XACT_COMMIT` (0x00),
//!   `XLOG_XACT_ABORT` (0x20), `XLOG_XACT_COMMIT_PREPARED` (0x30) or
//!   `XLOG_XACT_ABORT_PREPARED` (0x40); their main data starts with
//!   `TimestampTz xact_time`, microseconds since 2000-01-01 00:00 UTC
//!   (`xl_xact_commit`, `xl_xact_abort` in src/include/access/xact.h). These
//!   are exactly the records `recoveryStopsBefore` stops at.
//! - An `XLOG_SWITCH` record (resource manager `RM_XLOG_ID` 0, info 0x40)
//!   ends the segment: what follows it is padding.
//!
//! # What a scan reports
//!
//! The transaction ends of records that *start* in the segment: those that
//! also end in it ([`SegmentScan::xact_ends`]), and the record that starts
//! in it and ends in a later segment ([`SegmentScan::crossing`]), read from
//! the start of the next segment when it is at hand. A record that began
//! in an earlier segment is that segment's crossing record and is skipped.
//! The scan stops at the end of the valid WAL (a zero length, a page that
//! is not the expected one, a record whose CRC does not match), as
//! recovery would.

use chrono::{DateTime, TimeZone, Utc};

use crate::walname::Lsn;

/// `xlp_magic` of PostgreSQL 15 (`XLOG_PAGE_MAGIC` in xlog_internal.h).
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
const SIZE_OF_XLOG_LONG_PHD: usize = 40;
const SIZE_OF_XLOG_RECORD: usize = 24;
const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;
const RM_XACT_ID: u8 = 1;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
/// `sizeof(RelFileNode)`: tablespace, database and relation OIDs.
const SIZE_OF_REL_FILE_NODE: usize = 12;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
/// A record longer than this is not one PostgreSQL wrote (`XLogRecordMaxSize`
/// is 1020 MB in PostgreSQL 16; 15 has no lower limit than `MaxAllocSize`).
const MAX_RECORD_LENGTH: usize = 0x3FFF_FFFF;

/// The kind of a transaction's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactKind {
    /// `XLOG_XACT_COMMIT`.
    Commit,
    /// `XLOG_XACT_ABORT`.
    Abort,
    /// `XLOG_XACT_COMMIT_PREPARED`.
    CommitPrepared,
    /// `XLOG_XACT_ABORT_PREPARED`.
    AbortPrepared,
}

/// A commit or abort record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XactEnd {
    /// Where the record starts (what `recovery_target_lsn` compares with).
    pub lsn: Lsn,
    /// Where the next record may start: the record's end, `MAXALIGN`ed.
    pub end_lsn: Lsn,
    /// `xact_time`.
    pub time: DateTime<Utc>,
    /// Commit or abort.
    pub kind: XactKind,
}

/// The record that starts in a segment and ends in a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// It is no commit or abort.
    Other,
    /// It is a commit or abort; its end lies in a later segment.
    XactEnd(XactEnd),
    /// Too little of it is in the segment to tell (and the next segment
    /// was not at hand or not yet written).
    Unknown {
        /// Where it starts.
        lsn: Lsn,
    },
}

/// What [`scan_segment`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// The commit and abort records that start and end in the segment, in
    /// LSN order.
    pub xact_ends: Vec<XactEnd>,
    /// The record that starts in the segment and ends after it, if any.
    pub crossing: Option<Crossing>,
}

impl SegmentScan {
    /// The newest `xact_time` among [`xact_ends`](Self::xact_ends).
    pub fn newest_time(&self) -> Option<DateTime<Utc>> {
        self.xact_ends.iter().map(|x| x.time).max()
    }

    /// The oldest `xact_time` among [`xact_ends`](Self::xact_ends).
    pub fn oldest_time(&self) -> Option<DateTime<Utc>> {
        self.xact_ends.iter().map(|x| x.time).min()
    }
}

/// Why a segment could not be scanned at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub String);

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScanError {}

/// `xact_time` (microseconds since 2000-01-01 UTC) as a UTC time.
pub fn timestamp_tz(micros: i64) -> Option<DateTime<Utc>> {
    let secs = micros.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX_SECONDS;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    Utc.timestamp_opt(secs, nanos).single()
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A page header as read.
#[derive(Debug, Clone, Copy)]
struct PageHeader {
    info: u16,
    rem_len: u32,
    len: usize,
}

impl PageHeader {
    fn continues_record(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }
}

/// The segment, followed by what is at hand of the next one, as one WAL
/// stream addressed by offsets from the segment's start.
struct Stream<'a> {
    segment: &'a [u8],
    next: &'a [u8],
    start: u64,
    seg_size: usize,
    page_size: usize,
}

impl Stream<'_> {
    fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        if offset < self.segment.len() {
            self.segment.get(offset..offset + len)
        } else {
            let offset = offset - self.segment.len();
            self.next.get(offset..offset + len)
        }
    }

    fn available(&self) -> usize {
        self.segment.len() + self.next.len()
    }

    fn header_len(&self, page: usize) -> usize {
        if page.is_multiple_of(self.seg_size) {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    }

    /// The header of the page at `page` if it is the page PostgreSQL wrote
    /// there (its magic, address and header form), as
    /// `XLogReaderValidatePageHeader` checks.
    fn page(&self, page: usize) -> Option<PageHeader> {
        let len = self.header_len(page);
        let header = self.bytes(page, len)?;
        let info = u16_at(header, 2)?;
        let long = info & XLP_LONG_HEADER != 0;
        let valid = u16_at(header, 0)? == XLOG_PAGE_MAGIC
            && u64_at(header, 8)? == self.start + page as u64
            && long == (len == SIZE_OF_XLOG_LONG_PHD);
        valid.then(|| PageHeader {
            info,
            rem_len: u32_at(header, 16).unwrap_or(0),
            len,
        })
    }

    fn lsn(&self, offset: usize) -> Lsn {
        Lsn(self.start + offset as u64)
    }
}

/// A record read from the stream: its bytes (all of them, or those at hand)
/// and where the next record may start.
enum Read {
    Whole {
        bytes: Vec<u8>,
        next: usize,
    },
    /// The stream ends inside it; `next` is computed from its length.
    Cut {
        bytes: Vec<u8>,
        next: usize,
    },
    /// The page after its first part does not continue it (a record
    /// abandoned at a crash and overwritten): parsing resumes at `resume`.
    Abandoned {
        resume: usize,
    },
    /// Not a valid record: the end of the WAL.
    End,
}

/// Scans `segment`, one whole WAL segment of a PostgreSQL 15 cluster,
/// starting at LSN `start` (its name's); `next` is the start of the
/// following segment when it is at hand (it may be empty or not yet
/// written), used only to read a record that crosses into it.
///
/// Fails only when `segment` is not a PostgreSQL 15 segment starting at
/// `start`; anything odd after a valid first page is the end of the WAL.
pub fn scan_segment(segment: &[u8], start: Lsn, next: &[u8]) -> Result<SegmentScan, ScanError> {
    if segment.len() < SIZE_OF_XLOG_LONG_PHD {
        return Err(ScanError(format!(
            "{} bytes is too short for a WAL segment",
            segment.len()
        )));
    }
    let magic = u16_at(segment, 0).unwrap_or(0);
    if magic != XLOG_PAGE_MAGIC {
        return Err(ScanError(format!(
            "the first page has magic {magic:#06x}, not PostgreSQL 15's {XLOG_PAGE_MAGIC:#06x}"
        )));
    }
    let seg_size = u32_at(segment, 32).unwrap_or(0) as usize;
    let page_size = u32_at(segment, 36).unwrap_or(0) as usize;
    if !page_size.is_power_of_two()
        || !(1024..=65536).contains(&page_size)
        || !seg_size.is_power_of_two()
        || seg_size < page_size
    {
        return Err(ScanError(format!(
            "the long page header gives segment size {seg_size} and page size {page_size}"
        )));
    }
    if segment.len() != seg_size {
        return Err(ScanError(format!(
            "the segment holds {} bytes, its header says {seg_size}",
            segment.len()
        )));
    }
    let stream = Stream {
        segment,
        next,
        start: start.0,
        seg_size,
        page_size,
    };
    let first = stream.page(0).ok_or_else(|| {
        ScanError(format!(
            "the first page is not the page of LSN {start} (xlp_pageaddr {:#x}, xlp_info {:#x})",
            u64_at(segment, 8).unwrap_or(0),
            u16_at(segment, 2).unwrap_or(0)
        ))
    })?;
    let mut scan = SegmentScan::default();
    let Some(mut pos) = skip_continuation(&stream, first) else {
        return Ok(scan);
    };
    while pos < seg_size {
        if pos.is_multiple_of(page_size) {
            let Some(header) = stream.page(pos) else {
                break;
            };
            if header.continues_record() {
                break; // a record was expected to start here
            }
            pos += header.len;
        }
        let (bytes, next, whole) = match read_record(&stream, pos) {
            Read::Whole { bytes, next } => (bytes, next, true),
            Read::Cut { bytes, next } => (bytes, next, false),
            Read::Abandoned { resume } => {
                pos = resume;
                continue;
            }
            Read::End => break,
        };
        let lsn = stream.lsn(pos);
        let end_lsn = stream.lsn(next);
        if !whole {
            // The stream ends inside the record: it crosses into the next
            // segment, which is not at hand (or only partly).
            scan.crossing = Some(classify_partial(&bytes, lsn, end_lsn));
            break;
        }
        let xact = xact_end(&bytes, lsn, end_lsn);
        if next > seg_size {
            scan.crossing = Some(match xact {
                Some(x) => Crossing::XactEnd(x),
                None => Crossing::Other,
            });
            break;
        }
        if let Some(x) = xact {
            scan.xact_ends.push(x);
        }
        if bytes[17] == RM_XLOG_ID && bytes[16] & 0xF0 == XLOG_SWITCH {
            break; // the rest of the segment is padding
        }
        pos = next;
    }
    Ok(scan)
}

/// Where the first record starting in the segment begins: after the
/// continuation of a record from an earlier segment, if the first page
/// holds one. `None` when that continuation fills the whole segment.
fn skip_continuation(stream: &Stream<'_>, first: PageHeader) -> Option<usize> {
    let mut page = 0;
    let mut header = first;
    loop {
        if !header.continues_record() {
            return Some(page + header.len);
        }
        let space = stream.page_size - header.len;
        let remaining = header.rem_len as usize;
        if remaining <= space {
            return Some(page + header.len + maxalign(remaining));
        }
        page += stream.page_size;
        if page >= stream.seg_size {
            return None;
        }
        header = stream.page(page)?;
    }
}

/// Reads the record starting at `pos` (not at a page boundary).
fn read_record(stream: &Stream<'_>, pos: usize) -> Read {
    let page_size = stream.page_size;
    let Some(total) = stream.bytes(pos, 4).and_then(|b| u32_at(b, 0)) else {
        return Read::End;
    };
    let total = total as usize;
    if !(SIZE_OF_XLOG_RECORD..=MAX_RECORD_LENGTH).contains(&total) {
        return Read::End;
    }
    let page_end = pos - pos % page_size + page_size;
    let first = total.min(page_end - pos);
    let Some(head) = stream.bytes(pos, first) else {
        return Read::End;
    };
    let mut bytes = Vec::with_capacity(total.min(1 << 20));
    bytes.extend_from_slice(head);
    let mut need = total - first;
    let mut end = pos + first;
    let mut page = page_end;
    while need > 0 {
        if page >= stream.available() {
            return Read::Cut {
                bytes,
                next: next_after(stream, page, need),
            };
        }
        let Some(header) = stream.page(page) else {
            // The next segment is not written that far yet: what is there
            // is not the continuation.
            if page >= stream.segment.len() {
                return Read::Cut {
                    bytes,
                    next: next_after(stream, page, need),
                };
            }
            return Read::End;
        };
        if !header.continues_record() {
            return Read::Abandoned {
                resume: page + header.len,
            };
        }
        if header.rem_len as usize != need {
            return Read::End;
        }
        let take = need.min(page_size - header.len);
        match stream.bytes(page + header.len, take) {
            Some(part) => bytes.extend_from_slice(part),
            None => {
                return Read::Cut {
                    bytes,
                    next: next_after(stream, page, need),
                };
            }
        }
        need -= take;
        end = page + header.len + take;
        page += page_size;
    }
    if !crc_matches(&bytes) {
        return Read::End;
    }
    Read::Whole {
        bytes,
        next: maxalign(end),
    }
}

/// Where a record ends that still needs `need` bytes from page `page` on:
/// each page gives its space after its header.
fn next_after(stream: &Stream<'_>, mut page: usize, mut need: usize) -> usize {
    loop {
        let header = stream.header_len(page);
        let space = stream.page_size - header;
        if need <= space {
            return maxalign(page + header + need);
        }
        need -= space;
        page += stream.page_size;
    }
}

/// `ValidXLogRecord`: the CRC-32C of the record after its header, then of
/// the header up to `xl_crc`.
fn crc_matches(record: &[u8]) -> bool {
    let Some(stored) = u32_at(record, 20) else {
        return false;
    };
    let crc = crc32c::crc32c(&record[SIZE_OF_XLOG_RECORD..]);
    crc32c::crc32c_append(crc, &record[..20]) == stored
}

fn xact_kind(record: &[u8]) -> Option<XactKind> {
    if *record.get(17)? != RM_XACT_ID {
        return None;
    }
    match record.get(16)? & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => Some(XactKind::Commit),
        XLOG_XACT_ABORT => Some(XactKind::Abort),
        XLOG_XACT_COMMIT_PREPARED => Some(XactKind::CommitPrepared),
        XLOG_XACT_ABORT_PREPARED => Some(XactKind::AbortPrepared),
        _ => None,
    }
}

/// The offset of the record's main data, from its block headers (as
/// `DecodeXLogRecord` walks them), or `None` when they are malformed or
/// not all at hand.
fn main_data_offset(record: &[u8]) -> Option<usize> {
    let total = u32_at(record, 0)? as usize;
    let mut off = SIZE_OF_XLOG_RECORD;
    let mut payload = 0usize;
    let mut main = 0usize;
    while total.checked_sub(off)? > payload {
        let id = *record.get(off)?;
        off += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main = *record.get(off)? as usize;
                off += 1;
                payload += main;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main = u32_at(record, off)? as usize;
                off += 4;
                payload += main;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => off += 2,
            XLR_BLOCK_ID_TOPLEVEL_XID => off += 4,
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = *record.get(off)?;
                payload += u16_at(record, off + 1)? as usize;
                off += 3;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    payload += u16_at(record, off)? as usize;
                    let bimg_info = *record.get(off + 4)?;
                    off += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & BKPIMAGE_COMPRESSED != 0 {
                        off += 2;
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    off += SIZE_OF_REL_FILE_NODE;
                }
                off += 4; // BlockNumber
            }
            _ => return None,
        }
    }
    (off + payload == total && main >= 8).then(|| total - main)
}

/// The transaction end in a whole record, if it is one.
fn xact_end(record: &[u8], lsn: Lsn, end_lsn: Lsn) -> Option<XactEnd> {
    let kind = xact_kind(record)?;
    let at = main_data_offset(record)?;
    let time = timestamp_tz(u64_at(record, at)? as i64)?;
    Some(XactEnd {
        lsn,
        end_lsn,
        time,
        kind,
    })
}

/// What the first part of a record that crosses into a segment not at
/// hand tells.
fn classify_partial(record: &[u8], lsn: Lsn, end_lsn: Lsn) -> Crossing {
    if record.len() < SIZE_OF_XLOG_RECORD {
        return Crossing::Unknown { lsn };
    }
    if xact_kind(record).is_none() {
        return Crossing::Other;
    }
    match xact_end(record, lsn, end_lsn) {
        Some(x) => Crossing::XactEnd(x),
        None => Crossing::Unknown { lsn },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const PAGE: usize = 1024;
    pub const SEG: usize = 8 * PAGE;

    /// Writes WAL as PostgreSQL lays it out: page headers, records at
    /// `MAXALIGN` boundaries, continuations across pages and segments.
    #[derive(Clone)]
    pub struct WalWriter {
        pub bytes: Vec<u8>,
        pub start: u64,
        pos: usize,
    }

    impl WalWriter {
        pub fn new(start: u64) -> Self {
            WalWriter {
                bytes: Vec::new(),
                start,
                pos: 0,
            }
        }

        fn page_header(&mut self, rem_len: usize) {
            let at = self.pos;
            let long = at.is_multiple_of(SEG);
            let len = if long { 40 } else { 24 };
            self.bytes.resize(at + len, 0);
            let mut info = if long { XLP_LONG_HEADER } else { 0 };
            if rem_len > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            self.bytes[at..at + 2].copy_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
            self.bytes[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            self.bytes[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
            self.bytes[at + 8..at + 16].copy_from_slice(&(self.start + at as u64).to_le_bytes());
            self.bytes[at + 16..at + 20].copy_from_slice(&(rem_len as u32).to_le_bytes());
            if long {
                self.bytes[at + 24..at + 32].copy_from_slice(&42u64.to_le_bytes());
                self.bytes[at + 32..at + 36].copy_from_slice(&(SEG as u32).to_le_bytes());
                self.bytes[at + 36..at + 40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            self.pos += len;
        }

        /// Appends `record`; returns its start and next-record LSNs.
        pub fn append(&mut self, record: &[u8]) -> (Lsn, Lsn) {
            self.pos = maxalign(self.pos);
            if self.pos.is_multiple_of(PAGE) {
                self.page_header(0);
            }
            let start = self.start + self.pos as u64;
            let mut rest = record;
            loop {
                let room = PAGE - self.pos % PAGE;
                let take = room.min(rest.len());
                self.bytes.resize(self.pos, 0);
                self.bytes.extend_from_slice(&rest[..take]);
                self.pos += take;
                rest = &rest[take..];
                if rest.is_empty() {
                    break;
                }
                self.page_header(rest.len());
            }
            (Lsn(start), Lsn(self.start + maxalign(self.pos) as u64))
        }

        /// Zero-fills to the end of the current segment, with page headers
        /// (as PostgreSQL pads a segment after a switch).
        pub fn pad_segment(&mut self) {
            let end = (self.pos / SEG + 1) * SEG;
            let mut page = (self.pos / PAGE + 1) * PAGE;
            self.bytes.resize(page.min(end), 0);
            while page < end {
                self.pos = page;
                self.page_header(0);
                page += PAGE;
                self.bytes.resize(page, 0);
            }
            self.pos = end;
        }

        /// Appends filler records until the next record would start at `target`.
        pub fn fill_to(&mut self, target: usize) {
            while maxalign(self.pos) + 600 < target {
                self.append(&heap(40));
            }
            for len in 0..2 * PAGE {
                let mut trial = self.clone();
                trial.append(&heap(len));
                if maxalign(trial.pos) == target {
                    *self = trial;
                    return;
                }
            }
            panic!("no filler ends at {target}");
        }

        pub fn segment(&self, n: usize) -> &[u8] {
            &self.bytes[n * SEG..((n + 1) * SEG).min(self.bytes.len())]
        }
    }

    /// A record of `rmid`/`info` with `blocks` (raw block header bytes and
    /// their payload) and `main` data, with its CRC.
    pub fn record(rmid: u8, info: u8, blocks: &[(Vec<u8>, Vec<u8>)], main: &[u8]) -> Vec<u8> {
        let mut headers = Vec::new();
        let mut payload = Vec::new();
        for (h, p) in blocks {
            headers.extend_from_slice(h);
            payload.extend_from_slice(p);
        }
        if main.len() < 256 {
            headers.push(XLR_BLOCK_ID_DATA_SHORT);
            headers.push(main.len() as u8);
        } else {
            headers.push(XLR_BLOCK_ID_DATA_LONG);
            headers.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        let total = SIZE_OF_XLOG_RECORD + headers.len() + payload.len() + main.len();
        let mut rec = vec![0u8; SIZE_OF_XLOG_RECORD];
        rec[0..4].copy_from_slice(&(total as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&777u32.to_le_bytes());
        rec[16] = info;
        rec[17] = rmid;
        rec.extend_from_slice(&headers);
        rec.extend_from_slice(&payload);
        rec.extend_from_slice(main);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[24..]), &rec[..20]);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        rec
    }

    pub fn micros(t: &str) -> i64 {
        let t: DateTime<Utc> = t.parse().unwrap();
        (t.timestamp() - POSTGRES_EPOCH_UNIX_SECONDS) * 1_000_000
            + i64::from(t.timestamp_subsec_micros())
    }

    /// A commit record at `time`, with `extra` bytes of main data after
    /// `xact_time` and `xinfo`, and a replication origin block header.
    pub fn commit(time: &str, extra: usize) -> Vec<u8> {
        let mut main = micros(time).to_le_bytes().to_vec();
        main.extend_from_slice(&0u32.to_le_bytes());
        main.resize(main.len() + extra, 0xAB);
        let origin = (vec![XLR_BLOCK_ID_ORIGIN, 1, 0], vec![]);
        record(RM_XACT_ID, XLOG_XACT_COMMIT, &[origin], &main)
    }

    pub fn abort(time: &str) -> Vec<u8> {
        let main = micros(time).to_le_bytes().to_vec();
        record(RM_XACT_ID, XLOG_XACT_ABORT | 0x80, &[], &main)
    }

    /// A heap-like record with a block reference carrying data and a
    /// compressed full-page image with a hole.
    pub fn heap(len: usize) -> Vec<u8> {
        let image = vec![0x11u8; 100];
        let data = vec![0x22u8; len];
        let mut h = vec![0u8, BKPBLOCK_HAS_IMAGE | 0x20];
        h.extend_from_slice(&(data.len() as u16).to_le_bytes());
        h.extend_from_slice(&(image.len() as u16).to_le_bytes()); // bimg_len
        h.extend_from_slice(&10u16.to_le_bytes()); // hole_offset
        h.push(BKPIMAGE_HAS_HOLE | 0x04); // pglz-compressed with a hole
        h.extend_from_slice(&4000u16.to_le_bytes()); // hole_length
        h.extend_from_slice(&[0u8; SIZE_OF_REL_FILE_NODE]);
        h.extend_from_slice(&7u32.to_le_bytes());
        let mut payload = image;
        payload.extend_from_slice(&data);
        let toplevel = (vec![XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4], vec![]);
        record(10, 0, &[toplevel, (h, payload)], &[1, 2, 3])
    }

    fn switch() -> Vec<u8> {
        record(RM_XLOG_ID, XLOG_SWITCH, &[], &[])
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn commits_and_aborts_are_found_with_their_times_and_positions() {
        let mut w = WalWriter::new(0x300_0000);
        w.append(&heap(50));
        let (c1, c1_end) = w.append(&commit("2026-11-22T01:00:00.123456Z", 0));
        w.append(&heap(300));
        let (a, _) = w.append(&abort("2026-11-22T01:00:01Z"));
        // A commit spanning two pages (long main data).
        let (c2, c2_end) = w.append(&commit("2026-11-22T01:00:02Z", 1500));
        w.append(&heap(10));
        w.pad_segment();
        let scan = scan_segment(w.segment(0), Lsn(0x300_0000), &[]).unwrap();
        let found: Vec<(Lsn, XactKind, DateTime<Utc>)> = scan
            .xact_ends
            .iter()
            .map(|x| (x.lsn, x.kind, x.time))
            .collect();
        assert_eq!(
            found,
            vec![
                (c1, XactKind::Commit, t("2026-11-22T01:00:00.123456Z")),
                (a, XactKind::Abort, t("2026-11-22T01:00:01Z")),
                (c2, XactKind::Commit, t("2026-11-22T01:00:02Z")),
            ]
        );
        assert_eq!(scan.xact_ends[0].end_lsn, c1_end);
        assert_eq!(scan.xact_ends[2].end_lsn, c2_end);
        assert!(
            c2_end.0 - c2.0 > PAGE as u64,
            "the second commit spans pages"
        );
        assert_eq!(scan.crossing, None);
        assert_eq!(scan.newest_time(), Some(t("2026-11-22T01:00:02Z")));
        assert_eq!(scan.oldest_time(), Some(t("2026-11-22T01:00:00.123456Z")));
    }

    #[test]
    fn a_record_crossing_into_the_next_segment_is_read_from_it_when_at_hand() {
        let start = 0x500_0000;
        let mut w = WalWriter::new(start);
        w.append(&commit("2026-11-22T02:00:00Z", 0));
        // Fill the segment up to 16 bytes before its end, then a commit
        // whose header is cut by the segment boundary.
        w.fill_to(SEG - 16);
        let (crossing, crossing_end) = w.append(&commit("2026-11-22T02:00:05Z", 40));
        let (after, _) = w.append(&commit("2026-11-22T02:00:06Z", 0));
        w.pad_segment();

        // Without the next segment the record cannot be told apart.
        let alone = scan_segment(w.segment(0), Lsn(start), &[]).unwrap();
        assert_eq!(alone.xact_ends.len(), 1);
        assert_eq!(alone.crossing, Some(Crossing::Unknown { lsn: crossing }));
        // Nor with a next segment that is not written yet.
        let unwritten = vec![0u8; PAGE];
        let early = scan_segment(w.segment(0), Lsn(start), &unwritten).unwrap();
        assert_eq!(early.crossing, Some(Crossing::Unknown { lsn: crossing }));
        // With it, it is a commit ending in the next segment.
        let with_next = scan_segment(w.segment(0), Lsn(start), w.segment(1)).unwrap();
        let Some(Crossing::XactEnd(x)) = with_next.crossing else {
            panic!("{with_next:?}");
        };
        assert_eq!((x.lsn, x.end_lsn), (crossing, crossing_end));
        assert_eq!(x.time, t("2026-11-22T02:00:05Z"));

        // The next segment skips the continuation and finds the commit after it.
        let next = scan_segment(w.segment(1), Lsn(start + SEG as u64), &[]).unwrap();
        assert_eq!(next.xact_ends.len(), 1);
        assert_eq!(next.xact_ends[0].lsn, after);
    }

    #[test]
    fn a_commit_whose_start_is_in_the_segment_is_classified_from_it_alone() {
        let start = 0x700_0000;
        let mut w = WalWriter::new(start);
        w.fill_to(SEG - 304);
        // A large commit starting well before the end: its xact_time is in this segment.
        let (c, c_end) = w.append(&commit("2026-11-22T03:00:00Z", 2000));
        w.pad_segment();
        let scan = scan_segment(w.segment(0), Lsn(start), &[]).unwrap();
        let Some(Crossing::XactEnd(x)) = scan.crossing else {
            panic!("{scan:?}");
        };
        assert_eq!(
            (x.lsn, x.end_lsn),
            (c, c_end),
            "the end is computed from the length"
        );
        // A heap record crossing is no commit.
        let mut w = WalWriter::new(start);
        w.fill_to(SEG - 304);
        w.append(&heap(2000));
        w.pad_segment();
        let scan = scan_segment(w.segment(0), Lsn(start), &[]).unwrap();
        assert_eq!(scan.crossing, Some(Crossing::Other));
    }

    #[test]
    fn the_scan_stops_at_a_switch_a_bad_crc_and_a_stale_page() {
        let start = 0x900_0000;
        let mut w = WalWriter::new(start);
        w.append(&commit("2026-11-22T04:00:00Z", 0));
        w.append(&switch());
        w.append(&commit("2026-11-22T04:00:09Z", 0));
        w.pad_segment();
        let scan = scan_segment(w.segment(0), Lsn(start), &[]).unwrap();
        assert_eq!(scan.xact_ends.len(), 1, "nothing after a switch counts");

        let mut w = WalWriter::new(start);
        w.append(&commit("2026-11-22T04:00:00Z", 0));
        let (bad, _) = w.append(&commit("2026-11-22T04:00:01Z", 0));
        w.append(&commit("2026-11-22T04:00:02Z", 0));
        w.pad_segment();
        let mut bytes = w.segment(0).to_vec();
        bytes[bad.0 as usize - start as usize + 30] ^= 0xFF;
        let scan = scan_segment(&bytes, Lsn(start), &[]).unwrap();
        assert_eq!(
            scan.xact_ends.len(),
            1,
            "a record with a bad CRC ends the WAL"
        );

        // A page left from a recycled segment (another address) ends the WAL.
        let mut w = WalWriter::new(start);
        w.append(&commit("2026-11-22T04:00:00Z", 0));
        while w.pos < 2 * PAGE + 100 {
            w.append(&commit("2026-11-22T04:00:03Z", 0));
        }
        w.pad_segment();
        let mut bytes = w.segment(0).to_vec();
        bytes[2 * PAGE + 8..2 * PAGE + 16].copy_from_slice(&0x100_0000u64.to_le_bytes());
        let scan = scan_segment(&bytes, Lsn(start), &[]).unwrap();
        assert!(
            scan.xact_ends
                .iter()
                .all(|x| x.lsn.0 < start + 2 * PAGE as u64)
        );
    }

    #[test]
    fn what_is_not_a_postgresql_15_segment_is_an_error() {
        let mut w = WalWriter::new(0x300_0000);
        w.append(&commit("2026-11-22T01:00:00Z", 0));
        w.pad_segment();
        let mut bytes = w.segment(0).to_vec();
        assert!(
            scan_segment(&bytes, Lsn(0x400_0000), &[]).is_err(),
            "another LSN"
        );
        assert!(
            scan_segment(&bytes[..SEG / 2], Lsn(0x300_0000), &[]).is_err(),
            "cut short"
        );
        bytes[0] = 0x11;
        let err = scan_segment(&bytes, Lsn(0x300_0000), &[]).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        assert!(scan_segment(&[0u8; 10], Lsn(0), &[]).is_err());
    }

    #[test]
    fn postgresql_timestamps_count_from_2000() {
        assert_eq!(timestamp_tz(0), Some(t("2000-01-01T00:00:00Z")));
        assert_eq!(timestamp_tz(-1), Some(t("1999-12-31T23:59:59.999999Z")));
        assert_eq!(
            timestamp_tz(micros("2026-11-22T01:24:58.6Z")),
            Some(t("2026-11-22T01:24:58.6Z"))
        );
    }
}

//! Page checksum verification during a full backup.
//!
//! With data checksums on, every 8 KiB page of a relation file carries a
//! 16-bit checksum of its content and its block number. A full backup reads
//! every page anyway, so it checks them as they go by, as `pg_basebackup`
//! and pgBackRest do: a damaged page is found when the backup is taken,
//! while older backups still hold a good copy, instead of when a restore or
//! a query reads it.
//!
//! The rules are `basebackup.c`'s:
//! - only relation files (`base/`, `global/`, tablespaces) are checked;
//! - a new page (`pd_upper == 0`) has no checksum yet and is skipped;
//! - a page whose LSN is at or past the backup's start LSN is skipped: it
//!   changed during the backup, so it may be read half-written, and WAL
//!   replay rewrites it from the full-page image logged after the start;
//! - a page that fails is read again once, since it may have been written
//!   while it was read; only a page that fails twice is reported.
//!
//! The backup still stores the page as read: it is a faithful copy, and the
//! report tells the DBA which blocks of which files are damaged.

use std::os::unix::fs::FileExt;

/// PostgreSQL's page size (`BLCKSZ`).
pub const PAGE_SIZE: usize = 8192;
/// Pages per relation segment file (`RELSEG_SIZE`): block numbers in a
/// checksum count from the start of the relation, not of the segment.
pub const PAGES_PER_SEGMENT: u64 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// The initial states of the 32 parallel FNV-1a sums (`checksum_impl.h`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
/// Where `pd_checksum` sits in the page header.
const CHECKSUM_AT: usize = 8;
/// Where `pd_upper` sits in the page header.
const UPPER_AT: usize = 14;

#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// `pg_checksum_page`: the checksum PostgreSQL stores in the page header of
/// block `block` (counted from the start of the relation).
pub fn page_checksum(page: &[u8; PAGE_SIZE], block: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    let mut rows = page.chunks_exact(4 * N_SUMS);
    let mut first = [0u32; N_SUMS];
    for (word, bytes) in first
        .iter_mut()
        .zip(rows.next().expect("a row").chunks_exact(4))
    {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    // The checksum field itself counts as zero: it is the low half of the
    // third word of the first row.
    first[CHECKSUM_AT / 4] &= 0xFFFF_0000;
    for (sum, word) in sums.iter_mut().zip(first) {
        *sum = mix(*sum, word);
    }
    // The rest without a branch, so that the compiler vectorises the lanes.
    for row in rows {
        for (sum, bytes) in sums.iter_mut().zip(row.chunks_exact(4)) {
            *sum = mix(
                *sum,
                u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            );
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let checksum = sums.iter().fold(0, |acc, sum| acc ^ sum) ^ block;
    (checksum % 65_535 + 1) as u16
}

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

/// The page's LSN (`pd_lsn`: the high and the low 32 bits, in that order).
pub fn page_lsn(page: &[u8]) -> u64 {
    let high = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let low = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    (u64::from(high) << 32) | u64::from(low)
}

/// What a check of one page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageVerdict {
    /// The checksum matches.
    Sound,
    /// New, or changed since the backup started: not checkable.
    Skipped,
    /// The checksum does not match.
    Damaged,
}

/// Checks one page, with the rules of the module docs.
pub fn check_page(page: &[u8; PAGE_SIZE], block: u64, start_lsn: u64) -> PageVerdict {
    if u16_at(page, UPPER_AT) == 0 || page_lsn(page) >= start_lsn {
        return PageVerdict::Skipped;
    }
    if page_checksum(page, block as u32) == u16_at(page, CHECKSUM_AT) {
        PageVerdict::Sound
    } else {
        PageVerdict::Damaged
    }
}

/// Where `pd_flags`, `pd_lower`, `pd_special` and `pd_pagesize_version` sit.
const FLAGS_AT: usize = 10;
const LOWER_AT: usize = 12;
const SPECIAL_AT: usize = 16;
const PAGESIZE_VERSION_AT: usize = 18;
/// `PD_VALID_FLAG_BITS` (`bufpage.h`).
const VALID_FLAG_BITS: u16 = 0x0007;
/// `SizeOfPageHeaderData`.
const HEADER_SIZE: u16 = 24;
/// `PageSetPageSizeAndVersion(page, BLCKSZ, PG_PAGE_LAYOUT_VERSION)` for
/// 8 KiB pages of layout version 4.
const PAGESIZE_VERSION: u16 = PAGE_SIZE as u16 | 4;

/// Whether the header of an initialised page (`pd_upper != 0`) is sane,
/// by the test of `PageIsVerifiedExtended` (`src/backend/storage/page/bufpage.c`):
/// no unknown flag bits, `pd_lower <= pd_upper <= pd_special <= BLCKSZ`,
/// `pd_special` aligned to 8 bytes; and, beyond it, a header-sized
/// `pd_lower` and this page size and layout version. A page read while
/// PostgreSQL wrote it can fail this.
pub fn header_sane(page: &[u8; PAGE_SIZE]) -> bool {
    let lower = u16_at(page, LOWER_AT);
    let upper = u16_at(page, UPPER_AT);
    let special = u16_at(page, SPECIAL_AT);
    u16_at(page, FLAGS_AT) & !VALID_FLAG_BITS == 0
        && lower >= HEADER_SIZE
        && lower <= upper
        && upper <= special
        && usize::from(special) <= PAGE_SIZE
        && special.is_multiple_of(8)
        && u16_at(page, PAGESIZE_VERSION_AT) == PAGESIZE_VERSION
}

/// Why a differential stores a page of a relation's main fork, or `None`
/// when the copy its base holds is still the page: the rules of a
/// page-LSN differential (`reference/postgres.md` section 4.5), checked in
/// this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageChange {
    /// `pd_upper == 0`: a page PostgreSQL has not initialised (extended
    /// but not yet written, or zeroed). Its LSN vouches for nothing, so it
    /// is always stored (4.5, 8).
    New,
    /// The header is not sane: read half-written, or damaged. Stored as
    /// read; replay fixes a torn page from the full-page image logged after
    /// the backup's start (4.5, 7).
    BadHeader,
    /// `pd_lsn` is at or past the base's start LSN: changed since the base
    /// was taken.
    Newer,
    /// The LSN is older but the checksum does not match: torn under an old
    /// header, or damaged. Stored as read.
    BadChecksum,
}

/// Whether page `block` (counted from the start of the relation) changed
/// since a base backup that started at `since`; `checksums` when the
/// cluster has data checksums.
pub fn page_change(
    page: &[u8; PAGE_SIZE],
    block: u64,
    since: u64,
    checksums: bool,
) -> Option<PageChange> {
    if u16_at(page, UPPER_AT) == 0 {
        return Some(PageChange::New);
    }
    if !header_sane(page) {
        return Some(PageChange::BadHeader);
    }
    if page_lsn(page) >= since {
        return Some(PageChange::Newer);
    }
    (checksums && page_checksum(page, block as u32) != u16_at(page, CHECKSUM_AT))
        .then_some(PageChange::BadChecksum)
}

/// The segment number of a file of a relation's main fork (`16384`,
/// `16384.2` under `base/`, `global/` or a tablespace): the files whose
/// pages a differential stores one by one. The other forks are copied
/// whole (4.5, 6: the free space map is not WAL-logged, and clearing a
/// visibility map bit does not move its page's LSN).
pub fn main_fork_segment(rel: &str) -> Option<u64> {
    let name = rel.rsplit_once('/')?.1;
    let stem = name.split_once('.').map_or(name, |(stem, _)| stem);
    if stem.contains('_') {
        return None;
    }
    relation_segment(rel)
}

/// The segment number of a relation file whose pages carry checksums
/// (`16384`, `16384.2`, `16384_fsm`, `16384_vm.1`... under `base/`,
/// `global/` or a tablespace), or `None` for any other file.
pub fn relation_segment(rel: &str) -> Option<u64> {
    let (dir, name) = rel.rsplit_once('/')?;
    let in_relation_dir = dir == "global"
        || dir.starts_with("base/")
        || (dir.starts_with("pg_tblspc/") && dir.split('/').count() == 4);
    if !in_relation_dir {
        return None;
    }
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, segment.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let node = match stem.split_once('_') {
        Some((node, "fsm" | "vm" | "init")) => node,
        Some(_) => return None,
        None => stem,
    };
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some(segment)
}

/// Checks the pages of one file as its bytes go by, in pieces of any size.
pub struct PageCheck {
    start_lsn: u64,
    /// The relation block number of the next whole page.
    next_block: u64,
    first_block: u64,
    /// The start of a page split between two pieces.
    carry: Vec<u8>,
    checked: u64,
    suspects: Vec<u64>,
}

impl PageCheck {
    /// A check of segment `segment` of a relation, for a backup that
    /// started at `start_lsn`.
    pub fn new(segment: u64, start_lsn: u64) -> Self {
        let first_block = segment * PAGES_PER_SEGMENT;
        PageCheck {
            start_lsn,
            next_block: first_block,
            first_block,
            carry: Vec::new(),
            checked: 0,
            suspects: Vec::new(),
        }
    }

    fn page(&mut self, page: &[u8; PAGE_SIZE]) {
        match check_page(page, self.next_block, self.start_lsn) {
            PageVerdict::Sound => self.checked += 1,
            PageVerdict::Skipped => {}
            PageVerdict::Damaged => self.suspects.push(self.next_block - self.first_block),
        }
        self.next_block += 1;
    }

    /// Feeds the next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let take = (PAGE_SIZE - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < PAGE_SIZE {
                return;
            }
            let carry = std::mem::take(&mut self.carry);
            self.page(carry.as_slice().try_into().expect("a whole page"));
        }
        let mut pages = data.chunks_exact(PAGE_SIZE);
        for page in &mut pages {
            self.page(page.try_into().expect("a whole page"));
        }
        self.carry.extend_from_slice(pages.remainder());
    }

    /// Reads every page that failed again from `file` and checks it once
    /// more; returns the number of pages found sound and the blocks (within
    /// this file) that are damaged. A trailing partial page (the file was
    /// being extended) is not checked.
    pub fn finish(self, file: &std::fs::File) -> (u64, Vec<u64>) {
        let mut checked = self.checked;
        let mut damaged = Vec::new();
        let mut page = [0u8; PAGE_SIZE];
        for block in self.suspects {
            let reread = file.read_exact_at(&mut page, block * PAGE_SIZE as u64);
            let verdict = match reread {
                Ok(()) => check_page(&page, self.first_block + block, self.start_lsn),
                // Truncated meanwhile: WAL replay accounts for it.
                Err(_) => PageVerdict::Skipped,
            };
            match verdict {
                PageVerdict::Sound => checked += 1,
                PageVerdict::Skipped => {}
                PageVerdict::Damaged => damaged.push(block),
            }
        }
        (checked, damaged)
    }
}

/// At most this many files, and this many blocks per file, are named in a
/// report: a cluster damaged throughout must not make a huge manifest.
pub const REPORT_LIMIT: usize = 1000;

/// What the page checksum verification of a backup found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageReport {
    /// Pages whose checksum was verified and matched.
    pub verified: u64,
    /// Pages whose checksum did not match.
    #[serde(default)]
    pub damaged_pages: u64,
    /// The files with damaged pages (the first [`REPORT_LIMIT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedFile>,
}

/// A file with damaged pages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DamagedFile {
    /// Path relative to the data directory.
    pub path: String,
    /// The damaged blocks, numbered from the start of this file (the first
    /// [`REPORT_LIMIT`]).
    pub blocks: Vec<u64>,
}

impl PageReport {
    /// Adds what [`PageCheck::finish`] found in the file at `path`.
    pub fn add(&mut self, path: &str, verified: u64, mut damaged: Vec<u64>) {
        self.verified += verified;
        self.damaged_pages += damaged.len() as u64;
        if !damaged.is_empty() && self.damaged.len() < REPORT_LIMIT {
            damaged.truncate(REPORT_LIMIT);
            self.damaged.push(DamagedFile {
                path: path.to_owned(),
                blocks: damaged,
            });
        }
    }

    /// Adds another report's findings.
    pub fn merge(&mut self, other: PageReport) {
        self.verified += other.verified;
        self.damaged_pages += other.damaged_pages;
        let room = REPORT_LIMIT.saturating_sub(self.damaged.len());
        self.damaged.extend(other.damaged.into_iter().take(room));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plausible heap page: header, and tuple bytes at the end.
    fn page(lsn: u64, fill: u8) -> [u8; PAGE_SIZE] {
        let mut page = [0u8; PAGE_SIZE];
        page[..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        page[12..14].copy_from_slice(&28u16.to_le_bytes());
        page[UPPER_AT..UPPER_AT + 2].copy_from_slice(&8000u16.to_le_bytes());
        for (i, byte) in page[8000..].iter_mut().enumerate() {
            *byte = fill.wrapping_add(i as u8);
        }
        page
    }

    fn seal(page: &mut [u8; PAGE_SIZE], block: u32) {
        let sum = page_checksum(page, block);
        page[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn the_checksum_ignores_its_own_field_and_binds_the_block_number() {
        let mut p = page(0x1_0000_0028, 7);
        let before = page_checksum(&p, 3);
        p[CHECKSUM_AT] = 0xAB;
        p[CHECKSUM_AT + 1] = 0xCD;
        assert_eq!(page_checksum(&p, 3), before);
        assert_ne!(page_checksum(&p, 4), before);
        seal(&mut p, 3);
        assert_eq!(check_page(&p, 3, u64::MAX), PageVerdict::Sound);
        assert_eq!(check_page(&p, 4, u64::MAX), PageVerdict::Damaged);
        p[8100] ^= 1;
        assert_eq!(check_page(&p, 3, u64::MAX), PageVerdict::Damaged);
        // Changed since the backup started, or new: not checkable.
        assert_eq!(check_page(&p, 3, 0x1_0000_0028), PageVerdict::Skipped);
        assert_eq!(
            check_page(&[0u8; PAGE_SIZE], 3, u64::MAX),
            PageVerdict::Skipped
        );
    }

    #[test]
    fn pages_split_across_pieces_are_checked_and_damage_is_located() {
        let segment = 2;
        let first = segment * PAGES_PER_SEGMENT;
        let mut file = Vec::new();
        for i in 0..5u64 {
            let mut p = page(0x100, i as u8);
            seal(&mut p, (first + i) as u32);
            file.extend_from_slice(&p);
        }
        // Block 3 is damaged on disk.
        file[3 * PAGE_SIZE + 8050] ^= 0x40;
        let mut check = PageCheck::new(segment, 0x200);
        for piece in file.chunks(3001) {
            check.feed(piece);
        }
        let mut on_disk = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut on_disk, &file).unwrap();
        assert_eq!(check.finish(&on_disk), (4, vec![3]));

        // A page that failed while it was being written and is sound when
        // read again is not reported.
        let mut check = PageCheck::new(segment, 0x200);
        check.feed(&file);
        let mut fixed = page(0x100, 3);
        seal(&mut fixed, (first + 3) as u32);
        on_disk.write_all_at(&fixed, 3 * PAGE_SIZE as u64).unwrap();
        assert_eq!(check.finish(&on_disk), (5, vec![]));
    }

    #[test]
    fn only_relation_files_are_checked() {
        assert_eq!(relation_segment("base/5/16384"), Some(0));
        assert_eq!(relation_segment("base/5/16384.3"), Some(3));
        assert_eq!(relation_segment("base/5/16384_vm"), Some(0));
        assert_eq!(relation_segment("base/5/16384_fsm.1"), Some(1));
        assert_eq!(relation_segment("global/1262"), Some(0));
        assert_eq!(
            relation_segment("pg_tblspc/16390/PG_15_202209061/5/16391"),
            Some(0)
        );
        for other in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/t3_16384",
            "pg_wal/000000010000000000000001",
            "pg_xact/0000",
            "postgresql.conf",
            "base/5/16384_other",
        ] {
            assert_eq!(relation_segment(other), None, "{other}");
        }
    }

    /// A page as PostgreSQL writes it: sane header, checksum set.
    fn written(lsn: u64, block: u32) -> [u8; PAGE_SIZE] {
        let mut p = page(lsn, 3);
        p[SPECIAL_AT..SPECIAL_AT + 2].copy_from_slice(&8192u16.to_le_bytes());
        p[PAGESIZE_VERSION_AT..PAGESIZE_VERSION_AT + 2]
            .copy_from_slice(&PAGESIZE_VERSION.to_le_bytes());
        seal(&mut p, block);
        p
    }

    #[test]
    fn a_differential_stores_new_torn_newer_and_damaged_pages_only() {
        let since = 0x1_0000_0000;
        let old = written(since - 1, 5);
        assert!(header_sane(&old));
        assert_eq!(page_change(&old, 5, since, true), None);
        assert_eq!(page_change(&old, 5, since, false), None);
        let newer = written(since, 5);
        assert_eq!(page_change(&newer, 5, since, true), Some(PageChange::Newer));
        // Zeroed, or extended but not yet written.
        assert_eq!(
            page_change(&[0u8; PAGE_SIZE], 5, since, true),
            Some(PageChange::New)
        );
        // A torn read: a new second half under the old header fails the
        // checksum; with no checksums nothing can tell, and replay from the
        // full-page image logged after the start repairs it.
        let mut torn = old;
        torn[PAGE_SIZE - 1] ^= 0xFF;
        assert_eq!(
            page_change(&torn, 5, since, true),
            Some(PageChange::BadChecksum)
        );
        // The checksum binds the absolute block number (segment * RELSEG_SIZE + block).
        assert_eq!(
            page_change(&old, 6, since, true),
            Some(PageChange::BadChecksum)
        );
        for (at, value) in [
            (FLAGS_AT, 0x0100u16),
            (LOWER_AT, 8),
            (LOWER_AT, 8100),
            (SPECIAL_AT, 8190),
            (SPECIAL_AT, 9000),
            (PAGESIZE_VERSION_AT, 0x2005),
        ] {
            let mut bad = old;
            bad[at..at + 2].copy_from_slice(&value.to_le_bytes());
            assert_eq!(
                page_change(&bad, 5, since, false),
                Some(PageChange::BadHeader),
                "field at {at} = {value}"
            );
        }
    }

    #[test]
    fn only_main_fork_segments_are_stored_page_by_page() {
        assert_eq!(main_fork_segment("base/5/16384"), Some(0));
        assert_eq!(main_fork_segment("base/5/16384.7"), Some(7));
        assert_eq!(main_fork_segment("global/1262"), Some(0));
        assert_eq!(
            main_fork_segment("pg_tblspc/16400/PG_15_202209061/5/16401.1"),
            Some(1)
        );
        for whole in [
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_init",
            "base/5/16384_vm.1",
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "16384",
        ] {
            assert_eq!(main_fork_segment(whole), None, "{whole}");
        }
    }
}

//! LSNs and WAL file names.
//!
//! A WAL segment is named `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the
//! segment number split into a "log id" (`XXXXXXXX`) and a segment within it
//! (`YYYYYYYY`, below `0x100000000 / segment size`). Besides segments the
//! archive receives timeline history files (`TTTTTTTT.history`), backup history
//! files (`<segment>.<offset>.backup`) and partial segments (`<segment>.partial`).

use std::fmt;
use std::str::FromStr;

use strata_core::{Error, Result};

/// A PostgreSQL log sequence number (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(format!("`{s}` is not an LSN"))
                .hint("write LSNs as PostgreSQL prints them, e.g. 0/3000060")
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        if hi > 0xFFFF_FFFF || lo > 0xFFFF_FFFF {
            return Err(bad());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// What kind of file the archive holds under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileKind {
    /// A complete WAL segment.
    Segment,
    /// The partially filled last segment of a timeline (`.partial`).
    Partial,
    /// A timeline history file (`.history`).
    History,
    /// A backup history file (`.backup`).
    BackupHistory,
}

/// A parsed WAL archive file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName {
    /// The timeline.
    pub timeline: u32,
    /// The log id (high part of the segment number); 0 for history files.
    pub log: u32,
    /// The segment within the log id; 0 for history files.
    pub seg: u32,
    /// The kind of file.
    pub kind: WalFileKind,
    /// The byte offset of a backup history file (`.backup`), else 0.
    pub offset: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalFileName {
    /// Parses an archive file name (the `%f` of `archive_command`).
    pub fn parse(name: &str) -> Result<WalFileName> {
        let bad = || {
            Error::config(format!("`{name}` is not a WAL file name")).hint(
                "archive_command must pass %p (a path under pg_wal) and restore_command %f; \
                 names look like 000000010000000000000003, 00000002.history, \
                 000000010000000000000003.00000028.backup or 000000010000000000000003.partial",
            )
        };
        if let Some(tli) = name.strip_suffix(".history") {
            let timeline = hex8(tli).ok_or_else(bad)?;
            return Ok(WalFileName {
                timeline,
                log: 0,
                seg: 0,
                kind: WalFileKind::History,
                offset: 0,
            });
        }
        let (segment, kind, offset) = if let Some(seg) = name.strip_suffix(".partial") {
            (seg, WalFileKind::Partial, 0)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(bad)?;
            (seg, WalFileKind::BackupHistory, hex8(off).ok_or_else(bad)?)
        } else {
            (name, WalFileKind::Segment, 0)
        };
        // ASCII first: the fields are cut at byte offsets, and a name is
        // also read from object keys in the vault, which may hold anything.
        if segment.len() != 24 || !segment.is_ascii() {
            return Err(bad());
        }
        Ok(WalFileName {
            timeline: hex8(&segment[0..8]).ok_or_else(bad)?,
            log: hex8(&segment[8..16]).ok_or_else(bad)?,
            seg: hex8(&segment[16..24]).ok_or_else(bad)?,
            kind,
            offset,
        })
    }

    /// The segment on `timeline` with number `segno` for segments of `seg_size` bytes.
    pub fn segment(timeline: u32, segno: u64, seg_size: u64) -> WalFileName {
        let per_log = segments_per_log(seg_size);
        WalFileName {
            timeline,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
            kind: WalFileKind::Segment,
            offset: 0,
        }
    }

    /// The history file of `timeline`.
    pub fn history(timeline: u32) -> WalFileName {
        WalFileName {
            timeline,
            log: 0,
            seg: 0,
            kind: WalFileKind::History,
            offset: 0,
        }
    }

    /// The segment number for segments of `seg_size` bytes.
    pub fn segno(&self, seg_size: u64) -> u64 {
        self.log as u64 * segments_per_log(seg_size) + self.seg as u64
    }

    /// The LSN where this segment starts.
    pub fn start_lsn(&self, seg_size: u64) -> Lsn {
        Lsn(self.segno(seg_size) * seg_size)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WalFileKind::History => write!(f, "{:08X}.history", self.timeline),
            WalFileKind::Segment => {
                write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
            }
            WalFileKind::Partial => write!(
                f,
                "{:08X}{:08X}{:08X}.partial",
                self.timeline, self.log, self.seg
            ),
            WalFileKind::BackupHistory => write!(
                f,
                "{:08X}{:08X}{:08X}.{:08X}.backup",
                self.timeline, self.log, self.seg, self.offset
            ),
        }
    }
}

/// Segments per log id: `0x100000000 / seg_size`.
pub fn segments_per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// The number of the segment holding `lsn`.
pub fn segno_of(lsn: Lsn, seg_size: u64) -> u64 {
    lsn.0 / seg_size
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsn_roundtrip() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16-B3".parse::<Lsn>().is_err());
    }

    /// Found by fuzzing (fuzz/corpus/wal_name/non-ascii): a 24-byte name
    /// with a multibyte character across a field boundary panicked, cut
    /// at a byte that is not a character boundary. Such a name can come
    /// from any object key in the vault's listing.
    #[test]
    fn names_with_multibyte_characters_are_refused() {
        for name in [
            "FFFFFF%\u{ea72}FF/\0Fy\0\0\0FFF/F",
            "0000000\u{e9}000000000000003",
            "0000000\u{e9}000000000000003.partial",
        ] {
            assert_eq!(name.trim_end_matches(".partial").len(), 24);
            let err = WalFileName::parse(name).unwrap_err();
            assert!(err.to_string().contains("not a WAL file name"), "{err}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for name in [
            "000000010000000100000051",
            "00000002.history",
            "000000010000000100000051.00000028.backup",
            "000000020000000000000003.partial",
        ] {
            assert_eq!(WalFileName::parse(name).unwrap().to_string(), name);
        }
        let n = WalFileName::parse("000000010000000100000051").unwrap();
        assert_eq!(n.segno(MB16), 256 + 0x51);
        assert_eq!(WalFileName::segment(1, 256 + 0x51, MB16), n);
        assert_eq!(n.start_lsn(MB16).to_string(), "1/51000000");
        let err = WalFileName::parse("pg_wal/00000001").unwrap_err();
        assert!(err.to_string().contains("not a WAL file name"));
        assert!(WalFileName::parse("0000000100000001000000ZZ").is_err());
    }
}

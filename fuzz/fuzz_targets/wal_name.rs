//! WAL file names and LSNs (`WalFileName::parse`, `Lsn::from_str`): a name
//! prints back as given (hex digits in upper case), a segment's number and
//! start LSN lead back to it, and an LSN prints and parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::text;
use strata_postgres::walname::{Lsn, WalFileKind, WalFileName, segments_per_log, segno_of};

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    if let Ok(name) = WalFileName::parse(text) {
        let shown = name.to_string();
        assert!(
            shown.eq_ignore_ascii_case(text),
            "{text:?} printed as {shown:?}"
        );
        assert_eq!(
            WalFileName::parse(&shown).expect("a printed name parses"),
            name
        );
        if name.kind == WalFileKind::Segment {
            for seg_size in [1u64 << 20, 16 << 20, 1 << 30] {
                if u64::from(name.seg) >= segments_per_log(seg_size) {
                    continue; // not a segment of this size
                }
                let segno = name.segno(seg_size);
                assert_eq!(WalFileName::segment(name.timeline, segno, seg_size), name);
                let start = name.start_lsn(seg_size);
                assert_eq!(segno_of(start, seg_size), segno);
            }
        }
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(
            lsn.to_string()
                .parse::<Lsn>()
                .expect("a printed LSN parses"),
            lsn
        );
    }
});

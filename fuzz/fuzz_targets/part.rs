//! The part decoder of a plaintext backup (`reader::decode_part`), on any
//! stored bytes: what it returns is exactly the raw length the record
//! says and what zstd itself decodes, and a part whose length or CRC-32C
//! differs from its record is refused before it is decoded.
//!
//! Input: the recorded raw length (4 bytes, little-endian), then the
//! stored bytes; the record's stored length and CRC are theirs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_core::catalog::manifest::PartRecord;
use strata_core::vault::reader::decode_part;
use strata_fuzz::raw_out_of_budget;

fuzz_target!(|data: &[u8]| {
    let Some((raw, stored)) = data.split_first_chunk::<4>() else {
        return;
    };
    let raw = u32::from_le_bytes(*raw);
    if raw_out_of_budget(raw) {
        return;
    }
    let record = PartRecord {
        raw: u64::from(raw),
        stored: stored.len() as u64,
        crc32c: crc32c::crc32c(stored),
    };
    match decode_part(stored, &record, None) {
        Ok(raw) => {
            assert_eq!(raw.len() as u64, record.raw);
            // An empty part (zero bytes stored, zero raw) holds no frame.
            // zstd's streaming decoder refuses frames whose window is above
            // its default limit; the part decoder's output is bounded by
            // the record instead.
            match zstd::stream::decode_all(stored) {
                _ if stored.is_empty() => {}
                Ok(reference) => assert!(raw == reference, "the part decoder and zstd disagree"),
                Err(e) if e.to_string().contains("too much memory") => {}
                Err(e) => panic!("zstd refuses what the part decoder decoded: {e}"),
            }
        }
        Err(err) => assert_eq!(err.kind(), ErrorKind::Integrity, "{err}"),
    }
    let bad_crc = PartRecord {
        crc32c: record.crc32c ^ 1,
        ..record
    };
    let err = decode_part(stored, &bad_crc, None).expect_err("a CRC mismatch is refused");
    assert!(err.to_string().contains("CRC-32C"), "{err}");
    let longer = PartRecord {
        stored: record.stored + 1,
        ..record
    };
    let err = decode_part(stored, &longer, None).expect_err("a short part is refused");
    assert!(err.to_string().contains("ends early"), "{err}");
});

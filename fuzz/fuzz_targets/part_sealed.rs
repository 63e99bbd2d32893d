//! The part decoder of an encrypted backup (`reader::decode_part` with the
//! data key), with the fixed test key. A part sealed where it belongs
//! decodes as its plaintext frame does; sealed for another place (part
//! index), or with one bit flipped, it is refused.
//!
//! Input: a mode byte, the part index (1 byte), the recorded raw length
//! (4 bytes, little-endian), then bytes. Mode even: the bytes are a zstd
//! frame, sealed here. Mode odd: they are stored bytes as the vault holds
//! them (the seeds are the sealed parts of the test backup).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_core::catalog::manifest::PartRecord;
use strata_core::crypto::DataKey;
use strata_core::vault::reader::{PartSeal, decode_part};
use strata_fuzz::{TEST_BACKUP, raw_out_of_budget, test_data_key};

fn record(raw: u32, stored: &[u8]) -> PartRecord {
    PartRecord {
        raw: u64::from(raw),
        stored: stored.len() as u64,
        crc32c: crc32c::crc32c(stored),
    }
}

fn seal(key: &DataKey, part: u64) -> PartSeal<'_> {
    PartSeal {
        key,
        backup: TEST_BACKUP,
        stream: 0,
        part,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(([mode, part], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Some((raw, bytes)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let raw = u32::from_le_bytes(*raw);
    if raw_out_of_budget(raw) {
        return;
    }
    let part = u64::from(*part);
    let key = test_data_key();
    if mode % 2 == 1 {
        match decode_part(bytes, &record(raw, bytes), Some(seal(&key, part))) {
            Ok(decoded) => {
                assert_eq!(decoded.len() as u64, u64::from(raw));
                let frame = key
                    .open_part(TEST_BACKUP, 0, part, bytes)
                    .expect("a part that decoded opens");
                let plain = decode_part(&frame, &record(raw, &frame), None)
                    .expect("its frame decodes as a plaintext part");
                assert!(plain == decoded);
            }
            Err(err) => assert_eq!(err.kind(), ErrorKind::Integrity, "{err}"),
        }
        return;
    }
    let frame = bytes;
    let sealed = key.seal_part(TEST_BACKUP, 0, part, frame);
    let plain = decode_part(frame, &record(raw, frame), None);
    let opened = decode_part(&sealed, &record(raw, &sealed), Some(seal(&key, part)));
    match (&plain, &opened) {
        (Ok(p), Ok(o)) => assert!(p == o, "sealing changed what the part decodes to"),
        (Err(p), Err(o)) => assert_eq!(p.to_string(), o.to_string()),
        _ => panic!("sealed and plain decoding disagree: {plain:?} / {opened:?}"),
    }
    // Another part's place, or one flipped bit: refused by the AEAD.
    let moved = decode_part(&sealed, &record(raw, &sealed), Some(seal(&key, part + 1)));
    let err = moved.expect_err("a part moved to another index is refused");
    assert!(
        err.to_string().contains("authenticated decryption failed"),
        "{err}"
    );
    let mut flipped = sealed.clone();
    let at = (raw as usize) % flipped.len();
    flipped[at] ^= 1 << (raw % 8);
    let err = decode_part(&flipped, &record(raw, &flipped), Some(seal(&key, part)))
        .expect_err("a flipped bit is refused");
    assert!(
        err.to_string().contains("authenticated decryption failed"),
        "{err}"
    );
});

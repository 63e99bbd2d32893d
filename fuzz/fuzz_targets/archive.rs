//! Archive objects (`archive::parse_header`, `archive::decode_object`: WAL
//! segments, history files, Backint markers), plaintext and sealed with the
//! test key: what decodes matches its header's size and BLAKE3, a header
//! read from any prefix is the one of the whole object, and the content
//! encoded again decodes to the same content and attributes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_core::vault::archive::{DEFAULT_LEVEL, decode_object, encode_object, parse_header};
use strata_fuzz::test_vault_key;

/// The vault key of the seed objects (sealed objects open only there).
const FULL: &str = "engines/postgres/main/wal/7714472188767553386/00000002/00000002.history";

fuzz_target!(|data: &[u8]| {
    let header = parse_header(data, FULL);
    if let Ok(Some((header, body_at))) = &header {
        assert!(*body_at <= data.len());
        for cut in [*body_at, data.len()] {
            let again = parse_header(&data[..cut], FULL).expect("the same header");
            assert_eq!(again.as_ref().map(|(h, _)| h), Some(header));
        }
    }
    let vault_key = test_vault_key();
    for key in [None, Some(&vault_key)] {
        match decode_object(data, FULL, key) {
            Ok((header, content)) => {
                assert_eq!(content.len() as u64, header.size);
                assert_eq!(blake3::hash(&content).to_hex().as_str(), header.blake3);
                assert_eq!(header.encryption.is_some(), key.is_some());
                let (object, digest) = encode_object(
                    FULL,
                    &content,
                    header.attributes.clone(),
                    key,
                    DEFAULT_LEVEL,
                )
                .expect("decoded content encodes again");
                assert_eq!(digest, header.blake3);
                let (again, same) = decode_object(&object, FULL, key).expect("and decodes");
                assert!(same == content);
                assert_eq!(again.attributes, header.attributes);
            }
            Err(err) => assert!(
                matches!(err.kind(), ErrorKind::Integrity | ErrorKind::Crypto),
                "{err}"
            ),
        }
    }
});

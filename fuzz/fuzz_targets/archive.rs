//! Archive objects (`archive::parse_header`, `archive::decode_object`: WAL
//! segments, history files, Backint markers), plaintext and sealed with the
//! test key: what decodes matches its header's size and BLAKE3, the header
//! read from the object's first bytes (up to its body) is the whole
//! object's, and the content encoded again decodes to the same content and
//! attributes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_core::vault::archive::{
    ARCHIVE_OBJECT_MAGIC, DEFAULT_LEVEL, decode_object, encode_object, parse_header,
};
use strata_fuzz::test_vault_key;

/// Where the seeds' objects live (PostgreSQL's WAL of the test cluster).
const PREFIX: &str = "engines/postgres/main/wal/7714472188767553386";

/// The vault key an object is read from: by its header's name, in its
/// timeline's directory, as the WAL archive stores it. A reader checks the
/// name against the key, and a sealed object opens only at its own key.
fn key_of(data: &[u8]) -> String {
    let name = data
        .strip_prefix(ARCHIVE_OBJECT_MAGIC)
        .and_then(|rest| rest.split(|&b| b == b'\n').next())
        .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .and_then(|header| header.get("name")?.as_str().map(str::to_owned))
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .unwrap_or_else(|| "00000002.history".to_owned());
    let timeline = name
        .get(..8)
        .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("00000001");
    format!("{PREFIX}/{timeline}/{name}")
}

fuzz_target!(|data: &[u8]| {
    let full = key_of(data);
    let full = full.as_str();
    let header = parse_header(data, full);
    if let Ok(Some((header, body_at))) = &header {
        assert!(*body_at <= data.len());
        for cut in [*body_at, data.len()] {
            let again = parse_header(&data[..cut], full).expect("the same header");
            assert_eq!(again.as_ref().map(|(h, _)| h), Some(header));
        }
    }
    let vault_key = test_vault_key();
    for key in [None, Some(&vault_key)] {
        match decode_object(data, full, key) {
            Ok((header, content)) => {
                assert_eq!(content.len() as u64, header.size);
                assert_eq!(blake3::hash(&content).to_hex().as_str(), header.blake3);
                assert_eq!(header.encryption.is_some(), key.is_some());
                let (object, digest) = encode_object(
                    full,
                    &content,
                    header.attributes.clone(),
                    key,
                    DEFAULT_LEVEL,
                )
                .expect("decoded content encodes again");
                assert_eq!(digest, header.blake3);
                let (again, same) = decode_object(&object, full, key).expect("and decodes");
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

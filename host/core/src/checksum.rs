//! A checksum inside a stored JSON object: its last member,
//! `"checksum": "blake3:<64 hex digits>"`, is the BLAKE3 digest of the
//! object's text as written without that member.
//!
//! Manifests, tombstones, the vault metadata and the headers of archive
//! objects are JSON that Strata plans and restores by. A flipped bit in
//! one of them can leave valid JSON that says something else (another
//! time, another LSN, another size): the checksum turns that into an
//! integrity error naming the object.
//!
//! The digest is taken over the bytes as stored, not over a
//! re-serialisation, so fields a newer Strata adds keep their meaning for
//! this check. [`append`] adds the member to serde_json's output (compact
//! or pretty); [`check`] finds it in the exact form `append` writes,
//! removes it and compares. Objects written before checksums have none
//! and still read ([`Checked::Absent`]); an object that has the member in
//! another form (even under a damaged name) was damaged right there, and is
//! refused. A single bit flipped anywhere in a checked object is therefore
//! caught.

/// The member's name.
pub const FIELD: &str = "checksum";

/// The algorithm prefix of the member's value.
const ALGORITHM: &str = "blake3:";

/// The compact form of the member, as it follows the object's other members.
const COMPACT: &str = ",\"checksum\":\"blake3:";

/// The pretty form (two-space indent, as `serde_json::to_vec_pretty`).
const PRETTY: &str = ",\n  \"checksum\": \"blake3:";

/// `json`, one object as serde_json writes it (compact or pretty), with
/// its checksum as a last member.
///
/// # Panics
/// When `json` is not an object with at least one member (a bug).
pub fn append(json: &[u8]) -> Vec<u8> {
    let digest = blake3::hash(json).to_hex();
    let close = json
        .iter()
        .rposition(|&b| b == b'}')
        .expect("serde_json wrote an object");
    // Pretty: `...\n}`, the member goes before the newline.
    let (body, form) = if json[..close].ends_with(b"\n") {
        (&json[..close - 1], PRETTY)
    } else {
        (&json[..close], COMPACT)
    };
    assert!(
        body.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{'),
        "an object with members"
    );
    let mut out = Vec::with_capacity(json.len() + form.len() + 66);
    out.extend_from_slice(body);
    out.extend_from_slice(form.as_bytes());
    out.extend_from_slice(digest.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&json[body.len()..]);
    out
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The checksum matches; the object as it was before [`append`].
    Sound(Vec<u8>),
    /// No checksum: an object written before checksums (or not JSON at all,
    /// which the caller's parser reports).
    Absent,
}

/// Checks the checksum of a stored object.
///
/// # Errors
/// What is wrong, for the caller's message naming the object: the digest
/// does not match the content, or the checksum member is malformed.
pub fn check(stored: &[u8]) -> std::result::Result<Checked, String> {
    for form in [PRETTY, COMPACT] {
        let Some(at) = find_last(stored, form.as_bytes()) else {
            continue;
        };
        let digest_at = at + form.len();
        let Some(digest) = stored.get(digest_at..digest_at + 64) else {
            continue;
        };
        let rest = &stored[digest_at + 64..];
        let closing: &[u8] = if form == PRETTY { b"\"\n}" } else { b"\"}" };
        if !rest.starts_with(closing)
            || !rest[closing.len()..].iter().all(u8::is_ascii_whitespace)
            || !digest
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            continue;
        }
        // Back to the text `append` was given: without the member (and
        // without whitespace after the object, which `append` never adds).
        let mut original = Vec::with_capacity(stored.len());
        original.extend_from_slice(&stored[..at]);
        original.extend_from_slice(&rest[1..closing.len()]);
        let actual = blake3::hash(&original).to_hex();
        return if actual.as_bytes() == digest {
            Ok(Checked::Sound(original))
        } else {
            Err(format!(
                "its checksum does not match its content (recorded {ALGORITHM}{}, computed {ALGORITHM}{actual})",
                String::from_utf8_lossy(digest)
            ))
        };
    }
    // Not in the form `append` writes: damaged right there if the member
    // is there at all. A single flipped bit spoils at most one of its two
    // tokens, its name and its value's prefix, so the other one tells.
    let tail = &stored[stored.len().saturating_sub(100)..];
    let name = format!("\"{FIELD}\"");
    let prefix = format!("\"{ALGORITHM}");
    if find_last(tail, name.as_bytes()).is_some() || find_last(tail, prefix.as_bytes()).is_some() {
        return Err(format!(
            "its `{FIELD}` member is malformed: {}",
            String::from_utf8_lossy(tail).trim()
        ));
    }
    Ok(Checked::Absent)
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> Vec<Vec<u8>> {
        let value = serde_json::json!({
            "format": 1, "id": "20261122T001500.123Z-3fa9c1d2",
            "nested": {"list": [1, 2, {"a": "b"}], "text": "a } \" checksum"},
        });
        vec![
            serde_json::to_vec(&value).unwrap(),
            serde_json::to_vec_pretty(&value).unwrap(),
        ]
    }

    #[test]
    fn an_appended_checksum_checks_and_gives_the_object_back() {
        for json in objects() {
            let stored = append(&json);
            let parsed: serde_json::Value = serde_json::from_slice(&stored).unwrap();
            assert!(parsed[FIELD].as_str().unwrap().starts_with("blake3:"));
            assert_eq!(check(&stored), Ok(Checked::Sound(json.clone())));
            // A trailing newline (a file written by hand) is fine.
            let mut with_newline = stored.clone();
            with_newline.push(b'\n');
            assert_eq!(check(&with_newline), Ok(Checked::Sound(json.clone())));
        }
    }

    #[test]
    fn an_object_without_a_checksum_is_absent_not_damaged() {
        for json in objects() {
            assert_eq!(check(&json), Ok(Checked::Absent));
        }
        assert_eq!(check(b"not json"), Ok(Checked::Absent));
    }

    /// Every single bit flipped is caught by the check itself, whatever a
    /// reader that ignores unknown members would make of the rest (a flip
    /// that leaves the checksum's own value as invalid UTF-8 used to pass
    /// as an object without a checksum; found by the damage campaign).
    #[test]
    fn every_flipped_bit_is_caught() {
        for json in objects() {
            let stored = append(&json);
            for bit in 0..stored.len() * 8 {
                let mut damaged = stored.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    check(&damaged).is_err(),
                    "bit {bit} went unnoticed: {}",
                    String::from_utf8_lossy(&damaged)
                );
            }
        }
    }

    #[test]
    fn a_wrong_or_malformed_checksum_is_named() {
        let stored = append(&objects()[1]);
        let text = String::from_utf8(stored).unwrap();
        let other = text.replace("\"format\": 1", "\"format\": 2");
        assert!(
            check(other.as_bytes())
                .unwrap_err()
                .contains("does not match")
        );
        let malformed = text.replace("blake3:", "blake2:");
        assert!(
            check(malformed.as_bytes())
                .unwrap_err()
                .contains("malformed")
        );
    }
}

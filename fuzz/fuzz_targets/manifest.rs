//! Manifests (`Manifest::from_json`, which runs `check`): an accepted
//! manifest's totals add up without overflow, and written back it parses
//! to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::catalog::manifest::Manifest;
use strata_fuzz::same_json;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::from_json(data, "fuzz.json") else {
        return;
    };
    // What listings, planning and reading compute from an accepted manifest.
    let raw = manifest.raw_size();
    let stored = manifest.stored_size();
    let parts: usize = manifest.streams.iter().map(|s| s.part_count()).sum();
    for stream in &manifest.streams {
        let mut start = 0u64;
        for part in stream.segments.iter().flat_map(|s| &s.parts) {
            start = start.checked_add(part.raw).expect("raw offsets fit in u64");
        }
        assert_eq!(start, stream.raw_size);
    }
    let json = manifest.to_json().expect("an accepted manifest serialises");
    let again = Manifest::from_json(&json, "again.json").expect("a written manifest parses");
    assert_eq!((again.raw_size(), again.stored_size()), (raw, stored));
    assert_eq!(
        again.streams.iter().map(|s| s.part_count()).sum::<usize>(),
        parts
    );
    // engine_meta holds free JSON: its floats may move by an ulp.
    let same_meta = same_json(&again.engine_meta, &manifest.engine_meta);
    assert!(
        same_meta,
        "engine_meta changed: {:?} -> {:?}",
        manifest.engine_meta, again.engine_meta
    );
    let mut without_meta = manifest.clone();
    without_meta.engine_meta = again.engine_meta.clone();
    assert_eq!(again, without_meta);
});

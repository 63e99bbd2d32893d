//! PostgreSQL file bundles (`bundle::check` and `bundle::extract` on any
//! bytes): extract lays nothing down outside the restore directory, accepts
//! only what check accepts, and both count the same entries.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_fuzz::empty_dir;
use strata_postgres::bundle;

/// The restore directory, one per process, emptied for every input.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let checked = bundle::check(&mut &data[..], "fuzz");
    let root = scratch().join("data");
    empty_dir(&root);
    let place = |stored: &Path| -> PathBuf {
        assert!(
            stored
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "the stored path {stored:?} reached the restore"
        );
        root.join(stored)
    };
    let extracted = bundle::extract(&mut &data[..], &place, false, "fuzz");
    match (&checked, &extracted) {
        (Ok(checked), Ok(extracted)) => assert_eq!(checked, extracted),
        (Err(e), Ok(_)) => panic!("extract accepted a bundle that check refuses: {e}"),
        (Ok(_), Err(e)) => {
            // Laying down can fail where checking cannot: a pages entry
            // for a file no base restored, or the file system's limits.
            let base_missing = e.to_string().contains("did not restore");
            assert!(base_missing || e.kind() == ErrorKind::Io, "{e}");
        }
        (Err(c), Err(e)) => {
            assert_eq!(c.kind(), ErrorKind::Integrity, "{c}");
            assert!(
                matches!(e.kind(), ErrorKind::Integrity | ErrorKind::Io),
                "{e}"
            );
        }
    }
});

//! Tests that cannot run on this machine say so where the suite's summary
//! counts them, instead of passing in silence.
//!
//! A test that depends on something the machine may lack (an emulator,
//! root) calls [`skipped`] and returns. The notice goes to standard error,
//! and, when `STRATA_SKIP_LOG` names a file (`scripts/test.sh` sets it), one
//! line `<test>\t<reason>` is appended to that file; the script counts those
//! lines as skipped, not passed, and prints them. Tests that need an external
//! engine (a real SAP HANA or SQL Server) are `#[ignore = "why"]` instead,
//! which every test runner already counts.

use std::io::Write;

/// The environment variable naming the file skipped tests are listed in.
pub const SKIP_LOG: &str = "STRATA_SKIP_LOG";

/// Records that `test` did not run, and why.
///
/// # Panics
/// When `STRATA_SKIP_LOG` names a file that cannot be appended to: a skip
/// that cannot be counted must not pass as a success.
pub fn skipped(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    let line = format!("{test}\t{}\n", reason.replace(['\n', '\t'], " "));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording the skip of {test} in {path:?}: {e}"));
}

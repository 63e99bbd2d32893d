//! What the fuzz targets share: the fixed test key of the encrypted seeds,
//! and small helpers. Each target lives in `fuzz_targets/` and asserts
//! properties of one parser or decoder, not only that it does not panic.

use std::path::Path;

use strata_core::crypto::{DataKey, VaultKey};

/// The most the targets may hold allocated at once. A parser that
/// allocates more on an input of at most 64 KiB is a finding: the
/// allocator refuses, and the process aborts with "memory allocation of N
/// bytes failed", which libFuzzer reports as a crash. (libFuzzer's own
/// `-malloc_limit_mb` needs a sanitizer's allocator hooks, and a stable
/// build has no sanitizer.)
pub const ALLOCATION_LIMIT: usize = 256 << 20;

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> =
    cap::Cap::new(std::alloc::System, ALLOCATION_LIMIT);

/// The largest raw length the part targets record: a part may be up to
/// 1 GiB raw (the reader's limit), and decoding one reserves that much,
/// which is more than [`ALLOCATION_LIMIT`]. Larger recorded lengths are
/// kept only above the reader's limit, where they are refused unread.
pub const MAX_FUZZED_RAW: u32 = 64 << 20;

/// Whether the part targets skip a recorded raw length (see [`MAX_FUZZED_RAW`]).
pub fn raw_out_of_budget(raw: u32) -> bool {
    raw > MAX_FUZZED_RAW && raw <= 1 << 30
}

/// The vault key of the encrypted seed vault (a test key, nothing else uses it).
pub const TEST_VAULT_KEY: &str = "5e3c1a2f9b7d4e6a8c0b1d2f3a4e5c6b7d8e9f0a1b2c3d4e5f60718293a4b5c6";

/// The backup whose data key [`test_data_key`] opens.
pub const TEST_BACKUP: &str = "20261201T225052.871Z-f618caa3";

/// The data key of [`TEST_BACKUP`], wrapped by [`TEST_VAULT_KEY`] (as its
/// manifest records it).
pub const TEST_WRAPPED_KEY: &str =
    "qc+u22syRwbwV25T0jIN0jBU3WwY8JNcLWnd99QXtCpXor6aAM5tFS0p9NblXbel/zXQyC4o7ez0RbUM";

/// The vault key of the encrypted seeds.
pub fn test_vault_key() -> VaultKey {
    VaultKey::from_hex(TEST_VAULT_KEY).expect("the test key is 64 hex digits")
}

/// The data key of [`TEST_BACKUP`].
pub fn test_data_key() -> DataKey {
    test_vault_key()
        .open_data_key(TEST_BACKUP, TEST_WRAPPED_KEY)
        .expect("the test vault key opens the test data key")
}

/// The input as text, when it is UTF-8 (every text format Strata reads is).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Whether two JSON values are the same, floats compared to a relative
/// 1e-12: serde_json parses floats to within an ulp, not always exactly.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, x), (ky, y))| kx == ky && same_json(x, y))
        }
        _ => a == b,
    }
}

/// Empties `dir` (created when missing), whatever modes a previous input
/// left on what it holds.
pub fn empty_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot empty {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir).expect("the scratch directory can be created");
}

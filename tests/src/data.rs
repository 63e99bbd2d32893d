//! Deterministic test data.
//!
//! The same `(len, seed)` always gives the same bytes, so a failing test can
//! be rerun on identical input, and two streams with different seeds never
//! share a window of bytes by accident.

/// `len` pseudo-random bytes (SplitMix64): zstd cannot shrink them, so
/// stored sizes are close to raw sizes and plaintext stays recognisable in
/// an unencrypted object.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes of text-like rows (as a table dump would hold), which zstd
/// compresses several times over.
pub fn compressible_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut row = 0u64;
    while out.len() < len {
        let value = row.wrapping_mul(2_654_435_761) ^ seed;
        out.extend_from_slice(
            format!(
                "{row}\tcustomer-{}\t{}.{:02}\tstatus=active\tregion=eu-west\n",
                value % 10_000,
                value % 100_000,
                value % 100
            )
            .as_bytes(),
        );
        row += 1;
    }
    out.truncate(len);
    out
}

/// The BLAKE3 digest of `data`, lowercase hex (as manifests record it).
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_seed_dependent() {
        assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
        assert_ne!(random_bytes(1000, 7), random_bytes(1000, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
        assert!(random_bytes(0, 1).is_empty());
        assert_eq!(compressible_bytes(4097, 3), compressible_bytes(4097, 3));
        assert_eq!(compressible_bytes(4097, 3).len(), 4097);
    }

    #[test]
    fn random_data_does_not_compress_and_rows_do() {
        let random = random_bytes(1 << 20, 1);
        let rows = compressible_bytes(1 << 20, 1);
        let random_z = zstd::bulk::compress(&random, 3).unwrap().len();
        let rows_z = zstd::bulk::compress(&rows, 3).unwrap().len();
        assert!(random_z > random.len() * 99 / 100, "random: {random_z}");
        assert!(rows_z < rows.len() / 3, "rows: {rows_z}");
    }
}

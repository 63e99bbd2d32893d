//! The four kinds of damage at rest, applied to one object of a `file://`
//! vault: what a bad disk, a cut-short copy, a careless `rm` and a mix-up
//! between two backups do to a stored object.

use std::fmt;
use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;

/// A kind of damage to one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Damage {
    /// One bit flipped, anywhere in the object (seeded).
    BitFlip,
    /// Cut to a shorter length (seeded; a quarter of the runs cut to 0).
    Truncate,
    /// Deleted.
    Delete,
    /// Replaced by another backup's object of the same kind (another
    /// segment with the same name pattern, another manifest, another WAL
    /// file), byte for byte.
    Replace,
}

impl Damage {
    /// Every kind, in the order the matrix lists them.
    pub const ALL: [Damage; 4] = [
        Damage::BitFlip,
        Damage::Truncate,
        Damage::Delete,
        Damage::Replace,
    ];

    /// The name in case lines and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Damage::BitFlip => "bit-flip",
            Damage::Truncate => "truncation",
            Damage::Delete => "deletion",
            Damage::Replace => "replacement",
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Applies `damage` to the object at `path`; `other` is the object that
/// replaces it ([`Damage::Replace`]). Returns what was done, for findings
/// (`bit 5 of byte 1234 of 65546`, `cut to 0 of 65546 bytes`).
///
/// # Panics
/// When the object cannot be read or written, or a replacement would not
/// change it (the campaign would then test nothing).
pub fn apply(damage: Damage, path: &Path, other: &Path, rng: &mut StdRng) -> String {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let write = |bytes: &[u8]| {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    match damage {
        Damage::BitFlip => {
            let mut bytes = read(path);
            assert!(!bytes.is_empty(), "{} is empty", path.display());
            let byte = rng.random_range(0..bytes.len());
            let bit = rng.random_range(0..8u8);
            bytes[byte] ^= 1 << bit;
            write(&bytes);
            format!("bit {bit} of byte {byte} of {} flipped", bytes.len())
        }
        Damage::Truncate => {
            let bytes = read(path);
            assert!(!bytes.is_empty(), "{} is empty", path.display());
            let len = if rng.random_ratio(1, 4) {
                0
            } else {
                rng.random_range(0..bytes.len())
            };
            write(&bytes[..len]);
            format!("cut to {len} of {} bytes", bytes.len())
        }
        Damage::Delete => {
            std::fs::remove_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            "deleted".to_owned()
        }
        Damage::Replace => {
            let own = read(path);
            let replacement = read(other);
            assert_ne!(
                own,
                replacement,
                "{} and {} are identical: replacing one by the other tests nothing",
                path.display(),
                other.display()
            );
            write(&replacement);
            format!(
                "replaced by {} ({} bytes)",
                other.display(),
                replacement.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn each_damage_changes_the_object_as_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let other = dir.path().join("other");
        let original: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&other, b"another object").unwrap();
        let mut rng = StdRng::seed_from_u64(7);

        std::fs::write(&path, &original).unwrap();
        apply(Damage::BitFlip, &path, &other, &mut rng);
        let flipped = std::fs::read(&path).unwrap();
        let differing: u32 = flipped
            .iter()
            .zip(&original)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!((flipped.len(), differing), (original.len(), 1));

        std::fs::write(&path, &original).unwrap();
        apply(Damage::Truncate, &path, &other, &mut rng);
        let cut = std::fs::read(&path).unwrap();
        assert!(cut.len() < original.len() && original.starts_with(&cut));

        apply(Damage::Replace, &path, &other, &mut rng);
        assert_eq!(std::fs::read(&path).unwrap(), b"another object");

        apply(Damage::Delete, &path, &other, &mut rng);
        assert!(!path.exists());
    }
}

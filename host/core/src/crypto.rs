//! Authenticated encryption of parts, and keys.
//!
//! An encrypted vault has a **vault key**: 32 random bytes in a key file
//! (64 hex digits, created by `strata vault init --encrypt`). The vault's
//! metadata holds only a *key check* (a BLAKE3 key derivation of the key, which
//! reveals nothing about it) so that a wrong key is reported as such.
//!
//! Every backup gets a fresh random **data key**. It is sealed with the vault
//! key (ChaCha20-Poly1305, random nonce, the backup id as associated data) and
//! stored in the manifest. Each part is sealed with the data key; its nonce is
//! the stream index and the part index, and its associated data is the backup
//! id, stream index and part index, so parts cannot be swapped, reordered or
//! moved between backups without detection. Nonces never repeat because a data
//! key is used for one backup only.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, IoResultExt, Result};

/// The AEAD algorithm name recorded in manifests.
pub const PART_ALGORITHM: &str = "chacha20poly1305";

/// Bytes added to each sealed part (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

const KEY_CHECK_CONTEXT: &str = "strata 2026-11 vault key check v1";

/// The vault key: 32 secret bytes, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VaultKey([u8; 32]);

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

impl VaultKey {
    /// A new random key.
    pub fn generate() -> Self {
        VaultKey(rand::random())
    }

    /// Loads a key file: 64 hex digits, surrounding whitespace ignored.
    ///
    /// Refuses a file whose mode lets other users read or write it, or its
    /// group write it ([`check_secret_file_mode`]), before reading a byte.
    pub fn load(path: &Path) -> Result<Self> {
        let cannot_read = |e: std::io::Error| {
            let hint = if e.kind() == std::io::ErrorKind::InvalidData {
                "a key file holds 64 hex digits as text, as written by `strata vault init --encrypt`; this one holds binary bytes"
            } else {
                "check the path and that the user running Strata can read it (mode 0640, group strata)"
            };
            Error::crypto(format!("cannot read key file {}", path.display()))
                .in_message("path", path.display())
                .hint(hint)
                .with_source(e)
        };
        let mut file = std::fs::File::open(path).map_err(cannot_read)?;
        // The mode of the file opened, not of the path looked up again.
        let metadata = file.metadata().map_err(cannot_read)?;
        check_secret_file_mode(path, &metadata, "key file")?;
        let mut text = String::new();
        let read = std::io::Read::read_to_string(&mut file, &mut text).map_err(cannot_read);
        let key = read.and_then(|_| {
            Self::from_hex(text.trim())
                .map_err(|e| e.context(format!("key file {}", path.display())))
        });
        text.zeroize();
        key
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut bytes = hex::decode(text).map_err(|_| {
            Error::crypto("the key is not hexadecimal")
                .hint("a key file holds 64 hex digits, as written by `strata vault init --encrypt`")
        })?;
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(
                Error::crypto("the key is not 32 bytes (64 hex digits) long").hint(
                    "a key file holds 64 hex digits, as written by `strata vault init --encrypt`",
                ),
            );
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        bytes.zeroize();
        Ok(VaultKey(key))
    }

    /// Writes the key as hex to a new file readable by its owner only.
    /// Refuses to overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::crypto(format!("cannot create key file {}", path.display()))
                    .in_message("path", path.display())
                    .hint("the key file must not exist yet; choose a new path")
                    .with_source(e)
            })?;
        let mut text = hex::encode(self.0);
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all());
        text.zeroize();
        written.doing_at("writing key file", path)
    }

    /// The key check stored in the vault metadata (safe to publish).
    pub fn check_value(&self) -> String {
        hex::encode(blake3::derive_key(KEY_CHECK_CONTEXT, &self.0))
    }

    /// Seals a new data key for backup `backup_id`; returns it and its wrapped form.
    pub fn new_data_key(&self, backup_id: &str) -> Result<(DataKey, String)> {
        let data_key = DataKey(rand::random());
        let nonce: [u8; 12] = rand::random();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &data_key.0,
                    aad: backup_id.as_bytes(),
                },
            )
            .map_err(|_| Error::crypto("sealing the data key failed"))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        Ok((data_key, BASE64.encode(wrapped)))
    }

    /// Opens the wrapped data key of backup `backup_id`.
    pub fn open_data_key(&self, backup_id: &str, wrapped: &str) -> Result<DataKey> {
        let bytes = BASE64.decode(wrapped).map_err(|_| {
            Error::integrity(format!(
                "backup {backup_id}: the wrapped data key is not base64"
            ))
        })?;
        if bytes.len() != 12 + 32 + TAG_LEN {
            return Err(Error::integrity(format!(
                "backup {backup_id}: the wrapped data key has the wrong length"
            )));
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let mut plain = cipher
            .decrypt(
                Nonce::from_slice(&bytes[..12]),
                Payload {
                    msg: &bytes[12..],
                    aad: backup_id.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::crypto(format!(
                    "the vault key does not open the data key of backup {backup_id}"
                ))
                .hint("use the key file this vault was created with")
            })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&plain);
        plain.zeroize();
        Ok(DataKey(key))
    }
}

/// A per-backup data key that seals and opens parts.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

fn part_nonce(stream: u32, part: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&stream.to_be_bytes());
    nonce[4..].copy_from_slice(&part.to_be_bytes());
    nonce
}

fn part_aad(backup_id: &str, stream: u32, part: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(backup_id.len() + 12);
    aad.extend_from_slice(backup_id.as_bytes());
    aad.extend_from_slice(&stream.to_be_bytes());
    aad.extend_from_slice(&part.to_be_bytes());
    aad
}

impl DataKey {
    /// Seals part `part` of stream `stream` of backup `backup_id`.
    /// The result is `TAG_LEN` bytes longer than `plain`.
    pub fn seal_part(&self, backup_id: &str, stream: u32, part: u64, plain: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .encrypt(
                Nonce::from_slice(&part_nonce(stream, part)),
                Payload {
                    msg: plain,
                    aad: &part_aad(backup_id, stream, part),
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for parts under 256 GiB")
    }

    /// Opens a sealed part; fails if it was altered, moved or sealed with another key.
    pub fn open_part(
        &self,
        backup_id: &str,
        stream: u32,
        part: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .decrypt(
                Nonce::from_slice(&part_nonce(stream, part)),
                Payload {
                    msg: sealed,
                    aad: &part_aad(backup_id, stream, part),
                },
            )
            .map_err(|_| {
                Error::integrity(format!(
                    "backup {backup_id}: part {part} of stream {stream} failed authentication"
                ))
                .hint("the stored part was altered or damaged; restore from another backup")
            })
    }
}

/// The permission bits a file holding a secret must not have: any access
/// by other users, and write access by its group (a member could replace
/// the key). Read access by the group is allowed: the service and the
/// engines' users (`postgres`, `<sid>adm`) share a key through the group
/// `strata` (mode 0640), as the README documents.
pub const LOOSE_SECRET_MODE: u32 = 0o027;

/// Refuses a file holding a secret (a vault key, a TLS private key) whose
/// permissions are looser than 0640: one that other users may read or
/// write, or its group may write. The error (kind [`Crypto`], exit 7) names
/// the file and its mode, and the hint gives the `chmod` that fixes it, so
/// that a key copied with the wrong mode is noticed at once instead of
/// lying readable for everyone.
///
/// `what` names the file in the message (`"key file"`). Only the mode bits
/// are judged: root, which reads any file, is refused a loose key too.
///
/// [`Crypto`]: crate::ErrorKind::Crypto
pub fn check_secret_file_mode(path: &Path, metadata: &std::fs::Metadata, what: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & LOOSE_SECRET_MODE != 0 {
            let who = match (mode & 0o007 != 0, mode & 0o020 != 0) {
                (true, true) => "other users and its group can access it",
                (true, false) => "other users can access it",
                _ => "its group can write it",
            };
            return Err(Error::crypto(format!(
                "the {what} {} has mode {mode:04o}: {who}",
                path.display()
            ))
            .in_message("path", path.display())
            .hint(format!(
                "run `chmod 0640 {}` (owner read-write, group read; 0600 when only its owner runs Strata); \
                 Strata refuses a key that others could read or replace",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, metadata, what);
    Ok(())
}

/// Loads the vault key if a key file is given, as an `Option`.
pub fn load_optional_key(path: Option<&Path>) -> Result<Option<VaultKey>> {
    path.map(VaultKey::load).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_roundtrip_and_wrong_key() {
        let vault = VaultKey::generate();
        let (dk, wrapped) = vault.new_data_key("b1").unwrap();
        let sealed = dk.seal_part("b1", 0, 7, b"hello");
        let opened = vault.open_data_key("b1", &wrapped).unwrap();
        assert_eq!(opened.open_part("b1", 0, 7, &sealed).unwrap(), b"hello");
        // Moved part, other backup, other key: all refused.
        let moved = opened.open_part("b1", 0, 8, &sealed).unwrap_err();
        assert_eq!(moved.kind(), crate::ErrorKind::Integrity);
        assert!(
            moved
                .to_string()
                .contains("part 8 of stream 0 failed authentication"),
            "{moved}"
        );
        let other_backup = opened.open_part("b2", 0, 7, &sealed).unwrap_err();
        assert_eq!(other_backup.kind(), crate::ErrorKind::Integrity);
        let moved_key = vault.open_data_key("b2", &wrapped).err().unwrap();
        assert_eq!(moved_key.kind(), crate::ErrorKind::Crypto);
        let other = VaultKey::generate();
        let err = other.open_data_key("b1", &wrapped).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Crypto);
        assert_ne!(vault.check_value(), other.check_value());
    }

    #[test]
    fn key_file_roundtrip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let key = VaultKey::generate();
        key.save_new(&path).unwrap();
        assert!(key.save_new(&path).is_err(), "never overwrites a key file");
        assert_eq!(
            VaultKey::load(&path).unwrap().check_value(),
            key.check_value()
        );
        let short = private_file(dir.path(), "short", b"abcd");
        let err = VaultKey::load(&short).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        // 32 raw bytes instead of their hex digits: says so, not "permissions".
        let binary = private_file(dir.path(), "binary", &[0xffu8; 32]);
        let err = VaultKey::load(&binary).unwrap_err();
        assert!(
            err.hint_text().unwrap().contains("64 hex digits as text"),
            "{err:?}"
        );
    }

    /// Writes `bytes` to `dir/name` with mode 0600.
    fn private_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A key file others may read or write, or its group may write, is
    /// refused before it is read, naming the file, its mode and the chmod
    /// that fixes it; 0600, 0640, 0400 and 0440 load.
    #[test]
    fn key_files_with_loose_permissions_are_refused_with_the_chmod_to_fix_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let key = VaultKey::generate();
        key.save_new(&path).unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode_of(&path), 0o600, "vault init --encrypt writes 0600");
        for (mode, who) in [
            (0o644, "other users can access it"),
            (0o604, "other users can access it"),
            (0o601, "other users can access it"),
            (0o602, "other users can access it"),
            (0o660, "its group can write it"),
            (0o620, "its group can write it"),
            (0o666, "other users and its group can access it"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = VaultKey::load(&path).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Crypto, "{mode:o}: {err:?}");
            assert_eq!(
                err.to_string(),
                format!("the key file {} has mode {mode:04o}: {who}", path.display()),
                "{mode:o}"
            );
            assert!(
                err.hint_text()
                    .unwrap()
                    .starts_with(&format!("run `chmod 0640 {}`", path.display())),
                "{err:?}"
            );
            assert_eq!(err.field("path"), Some(path.display().to_string().as_str()));
        }
        for mode in [0o600, 0o640, 0o400, 0o440] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                VaultKey::load(&path).unwrap().check_value(),
                key.check_value(),
                "mode {mode:o}"
            );
        }
    }
}

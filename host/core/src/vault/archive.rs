//! Archive objects: the host side of [`ArchiveStore`].
//!
//! Small create-only objects an engine pushes at Strata one at a time
//! (PostgreSQL WAL segments and history files, Backint name markers) are
//! kept one object per key, with no manifest: the object is its own record.
//! [`VaultArchive`] keeps those of one engine instance under
//! [`layout::engine_prefix`]:
//!
//! ```text
//! engines/<engine>/<instance>/<key>
//! ```
//!
//! so PostgreSQL's `wal/<system-id>/<timeline>/<file>` lands exactly where
//! WAL has always been archived.
//!
//! # Object format (version 1)
//!
//! ```text
//! STRATA-WAL1\n
//! {"name":..,"size":..,"blake3":"<hex>","compression":"zstd","level":1,
//!  "encryption":null|{"algorithm":..,"wrapped_key":..},<attribute>:"<value>",..,
//!  "checksum":"blake3:<hex>"}\n
//! <one zstd frame of the raw bytes, sealed with a per-object data key when the vault is encrypted>
//! ```
//!
//! See [`ArchiveHeader`] for the header's fields. The format began as the
//! WAL archive's own (hence the magic); its header had `system_id` and
//! `mtime` as fixed fields, which are exactly the attributes the WAL archive
//! now gives, so objects written before the archive API read back
//! unchanged, with those two as attributes. A new field in the header would
//! be read by older builds as an attribute; a change that older builds must
//! not misread gets a new magic.
//!
//! When the vault is encrypted, each object gets its own data key, wrapped
//! by the vault key with the object's vault key (its path from the vault
//! root) as associated data, and the frame is sealed as part 0 of stream 0
//! under that name: an object moved to another key does not open.
//!
//! # Guarantees
//!
//! - A put is create-only (`PutMode::Create`), so two writers racing for
//!   one key cannot both win; the loser reads the winner's object back, and
//!   succeeds only when the raw bytes are identical (BLAKE3).
//! - A put returns once the object is durable (object stores acknowledge
//!   durable writes; the local store flushes the file and its directory).
//! - Every read checks the object whole: magic, header (its checksum,
//!   [`crate::checksum`], when it has one, and that its name is the key's
//!   last component), AEAD tag, zstd frame, size and BLAKE3. Damage is an [`ErrorKind::Integrity`] error
//!   naming the object; a key that does not open it, [`ErrorKind::Crypto`].

use std::io::Read;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{GetOptions, ObjectStore};
use serde::{Deserialize, Serialize};

use super::{Vault, layout};
use crate::catalog::manifest::Encryption;
use crate::crypto::{PART_ALGORITHM, VaultKey};
use crate::error::{Error, ErrorKind, Result};
use crate::plugin::{ArchiveEntry, ArchiveObject, ArchiveStore, Attributes, PutOnce};

/// First line of every archive object.
pub const ARCHIVE_OBJECT_MAGIC: &[u8] = b"STRATA-WAL1\n";

/// The longest key component, in bytes: well under the 255 bytes of a
/// local file name, with room for a store's staging suffix.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// The zstd level of archive objects unless [`VaultArchive::with_level`]
/// says otherwise: an engine waits for each put (PostgreSQL runs one
/// `archive_command` at a time), so speed comes first.
pub const DEFAULT_LEVEL: i32 = 1;

/// The longest header (magic and newline included) a reader accepts.
const MAX_HEADER_BYTES: u64 = 64 << 10;

/// The first ranged read of [`ArchiveStore::attributes`]: enough for the
/// header of every object Strata writes today.
const HEADER_PROBE_BYTES: u64 = 4096;

/// Objects at least this large are compressed on every core.
const PARALLEL_COMPRESSION_BYTES: usize = 4 << 20;

/// The fields of the header that are not attributes.
const RESERVED_FIELDS: [&str; 7] = [
    "name",
    "size",
    "blake3",
    "compression",
    "level",
    "encryption",
    crate::checksum::FIELD,
];

/// The header line of an archive object (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    /// The last component of the object's key (PostgreSQL: the WAL file's name).
    pub name: String,
    /// The raw bytes' length.
    pub size: u64,
    /// BLAKE3 of the raw bytes, lowercase hex.
    pub blake3: String,
    /// Always `zstd`.
    pub compression: String,
    /// The zstd level.
    pub level: i32,
    /// Present when the frame is sealed.
    #[serde(default)]
    pub encryption: Option<Encryption>,
    /// The object's attributes, each a string field of the header.
    #[serde(flatten)]
    pub attributes: Attributes,
}

/// The archive objects of one engine instance in a vault. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VaultArchive {
    vault: Vault,
    prefix: String,
    level: i32,
}

impl VaultArchive {
    /// The archive of `instance` of `engine` in `vault`.
    pub fn new(vault: Vault, engine: &str, instance: &str) -> Self {
        VaultArchive {
            vault,
            prefix: layout::engine_prefix(engine, instance),
            level: DEFAULT_LEVEL,
        }
    }

    /// The same archive, compressing new objects at zstd `level`.
    pub fn with_level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Where the objects live, relative to the vault root
    /// (`engines/<engine>/<instance>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The vault key (relative to the vault root) of archive key `key`,
    /// once the key is checked (see [`check_key`]).
    pub fn vault_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}/{key}", self.prefix))
    }

    /// Reads and checks the object at vault key `full`; `None` when there is none.
    async fn read_object(&self, full: &str) -> Result<Option<(ArchiveHeader, Vec<u8>)>> {
        let stored = match self.vault.get_bytes(full).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let vault_key = self.vault.key().cloned();
        let name = full.to_owned();
        let decoded =
            tokio::task::spawn_blocking(move || decode_object(&stored, &name, vault_key.as_ref()))
                .await
                .map_err(|e| Error::io(format!("decoding {full}: {e}")))??;
        Ok(Some(decoded))
    }

    /// The first `len` bytes of the object at `full` and its whole size;
    /// `None` when there is none.
    async fn read_head(&self, full: &str, len: u64) -> Result<Option<(Bytes, u64)>> {
        let path = self.vault.path(full);
        let ranged = self
            .vault
            .store()
            .get_opts(&path, GetOptions::default().with_range(Some(0..len)))
            .await;
        let result = match ranged {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            // Some stores refuse a range of an empty object: read it whole,
            // and let that read report what is wrong.
            Err(_) => {
                return match self.vault.get_bytes(full).await {
                    Ok(bytes) => {
                        let size = bytes.len() as u64;
                        Ok(Some((bytes, size)))
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                };
            }
        };
        let size = result.meta.size;
        let bytes = result
            .bytes()
            .await
            .map_err(|e| Error::from(e).context(format!("reading {full}")))?;
        Ok(Some((bytes, size)))
    }
}

/// Checks a relative archive key: `/`-separated components, each 1 to
/// [`MAX_COMPONENT_BYTES`] bytes of `[A-Za-z0-9._-]`, none `.` or `..`.
/// The character set keeps keys identical in every store (nothing to
/// percent-encode, no `#` that a local vault's staging files use); escape
/// free-form names with [`layout::escape_component`].
pub fn check_key(key: &str) -> Result<()> {
    let bad = |why: String| {
        Error::config(format!("`{key}` is not a valid archive key: {why}")).hint(
            "archive keys are relative paths of components of [A-Za-z0-9._-]; \
             escape free-form names (layout::escape_component)",
        )
    };
    if key.is_empty() {
        return Err(bad("it is empty".into()));
    }
    for component in key.split('/') {
        if component.is_empty() {
            return Err(bad("it has an empty component".into()));
        }
        if component == "." || component == ".." {
            return Err(bad(format!("it has a `{component}` component")));
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(bad(format!(
                "a component is {} bytes long (at most {MAX_COMPONENT_BYTES})",
                component.len()
            )));
        }
        if let Some(c) = component
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(format!("it contains {c:?}")));
        }
    }
    Ok(())
}

/// Encodes `bytes` as an archive object to be stored at vault key `full`
/// (see the module docs). Returns the object and the BLAKE3 of `bytes`.
/// CPU-bound: call it off the async runtime.
pub fn encode_object(
    full: &str,
    bytes: &[u8],
    attributes: Attributes,
    vault_key: Option<&VaultKey>,
    level: i32,
) -> Result<(Vec<u8>, String)> {
    if let Some(field) = attributes
        .keys()
        .find(|k| RESERVED_FIELDS.contains(&k.as_str()))
    {
        return Err(Error::config(format!(
            "attribute `{field}` of {full} is a field of the archive object header"
        ))
        .hint("choose another attribute name"));
    }
    // Hash on one core while zstd compresses on the others: an engine
    // waits for the put.
    let (digest, compressed) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| blake3::hash(bytes).to_hex().to_string());
        let compressed = compress(bytes, level);
        (hasher.join().expect("hashing does not panic"), compressed)
    });
    let compressed = compressed.map_err(|e| Error::io(format!("compressing {full}: {e}")))?;
    let (body, encryption) = match vault_key {
        Some(vk) => {
            let (data_key, wrapped_key) = vk.new_data_key(full)?;
            (
                data_key.seal_part(full, 0, 0, &compressed),
                Some(Encryption {
                    algorithm: PART_ALGORITHM.to_owned(),
                    wrapped_key,
                }),
            )
        }
        None => (compressed, None),
    };
    let header = ArchiveHeader {
        name: full.rsplit('/').next().unwrap_or(full).to_owned(),
        size: bytes.len() as u64,
        blake3: digest.clone(),
        compression: "zstd".into(),
        level,
        encryption,
        attributes,
    };
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(ARCHIVE_OBJECT_MAGIC);
    out.extend_from_slice(&crate::checksum::append(&serde_json::to_vec(&header)?));
    out.push(b'\n');
    if out.len() as u64 > MAX_HEADER_BYTES {
        return Err(Error::config(format!(
            "the attributes of {full} make its header longer than {MAX_HEADER_BYTES} bytes"
        ))
        .hint("keep attributes to a few short values"));
    }
    out.extend_from_slice(&body);
    Ok((out, digest))
}

/// zstd at `level`, with worker threads for objects large enough to split.
fn compress(bytes: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    if bytes.len() >= PARALLEL_COMPRESSION_BYTES {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as u32;
        compressor.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
    }
    compressor.compress(bytes)
}

/// The header of the object whose first bytes are `head`, and where its
/// body starts; `None` when `head` ends before the header does.
pub fn parse_header(head: &[u8], full: &str) -> Result<Option<(ArchiveHeader, usize)>> {
    let not_ours = || {
        Error::integrity(format!("{full} is not a Strata archive object"))
            .hint("the object was damaged in the vault, or written by something else")
    };
    let magic = ARCHIVE_OBJECT_MAGIC;
    if head.len() < magic.len() {
        return if magic.starts_with(head) {
            Ok(None)
        } else {
            Err(not_ours())
        };
    }
    let rest = head.strip_prefix(magic).ok_or_else(not_ours)?;
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return if head.len() as u64 >= MAX_HEADER_BYTES {
            Err(Error::integrity(format!(
                "{full} has no header line in its first {MAX_HEADER_BYTES} bytes"
            ))
            .hint("the object was damaged in the vault"))
        } else {
            Ok(None)
        };
    };
    let damaged = |why: String| {
        Error::integrity(format!("{full} has a damaged header: {why}"))
            .hint("the object was damaged in the vault")
    };
    // The attributes are what plans restores (commit times, LSNs): a
    // header altered in the vault is refused, not read as other facts.
    let line = &rest[..end];
    let checked = crate::checksum::check(line).map_err(damaged)?;
    let line = match &checked {
        crate::checksum::Checked::Sound(original) => original.as_slice(),
        crate::checksum::Checked::Absent => line,
    };
    let header: ArchiveHeader =
        serde_json::from_slice(line).map_err(|e| damaged(format!("it is malformed: {e}")))?;
    // The object of another key (another WAL file) copied over this one
    // is sound in itself: only its name tells.
    let own = full.rsplit('/').next().unwrap_or(full);
    if header.name != own {
        return Err(Error::integrity(format!(
            "{full} holds another archive object, `{}`: it was replaced or renamed in the vault",
            header.name
        ))
        .hint("the object was replaced in the vault; an older copy (another vault, the engine's own files) is the only way back to its content"));
    }
    Ok(Some((header, magic.len() + end + 1)))
}

/// Decodes and checks the archive object `stored`, read from vault key
/// `full`: returns its header and raw bytes. CPU-bound: call it off the
/// async runtime.
pub fn decode_object(
    stored: &[u8],
    full: &str,
    vault_key: Option<&VaultKey>,
) -> Result<(ArchiveHeader, Vec<u8>)> {
    let damaged = "the object was damaged in the vault; an older copy (another vault, \
                   the engine's own files) is the only way back to its content";
    let (header, body_at) = parse_header(stored, full)?.ok_or_else(|| {
        Error::integrity(format!("{full} is truncated: it ends inside its header")).hint(damaged)
    })?;
    let body = &stored[body_at..];
    if header.compression != "zstd" {
        return Err(Error::integrity(format!(
            "{full} is compressed with `{}`, which this Strata does not read",
            header.compression
        ))
        .hint("upgrade Strata on this host"));
    }
    let sealed;
    let frame = match (&header.encryption, vault_key) {
        (Some(enc), Some(vk)) => {
            if enc.algorithm != PART_ALGORITHM {
                return Err(Error::crypto(format!(
                    "{full} is sealed with `{}`, which this Strata does not open",
                    enc.algorithm
                ))
                .hint("upgrade Strata on this host"));
            }
            let data_key = vk.open_data_key(full, &enc.wrapped_key).map_err(|e| {
                if e.kind() == ErrorKind::Crypto {
                    Error::crypto(format!("the vault key does not open {full}"))
                        .hint("the object was sealed with another vault key (or its header was damaged); use the key file this vault was created with")
                } else {
                    Error::integrity(format!("{full}: {}", e.message())).hint(damaged)
                }
            })?;
            sealed = data_key.open_part(full, 0, 0, body).map_err(|_| {
                Error::integrity(format!(
                    "{full} failed authentication: its stored bytes were altered or damaged"
                ))
                .hint(damaged)
            })?;
            &sealed[..]
        }
        (Some(_), None) => {
            return Err(Error::crypto(format!(
                "{full} is encrypted and the vault was opened without a key"
            ))
            .hint("set [vault] key_file in the config or pass --key-file"));
        }
        (None, Some(_)) => {
            return Err(Error::integrity(format!(
                "{full} is not sealed, but the vault is encrypted: Strata did not write it"
            ))
            .hint("remove the object if it does not belong in the vault"));
        }
        (None, None) => body,
    };
    // Read at most one byte more than the header promises, so a damaged
    // header cannot make us allocate or inflate without bound.
    let mut data = Vec::with_capacity(header.size.min(64 << 20) as usize);
    zstd::stream::read::Decoder::with_buffer(frame)
        .and_then(|decoder| decoder.take(header.size + 1).read_to_end(&mut data))
        .map_err(|e| Error::integrity(format!("{full} does not decompress: {e}")).hint(damaged))?;
    let digest = blake3::hash(&data).to_hex().to_string();
    if data.len() as u64 != header.size || digest != header.blake3 {
        return Err(Error::integrity(format!(
            "{full} is corrupt: its content ({} bytes, blake3 {digest}) does not match what was stored \
             ({} bytes, blake3 {})",
            data.len(),
            header.size,
            header.blake3
        ))
        .hint(damaged));
    }
    Ok((header, data))
}

#[async_trait]
impl ArchiveStore for VaultArchive {
    fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    async fn put_once(&self, key: &str, bytes: Bytes, attributes: Attributes) -> Result<PutOnce> {
        let full = self.vault_key(key)?;
        let size = bytes.len() as u64;
        let (object, digest) = {
            let name = full.clone();
            let vault_key = self.vault.key().cloned();
            let level = self.level;
            tokio::task::spawn_blocking(move || {
                encode_object(&name, &bytes, attributes, vault_key.as_ref(), level)
            })
            .await
            .map_err(|e| Error::io(format!("encoding {full}: {e}")))??
        };
        let stored_bytes = object.len() as u64;
        // A put the network cut is tried again; if it had landed, the
        // retry finds it and it is compared below like any existing object.
        let (put, _) =
            super::put_create_retrying(self.vault.store(), &self.vault.path(&full), object.into())
                .await;
        match put {
            Ok(_) => Ok(PutOnce::Stored { stored_bytes }),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let Some((existing, _)) = self.read_object(&full).await.map_err(|e| {
                    e.context(format!(
                        "{full} already exists and cannot be compared with the object being stored"
                    ))
                })?
                else {
                    return Err(Error::conflict(format!(
                        "{full} already existed, then disappeared while it was compared"
                    ))
                    .hint("something else is writing and deleting this key; try again")
                    .retryable(true));
                };
                if existing.blake3 == digest && existing.size == size {
                    Ok(PutOnce::Identical)
                } else {
                    Err(Error::conflict(format!(
                        "{full} already holds other content ({} bytes, blake3 {}) than the \
                         {size} bytes (blake3 {digest}) being stored; an archive object is never replaced",
                        existing.size, existing.blake3
                    ))
                    .hint("two writers store different content under one name; the stored object was left as it was"))
                }
            }
            Err(e) => Err(Error::from(e).context(format!("storing {full}"))),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<ArchiveObject>> {
        let full = self.vault_key(key)?;
        Ok(self
            .read_object(&full)
            .await?
            .map(|(header, data)| ArchiveObject {
                bytes: Bytes::from(data),
                attributes: header.attributes,
            }))
    }

    async fn attributes(&self, key: &str) -> Result<Option<Attributes>> {
        let full = self.vault_key(key)?;
        let Some((head, size)) = self.read_head(&full, HEADER_PROBE_BYTES).await? else {
            return Ok(None);
        };
        if let Some((header, _)) = parse_header(&head, &full)? {
            return Ok(Some(header.attributes));
        }
        // A header longer than the first read: one more, up to the limit.
        let len = size.min(MAX_HEADER_BYTES);
        if size > head.len() as u64
            && let Some((head, _)) = self.read_head(&full, len).await?
            && let Some((header, _)) = parse_header(&head, &full)?
        {
            return Ok(Some(header.attributes));
        }
        Err(
            Error::integrity(format!("{full} is truncated: it ends inside its header"))
                .hint("the object was damaged in the vault"),
        )
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ArchiveEntry>> {
        let base = if prefix.is_empty() {
            self.prefix.clone()
        } else {
            self.vault_key(prefix)?
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .vault
            .store()
            .list(Some(&self.vault.path(&base)))
            .try_collect()
            .await
            .map_err(|e| Error::from(e).context(format!("listing {base}")))?;
        let strip = format!("{}/", self.prefix);
        let mut entries: Vec<ArchiveEntry> = metas
            .into_iter()
            .filter_map(|meta| {
                let key = self
                    .vault
                    .relative_key(&meta.location)
                    .strip_prefix(&strip)?
                    .to_owned();
                Some(ArchiveEntry {
                    key,
                    stored_bytes: meta.size,
                    stored_at: meta.last_modified,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.vault_key(key)?;
        match self.vault.delete_object(&full).await? {
            super::Deletion::Deleted => Ok(()),
            super::Deletion::Locked { until } => Err(Error::conflict(format!(
                "{full} is locked by the vault's immutability{}",
                until
                    .map(|t| format!(" until {}", t.to_rfc3339()))
                    .unwrap_or_default()
            ))
            .hint("an immutable vault deletes nothing before its lock ends; try again after it")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::VaultConfig;
    use object_store::ObjectStoreExt;

    async fn archive(name: &str, key: Option<VaultKey>) -> VaultArchive {
        let vault = Vault::init(&VaultConfig::from_url(format!("memory://{name}")), key)
            .await
            .unwrap();
        VaultArchive::new(vault, "postgres", "main")
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// An object exactly as the WAL archive wrote it before the archive
    /// API: `system_id` and `mtime` as fixed header fields.
    fn old_wal_object(full: &str, data: &[u8], vault_key: Option<&VaultKey>) -> Vec<u8> {
        let compressed = zstd::bulk::compress(data, 1).unwrap();
        let (body, encryption) = match vault_key {
            Some(vk) => {
                let (dk, wrapped) = vk.new_data_key(full).unwrap();
                (
                    dk.seal_part(full, 0, 0, &compressed),
                    serde_json::json!({"algorithm": PART_ALGORITHM, "wrapped_key": wrapped}),
                )
            }
            None => (compressed, serde_json::Value::Null),
        };
        let header = serde_json::json!({
            "name": full.rsplit('/').next().unwrap(),
            "system_id": "7301234567890123456",
            "size": data.len(),
            "mtime": "2026-11-22T00:15:00.123456789Z",
            "blake3": blake3::hash(data).to_hex().to_string(),
            "compression": "zstd",
            "level": 1,
            "encryption": encryption,
        });
        let mut out = b"STRATA-WAL1\n".to_vec();
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn objects_of_the_old_wal_format_read_back_with_their_attributes() {
        for (name, key) in [
            ("archive-old-plain", None),
            ("archive-old-sealed", Some(VaultKey::generate())),
        ] {
            let archive = archive(name, key.clone()).await;
            let rel = "wal/7301234567890123456/00000001/000000010000000000000003";
            let full = archive.vault_key(rel).unwrap();
            assert_eq!(
                full,
                "engines/postgres/main/wal/7301234567890123456/00000001/000000010000000000000003"
            );
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            archive
                .vault()
                .store()
                .put(
                    &archive.vault().path(&full),
                    old_wal_object(&full, &data, key.as_ref()).into(),
                )
                .await
                .unwrap();
            let expected = attrs(&[
                ("mtime", "2026-11-22T00:15:00.123456789Z"),
                ("system_id", "7301234567890123456"),
            ]);
            let object = archive.get(rel).await.unwrap().expect("stored");
            assert_eq!(&object.bytes[..], &data[..], "{name}");
            assert_eq!(object.attributes, expected, "{name}");
            assert_eq!(
                archive.attributes(rel).await.unwrap(),
                Some(expected),
                "{name}"
            );
            // Pushing the same file again is a duplicate, as it was.
            assert_eq!(
                archive
                    .put_once(rel, Bytes::from(data.clone()), Attributes::new())
                    .await
                    .unwrap(),
                PutOnce::Identical
            );
        }
    }

    #[tokio::test]
    async fn new_objects_keep_the_old_header_fields() {
        let archive = archive("archive-header-fields", None).await;
        let attributes = attrs(&[("system_id", "42"), ("mtime", "2026-11-22T00:15:00Z")]);
        archive
            .put_once("wal/42/00000001/x", Bytes::from_static(b"abc"), attributes)
            .await
            .unwrap();
        let stored = archive
            .vault()
            .get_bytes("engines/postgres/main/wal/42/00000001/x")
            .await
            .unwrap();
        let (header, _) = parse_header(&stored, "x").unwrap().unwrap();
        assert_eq!(header.name, "x");
        assert_eq!(header.size, 3);
        assert_eq!(header.level, DEFAULT_LEVEL);
        assert_eq!(header.attributes["system_id"], "42");
        // Old readers look for these as top-level fields of the header line.
        let line = &stored[ARCHIVE_OBJECT_MAGIC.len()..];
        let line = &line[..line.iter().position(|&b| b == b'\n').unwrap()];
        let fields: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(fields["system_id"], "42", "{fields}");
        assert_eq!(fields["mtime"], "2026-11-22T00:15:00Z", "{fields}");
        assert!(fields["encryption"].is_null(), "{fields}");
        assert!(fields.get("attributes").is_none(), "{fields}");
    }

    #[test]
    fn keys_are_checked() {
        for good in [
            "a",
            "wal/42/00000001/000000010000000000000003",
            "objects/_/a/x.y-z_",
        ] {
            check_key(good).unwrap();
        }
        let long = "x".repeat(MAX_COMPONENT_BYTES + 1);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "./a",
            "a b",
            "a#1",
            "é",
            long.as_str(),
        ] {
            let err = check_key(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
            assert!(err.to_string().contains("not a valid archive key"), "{err}");
        }
        check_key(&"x".repeat(MAX_COMPONENT_BYTES)).unwrap();
    }

    #[tokio::test]
    async fn reserved_attribute_names_are_refused() {
        let archive = archive("archive-reserved", None).await;
        for field in RESERVED_FIELDS {
            let err = archive
                .put_once("a", Bytes::new(), attrs(&[(field, "1")]))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(
                err.to_string().starts_with(&format!(
                    "attribute `{field}` of {} is a field of the archive object header",
                    archive.vault_key("a").unwrap()
                )),
                "{err}"
            );
            assert!(archive.get("a").await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn long_headers_and_empty_objects_are_read_whole() {
        let archive = archive("archive-long-header", None).await;
        // Longer than the first ranged read of a header.
        let long = "v".repeat(10_000);
        assert!(long.len() as u64 > HEADER_PROBE_BYTES);
        archive
            .put_once("a", Bytes::from_static(b"x"), attrs(&[("note", &long)]))
            .await
            .unwrap();
        assert_eq!(
            archive.attributes("a").await.unwrap().unwrap()["note"],
            long
        );
        archive
            .put_once("empty", Bytes::new(), Attributes::new())
            .await
            .unwrap();
        let object = archive.get("empty").await.unwrap().unwrap();
        assert!(object.bytes.is_empty());
        assert_eq!(archive.attributes("missing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_and_foreign_objects_are_integrity_errors() {
        let archive = archive("archive-damage", None).await;
        archive
            .put_once("a", Bytes::from(vec![7u8; 5000]), Attributes::new())
            .await
            .unwrap();
        let full = archive.vault_key("a").unwrap();
        let stored = archive.vault().get_bytes(&full).await.unwrap();
        let header_end = ARCHIVE_OBJECT_MAGIC.len()
            + stored[ARCHIVE_OBJECT_MAGIC.len()..]
                .iter()
                .position(|&b| b == b'\n')
                .unwrap();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("inside the magic", stored[..5].to_vec()),
            ("inside the header", stored[..header_end - 20].to_vec()),
            ("inside the body", stored[..stored.len() - 3].to_vec()),
            ("foreign", b"{\"name\":\"x\"}\n".to_vec()),
        ] {
            archive
                .vault()
                .store()
                .put(&archive.vault().path(&full), bytes.into())
                .await
                .unwrap();
            let err = archive.get("a").await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Integrity, "{what}: {err:?}");
            assert!(err.to_string().contains(&full), "{what}: {err}");
            assert!(err.hint_text().is_some(), "{what}");
        }
    }

    /// Damage that leaves an object sound in itself: another WAL file's
    /// object copied over this key (`wal-fetch` would hand PostgreSQL the
    /// wrong segment), and a header attribute altered into another valid
    /// value (the planner times restores by them). Both are refused,
    /// naming the key, by `get` and by `attributes` (found by the damage
    /// campaign).
    #[tokio::test]
    async fn an_object_moved_to_another_key_or_with_altered_attributes_is_refused() {
        let archive = archive("archive-moved", None).await;
        let a = "wal/42/00000001/000000010000000000000003";
        let b = "wal/42/00000001/000000010000000000000004";
        for (key, byte) in [(a, 3u8), (b, 4u8)] {
            let attributes = attrs(&[("last_commit_time", "2026-11-22T00:15:00Z")]);
            archive
                .put_once(key, Bytes::from(vec![byte; 5000]), attributes)
                .await
                .unwrap();
        }
        let store = archive.vault().store().clone();
        let full = |key: &str| archive.vault_key(key).unwrap();
        let stored_a = archive.vault().get_bytes(&full(a)).await.unwrap();

        store
            .put(&archive.vault().path(&full(b)), stored_a.to_vec().into())
            .await
            .unwrap();
        for err in [
            archive.get(b).await.unwrap_err(),
            archive.attributes(b).await.unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
            assert!(err.to_string().contains(&full(b)), "{err}");
            assert!(
                err.to_string().contains("holds another archive object"),
                "{err}"
            );
        }

        let text = String::from_utf8_lossy(&stored_a).into_owned();
        let altered = text.replacen("00:15:00Z", "00:16:00Z", 1);
        assert_ne!(altered, text);
        let mut bytes = altered.into_bytes();
        // The body is not text: keep it byte for byte.
        let header_end = stored_a.iter().skip(12).position(|&c| c == b'\n').unwrap() + 13;
        bytes.truncate(header_end);
        bytes.extend_from_slice(&stored_a[header_end..]);
        store
            .put(&archive.vault().path(&full(a)), bytes.into())
            .await
            .unwrap();
        for err in [
            archive.get(a).await.unwrap_err(),
            archive.attributes(a).await.unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
            assert!(err.to_string().contains(&full(a)), "{err}");
            assert!(err.to_string().contains("checksum does not match"), "{err}");
        }
    }
}

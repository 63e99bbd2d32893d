//! Where things live in a vault, relative to its root.
//!
//! ```text
//! strata-vault.json                                  vault metadata (format, creation, key check)
//! manifests/<engine>/<instance>/<backup-id>.json     one per committed backup: the commit point
//! data/<engine>/<instance>/<backup-id>/<stream>.<segment>.zst
//!                                                    segment objects of a backup's streams
//!                                                    (both numbers zero-padded to five digits)
//! engines/<engine>/<instance>/<key>                  archive objects of the instance
//! deleted/<engine>/<instance>/<backup-id>.json       a soft-deleted backup (a tombstone)
//! immutability/probe-<unix seconds>[-multipart]      lock probes of an immutable vault
//! ```
//!
//! # Deleting a backup
//!
//! A deletion (retention, `strata delete`, `hdbbackint delete`) first
//! writes a tombstone under `deleted/`: `{"deleted_at": <RFC 3339 UTC>,
//! "reason": <text>, "manifest": <the manifest>, "purge_after": <RFC 3339
//! UTC>, "checksum": "blake3:<hex>"}` (see [`crate::checksum`]; manifests
//! and `strata-vault.json` end with one too). Then the manifest goes: the backup stops existing at once. Its
//! segments stay until `purge_after` (soft delete), then go, and the
//! tombstone last. The protocol, and how interrupted deletions and
//! undeletes are finished, is in [`deletion`](super::deletion); a backup
//! is never left half-visible, with a manifest but missing segments.
//!
//! Segment keys contain the backup id, which is unique per attempt, so no two
//! writers ever upload to the same key; only manifests are shared names, and
//! they are written create-only.
//!
//! # Archive objects
//!
//! `engines/<engine>/<instance>/` ([`engine_prefix`]) holds the objects of
//! the instance's [`ArchiveStore`](crate::plugin::ArchiveStore), kept by
//! [`VaultArchive`](super::archive::VaultArchive): one create-only object
//! per key, in the archive object format, with no manifest. `<key>` is the
//! relative key the engine plugin chose. Today two engines keep objects
//! there:
//!
//! ```text
//! engines/postgres/<instance>/wal/<system-id>/<TLI>/<file>
//!     every file PostgreSQL archives (`wal-push`): WAL segments, `.history`,
//!     `.partial` and `.backup` files; <system-id> in decimal, <TLI> the
//!     timeline as eight upper-case hex digits
//! engines/hana/<SID>/objects/<escaped name component>/.../<ebid>
//!     the name marker of each version of a Backint object: one key
//!     component per `/`-separated component of the HANA object name (the
//!     leading `/` gives a first component `_`), the version's backup id
//!     last; only the keys are read, never the bodies
//! ```
//!
//! The `stream` and `sqlserver` engines keep nothing there.
//!
//! # Escaping
//!
//! `<engine>` and `<instance>` are escaped with [`escape_component`]
//! ([`plugin::escape_key_component`](crate::plugin::escape_key_component)),
//! in `manifests/` and `data/` as under `engines/`: every byte outside
//! `[A-Za-z0-9.-]` becomes `_` followed by its two lower-case hex digits, and
//! an empty component or one starting with `.` gets a leading `_` (`db/two`
//! is `db_2ftwo`, `_` is `_5f`), so distinct names stay distinct. A component is at most 200 bytes
//! (`plugin::MAX_KEY_COMPONENT`) whatever the name: a longer one keeps its
//! first escaped bytes and ends in `_h` and 32 hex digits of the name's
//! BLAKE3 digest (`日本語…`, 360 bytes escaped, becomes `_e6_97_a5…_h` and
//! the digest), which escaping never
//! writes. Keys are never decoded into names; manifests keep the names. Plugins
//! escape free-form parts of archive keys the same way (the HANA name
//! components above); the PostgreSQL keys need none.

use object_store::path::Path;

use crate::catalog::manifest::BackupId;

/// The vault metadata object.
pub const VAULT_META: &str = "strata-vault.json";
/// Prefix of all manifests.
pub const MANIFESTS: &str = "manifests";
/// Prefix of all segment objects.
pub const DATA: &str = "data";
/// Prefix of archive objects, the objects engine plugins own.
pub const ENGINES: &str = "engines";

pub use crate::plugin::escape_key_component as escape_component;

/// Prefix of the tombstones of backups being deleted.
pub const DELETED: &str = "deleted";

/// The tombstone key of a backup being deleted.
pub fn tombstone_key(engine: &str, instance: &str, id: &BackupId) -> String {
    format!("{}{id}.json", tombstone_prefix(engine, instance))
}

/// The prefix of the tombstones of one engine instance.
pub fn tombstone_prefix(engine: &str, instance: &str) -> String {
    format!(
        "{DELETED}/{}/{}/",
        escape_component(engine),
        escape_component(instance)
    )
}

/// The `<engine>/<instance>/<backup-id>` of a manifest or tombstone key
/// under `top` ([`MANIFESTS`] or [`DELETED`]), as it appears in data keys.
pub fn backup_of_key(top: &str, key: &str) -> Option<String> {
    key.strip_prefix(top)?
        .strip_prefix('/')?
        .strip_suffix(".json")
        .map(str::to_owned)
}

/// Joins a root and relative components into an object path.
pub fn join(root: &Path, parts: &[&str]) -> Path {
    let mut path = root.clone();
    for part in parts {
        path = path.join(*part);
    }
    path
}

/// The manifest key of a backup, relative to the root.
pub fn manifest_key(engine: &str, instance: &str, id: &BackupId) -> String {
    manifest_key_of_components(
        &escape_component(engine),
        &escape_component(instance),
        id.as_str(),
    )
}

/// The manifest key from components as they already appear in keys
/// (escaped), such as those read back from a data key.
pub fn manifest_key_of_components(engine: &str, instance: &str, id: &str) -> String {
    format!("{MANIFESTS}/{engine}/{instance}/{id}.json")
}

/// The prefix under which the manifests of one engine instance live.
pub fn manifest_prefix(engine: &str, instance: &str) -> String {
    format!(
        "{MANIFESTS}/{}/{}",
        escape_component(engine),
        escape_component(instance)
    )
}

/// The key of segment `segment` of stream number `stream` of a backup.
pub fn segment_key(
    engine: &str,
    instance: &str,
    id: &BackupId,
    stream: usize,
    segment: usize,
) -> String {
    format!(
        "{DATA}/{}/{}/{}/{stream:05}.{segment:05}.zst",
        escape_component(engine),
        escape_component(instance),
        id
    )
}

/// The prefix of all segments of one backup.
pub fn backup_data_prefix(engine: &str, instance: &str, id: &BackupId) -> String {
    format!(
        "{DATA}/{}/{}/{}",
        escape_component(engine),
        escape_component(instance),
        id
    )
}

/// The prefix of objects an engine plugin owns for one instance.
pub fn engine_prefix(engine: &str, instance: &str) -> String {
    format!(
        "{ENGINES}/{}/{}",
        escape_component(engine),
        escape_component(instance)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_names_distinct_and_safe() {
        assert_eq!(escape_component("main"), "main");
        assert_eq!(escape_component("a/b"), "a_2fb");
        assert_eq!(escape_component("a_2fb"), "a_5f2fb");
        assert_eq!(escape_component(".."), "_..");
        assert_eq!(escape_component(""), "_");
        assert_eq!(
            escape_component("log backup \"0\""),
            "log_20backup_20_220_22"
        );
    }

    #[test]
    fn long_names_get_components_of_bounded_length_that_stay_distinct() {
        use crate::plugin::MAX_KEY_COMPONENT;
        // 66 letters are 198 bytes escaped: kept whole.
        let fits = "a".repeat(66) + &"/".repeat(44);
        assert_eq!(escape_component(&fits).len(), 66 + 3 * 44);
        assert!(!escape_component(&fits).contains("_h"));
        // 40 Japanese characters are 120 bytes, 360 once escaped.
        let japanese = "日本語のストリーム名".repeat(4);
        let key = escape_component(&japanese);
        assert!(key.len() <= MAX_KEY_COMPONENT, "{key}");
        assert!(key.starts_with("_e6_97_a5"), "{key}");
        let (prefix, digest) = key.rsplit_once("_h").unwrap();
        assert_eq!(digest.len(), 32);
        assert!(prefix.len() <= 150 && prefix.len() % 3 == 0, "{prefix}");
        assert_eq!(key, escape_component(&japanese), "deterministic");
        // Names that differ only past the kept prefix stay apart.
        let a = "x/".repeat(200) + "a";
        let b = "x/".repeat(200) + "b";
        assert_ne!(escape_component(&a), escape_component(&b));
        assert!(escape_component(&a).len() <= MAX_KEY_COMPONENT);
        // A name that escapes to what a shortened key looks like is escaped, not taken as one.
        let lookalike = format!("{prefix}_h{digest}");
        assert_ne!(escape_component(&lookalike), key);
        for len in 0..300 {
            assert!(escape_component(&"\u{1F600}".repeat(len)).len() <= MAX_KEY_COMPONENT);
        }
    }
}

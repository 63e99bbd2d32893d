//! How Backint objects map onto a Strata vault.
//!
//! Every version of a Backint object (one `#PIPE` of one backup call) is one
//! Strata backup: engine `hana`, instance = the SID, database = the tenant
//! (`SYSTEMDB` or the name after `DB_`), one stream. Its **EBID is the backup
//! id** ([`BackupId`]: time-sortable, unique, `[A-Za-z0-9._-]`, 29 characters),
//! and its manifest's `engine_meta.backint` ([`ObjectMeta`]) keeps the HANA
//! object name, HANA's backup id (`-s`), the level and the creation time.
//!
//! The SID and database come from the object **name**
//! (`/usr/sap/<SID>/SYS/global/hdb/backint/<DB_TENANT|SYSTEMDB>/...`), not
//! from `-u`, so a system copy (restore under another SID) finds the source's
//! objects. Names that do not have that shape fall back to `-u`.
//!
//! To find the versions of a name without reading every manifest, each
//! version also has a small **name marker**, an archive object of the SID
//! (a [`VaultArchive`] of engine `hana`, instance `<SID>`) under
//!
//! ```text
//! objects/<escaped name component>/.../<ebid>
//! ```
//!
//! (each component of the name escaped with [`layout::escape_component`]),
//! which in the vault is `engines/hana/<SID>/objects/...`, where markers
//! have always been. Only the markers' keys are ever read (a listing), never
//! their bodies, so markers written before the archive API (plain JSON
//! objects) keep counting. The marker is written before the manifest and a
//! version counts only when its manifest exists, so a marker left by a
//! failed upload is never listed or restored; the manifest stays the commit
//! point.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use strata_core::catalog::manifest::{BackupId, Manifest};
use strata_core::plugin::{ArchiveStore, Attributes};
use strata_core::vault::{Vault, VaultArchive, layout};
use strata_core::{Error, ErrorKind, Result};

pub use strata_hana::ENGINE;
pub use strata_hana::backint::{
    ObjectMeta, base_name, ebid_time, is_catalog_object, is_log_object, kind_of, marker_key,
    marker_prefix, name_location,
};

/// One stored version of a Backint object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its EBID (= the Strata backup id).
    pub ebid: String,
    /// The object name.
    pub name: String,
    /// The SID it is stored under.
    pub sid: String,
    /// When it was created.
    pub created: DateTime<Utc>,
}

/// Finds, records and deletes Backint object versions in a vault.
#[derive(Debug, Clone)]
pub struct VersionStore {
    vault: Vault,
    default_sid: String,
}

impl VersionStore {
    /// A store over `vault`; `default_sid` (from `-u`) is used for names that
    /// do not carry a SID in their path.
    pub fn new(vault: Vault, default_sid: impl Into<String>) -> Self {
        VersionStore {
            vault,
            default_sid: default_sid.into(),
        }
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The SID the versions of `name` are stored under.
    pub fn sid_of(&self, name: &str) -> String {
        name_location(name)
            .0
            .unwrap_or_else(|| self.default_sid.clone())
    }

    /// The archive objects of `sid`, where its name markers live.
    fn archive(&self, sid: &str) -> VaultArchive {
        VaultArchive::new(self.vault.clone(), ENGINE, sid)
    }

    /// Writes the name marker of a version about to be committed.
    pub async fn put_marker(&self, sid: &str, meta: &ObjectMeta, ebid: &str) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "name": meta.name, "ebid": ebid, "created": meta.created,
        }))?;
        self.archive(sid)
            .put_once(
                &marker_key(&meta.name, ebid),
                body.into(),
                Attributes::new(),
            )
            .await?;
        Ok(())
    }

    /// Removes a version's marker; a missing marker is fine.
    pub async fn delete_marker(&self, sid: &str, name: &str, ebid: &str) -> Result<()> {
        self.archive(sid).delete(&marker_key(name, ebid)).await
    }

    async fn manifest_exists(&self, sid: &str, ebid: &str) -> Result<bool> {
        let Ok(id) = ebid.parse::<BackupId>() else {
            return Ok(false);
        };
        self.vault
            .manifest_exists(ENGINE, sid, &id)
            .await
            .map_err(|e| e.context(format!("checking version {ebid}")))
    }

    /// Every committed version of `name`, newest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<Version>> {
        let sid = self.sid_of(name);
        let prefix = marker_prefix(name);
        let markers = self.archive(&sid).list(&prefix).await?;
        let mut ebids: Vec<String> = markers
            .iter()
            .filter_map(|m| m.key.strip_prefix(&prefix)?.strip_prefix('/'))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ebids.reverse();
        let checked: Vec<Option<Version>> = futures::stream::iter(ebids)
            .map(|ebid| {
                let sid = sid.clone();
                async move {
                    if !self.manifest_exists(&sid, &ebid).await? {
                        return Ok::<_, Error>(None);
                    }
                    let created = match ebid_time(&ebid) {
                        Some(t) => t,
                        None => self.manifest(&sid, &ebid).await?.started_at,
                    };
                    Ok(Some(Version {
                        ebid,
                        name: name.to_owned(),
                        sid,
                        created,
                    }))
                }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut versions: Vec<Version> = checked.into_iter().flatten().collect();
        versions.sort_by(|a, b| b.created.cmp(&a.created).then(b.ebid.cmp(&a.ebid)));
        if let Some(newest) = versions.first() {
            self.refuse_unmarked_newer(&sid, name, &newest.ebid).await?;
        }
        Ok(versions)
    }

    /// Fails when a committed version of `name` newer than `newest` (by
    /// EBID, which sorts by time) has lost its name marker: the markers
    /// alone would then make an older version the newest, and a `#NULL`
    /// restore would give HANA an older backup catalog without a word. A
    /// version's marker is written before its manifest, so only a marker
    /// removed behind Strata's back leaves this. Reads only the manifests
    /// newer than `newest` (usually none or a few).
    async fn refuse_unmarked_newer(&self, sid: &str, name: &str, newest: &str) -> Result<()> {
        let prefix = layout::manifest_prefix(ENGINE, sid);
        let newer: Vec<String> = self
            .vault
            .list_keys(&prefix)
            .await?
            .into_iter()
            .filter(|key| {
                key.rsplit('/')
                    .next()
                    .and_then(|file| file.strip_suffix(".json"))
                    .is_some_and(|ebid| ebid > newest)
            })
            .collect();
        for key in newer {
            let bytes = self.vault.get_bytes(&key).await?;
            let manifest = strata_core::vault::manifest_at(&bytes, &key)?;
            let marker_key = marker_key(name, manifest.id.as_str());
            // A version committed since the markers were listed has its
            // marker by now (it is written before the manifest).
            if ObjectMeta::of(&manifest).is_some_and(|meta| meta.name == name)
                && !self
                    .archive(sid)
                    .list(&marker_key)
                    .await?
                    .iter()
                    .any(|entry| entry.key == marker_key)
            {
                let marker = self.archive(sid).vault_key(&marker_key)?;
                return Err(Error::integrity(format!(
                    "version {} of Backint object {name} is committed (manifest {key}) but its name marker {marker} is gone: the newest version of {name} cannot be told",
                    manifest.id
                ))
                .hint("put back the marker (any content: only its key is read), or restore the version HANA asks for by its EBID"));
            }
        }
        Ok(())
    }

    /// The newest committed version of `name`.
    pub async fn newest(&self, name: &str) -> Result<Option<Version>> {
        Ok(self.versions(name).await?.into_iter().next())
    }

    async fn manifest(&self, sid: &str, ebid: &str) -> Result<Manifest> {
        let id: BackupId = ebid.parse()?;
        self.vault.read_manifest(ENGINE, sid, &id).await
    }

    /// The manifest of version `ebid`, which must belong to `name` when a
    /// name is given. `None` when there is no such committed version.
    pub async fn find(&self, ebid: &str, name: Option<&str>) -> Result<Option<Manifest>> {
        if ebid.parse::<BackupId>().is_err() {
            return Ok(None);
        }
        let mut sids = Vec::new();
        if let Some(name) = name {
            sids.push(self.sid_of(name));
        }
        if !sids.contains(&self.default_sid) {
            sids.push(self.default_sid.clone());
        }
        let matches = |m: &Manifest| {
            let meta = ObjectMeta::of(m);
            meta.is_some_and(|meta| name.is_none_or(|n| n == meta.name))
        };
        for sid in &sids {
            match self.manifest(sid, ebid).await {
                Ok(m) => return Ok(Some(m).filter(matches)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Stored under another SID (a system copy without a path-shaped name).
        let suffix = format!("/{ebid}.json");
        let engine_prefix = format!("{}/{}", layout::MANIFESTS, layout::escape_component(ENGINE));
        let keys = self.vault.list_keys(&engine_prefix).await?;
        if let Some(key) = keys.iter().find(|k| k.ends_with(&suffix)) {
            let bytes = self.vault.get_bytes(key).await?;
            let m = strata_core::vault::manifest_at(&bytes, key)?;
            return Ok(Some(m).filter(matches));
        }
        Ok(None)
    }

    /// Every committed Backint version stored under `sid`, newest first.
    pub async fn all(&self, sid: &str) -> Result<Vec<Version>> {
        let manifests = self
            .vault
            .read_manifests(&layout::manifest_prefix(ENGINE, sid))
            .await?;
        let mut versions: Vec<Version> = manifests
            .iter()
            .filter_map(|m| {
                let meta = ObjectMeta::of(m)?;
                Some(Version {
                    ebid: m.id.to_string(),
                    name: meta.name,
                    sid: sid.to_owned(),
                    created: meta.created,
                })
            })
            .collect();
        versions.sort_by(|a, b| b.created.cmp(&a.created).then(b.ebid.cmp(&a.ebid)));
        Ok(versions)
    }

    /// Deletes a committed version: its manifest first (it stops existing
    /// at once), then its data, then its marker.
    pub async fn delete(&self, manifest: &Manifest) -> Result<()> {
        if let strata_core::vault::Deletion::Locked { until } = self
            .vault
            .delete_backup(
                manifest,
                "SAP HANA asked to delete it (hdbbackint -f delete)",
            )
            .await?
        {
            return Err(strata_core::Error::conflict(format!(
                "backup {} is locked by the vault's immutability{}",
                manifest.id,
                until.map(|t| format!(" until {}", t.to_rfc3339())).unwrap_or_default()
            ))
            .hint("an immutable vault deletes nothing before its lock ends; HANA can delete it after that"));
        }
        if let Some(meta) = ObjectMeta::of(manifest) {
            self.delete_marker(&manifest.instance, &meta.name, manifest.id.as_str())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::catalog::manifest::BackupKind;

    #[tokio::test]
    async fn marker_keys_keep_names_apart_where_markers_always_were() {
        let a = marker_key("/a/log_backup_0_0_0_0", "E");
        let b = marker_key("/a/log_backup_0_0_0_01", "E");
        assert_ne!(a, b);
        let store = VersionStore::new(vault("versions-keys").await, "HDB");
        assert_eq!(
            store.archive("HDB").vault_key(&a).unwrap(),
            "engines/hana/HDB/objects/_/a/log_5fbackup_5f0_5f0_5f0_5f0/E"
        );
        assert_ne!(marker_key("/a b", "E"), marker_key("/a_20b", "E"));
    }

    #[tokio::test]
    async fn names_of_any_length_get_keys_a_local_vault_can_hold() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::init(
            &strata_core::vault::VaultConfig::from_url(format!("file://{}", dir.path().display())),
            None,
        )
        .await
        .unwrap();
        let store = VersionStore::new(vault, "HDB");
        let base = "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/";
        let names = [
            // One component of 211 bytes (a pipe name HANA may send).
            format!("{base}{}", "COMPLETE_DATA_BACKUP_".repeat(10) + "x"),
            // One of 100 Japanese characters: 900 bytes escaped.
            format!("{base}{}", "データ".repeat(33) + "x"),
            // Many components: over 4,096 bytes in all.
            format!("{base}{}", vec!["d".repeat(150); 30].join("/")),
        ];
        for name in &names {
            let ebid = commit_version(&store, "HDB", name, b"bytes").await;
            let versions = store.versions(name).await.unwrap();
            assert_eq!(versions.len(), 1, "{name}");
            assert_eq!(&versions[0].name, name);
            assert_eq!(versions[0].ebid, ebid);
        }
        // Names that differ only at their end stay apart.
        let other = names[0].replace("x", "y");
        assert!(store.versions(&other).await.unwrap().is_empty());
        let longer = format!("{}e", names[2]);
        assert!(store.versions(&longer).await.unwrap().is_empty());
        assert_ne!(marker_prefix(&names[2]), marker_prefix(&longer));
    }

    async fn vault(name: &str) -> Vault {
        Vault::init(
            &strata_core::vault::VaultConfig::from_url(format!("memory://{name}")),
            None,
        )
        .await
        .unwrap()
    }

    async fn commit_version(store: &VersionStore, sid: &str, name: &str, body: &[u8]) -> String {
        use strata_core::vault::writer::{BackupOutcome, BackupTarget, BackupWriter, WriterConfig};
        let writer = BackupWriter::start(
            store.vault(),
            BackupTarget {
                engine: ENGINE.into(),
                instance: sid.into(),
                database: None,
                kind: BackupKind::Log,
            },
            WriterConfig::default(),
        )
        .unwrap();
        let ebid = writer.id().to_string();
        writer.write_stream("object", body, None).await.unwrap();
        let meta = ObjectMeta {
            name: name.into(),
            source: "PIPE".into(),
            hana_backup_id: None,
            level: None,
            object: "log".into(),
            user: None,
            count: None,
            api: None,
            created: writer.started_at(),
        };
        store.put_marker(sid, &meta, &ebid).await.unwrap();
        writer
            .commit(BackupOutcome {
                engine_meta: meta.to_engine_meta(),
                ..Default::default()
            })
            .await
            .unwrap();
        ebid
    }

    #[tokio::test]
    async fn a_marker_without_a_manifest_is_never_a_version() {
        let store = VersionStore::new(vault("versions-partial").await, "HDB");
        let name = "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/log_backup_0_0_0_0";
        let committed = commit_version(&store, "HDB", name, b"catalog").await;
        // A writer that died after its marker: no manifest.
        let orphan = BackupId::generate(Utc::now() + chrono::Duration::seconds(5));
        let meta = ObjectMeta {
            name: name.into(),
            source: "PIPE".into(),
            hana_backup_id: None,
            level: None,
            object: "catalog".into(),
            user: None,
            count: None,
            api: None,
            created: Utc::now(),
        };
        store
            .put_marker("HDB", &meta, orphan.as_str())
            .await
            .unwrap();
        let versions = store.versions(name).await.unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].ebid, committed);
        assert_eq!(store.newest(name).await.unwrap().unwrap().ebid, committed);
        assert!(
            store
                .find(orphan.as_str(), Some(name))
                .await
                .unwrap()
                .is_none()
        );
    }

    /// A committed version whose marker is gone would let an older one
    /// pass for the newest: a `#NULL` restore of the backup catalog gave
    /// HANA an older catalog without a word (found by the damage campaign).
    /// Asking for the newest version now fails naming the marker; the
    /// version is still found by its EBID.
    #[tokio::test]
    async fn the_newest_version_is_not_told_while_a_newer_one_lost_its_marker() {
        let store = VersionStore::new(vault("versions-lost-marker").await, "HDB");
        let name = "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/log_backup_0_0_0_0";
        let older = commit_version(&store, "HDB", name, b"catalog 1").await;
        let newer = commit_version(&store, "HDB", name, b"catalog 2").await;
        assert_eq!(store.newest(name).await.unwrap().unwrap().ebid, newer);
        store.delete_marker("HDB", name, &newer).await.unwrap();
        let err = store.newest(name).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        let marker = format!("engines/hana/HDB/{}", marker_key(name, &newer));
        assert!(err.to_string().contains(&marker), "{err}");
        assert!(store.find(&newer, Some(name)).await.unwrap().is_some());
        assert!(store.find(&older, Some(name)).await.unwrap().is_some());
        // Another name's versions are not affected.
        let other = "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/log_backup_1_0_0_10";
        let log = commit_version(&store, "HDB", other, b"log").await;
        assert_eq!(store.newest(other).await.unwrap().unwrap().ebid, log);
    }

    #[tokio::test]
    async fn markers_written_before_the_archive_api_still_count() {
        let store = VersionStore::new(vault("versions-old-markers").await, "HDB");
        let name = "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/log_backup_1_0_0_10";
        let ebid = commit_version(&store, "HDB", name, b"log").await;
        // Replace the marker by one as earlier builds wrote it: plain JSON
        // at the same vault key.
        store.delete_marker("HDB", name, &ebid).await.unwrap();
        assert!(store.versions(name).await.unwrap().is_empty());
        let old_key = format!(
            "engines/hana/HDB/objects/_/usr/sap/HDB/SYS/global/hdb/backint/DB_5fHDB/log_5fbackup_5f1_5f0_5f0_5f10/{ebid}"
        );
        store
            .vault()
            .put_create(
                &old_key,
                serde_json::to_vec(&serde_json::json!({"name": name, "ebid": ebid})).unwrap(),
            )
            .await
            .unwrap();
        let versions = store.versions(name).await.unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].ebid, ebid);
        // Deleting the version removes the old marker too.
        let manifest = store.find(&ebid, Some(name)).await.unwrap().unwrap();
        store.delete(&manifest).await.unwrap();
        assert!(
            store
                .vault()
                .list_keys("engines/hana/HDB")
                .await
                .unwrap()
                .is_empty(),
            "nothing left"
        );
    }

    #[tokio::test]
    async fn versions_are_found_by_ebid_across_sids_and_checked_against_the_name() {
        let store = VersionStore::new(vault("versions-sids").await, "HDB");
        let source = "/usr/sap/QAS/SYS/global/hdb/backint/DB_SRC/log_backup_1_0_0_10";
        let ebid = commit_version(&store, "QAS", source, b"log").await;
        // By name: the SID comes from the path, not from -u.
        let found = store.find(&ebid, Some(source)).await.unwrap().unwrap();
        assert_eq!(found.instance, "QAS");
        // Without a name (Backint 1.00 inquire), under another -u.
        assert!(store.find(&ebid, None).await.unwrap().is_some());
        // The right EBID under the wrong name is not that object.
        assert!(
            store
                .find(&ebid, Some("/elsewhere/log_backup_1_0_0_10"))
                .await
                .unwrap()
                .is_none()
        );
        // Something that is not an EBID at all.
        assert!(store.find("../../etc", None).await.unwrap().is_none());
        assert_eq!(store.all("QAS").await.unwrap().len(), 1);
        store.delete(&found).await.unwrap();
        assert!(store.versions(source).await.unwrap().is_empty());
        assert!(store.find(&ebid, None).await.unwrap().is_none());
    }
}

//! Finding and deleting the data of backups that were never committed.
//!
//! A backup's segments are written before its manifest, and the manifest is
//! the commit point. A backup that fails cleans up after itself, but one
//! whose process is killed (a reboot, `kill -9`, an out-of-memory kill)
//! leaves segments that no manifest names: invisible to listing and restore,
//! yet stored and paid for. [`find_orphans`] lists them; [`delete_orphan`]
//! removes one.
//!
//! A killed process also leaves the upload it was in the middle of. In a
//! local vault that is a staging file (`<object>#<digits>`) that no listing
//! shows; on S3 an incomplete multipart upload, which no object listing
//! shows either but S3 keeps and bills until it is aborted.
//! [`find_unfinished_uploads`] finds both and [`delete_unfinished_upload`]
//! removes one. Azure drops uncommitted blocks after a week by itself; GCS
//! buckets need a lifecycle rule that aborts incomplete multipart uploads.
//!
//! A backup killed after its data was written can also leave an engine
//! object named after it: a Backint version's name marker
//! (`engines/hana/<SID>/objects/.../<id>`) is written just before the
//! manifest. [`find_orphans`] counts such objects with the orphan's data,
//! and [`delete_orphan`] deletes them with it.
//!
//! Safety rules, since a mistake here would delete a backup:
//! * Only `data/<engine>/<instance>/<id>/` prefixes are considered, and
//!   under `engines/<engine>/<instance>/` only the objects whose name is
//!   such an orphan's `<id>`; WAL and every other engine object never are.
//! * A prefix is an orphan only when no object exists at its manifest key
//!   (even a manifest that cannot be parsed protects its data), and no
//!   tombstone names it: a soft-deleted backup's data is purged by
//!   [`Vault::purge_deleted`] after its period, never here.
//! * On an immutable vault, objects still locked are left for a later run.
//! * Its newest object must be older than the grace period, so that a
//!   backup still running (whose manifest does not exist yet) is left alone.
//! * The manifest key is checked again just before deleting.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::{Deletion, Vault, layout};
use crate::error::{Error, IoResultExt, Result};

/// The data of one backup that has no manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanData {
    /// The key prefix holding its segments (`data/<engine>/<instance>/<id>`).
    pub prefix: String,
    /// The engine, as it appears in keys.
    pub engine: String,
    /// The instance, as it appears in keys (escaped).
    pub instance: String,
    /// The backup id.
    pub id: String,
    /// The number of objects (segments and engine objects).
    pub objects: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// When the newest of them was written.
    pub newest: DateTime<Utc>,
    /// Engine objects named after the backup (keys from the vault root),
    /// such as the name marker of a Backint version whose manifest never
    /// came: they go with its data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub engine_objects: Vec<String>,
    /// On an immutable S3 vault: its manifest has versions but no current
    /// object, i.e. a plain delete through the S3 API hid a committed
    /// backup behind a delete marker. Never deleted; the marker's removal
    /// brings the backup back.
    pub manifest_hidden: bool,
}

impl OrphanData {
    /// The manifest key that would commit this backup.
    pub fn manifest_key(&self) -> String {
        layout::manifest_key_of_components(&self.engine, &self.instance, &self.id)
    }
}

/// The moment `grace` ago: what was last written before it is left over.
fn cutoff(grace: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX)
}

/// The uncommitted backup data in `vault` whose newest object is older than
/// `grace`, oldest first.
pub async fn find_orphans(vault: &Vault, grace: Duration) -> Result<Vec<OrphanData>> {
    let mut committed: HashSet<String> = vault
        .list_keys(layout::MANIFESTS)
        .await?
        .into_iter()
        .filter_map(|key| layout::backup_of_key(layout::MANIFESTS, &key))
        .collect();
    committed.extend(vault.tombstoned_prefixes().await?);
    let objects: Vec<object_store::ObjectMeta> = vault
        .store()
        .list(Some(&vault.path(layout::DATA)))
        .try_collect()
        .await
        .map_err(|e| {
            Error::from(e).context(format!("listing {} in {}", layout::DATA, vault.url()))
        })?;
    let mut found: BTreeMap<String, OrphanData> = BTreeMap::new();
    for meta in objects {
        let key = vault.relative_key(&meta.location);
        let parts: Vec<&str> = key.split('/').collect();
        // data/<engine>/<instance>/<id>/<segment>
        let [data, engine, instance, id, _segment] = parts.as_slice() else {
            continue;
        };
        if *data != layout::DATA || committed.contains(&format!("{engine}/{instance}/{id}")) {
            continue;
        }
        let prefix = format!("{data}/{engine}/{instance}/{id}");
        let entry = found.entry(prefix.clone()).or_insert_with(|| OrphanData {
            prefix,
            engine: (*engine).to_owned(),
            instance: (*instance).to_owned(),
            id: (*id).to_owned(),
            objects: 0,
            bytes: 0,
            newest: meta.last_modified,
            engine_objects: Vec::new(),
            manifest_hidden: false,
        });
        entry.objects += 1;
        entry.bytes += meta.size;
        entry.newest = entry.newest.max(meta.last_modified);
    }
    let cutoff = cutoff(grace);
    let mut orphans: Vec<OrphanData> = found.into_values().filter(|o| o.newest < cutoff).collect();
    add_engine_objects(vault, &mut orphans).await?;
    orphans.sort_by_key(|o| o.newest);
    if let (Some(_), Some(s3)) = (vault.immutability(), vault.s3_access()) {
        for orphan in &mut orphans {
            orphan.manifest_hidden = s3.has_versions(&vault.path(&orphan.manifest_key())).await?;
        }
    }
    Ok(orphans)
}

/// Adds to each orphan the engine objects named after it: the objects
/// under `engines/<engine>/<instance>/` whose last key component is its
/// backup id. Each instance with orphans is listed once.
async fn add_engine_objects(vault: &Vault, orphans: &mut [OrphanData]) -> Result<()> {
    let instances: std::collections::BTreeSet<(String, String)> = orphans
        .iter()
        .map(|o| (o.engine.clone(), o.instance.clone()))
        .collect();
    for (engine, instance) in instances {
        let prefix = format!("{}/{engine}/{instance}", layout::ENGINES);
        let objects: Vec<object_store::ObjectMeta> = vault
            .store()
            .list(Some(&vault.path(&prefix)))
            .try_collect()
            .await
            .map_err(|e| Error::from(e).context(format!("listing {prefix} in {}", vault.url())))?;
        for meta in objects {
            let key = vault.relative_key(&meta.location);
            let Some(name) = key.rsplit('/').next() else {
                continue;
            };
            if let Some(orphan) = orphans
                .iter_mut()
                .find(|o| o.engine == engine && o.instance == instance && o.id == name)
            {
                orphan.objects += 1;
                orphan.bytes += meta.size;
                orphan.engine_objects.push(key);
            }
        }
    }
    Ok(())
}

/// Deletes the objects of `orphan`, unless its manifest has appeared since
/// it was found (then nothing is deleted and an error says so). On an
/// immutable vault the objects still locked stay: the answer is
/// [`Deletion::Locked`] with the latest lock end.
pub async fn delete_orphan(vault: &Vault, orphan: &OrphanData) -> Result<Deletion> {
    let manifest = orphan.manifest_key();
    if orphan.manifest_hidden {
        return Err(hidden_backup(orphan));
    }
    match vault.store().head(&vault.path(&manifest)).await {
        Ok(_) => {
            return Err(Error::conflict(format!(
                "backup {} was committed since it was found: {manifest} exists",
                orphan.id
            ))
            .hint("nothing of it was deleted"));
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(Error::from(e).context(format!("checking {manifest}"))),
    }
    let mut outcome = Deletion::Deleted;
    let mut keys = vault.list_keys(&orphan.prefix).await?;
    keys.extend(orphan.engine_objects.iter().cloned());
    for key in keys {
        if let Deletion::Locked { until } = vault.delete_object(&key).await? {
            let latest = match outcome {
                Deletion::Locked { until: earlier } => earlier.max(until),
                Deletion::Deleted => until,
            };
            outcome = Deletion::Locked { until: latest };
        }
    }
    Ok(outcome)
}

/// The error for a committed backup hidden by a delete marker.
pub fn hidden_backup(orphan: &OrphanData) -> Error {
    Error::conflict(format!(
        "backup {} is not an orphan: its manifest {} was deleted through the S3 API and is hidden by a delete marker",
        orphan.id,
        orphan.manifest_key()
    ))
    .hint(format!(
        "bring it back: `aws s3api list-object-versions --bucket <bucket> --prefix <vault prefix>/{}`, then `aws s3api delete-object --bucket <bucket> --key <key> --version-id <the delete marker's id>`",
        orphan.manifest_key()
    ))
}

/// A staging file left in a local vault by an upload that never completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnfinishedUpload {
    /// Its path, relative to the vault directory (on S3 the key the upload
    /// was for, relative to the vault's root).
    pub path: String,
    /// The bytes it holds (0 on S3, which does not say without listing
    /// every part).
    pub bytes: u64,
    /// When it was last written (on S3, when the upload began).
    pub modified: DateTime<Utc>,
    /// The S3 multipart upload's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// The uploads left unfinished longer than `grace` ago, oldest first: in a
/// local `vault` the staging files (a running upload writes its staging
/// file at every part, so the grace keeps it safe); on S3 the multipart
/// uploads begun under the vault's root and never completed or aborted
/// (S3 keeps them, and bills their parts, until they are aborted; no
/// object listing shows them; a segment's upload takes minutes, so the
/// grace keeps a running one safe). Other stores have none to list.
pub async fn find_unfinished_uploads(
    vault: &Vault,
    grace: Duration,
) -> Result<Vec<UnfinishedUpload>> {
    let cutoff = cutoff(grace);
    if let Some(s3) = vault.s3_access() {
        let root = vault.path("");
        let prefix = if root.as_ref().is_empty() {
            String::new()
        } else {
            format!("{root}/")
        };
        let mut found = Vec::new();
        for (key, upload_id, initiated) in s3.multipart_uploads(&prefix).await? {
            // Last written: its newest part, or when it began (a store may
            // report the beginning wrongly; the parts' times are the ones
            // a running upload keeps moving).
            let modified = s3
                .last_part_written(&key, &upload_id)
                .await?
                .map_or(initiated, |part| part.max(initiated));
            if modified < cutoff {
                found.push(UnfinishedUpload {
                    path: key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
                    bytes: 0,
                    modified,
                    upload_id: Some(upload_id),
                });
            }
        }
        found.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.path.cmp(&b.path))
        });
        return Ok(found);
    }
    let Some(root) = vault.local_dir() else {
        return Ok(Vec::new());
    };
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).doing_at("cannot list", &dir)?;
            for entry in entries {
                let entry = entry.doing_at("cannot list", &dir)?;
                let Ok(meta) = entry.metadata() else {
                    // Gone since it was listed: an upload that just finished.
                    continue;
                };
                if meta.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let name = entry.file_name();
                if !meta.is_file() || !super::local::is_staging_name(&name.to_string_lossy()) {
                    continue;
                }
                let modified = meta.modified().map(DateTime::<Utc>::from).unwrap_or(cutoff);
                if modified < cutoff {
                    found.push(UnfinishedUpload {
                        path: relative(&root, &entry.path()),
                        bytes: meta.len(),
                        modified,
                        upload_id: None,
                    });
                }
            }
        }
        found.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.path.cmp(&b.path))
        });
        Ok(found)
    })
    .await
    .map_err(|e| Error::from(e).with_message("listing unfinished uploads"))?
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Deletes the staging file of `upload`, unless it has been written since it
/// was found (then an upload is running after all, and it stays). A backup
/// directory left empty goes too, as it would after deleting objects.
pub async fn delete_unfinished_upload(vault: &Vault, upload: &UnfinishedUpload) -> Result<()> {
    if let (Some(s3), Some(upload_id)) = (vault.s3_access(), &upload.upload_id) {
        // Parts of an abandoned upload are no object yet: nothing a lock or
        // a manifest protects.
        return s3
            .abort_upload(vault.path(&upload.path).as_ref(), upload_id)
            .await;
    }
    let Some(root) = vault.local_dir() else {
        return Ok(());
    };
    let name = upload.path.clone();
    let upload = upload.clone();
    tokio::task::spawn_blocking(move || {
        let path: PathBuf = root.join(&upload.path);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io_doing_at("cannot read", &path, e)),
        };
        if meta.modified().map(DateTime::<Utc>::from).ok() != Some(upload.modified) {
            return Err(Error::conflict(format!(
                "{} was written since it was found: an upload is still running",
                upload.path
            ))
            .hint("nothing of it was deleted"));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_doing_at("cannot delete", &path, e)),
        }
        // Only a backup's own directories are removed: each belongs to one
        // backup, and its process is gone. WAL directories stay, since a
        // push may be about to write into one.
        let data = root.join(layout::DATA);
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != data && d.starts_with(&data)) {
            // Fails, and stops the walk, at the first directory not empty.
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::from(e).with_message(format!("deleting {name}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::manifest::BackupKind;
    use crate::vault::VaultConfig;
    use crate::vault::writer::{BackupOutcome, BackupTarget, BackupWriter, WriterConfig};

    fn target(instance: &str) -> BackupTarget {
        BackupTarget {
            engine: "stream".into(),
            instance: instance.into(),
            database: None,
            kind: BackupKind::Full,
        }
    }

    /// A committed backup, a committed backup whose manifest is garbage, and
    /// an abandoned one (its process "killed" before the commit): only the
    /// abandoned one is an orphan, and only once it is older than the grace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_uncommitted_data_past_the_grace_is_an_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/vault", dir.path().display());
        let vault = Vault::init(&VaultConfig::from_url(url), None)
            .await
            .unwrap();
        let config = WriterConfig::default();

        let kept = BackupWriter::start(&vault, target("db/one"), config.clone()).unwrap();
        kept.write_stream("s", &b"committed"[..], None)
            .await
            .unwrap();
        let kept = kept.commit(BackupOutcome::default()).await.unwrap();

        let damaged = BackupWriter::start(&vault, target("db/one"), config.clone()).unwrap();
        damaged
            .write_stream("s", &b"manifest garbled"[..], None)
            .await
            .unwrap();
        let damaged = damaged.commit(BackupOutcome::default()).await.unwrap();
        let damaged_key = layout::manifest_key("stream", "db/one", &damaged.id);
        vault
            .store()
            .put(&vault.path(&damaged_key), b"{ not json".to_vec().into())
            .await
            .unwrap();

        let abandoned = BackupWriter::start(&vault, target("db/two"), config.clone()).unwrap();
        abandoned
            .write_stream("s", &b"never committed"[..], None)
            .await
            .unwrap();
        let abandoned_id = abandoned.id().clone();
        // A killed process runs no cleanup.
        std::mem::forget(abandoned);

        assert!(
            find_orphans(&vault, Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty(),
            "data younger than the grace may belong to a running backup"
        );
        let orphans = find_orphans(&vault, Duration::ZERO).await.unwrap();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(orphans[0].id, abandoned_id.as_str());
        assert_eq!(orphans[0].instance, layout::escape_component("db/two"));
        assert_eq!(orphans[0].objects, 1);

        delete_orphan(&vault, &orphans[0]).await.unwrap();
        assert!(
            find_orphans(&vault, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            vault
                .list_keys(&orphans[0].prefix)
                .await
                .unwrap()
                .is_empty()
        );
        // The committed backups are whole.
        for manifest in [&kept, &damaged] {
            let prefix = layout::backup_data_prefix("stream", "db/one", &manifest.id);
            assert_eq!(vault.list_keys(&prefix).await.unwrap().len(), 1);
        }
    }

    /// A killed backup's segment upload and a killed WAL push's single put
    /// leave staging files no listing shows: they are found once older than
    /// the grace, kept while written to, and deleted with the backup's
    /// emptied directory; the committed backup stays whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staging_files_of_killed_uploads_are_found_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vault");
        let vault = Vault::init(
            &VaultConfig::from_url(format!("file://{}", root.display())),
            None,
        )
        .await
        .unwrap();
        let kept = BackupWriter::start(&vault, target("db"), WriterConfig::default()).unwrap();
        kept.write_stream("s", &b"committed"[..], None)
            .await
            .unwrap();
        let kept = kept.commit(BackupOutcome::default()).await.unwrap();

        let dead = "data/stream/db/20260101T000000.000Z-dead";
        let mut upload = vault
            .store()
            .put_multipart(&vault.path(&format!("{dead}/00000.00000.zst")))
            .await
            .unwrap();
        upload.put_part(vec![7u8; 1000].into()).await.unwrap();
        // A killed process aborts nothing.
        std::mem::forget(upload);
        let wal_dir = root.join("engines/postgres/db/wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(wal_dir.join("000000010000000000000003#17"), [1u8; 10]).unwrap();

        assert!(
            find_unfinished_uploads(&vault, Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty(),
            "an upload written within the grace may still be running"
        );
        let found = find_unfinished_uploads(&vault, Duration::ZERO)
            .await
            .unwrap();
        let mut seen: Vec<(String, u64)> = found
            .iter()
            .map(|u| (u.path.rsplit_once('#').unwrap().0.to_owned(), u.bytes))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (format!("{dead}/00000.00000.zst"), 1000),
                (
                    "engines/postgres/db/wal/000000010000000000000003".into(),
                    10
                ),
            ]
        );

        // Written to since it was found: an upload is running after all.
        let wal = found
            .iter()
            .find(|u| u.path.starts_with("engines"))
            .unwrap();
        std::fs::write(root.join(&wal.path), [2u8; 20]).unwrap();
        // Later than found, whatever the file system's time resolution.
        std::fs::File::options()
            .write(true)
            .open(root.join(&wal.path))
            .unwrap()
            .set_modified(std::time::SystemTime::from(wal.modified) + Duration::from_secs(1))
            .unwrap();
        let err = delete_unfinished_upload(&vault, wal).await.unwrap_err();
        assert!(
            err.to_string().contains("an upload is still running"),
            "{err}"
        );
        assert!(root.join(&wal.path).exists());

        for upload in find_unfinished_uploads(&vault, Duration::ZERO)
            .await
            .unwrap()
        {
            delete_unfinished_upload(&vault, &upload).await.unwrap();
        }
        assert!(
            find_unfinished_uploads(&vault, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !root.join(dead).exists(),
            "the dead backup's directory is gone"
        );
        assert!(wal_dir.is_dir(), "WAL directories stay");
        let prefix = layout::backup_data_prefix("stream", "db", &kept.id);
        assert_eq!(vault.list_keys(&prefix).await.unwrap().len(), 1);

        let memory = Vault::init(&VaultConfig::from_url("memory://gc-staging"), None)
            .await
            .unwrap();
        assert!(
            find_unfinished_uploads(&memory, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// A Backint backup killed after its version's name marker (an engine
    /// object named after the backup id) and before its manifest: gc finds
    /// the marker with the orphan's segments and deletes it with them;
    /// the marker of a committed version and engine objects of other names
    /// stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_object_named_after_an_orphan_goes_with_it() {
        let vault = Vault::init(&VaultConfig::from_url("memory://gc-markers"), None)
            .await
            .unwrap();
        let hana = || BackupTarget {
            engine: "hana".into(),
            instance: "HDB".into(),
            database: Some("HDB".into()),
            kind: BackupKind::Full,
        };
        let marker = |id: &str| format!("engines/hana/HDB/objects/_/x/COMPLETE_5fDATA/{id}");
        let put = |key: String| {
            let vault = vault.clone();
            async move {
                vault
                    .store()
                    .put(&vault.path(&key), b"{}".to_vec().into())
                    .await
                    .unwrap();
            }
        };
        let kept = BackupWriter::start(&vault, hana(), WriterConfig::default()).unwrap();
        kept.write_stream("s", &b"committed"[..], None)
            .await
            .unwrap();
        put(marker(kept.id().as_str())).await;
        let kept = kept.commit(BackupOutcome::default()).await.unwrap();
        let killed = BackupWriter::start(&vault, hana(), WriterConfig::default()).unwrap();
        killed
            .write_stream("s", &b"never committed"[..], None)
            .await
            .unwrap();
        let killed_marker = marker(killed.id().as_str());
        put(killed_marker.clone()).await;
        // Killed before its manifest: no cleanup runs.
        std::mem::forget(killed);
        let other = "engines/hana/HDB/objects/_/x/COMPLETE_5fDATA/not-a-backup".to_owned();
        put(other.clone()).await;

        let orphans = find_orphans(&vault, Duration::ZERO).await.unwrap();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(
            orphans[0].engine_objects,
            std::slice::from_ref(&killed_marker)
        );
        assert_eq!(orphans[0].objects, 2, "its segment and its marker");
        delete_orphan(&vault, &orphans[0]).await.unwrap();
        let left = vault.list_keys("engines/hana/HDB").await.unwrap();
        assert!(!left.contains(&killed_marker), "{left:?}");
        assert!(left.contains(&marker(kept.id.as_str())), "{left:?}");
        assert!(left.contains(&other), "{left:?}");
        assert!(
            find_orphans(&vault, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orphan_committed_meanwhile_is_not_deleted() {
        let vault = Vault::init(&VaultConfig::from_url("memory://gc-race"), None)
            .await
            .unwrap();
        let writer = BackupWriter::start(&vault, target("db"), WriterConfig::default()).unwrap();
        writer.write_stream("s", &b"late"[..], None).await.unwrap();
        let orphans = find_orphans(&vault, Duration::ZERO).await.unwrap();
        assert_eq!(orphans.len(), 1);
        writer.commit(BackupOutcome::default()).await.unwrap();
        let err = delete_orphan(&vault, &orphans[0]).await.unwrap_err();
        assert!(err.to_string().contains("was committed since"), "{err}");
        assert_eq!(vault.list_keys(&orphans[0].prefix).await.unwrap().len(), 1);
    }
}

//! Deleting backups: soft delete, purge and undelete.
//!
//! A deletion (retention, `strata delete`, `hdbbackint delete`) never
//! removes a backup's data at once. It writes a tombstone under `deleted/`
//! ([`layout::tombstone_key`]) holding the manifest, the time, the reason
//! and the purge date, then deletes the manifest: from then on the backup is
//! not listed, planned or restored, but its segments stay. For
//! [`VaultMeta::soft_delete_days`](super::VaultMeta::soft_delete_days)
//! (14 by default, as Azure Backup's soft delete) `strata undelete`
//! brings it back by writing the manifest again. After that,
//! [`Vault::purge_deleted`] (run by `vault gc`, by every retention pass and
//! by the service) deletes the segments and then the tombstone.
//!
//! Every step is safe to interrupt:
//! * a tombstone whose manifest still exists is an interrupted deletion:
//!   the next purge deletes the manifest;
//! * unless the manifest was written *after* the tombstone (the store's
//!   own times): that is an undelete, interrupted before it removed the
//!   tombstone, and the tombstone is dropped;
//! * segments without a manifest but with a tombstone are never orphans
//!   to `vault gc`.
//!
//! On an immutable vault nothing is deleted before the store's lock ends
//! ([`immutability`]); the purge date is then at least
//! the tombstone's own lock end, so that the tombstone can go with the data.

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::immutability::{self, Deletion};
use super::{Vault, layout};
use crate::catalog::manifest::{BackupId, Manifest};
use crate::error::{Error, ErrorKind, Result};

/// What a tombstone holds: a soft-deleted backup (see the [module
/// docs](self)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tombstone {
    /// When the deletion started (UTC).
    pub deleted_at: DateTime<Utc>,
    /// Why the backup is deleted.
    pub reason: String,
    /// The backup's manifest.
    pub manifest: Manifest,
    /// When its data may be purged (UTC). Tombstones written before soft
    /// delete have none: they are purged at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<DateTime<Utc>>,
}

impl Tombstone {
    /// When the backup's data may be purged.
    pub fn purge_after(&self) -> DateTime<Utc> {
        self.purge_after.unwrap_or(self.deleted_at)
    }
}

/// Parses and checks the tombstone read from vault key `key`: its
/// [`checksum`](crate::checksum) (tombstones written before checksums have
/// none), and that it is the tombstone of the backup that key names, so
/// that another deleted backup's tombstone copied over it is neither
/// undeleted nor purged as this one.
///
/// # Errors
/// [`ErrorKind::Integrity`] naming the key.
pub fn tombstone_at(bytes: &[u8], key: &str) -> Result<Tombstone> {
    let damaged = |why: String| {
        Error::integrity(format!("tombstone {key} is damaged: {why}"))
            .hint("the object was altered in the vault")
    };
    let checked = crate::checksum::check(bytes).map_err(damaged)?;
    let bytes = match &checked {
        crate::checksum::Checked::Sound(original) => original.as_slice(),
        crate::checksum::Checked::Absent => bytes,
    };
    let tombstone: Tombstone =
        serde_json::from_slice(bytes).map_err(|e| damaged(format!("it is not valid: {e}")))?;
    let manifest = &tombstone.manifest;
    let own = layout::tombstone_key(&manifest.engine, &manifest.instance, &manifest.id);
    if own != key {
        return Err(damaged(format!(
            "it holds the tombstone of another backup, {} (whose key is {own})",
            manifest.id
        )));
    }
    Ok(tombstone)
}

/// What [`Vault::purge_deleted`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Soft-deleted backups whose data was deleted now.
    pub purged: Vec<BackupId>,
    /// Their stored bytes.
    pub purged_bytes: u64,
    /// Soft-deleted backups still inside their period (restorable with
    /// `strata undelete`).
    pub waiting: Vec<BackupId>,
    /// Backups the vault's lock still keeps, with the lock's end if known.
    pub locked: Vec<(BackupId, Option<DateTime<Utc>>)>,
    /// Tombstones dropped because the backup was undeleted.
    pub undeleted: Vec<BackupId>,
}

impl Vault {
    /// Days a deleted backup's data is kept by the vault's soft delete
    /// setting (see the [module docs](self)).
    pub fn soft_delete_days(&self) -> u32 {
        self.meta().soft_delete_days
    }

    /// Days a deletion actually keeps a backup's data: the soft delete
    /// period, and on an immutable vault at least the lock (the tombstone
    /// written at deletion is locked that long, and goes with the data).
    pub fn deleted_data_days(&self) -> u32 {
        let lock = self.immutability().map_or(0, |l| l.days);
        self.soft_delete_days().max(lock)
    }

    /// Deletes the object at `key` (relative to the root). On an immutable
    /// vault an object still locked is left alone and reported with the
    /// lock's end; on S3 the object's version is deleted, leaving no delete
    /// marker.
    pub async fn delete_object(&self, key: &str) -> Result<Deletion> {
        if self.immutability().is_none() {
            return immutability::delete_now(self.store(), None, &self.path(key)).await;
        }
        // One HEAD: the write time decides the lock, the version what an
        // S3 delete removes.
        let Some(meta) = self.head(key).await? else {
            return Ok(Deletion::Deleted);
        };
        if let locked @ Deletion::Locked { .. } = self.lock_at(&meta) {
            return Ok(locked);
        }
        immutability::delete_known(self.store(), self.s3_access(), &meta).await
    }

    /// What [`Vault::delete_object`] would come to by the vault's own lock
    /// rule, without deleting anything: [`Deletion::Locked`] with the
    /// lock's end, or [`Deletion::Deleted`] (also for an object that is
    /// not there).
    pub async fn lock_of(&self, key: &str) -> Result<Deletion> {
        if self.immutability().is_none() {
            return Ok(Deletion::Deleted);
        }
        Ok(match self.head(key).await? {
            Some(meta) => self.lock_at(&meta),
            None => Deletion::Deleted,
        })
    }

    /// The vault's lock rule for an object of metadata `meta`.
    fn lock_at(&self, meta: &object_store::ObjectMeta) -> Deletion {
        match self.immutability() {
            Some(lock) if lock.locked_until(meta.last_modified) > self.now() => Deletion::Locked {
                until: Some(lock.locked_until(meta.last_modified)),
            },
            _ => Deletion::Deleted,
        }
    }

    /// The metadata of the object at `key`, `None` when there is none.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<object_store::ObjectMeta>> {
        match self.store().head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::from(e).context(format!("checking {key}"))),
        }
    }

    /// Deletes a backup for `reason`: a tombstone, then the manifest; the
    /// data stays until the purge date (see the [module docs](self)), or
    /// goes at once when soft delete is off. Deleting a backup that is
    /// already gone succeeds. On an immutable vault a backup whose manifest
    /// is still locked is left as it is: [`Deletion::Locked`].
    pub async fn delete_backup(&self, manifest: &Manifest, reason: &str) -> Result<Deletion> {
        let manifest_key = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
        if let locked @ Deletion::Locked { .. } = self.lock_of(&manifest_key).await? {
            return Ok(locked);
        }
        let now = self.now();
        let keep_days = self.deleted_data_days();
        let tombstone = Tombstone {
            deleted_at: now,
            reason: reason.to_owned(),
            manifest: manifest.clone(),
            purge_after: Some(now + chrono::Duration::days(i64::from(keep_days))),
        };
        let key = layout::tombstone_key(&manifest.engine, &manifest.instance, &manifest.id);
        match self
            .put_create(
                &key,
                crate::checksum::append(&serde_json::to_vec_pretty(&tombstone)?),
            )
            .await
        {
            Ok(()) => {}
            // An earlier attempt wrote it: its dates stand.
            Err(err) if err.kind() == ErrorKind::Conflict => {}
            Err(err) => return Err(err),
        }
        if let locked @ Deletion::Locked { .. } = self.delete_object(&manifest_key).await? {
            return Ok(locked);
        }
        if keep_days == 0 {
            self.purge_one(&key, manifest).await?;
        }
        Ok(Deletion::Deleted)
    }

    /// Every soft-deleted backup whose tombstone can be read, in key order.
    /// A tombstone that cannot be read is left out with a warning.
    pub async fn deleted_backups(&self) -> Result<Vec<Tombstone>> {
        Ok(self
            .tombstones(layout::DELETED)
            .await?
            .into_iter()
            .map(|(_, tombstone)| tombstone)
            .collect())
    }

    /// The soft-deleted backups of one engine instance (see
    /// [`Vault::deleted_backups`]).
    pub async fn deleted_backups_of(&self, engine: &str, instance: &str) -> Result<Vec<Tombstone>> {
        Ok(self
            .tombstones(&layout::tombstone_prefix(engine, instance))
            .await?
            .into_iter()
            .map(|(_, tombstone)| tombstone)
            .collect())
    }

    async fn tombstones(&self, prefix: &str) -> Result<Vec<(String, Tombstone)>> {
        let (found, damaged) = self.read_tombstones(prefix).await?;
        for (key, e) in damaged {
            tracing::warn!(
                tombstone = %key,
                error = %e,
                "a tombstone cannot be read and is left alone: it names a deleted backup; look at it, and delete it by hand once that backup's data under data/ is gone"
            );
        }
        Ok(found)
    }

    /// The tombstones under `prefix` that cannot be read (damaged, or
    /// another backup's at this key), each with its key and why: what the
    /// listing of deleted backups leaves out with a warning, for `verify`
    /// to report.
    pub async fn damaged_tombstones(&self, prefix: &str) -> Result<Vec<(String, Error)>> {
        Ok(self.read_tombstones(prefix).await?.1)
    }

    /// Every tombstone under `prefix`: those that read, and those that do
    /// not with why.
    async fn read_tombstones(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Tombstone)>, Vec<(String, Error)>)> {
        let mut found = Vec::new();
        let mut damaged = Vec::new();
        for key in self.list_keys(prefix).await? {
            let bytes = self.get_bytes(&key).await?;
            match tombstone_at(&bytes, &key) {
                Ok(tombstone) => found.push((key, tombstone)),
                Err(e) => damaged.push((key, e)),
            }
        }
        Ok((found, damaged))
    }

    /// Finishes interrupted deletions, undeletes and purges, and purges the
    /// data of soft-deleted backups whose purge date is before `now`, in
    /// the whole vault. With `dry_run` nothing is deleted and the report
    /// says what would be.
    pub async fn purge_deleted(&self, now: DateTime<Utc>, dry_run: bool) -> Result<PurgeReport> {
        self.purge_under(layout::DELETED, now, dry_run).await
    }

    /// [`Vault::purge_deleted`] for one engine instance only (a retention
    /// pass of one database reads only its own tombstones).
    pub async fn purge_deleted_of(
        &self,
        engine: &str,
        instance: &str,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<PurgeReport> {
        self.purge_under(&layout::tombstone_prefix(engine, instance), now, dry_run)
            .await
    }

    async fn purge_under(
        &self,
        prefix: &str,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        for (key, tombstone) in self.tombstones(prefix).await? {
            let manifest = &tombstone.manifest;
            let id = manifest.id.clone();
            let manifest_key =
                layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
            if self.written_after(&manifest_key, &key).await? {
                if !dry_run {
                    self.delete_object(&key).await?;
                }
                report.undeleted.push(id);
                continue;
            }
            let manifest_gone = if dry_run {
                self.lock_of(&manifest_key).await?
            } else {
                self.delete_object(&manifest_key).await?
            };
            if let Deletion::Locked { until } = manifest_gone {
                report.locked.push((id, until));
                continue;
            }
            // A purge that deleted some segments and was cut short is
            // finished whatever the date: the backup cannot come back.
            let purge_started = !self.first_segment_exists(manifest).await?;
            if tombstone.purge_after() > now && !purge_started {
                report.waiting.push(id);
                continue;
            }
            if dry_run {
                match self.first_segment_lock(manifest).await? {
                    Deletion::Deleted => {
                        report.purged_bytes += manifest.stored_size();
                        report.purged.push(id);
                    }
                    Deletion::Locked { until } => report.locked.push((id, until)),
                }
                continue;
            }
            match self.purge_one(&key, manifest).await? {
                Deletion::Deleted => {
                    report.purged_bytes += manifest.stored_size();
                    report.purged.push(id);
                }
                Deletion::Locked { until } => report.locked.push((id, until)),
            }
        }
        Ok(report)
    }

    /// Whether the object at `key` exists and was written after the one at
    /// `other` (by the store's clock).
    async fn written_after(&self, key: &str, other: &str) -> Result<bool> {
        let Some(written) = self.head(key).await? else {
            return Ok(false);
        };
        Ok(self
            .head(other)
            .await?
            .is_some_and(|other| written.last_modified > other.last_modified))
    }

    /// Whether committed backup `manifest` (as a catalog index remembers
    /// it) has lost its manifest: the manifest is gone from the vault, yet
    /// no deletion recorded it (no tombstone) and its data is still there.
    /// A deletion writes the tombstone before it removes the manifest, and
    /// a purge removes the data before the tombstone, so only a manifest
    /// removed behind Strata's back leaves this state. Returns the
    /// manifest's key then.
    pub async fn lost_manifest(&self, manifest: &Manifest) -> Result<Option<String>> {
        let key = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
        let tombstone = layout::tombstone_key(&manifest.engine, &manifest.instance, &manifest.id);
        let lost = self.head(&key).await?.is_none()
            && self.head(&tombstone).await?.is_none()
            && manifest.streams.iter().any(|s| !s.segments.is_empty())
            && self.first_segment_exists(manifest).await?;
        Ok(lost.then_some(key))
    }

    /// Whether the first segment of `manifest` is still stored (true for a
    /// backup with none).
    pub(crate) async fn first_segment_exists(&self, manifest: &Manifest) -> Result<bool> {
        let Some(segment) = manifest.streams.iter().flat_map(|s| &s.segments).next() else {
            return Ok(true);
        };
        Ok(self.head(&segment.key).await?.is_some())
    }

    async fn first_segment_lock(&self, manifest: &Manifest) -> Result<Deletion> {
        match manifest.streams.iter().flat_map(|s| &s.segments).next() {
            Some(segment) => self.lock_of(&segment.key).await,
            None => Ok(Deletion::Deleted),
        }
    }

    /// Deletes a soft-deleted backup's segments, then its tombstone.
    async fn purge_one(&self, tombstone: &str, manifest: &Manifest) -> Result<Deletion> {
        for stream in &manifest.streams {
            for segment in &stream.segments {
                if let locked @ Deletion::Locked { .. } = self.delete_object(&segment.key).await? {
                    return Ok(locked);
                }
            }
        }
        self.delete_object(tombstone).await
    }

    /// Brings back soft-deleted backup `id`: checks that every segment and
    /// its base are still there, writes its manifest again, and drops the
    /// tombstone.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when no deleted backup has that id, its base
    /// is deleted too, or its data was purged.
    pub async fn undelete(&self, id: &BackupId) -> Result<Manifest> {
        let (deleted, damaged) = self.read_tombstones(layout::DELETED).await?;
        let Some((_, tombstone)) = deleted.into_iter().find(|(_, t)| &t.manifest.id == id) else {
            return Err(self.not_deleted(id, damaged).await?);
        };
        self.undelete_from(tombstone).await
    }

    /// Why `id` cannot be undeleted when no readable tombstone names it:
    /// its tombstone is damaged, or gone while its data is still there
    /// (both named), or it is simply not a deleted backup.
    async fn not_deleted(&self, id: &BackupId, damaged: Vec<(String, Error)>) -> Result<Error> {
        let file = format!("/{id}.json");
        if let Some((key, why)) = damaged.into_iter().find(|(key, _)| key.ends_with(&file)) {
            return Ok(Error::integrity(format!(
                "backup {id} cannot be brought back: its tombstone {key} is damaged: {why}"
            ))
            .hint("the tombstone holds the backup's manifest; put back a sound copy of the object (an earlier version, a replica) to undelete it"));
        }
        let component = format!("/{id}/");
        if let Some(data) = self
            .list_keys(layout::DATA)
            .await?
            .into_iter()
            .find(|key| key.contains(&component))
        {
            let backup = data[..data.find(&component).unwrap_or(0)].to_owned();
            let tombstone = format!(
                "{}{}",
                layout::DELETED,
                backup.strip_prefix(layout::DATA).unwrap_or(&backup)
            );
            return Ok(Error::not_found(format!(
                "backup {id} cannot be brought back: its data is still in the vault ({data}), \
                 but its tombstone {tombstone}/{id}.json, which holds its manifest, is gone"
            ))
            .hint("put back the tombstone (an earlier version of the object, a replica) to undelete it; otherwise `strata vault gc` removes the data as a leftover"));
        }
        Ok(
            Error::not_found(format!("there is no deleted backup {id}")).hint(
                "`strata list --deleted` shows the deleted backups that can still be brought back",
            ),
        )
    }

    /// [`Vault::undelete`] of a tombstone already read
    /// ([`Vault::deleted_backups`]).
    pub async fn undelete_from(&self, tombstone: Tombstone) -> Result<Manifest> {
        let manifest = tombstone.manifest;
        let id = &manifest.id;
        let key = layout::tombstone_key(&manifest.engine, &manifest.instance, id);
        for stream in &manifest.streams {
            for segment in &stream.segments {
                if self.head(&segment.key).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "backup {id} cannot be brought back: its data was purged, or partly purged ({} is gone)",
                        segment.key
                    ))
                    .hint(format!(
                        "the next `strata vault gc` finishes the purge and removes the tombstone {key}"
                    )));
                }
            }
        }
        if let Some(base) = &manifest.base
            && !self
                .manifest_exists(&manifest.engine, &manifest.instance, base)
                .await?
        {
            return Err(Error::not_found(format!(
                "backup {id} builds on backup {base}, which is deleted too"
            ))
            .hint(format!("bring back {base} first: `strata undelete {base}`")));
        }
        let manifest_key = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
        match self.put_create(&manifest_key, manifest.to_json()?).await {
            Ok(()) => {}
            // An interrupted deletion never removed it: it is visible already.
            Err(err) if err.kind() == ErrorKind::Conflict => {}
            Err(err) => return Err(err),
        }
        // Locked on an immutable vault: the purge drops it later, seeing the
        // manifest written after it.
        self.delete_object(&key).await?;
        Ok(manifest)
    }

    /// The data prefixes (`<engine>/<instance>/<id>`, as in keys) of
    /// soft-deleted backups: not orphans, whatever their age.
    pub(crate) async fn tombstoned_prefixes(&self) -> Result<Vec<String>> {
        Ok(self
            .list_keys(layout::DELETED)
            .await?
            .into_iter()
            .filter_map(|key| layout::backup_of_key(layout::DELETED, &key))
            .collect())
    }
}

//! The end of a backup: [`BackupWriter::commit`] writes the manifest last,
//! [`BackupWriter::abort`] and a dropped writer delete what was written.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;

use super::{BackupWriter, Shared, layout};
use crate::catalog::manifest::{Compression, Encryption, MANIFEST_FORMAT, Manifest, StreamRecord};
use crate::crypto::PART_ALGORITHM;
use crate::error::{Error, ErrorKind, Result};
use crate::plugin::BackupOutcome;

impl BackupWriter {
    /// Commits the backup: writes its manifest last, with a create-only put
    /// ([`Vault::put_manifest`](crate::vault::Vault::put_manifest)), and returns it.
    ///
    /// Refuses ([`ErrorKind::Cancelled`]) when a stream failed or was
    /// cancelled; the backup's segments are then deleted. If the manifest
    /// put fails, the manifest is read back: when it is ours the commit
    /// succeeded after all; when none is there the segments are deleted;
    /// otherwise they are left untouched, so that a committed backup is
    /// never harmed.
    pub async fn commit(mut self, details: BackupOutcome) -> Result<Manifest> {
        self.settled = true;
        let shared = self.shared.clone();
        let refusal = {
            let state = shared.state();
            if let Some(failure) = &state.failure {
                Some(failure.clone())
            } else if state.running > 0 {
                Some(format!(
                    "{} stream(s) are still being written",
                    state.running
                ))
            } else if state.finished.len() != state.next_index as usize {
                Some("a stream did not finish".to_owned())
            } else {
                None
            }
        };
        if let Some(reason) = refusal {
            let cleanup = shared.delete_everything().await;
            let err = Error::cancelled(format!(
                "backup {} cannot be committed: {reason}",
                shared.id
            ))
            .hint("nothing was committed and its segments were deleted; run the backup again");
            if let Err(e) = cleanup {
                tracing::warn!(error = %e, backup = %shared.id, "deleting the segments of a refused backup failed");
            }
            return Err(err);
        }
        let streams: Vec<StreamRecord> = shared.state().finished.values().cloned().collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: shared.id.clone(),
            engine: shared.target.engine.clone(),
            instance: shared.target.instance.clone(),
            database: shared.target.database.clone(),
            kind: shared.target.kind,
            started_at: shared.started_at,
            ended_at: Utc::now(),
            consistent_at: details.consistent_at,
            fork: details.fork,
            start: details.start,
            end: details.end,
            base: details.base,
            compression: Compression {
                algorithm: "zstd".to_owned(),
                level: shared.config.compression_level,
            },
            encryption: shared.wrapped_key.as_ref().map(|wrapped| Encryption {
                algorithm: PART_ALGORITHM.to_owned(),
                wrapped_key: wrapped.clone(),
            }),
            streams,
            labels: details.labels,
            engine_meta: details.engine_meta,
        };
        manifest.check(&format!("new manifest of backup {}", shared.id))?;
        let put_error = match shared.vault.put_manifest(&manifest).await {
            Ok(_) => return Ok(manifest),
            Err(e) => e,
        };
        let target = &shared.target;
        match shared
            .vault
            .read_manifest(&target.engine, &target.instance, &shared.id)
            .await
        {
            Ok(existing) if existing == manifest => Ok(manifest),
            Ok(_) => Err(put_error
                .context(format!("committing backup {}", shared.id))
                .hint("another manifest with this id exists; this backup was not committed and its segments were left in place")),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Err(e) = shared.delete_everything().await {
                    tracing::warn!(error = %e, backup = %shared.id, "deleting the segments of an uncommitted backup failed");
                }
                Err(put_error
                    .context(format!("committing backup {}", shared.id))
                    .hint("nothing was committed and the backup's segments were deleted; run the backup again"))
            }
            Err(_) => Err(put_error
                .context(format!("committing backup {}", shared.id))
                .hint("whether the manifest was written is unknown; `strata list` shows it if it was, and the segments were left in place")),
        }
    }

    /// Abandons the backup: aborts uploads left by cancelled streams and
    /// deletes every segment written. Nothing of the backup remains.
    pub async fn abort(mut self) -> Result<()> {
        self.settled = true;
        self.shared.delete_everything().await
    }
}

impl Shared {
    /// Waits for background cleanups, then deletes every segment of the
    /// backup: those the streams recorded and whatever is listed under the
    /// backup's data prefix.
    async fn delete_everything(&self) -> Result<()> {
        let (handles, mut keys) = {
            let mut state = self.state();
            (std::mem::take(&mut state.cleanups), state.segments.clone())
        };
        for handle in handles {
            // A cleanup task that panicked has nothing left to report; the
            // deletes below cover its segments.
            let _ = handle.await;
        }
        let prefix =
            layout::backup_data_prefix(&self.target.engine, &self.target.instance, &self.id);
        keys.extend(self.vault.list_keys(&prefix).await?);
        let paths: Vec<Path> = keys.iter().map(|k| self.vault.path(k)).collect();
        delete_paths(self.vault.store(), paths).await
    }
}

pub(super) async fn delete_paths(store: &Arc<dyn ObjectStore>, paths: Vec<Path>) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut results = store.delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::from(e)
                    .context("deleting the segments of an unfinished backup")
                    .hint("the segments are not part of any committed backup and can be deleted later"));
            }
        }
    }
    Ok(())
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = shared.delete_everything().await {
                        tracing::warn!(error = %e, backup = %shared.id, "cleaning up an abandoned backup failed");
                    }
                });
            }
            Err(_) => tracing::warn!(
                backup = %self.shared.id,
                "an abandoned backup could not delete its segments outside a runtime"
            ),
        }
    }
}

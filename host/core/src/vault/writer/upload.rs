//! The upload side of one stream: parts appended to segment objects, a
//! single put for a small segment and a bounded multipart upload for a
//! large one, and the cleanup of a stream that fails or is dropped.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};

use super::commit::delete_paths;
use super::compress::StoredPart;
use super::config::UPLOAD_CHUNK_SIZE;
use super::{Shared, layout};
use crate::catalog::manifest::{PartRecord, SegmentRecord};
use crate::error::{Error, Result};

/// A segment being written: buffered until it outgrows one upload chunk,
/// then a multipart upload.
pub(super) struct OpenSegment {
    key: String,
    path: Path,
    parts: Vec<PartRecord>,
    stored: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
    upload: Option<WriteMultipart>,
}

/// The upload side of one stream. If it is dropped before it is settled
/// (the `write_stream` future was dropped), it aborts its upload, deletes its
/// segments in the background and marks the backup failed.
pub(super) struct StreamUpload {
    pub(super) shared: Arc<Shared>,
    pub(super) name: String,
    pub(super) index: u32,
    pub(super) current: Option<OpenSegment>,
    pub(super) done: Vec<SegmentRecord>,
    pub(super) begun: Vec<Path>,
    pub(super) settled: bool,
}

impl StreamUpload {
    pub(super) async fn add_part(&mut self, part: StoredPart) -> Result<()> {
        let len = part.bytes.len() as u64;
        if let Some(segment) = &self.current
            && !segment.parts.is_empty()
            && segment.stored + len > self.shared.config.segment_size
        {
            self.finish_segment().await?;
        }
        if self.current.is_none() {
            let number = self.done.len();
            let key = layout::segment_key(
                &self.shared.target.engine,
                &self.shared.target.instance,
                &self.shared.id,
                self.index as usize,
                number,
            );
            let path = self.shared.vault.path(&key);
            self.shared.state().segments.insert(key.clone());
            self.begun.push(path.clone());
            self.current = Some(OpenSegment {
                key,
                path,
                parts: Vec::new(),
                stored: 0,
                pending: Vec::new(),
                pending_len: 0,
                upload: None,
            });
        }
        let in_flight = self.shared.config.parts_in_flight;
        let store = self.shared.vault.store().clone();
        let segment = self.current.as_mut().expect("a segment is open");
        segment.parts.push(PartRecord {
            raw: part.raw,
            stored: len,
            crc32c: part.crc32c,
        });
        segment.stored += len;
        if let Some(upload) = segment.upload.as_mut() {
            return put_bounded(upload, part.bytes, in_flight, &segment.key).await;
        }
        segment.pending_len += part.bytes.len();
        segment.pending.push(part.bytes);
        if segment.pending_len > UPLOAD_CHUNK_SIZE {
            let upload = store
                .put_multipart_opts(&segment.path, PutMultipartOptions::default())
                .await
                .map_err(|e| {
                    Error::from(e).context(format!("starting the upload of {}", segment.key))
                })?;
            let upload = segment.upload.insert(WriteMultipart::new_with_chunk_size(
                upload,
                UPLOAD_CHUNK_SIZE,
            ));
            segment.pending_len = 0;
            for bytes in std::mem::take(&mut segment.pending) {
                put_bounded(upload, bytes, in_flight, &segment.key).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn finish_segment(&mut self) -> Result<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        let context = || format!("writing segment {}", segment.key);
        match segment.upload {
            Some(mut upload) => {
                // A part that failed is the cause: surface it before
                // `finish`, whose cleanup (aborting the upload) can fail
                // too, against the same unreachable store, and hide it.
                if let Err(e) = upload.wait_for_capacity(0).await {
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(error = %abort, "aborting a multipart upload failed");
                    }
                    return Err(Error::from(e).context(context()));
                }
                upload
                    .finish()
                    .await
                    .map_err(|e| Error::from(e).context(context()))?;
            }
            None => {
                let payload: PutPayload = segment.pending.into_iter().collect();
                self.shared
                    .vault
                    .store()
                    .put_opts(&segment.path, payload, PutOptions::default())
                    .await
                    .map_err(|e| Error::from(e).context(context()))?;
            }
        }
        self.done.push(SegmentRecord {
            key: segment.key,
            stored_size: segment.stored,
            parts: segment.parts,
        });
        Ok(())
    }

    /// Aborts the open upload and deletes the segments this stream wrote.
    pub(super) async fn discard(&mut self) -> Result<()> {
        self.settled = true;
        let open = self.current.take().and_then(|s| s.upload);
        let paths = std::mem::take(&mut self.begun);
        discard(self.shared.vault.store().clone(), open, paths).await
    }
}

async fn discard(
    store: Arc<dyn ObjectStore>,
    open: Option<WriteMultipart>,
    paths: Vec<Path>,
) -> Result<()> {
    if let Some(upload) = open {
        // An abort that fails leaves an incomplete upload that the store's
        // lifecycle rules expire; it is never part of a backup.
        if let Err(e) = upload.abort().await {
            tracing::warn!(error = %e, "aborting a multipart upload failed");
        }
    }
    delete_paths(&store, paths).await
}

async fn put_bounded(
    upload: &mut WriteMultipart,
    mut bytes: Bytes,
    in_flight: usize,
    key: &str,
) -> Result<()> {
    // Handing over at most one chunk at a time lets at most one new upload
    // start per wait, so no more than `in_flight` are ever running.
    while !bytes.is_empty() {
        upload
            .wait_for_capacity(in_flight)
            .await
            .map_err(|e| Error::from(e).context(format!("uploading segment {key}")))?;
        let piece = bytes.split_to(bytes.len().min(UPLOAD_CHUNK_SIZE));
        upload.put(piece);
    }
    Ok(())
}

impl Drop for StreamUpload {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.shared.record_failure(format!(
            "stream `{}` was cancelled before it finished",
            self.name
        ));
        let open = self.current.take().and_then(|s| s.upload);
        let paths = std::mem::take(&mut self.begun);
        if open.is_none() && paths.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.shared.vault.store().clone();
                let task = handle.spawn(async move {
                    if let Err(e) = discard(store, open, paths).await {
                        tracing::warn!(error = %e, "cleaning up a cancelled stream failed");
                    }
                });
                self.shared.state().cleanups.push(task);
            }
            Err(_) => tracing::warn!(
                stream = %self.name,
                "a cancelled stream could not clean up its segments outside a runtime"
            ),
        }
    }
}

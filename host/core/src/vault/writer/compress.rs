//! Compression and sealing of parts, and the pipeline of one stream that
//! schedules them on the backup's fair compression slots and hands the
//! results, in order, to the upload.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::parts::{PartSource, spawn_digest};
use super::upload::StreamUpload;
use super::{Progress, Shared};
use crate::catalog::manifest::StreamRecord;
use crate::error::{Error, Result};
use crate::plugin::StreamDigest;

/// One compressed (and sealed) part, ready to upload.
pub(super) struct StoredPart {
    pub(super) raw: u64,
    pub(super) bytes: Bytes,
    pub(super) crc32c: u32,
}

thread_local! {
    /// A compression context per worker thread and level, reused across parts.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `raw` as one zstd frame into `out` (whose contents are replaced).
fn compress_frame(level: i32, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, compressor)) if *l == level => compressor,
            other => &mut other.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        compressor.compress_to_buffer(raw, out)?;
        Ok(())
    })
}

fn compress_part(
    shared: &Shared,
    stream_index: u32,
    part_index: u64,
    raw: &[u8],
) -> Result<StoredPart> {
    let mut frame = shared.frame_pool.take();
    compress_frame(shared.config.compression_level, raw, &mut frame).map_err(|e| {
        Error::io(format!(
            "compressing part {part_index} of backup {}: {e}",
            shared.id
        ))
    })?;
    let stored = match &shared.data_key {
        Some(key) => {
            let sealed = key.seal_part(shared.id.as_str(), stream_index, part_index, &frame);
            shared.frame_pool.give(frame);
            sealed
        }
        None => frame,
    };
    Ok(StoredPart {
        raw: raw.len() as u64,
        crc32c: crc32c::crc32c(&stored),
        bytes: Bytes::from(stored),
    })
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::from(err).with_message("a background task of the writer failed")
}

pub(super) async fn run_stream<R: AsyncRead + Send + Unpin>(
    shared: &Arc<Shared>,
    index: u32,
    name: &str,
    mut source: PartSource<R>,
    digest: StreamDigest,
    progress: Option<&dyn Progress>,
    upload: &mut StreamUpload,
) -> Result<StreamRecord> {
    let config = &shared.config;
    // Compression jobs in stream order; the consumer awaits them in that
    // order. With the one the consumer holds, `workers` jobs can run.
    let (jobs_tx, mut jobs_rx) =
        mpsc::channel::<JoinHandle<Result<StoredPart>>>(config.workers.saturating_sub(1).max(1));
    // Raw parts for the digest, hashed on a thread of their own.
    let (hash_tx, hasher) = match digest {
        StreamDigest::Blake3 => {
            let (hash_tx, hasher) = spawn_digest(shared.raw_pool.clone());
            (Some(hash_tx), Some(hasher))
        }
        StreamDigest::Skip => (None, None),
    };

    let account = shared.compress_slots.account();
    let produce_account = account.clone();
    let produce = async move {
        let account = produce_account;
        let mut part_index = 0u64;
        loop {
            let raw = source.next(config, &shared.raw_pool).await?;
            if raw.is_empty() {
                break;
            }
            let last = source.is_last(&raw, config);
            if let Some(hash_tx) = &hash_tx
                && hash_tx.send(raw.clone()).await.is_err()
            {
                return Err(Error::io("the digest thread of the writer stopped"));
            }
            let permit = shared.compress_slots.acquire(&account).await;
            let job_shared = shared.clone();
            let job_account = account.clone();
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let part =
                    job_account.charge(|| compress_part(&job_shared, index, part_index, &raw));
                job_shared.raw_pool.reclaim(raw);
                part
            });
            if jobs_tx.send(job).await.is_err() {
                // The consumer stopped; it reports why.
                break;
            }
            part_index += 1;
            if last {
                break;
            }
        }
        Ok::<(), Error>(())
    };

    // Frames handed to the upload, taken back into the pool once the
    // upload has let go of them.
    let mut uploading: Vec<Bytes> = Vec::new();
    let consume = async {
        while let Some(job) = jobs_rx.recv().await {
            let part = job.await.map_err(join_error)??;
            shared.failed_elsewhere()?;
            let raw = part.raw;
            if shared.data_key.is_none() {
                uploading.push(part.bytes.clone());
            }
            upload.add_part(part).await?;
            if let Some(progress) = progress {
                progress.add(raw);
            }
            let mut i = 0;
            while i < uploading.len() {
                if uploading[i].is_unique() {
                    shared.frame_pool.reclaim(uploading.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        Ok::<(), Error>(())
    };

    futures::future::try_join(produce, consume).await?;
    let digest = match hasher {
        Some(hasher) => Some(hasher.await.map_err(join_error)?.to_hex().to_string()),
        None => None,
    };
    upload.finish_segment().await?;
    for frame in uploading {
        shared.frame_pool.reclaim(frame);
    }
    let segments = std::mem::take(&mut upload.done);
    let raw_size: u64 = segments.iter().flat_map(|s| &s.parts).map(|p| p.raw).sum();
    tracing::debug!(
        stream = name,
        raw_bytes = raw_size,
        compress_seconds = account.seconds(),
        "stream written"
    );
    Ok(StreamRecord {
        name: name.to_owned(),
        raw_size,
        stored_size: segments.iter().map(|s| s.stored_size).sum(),
        blake3: digest,
        segments,
    })
}

//! Raw parts: the pooled buffers they live in, where they come from (a
//! reader cut into parts or a [`PartFeed`](crate::plugin::PartFeed)), and the
//! thread that hashes them into the stream digest.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::WriterConfig;
use crate::error::{Error, Result};
use crate::plugin::{PartBuffers, PartStream};

/// Reuses part-sized buffers, so that a long stream allocates (and faults in)
/// its working memory once rather than once per part, and the process keeps
/// a steady footprint instead of leaving freed parts scattered over the
/// allocator's per-thread arenas.
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `keep` spares.
    pub(crate) fn new(capacity: usize, keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            capacity,
            keep,
        }
    }

    /// An empty buffer with room for the pool's capacity.
    pub(crate) fn take(&self) -> Vec<u8> {
        let spare = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        buf.clear();
        buf
    }

    /// A buffer of exactly the pool's capacity, to be filled in place. Its
    /// contents are whatever it held before: only bytes the caller writes
    /// mean anything. (A reused buffer that was full needs no zeroing.)
    pub(crate) fn take_full(&self) -> Vec<u8> {
        let spare = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_default();
        buf.resize(self.capacity, 0);
        buf
    }

    /// Returns a buffer to the pool (dropped if it is too small or the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < self.capacity {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Takes back the buffer behind `bytes` if this is its last handle;
    /// otherwise just drops the handle.
    pub(crate) fn reclaim(&self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.give(Vec::from(buf));
        }
    }
}

impl PartBuffers for BufferPool {
    fn take_full(&self) -> Vec<u8> {
        BufferPool::take_full(self)
    }

    fn give(&self, buffer: Vec<u8>) {
        BufferPool::give(self, buffer)
    }
}

/// Where a stream's raw parts come from.
pub(super) enum PartSource<R> {
    /// Cut from a reader, `part_size` bytes at a time (copied into pooled buffers).
    Reader(R),
    /// Handed over whole by a [`PartFeed`](crate::plugin::PartFeed).
    Feed(PartStream),
}

impl<R: AsyncRead + Unpin> PartSource<R> {
    /// The next raw part; empty at the end of the stream.
    pub(super) async fn next(&mut self, config: &WriterConfig, pool: &BufferPool) -> Result<Bytes> {
        match self {
            PartSource::Reader(reader) => read_part(reader, config.part_size, pool)
                .await
                .map_err(|e| Error::from(e).context("reading the input")),
            PartSource::Feed(stream) => match stream.recv().await {
                None => Ok(Bytes::new()),
                Some(Ok(part)) if part.len() <= stream.part_size() => Ok(part),
                Some(Ok(part)) => Err(Error::io(format!(
                    "a part of {} bytes is larger than the part size ({})",
                    part.len(),
                    stream.part_size()
                ))),
                Some(Err(e)) => Err(Error::from(e).context("reading the input")),
            },
        }
    }

    /// Whether `raw` is known to be the last part.
    pub(super) fn is_last(&self, raw: &Bytes, config: &WriterConfig) -> bool {
        matches!(self, PartSource::Reader(_)) && raw.len() < config.part_size
    }
}

/// Hashes the raw parts sent to it, in order, on a thread of its own, and
/// gives each part's buffer back to `pool`; the digest is ready once the
/// sender is dropped.
pub(crate) fn spawn_digest(
    pool: Arc<BufferPool>,
) -> (mpsc::Sender<Bytes>, JoinHandle<blake3::Hash>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let handle = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        while let Some(raw) = rx.blocking_recv() {
            hasher.update(&raw);
            pool.reclaim(raw);
        }
        hasher.finalize()
    });
    (tx, handle)
}

/// Reads up to `size` bytes into a pooled buffer; fewer only at the end of the input.
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    pool: &BufferPool,
) -> std::io::Result<Bytes> {
    use bytes::BufMut;
    let mut buf = pool.take();
    while buf.len() < size {
        let room = size - buf.len();
        if reader.read_buf(&mut (&mut buf).limit(room)).await? == 0 {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_pool_takes_back_the_last_handle_only() {
        let pool = BufferPool::new(1 << 20, 2);
        let mut buf = pool.take();
        buf.extend_from_slice(&[7u8; 1000]);
        let address = buf.as_ptr();
        let bytes = Bytes::from(buf);
        let shared = bytes.clone();
        pool.reclaim(shared);
        assert_eq!(pool.free.lock().unwrap().len(), 0, "still in use elsewhere");
        pool.reclaim(bytes);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "the same allocation is reused");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        pool.give(Vec::with_capacity(10));
        assert_eq!(
            pool.free.lock().unwrap().len(),
            0,
            "small buffers are not kept"
        );
    }
}

//! One stripe of a backup: the blocks SQL Server puts, streamed into one
//! vault stream as they arrive, with no local copy.
//!
//! Azure lets a client put blocks in any order and fixes their order only
//! at Put Block List (Microsoft's "Put Block List"). Streaming cannot wait
//! for that list, so the stripe keeps a bounded **reorder window**: the
//! newest `window` blocks stay in memory, and one is written to the vault
//! whenever a new block would overflow it. A block put again while still
//! in the window replaces the earlier bytes (a retried request). At Put
//! Block List the written blocks must be the list's first entries, in
//! order, and the rest of the list is emitted from the window in list
//! order. When SQL Server sent its blocks further out of order than the
//! window, or named a block it never sent, the stripe fails and says so:
//! what is already in the vault cannot be reordered.
//!
//! Which block leaves the window: SQL Server puts a device's blocks in
//! order with several requests in flight, so they arrive slightly out of
//! order. When the block ids are sequence numbers (decimal text, or a big-
//! or little-endian integer, told apart when the window first fills: the
//! ids of a sequence span a few numbers, random ids do not), the block
//! with the lowest number leaves first, which undoes any reordering within
//! the window. Otherwise the oldest arrival leaves first.
//!
//! Memory is `window` blocks of at most `MAXTRANSFERSIZE` (4 MiB) per
//! stripe.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use strata_core::catalog::manifest::StreamRecord;
use strata_core::plugin::BackupSink;
use strata_core::{Error, Result};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::azure::{AzureError, BlobResponse, BlockId, reply};
use super::block_list::invalid_list;
use super::route::{Blob, Call, Content, Op, lock};

/// Where a stripe stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Phase {
    /// Blocks are being received.
    #[default]
    Receiving,
    /// The block list is committed and the stream is in the vault.
    Committed {
        /// The blocks in list order, with their sizes in bytes (none for
        /// a blob written whole by Put Blob).
        blocks: Vec<(BlockId, u64)>,
        /// The stripe's size in bytes.
        size: u64,
    },
    /// The stripe failed, for this reason; nothing more is accepted.
    Failed(String),
}

/// How a stripe's block ids say their order, as far as the window can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum BlockOrder {
    /// Not known before the window first fills.
    #[default]
    Undecided,
    /// The ids say nothing: blocks leave the window in arrival order.
    Arrival,
    /// The ids are sequence numbers read this way.
    Sequence(SequenceId),
}

/// A way to read a block id as a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SequenceId {
    /// The decimal digits the decoded id ends with (`0000000000000042`, `blk-42`).
    Decimal,
    /// The decoded id as a big-endian integer (at most 16 bytes).
    BigEndian,
    /// The decoded id as a little-endian integer (at most 16 bytes).
    LittleEndian,
}

impl SequenceId {
    const ALL: [SequenceId; 3] = [
        SequenceId::Decimal,
        SequenceId::BigEndian,
        SequenceId::LittleEndian,
    ];

    /// The number `id` stands for read this way, if it reads so.
    fn number(self, id: &BlockId) -> Option<u128> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&id.0)
            .ok()?;
        match self {
            SequenceId::Decimal => {
                let digits = raw.iter().rev().take_while(|b| b.is_ascii_digit()).count();
                let text = std::str::from_utf8(&raw[raw.len() - digits..]).ok()?;
                (1..=38)
                    .contains(&digits)
                    .then(|| text.parse().ok())
                    .flatten()
            }
            SequenceId::BigEndian => {
                (raw.len() <= 16).then(|| raw.iter().fold(0u128, |n, &b| (n << 8) | u128::from(b)))
            }
            SequenceId::LittleEndian => (raw.len() <= 16).then(|| {
                raw.iter()
                    .rev()
                    .fold(0u128, |n, &b| (n << 8) | u128::from(b))
            }),
        }
    }
}

impl BlockOrder {
    /// The order `ids` (the first window full, in arrival order) show:
    /// the first reading under which they are distinct numbers spanning
    /// less than four times their count, else arrival order.
    fn guess<'a>(ids: impl Iterator<Item = &'a BlockId> + Clone) -> BlockOrder {
        let count = ids.clone().count() as u128;
        SequenceId::ALL
            .into_iter()
            .find(|reading| {
                let Some(mut numbers) = ids
                    .clone()
                    .map(|id| reading.number(id))
                    .collect::<Option<Vec<_>>>()
                else {
                    return false;
                };
                numbers.sort_unstable();
                numbers.dedup();
                let span = numbers
                    .last()
                    .zip(numbers.first())
                    .map(|(max, min)| max - min);
                numbers.len() as u128 == count && span.is_some_and(|span| span < 4 * count)
            })
            .map_or(BlockOrder::Arrival, BlockOrder::Sequence)
    }
}

/// A stripe's blocks: those in the window, those written to the vault.
#[derive(Debug, Default)]
pub struct StripeState {
    /// How the block ids say their order.
    order: BlockOrder,
    /// The newest blocks, oldest first.
    window: VecDeque<(BlockId, Bytes)>,
    /// The blocks written to the vault, in order, with their sizes.
    written: Vec<(BlockId, u64)>,
    /// The ids in `written`.
    written_ids: HashSet<BlockId>,
    /// The sequence number of the last block written, when ids are numbers.
    last_number: Option<u128>,
    /// Where the stripe stands.
    pub phase: Phase,
}

impl StripeState {
    /// The committed blocks (none before Put Block List).
    pub fn committed_blocks(&self) -> Vec<(BlockId, u64)> {
        match &self.phase {
            Phase::Committed { blocks, .. } => blocks.clone(),
            _ => Vec::new(),
        }
    }

    /// The blocks received and not yet committed, in arrival order.
    pub fn uncommitted_blocks(&self) -> Vec<(BlockId, u64)> {
        if self.phase != Phase::Receiving {
            return Vec::new();
        }
        let window = self
            .window
            .iter()
            .map(|(id, b)| (id.clone(), b.len() as u64));
        self.written.iter().cloned().chain(window).collect()
    }

    /// The committed size in bytes (0 before Put Block List).
    pub fn committed_size(&self) -> u64 {
        match &self.phase {
            Phase::Committed { size, .. } => *size,
            _ => 0,
        }
    }

    /// Takes a block into the window; returns the blocks that leave it to
    /// be written, in order, while the window of `capacity` blocks
    /// overflows. With sequence-numbered ids a block leaves only when it is
    /// the next number: while an earlier block is still on its way, the
    /// window holds more than `capacity` ([`StripeState::waiting`]).
    fn put(&mut self, id: BlockId, bytes: Bytes, capacity: usize) -> Vec<Bytes> {
        if let Some(slot) = self.window.iter_mut().find(|(held, _)| *held == id) {
            slot.1 = bytes;
        } else {
            self.window.push_back((id, bytes));
        }
        let mut leaving = Vec::new();
        while self.window.len() > capacity {
            let Some(next) = self.next_to_write() else {
                break;
            };
            let Some((id, bytes)) = self.window.remove(next) else {
                break;
            };
            if let BlockOrder::Sequence(reading) = self.order {
                self.last_number = reading.number(&id);
            }
            self.written.push((id.clone(), bytes.len() as u64));
            self.written_ids.insert(id);
            leaving.push(bytes);
        }
        leaving
    }

    /// Whether the window holds more than `capacity` blocks because the
    /// next one in sequence has not arrived: SQL Server's answers then
    /// wait, so that it sends no more until that block comes.
    fn waiting(&self, capacity: usize) -> bool {
        self.window.len() > capacity
    }

    /// The index in the window of the block to write next: the lowest
    /// sequence number (once one was written: only the number after it),
    /// or the oldest arrival. `None` while the next number is missing.
    fn next_to_write(&mut self) -> Option<usize> {
        if self.order == BlockOrder::Undecided {
            self.order = BlockOrder::guess(self.window.iter().map(|(id, _)| id));
            tracing::debug!(order = ?self.order, "block order of a stripe");
        }
        let BlockOrder::Sequence(reading) = self.order else {
            return Some(0);
        };
        let numbers = self
            .window
            .iter()
            .enumerate()
            .map(|(i, (id, _))| reading.number(id).map(|n| (n, i)));
        match numbers.collect::<Option<Vec<_>>>() {
            Some(numbers) => {
                let (lowest, index) = numbers.into_iter().min()?;
                match self.last_number {
                    Some(last) if lowest != last + 1 => None,
                    _ => Some(index),
                }
            }
            // An id that is no sequence number after all.
            None => Some(0),
        }
    }

    /// The blocks of `list` still to be written, in list order, once the
    /// blocks already written are checked to be the list's first entries.
    /// Leaves the window empty.
    fn commit_order(
        &mut self,
        list: &[BlockId],
        stripe: &str,
        capacity: usize,
    ) -> Result<Vec<(BlockId, Bytes)>> {
        let out_of_order = |detail: String| {
            Error::engine(format!(
                "the block list of {stripe} cannot be followed: {detail}; SQL Server sent its blocks further out of order than the reorder window of {capacity} blocks"
            ))
            .in_message("stream", stripe)
            .hint("raise reorder_window (blocks held in memory per backup, shared by its stripes) in the instance's [sqlserver.<name>] section, and run the backup again")
        };
        if list.len() < self.written.len() {
            return Err(out_of_order(format!(
                "it names {} blocks, but {} were already written to the vault",
                list.len(),
                self.written.len()
            )));
        }
        for (position, ((written, _), listed)) in self.written.iter().zip(list).enumerate() {
            if written != listed {
                return Err(out_of_order(format!(
                    "it puts block {listed} at position {position}, where block {written} was already written to the vault"
                )));
            }
        }
        let mut rest = Vec::with_capacity(list.len() - self.written.len());
        for (position, id) in list.iter().enumerate().skip(self.written.len()) {
            match self.window.iter().find(|(held, _)| held == id) {
                Some((_, bytes)) => rest.push((id.clone(), bytes.clone())),
                None if self.written_ids.contains(id) => {
                    return Err(out_of_order(format!(
                        "it names block {id} again at position {position}, after it was written at an earlier one"
                    )));
                }
                None => {
                    return Err(Error::engine(format!(
                        "the block list of {stripe} names block {id} at position {position}, which SQL Server never put"
                    ))
                    .in_message("stream", stripe)
                    .hint("SQL Server's backup did not complete: check its error log, and run the backup again"));
                }
            }
        }
        self.window.clear();
        Ok(rest)
    }
}

/// What flows from the stripe to the vault writer.
enum Chunk {
    /// The next bytes.
    Data(Bytes),
    /// The stripe is complete.
    End,
}

/// The vault writer's end of a stripe: the blocks' bytes in commit order;
/// end of file only once the block list is committed, an error if the
/// stripe ends otherwise (so that no partial stream is ever recorded).
struct StripeReader {
    chunks: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
    stream: String,
}

impl AsyncRead for StripeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match this.chunks.poll_recv(cx) {
                Poll::Ready(Some(Chunk::Data(bytes))) => this.current = bytes,
                Poll::Ready(Some(Chunk::End)) => this.ended = true,
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "{} ended before its block list was committed",
                        this.stream
                    ))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Receives one stripe into `sink` as stream `blob.stream`: answers the
/// blob's calls until its block list is committed and the stream is
/// durable in the vault (only then does SQL Server get its 201, so a
/// backup SQL Server records as done is never missing from the vault).
/// `window` is the reorder window in blocks.
pub async fn receive(
    blob: Arc<Blob>,
    calls: mpsc::Receiver<Call>,
    sink: &dyn BackupSink,
    window: usize,
) -> Result<StreamRecord> {
    let (feed, chunks) = mpsc::channel(1);
    let reader = StripeReader {
        chunks,
        current: Bytes::new(),
        ended: false,
        stream: blob.stream.clone(),
    };
    let (done_tx, done) = oneshot::channel();
    let stream = blob.stream.clone();
    let write = async move {
        let _ = done_tx.send(sink.write_stream(&stream, Box::new(reader)).await);
    };
    let mut job = StripeJob {
        blob,
        calls,
        feed: Some(feed),
        done: Some(done),
        window: window.max(1),
        held: Vec::new(),
    };
    let ((), result) = tokio::join!(write, job.run());
    result
}

/// The job side of one stripe.
struct StripeJob {
    blob: Arc<Blob>,
    calls: mpsc::Receiver<Call>,
    /// To the vault writer; dropped without [`Chunk::End`] to fail it.
    feed: Option<mpsc::Sender<Chunk>>,
    /// The vault writer's outcome.
    done: Option<oneshot::Receiver<Result<StreamRecord>>>,
    window: usize,
    /// Answers to Put Blocks that wait for an earlier block
    /// ([`StripeState::waiting`]).
    held: Vec<oneshot::Sender<BlobResponse>>,
}

/// The most Put Block answers a stripe holds back while an earlier block is
/// missing (each holds up to 4 MiB): past it, the earlier block is taken as
/// lost and the stripe fails.
const MAX_HELD: usize = 32;

/// What a call leads to: an answer, and the stripe's outcome when it ended.
type Step = (BlobResponse, Option<Result<StreamRecord>>);

impl StripeJob {
    async fn run(&mut self) -> Result<StreamRecord> {
        loop {
            let (calls, done) = (&mut self.calls, &mut self.done);
            let call = tokio::select! {
                call = calls.recv() => call,
                written = async { match done.as_mut() { Some(done) => done.await, None => std::future::pending().await } } => {
                    self.done = None;
                    let error = match written {
                        Ok(Err(error)) => error,
                        _ => Error::engine(format!("the vault writer of {} ended before its block list was committed", self.blob.stream)),
                    };
                    return Err(self.fail(error, AzureError::internal).1);
                }
            };
            let Some(call) = call else {
                return Err(self
                    .fail(
                        Error::engine("the blob endpoint stopped"),
                        AzureError::internal,
                    )
                    .1);
            };
            let (response, end) = match call.op {
                Op::PutBlob(content) => self.put_blob(content).await,
                Op::PutBlock(id, content) => self.put_block(id, content).await,
                Op::PutBlockList(ids) => self.put_block_list(&ids).await,
                Op::Delete => self.delete(),
                Op::Get { .. } => (
                    AzureError::internal("a backup stripe is not read").response(),
                    None,
                ),
            };
            let waiting = end.is_none()
                && response.status() == StatusCode::CREATED
                && self.with_state(|state| state.waiting(self.window));
            if waiting {
                self.held.push(call.reply);
                if self.held.len() > MAX_HELD {
                    let (response, error) = self.fail(
                        Error::engine(format!(
                            "an earlier block of {} did not arrive while {MAX_HELD} later blocks waited for it",
                            self.blob.stream
                        ))
                        .hint("SQL Server stopped sending a block; run the backup again (a retried backup starts over)"),
                        AzureError::internal,
                    );
                    self.answer_held(&response);
                    return Err(error);
                }
                continue;
            }
            self.answer_held(&response);
            let _ = call.reply.send(response);
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Answers the held Put Blocks: 201 when `response` is a success (their
    /// blocks are in the window or written), else 500 with the stripe's
    /// failure.
    fn answer_held(&mut self, response: &BlobResponse) {
        let failure = (!response.status().is_success()).then(|| {
            self.with_state(|state| match &state.phase {
                Phase::Failed(message) => message.clone(),
                _ => "the stripe failed".to_owned(),
            })
        });
        for held in self.held.drain(..) {
            let answer = match &failure {
                None => reply(StatusCode::CREATED, &[]),
                Some(message) => AzureError::internal(message.clone()).response(),
            };
            let _ = held.send(answer);
        }
    }

    /// Runs `f` on the stripe's state.
    fn with_state<T>(&self, f: impl FnOnce(&mut StripeState) -> T) -> T {
        let mut meta = lock(&self.blob.meta);
        match &mut meta.content {
            Content::Backup(state) => f(state),
            Content::Restore { .. } => unreachable!("a backup job owns backup blobs only"),
        }
    }

    /// Fails the stripe with `error`: records it for the listener, stops
    /// the vault writer, drops the window; returns SQL Server's answer
    /// (`answer` of the error's text) and the error.
    fn fail(&mut self, error: Error, answer: fn(String) -> AzureError) -> (BlobResponse, Error) {
        tracing::error!(stream = self.blob.stream, error = %error, "backup stripe failed");
        self.feed = None;
        let message = error.to_string();
        self.with_state(|state| {
            state.window.clear();
            state.phase = Phase::Failed(message.clone());
        });
        (answer(message).response(), error)
    }

    /// Fails the stripe, answering 500 `InternalError`.
    fn failed(&mut self, error: Error) -> Step {
        let (response, error) = self.fail(error, AzureError::internal);
        (response, Some(Err(error)))
    }

    /// Hands `chunk` to the vault writer; the writer's error when it stopped.
    async fn send(&mut self, chunk: Chunk) -> Result<()> {
        let sent = match &self.feed {
            Some(feed) => feed.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        Err(self.writer_outcome().await.err().unwrap_or_else(|| {
            Error::engine(format!(
                "the vault writer of {} stopped reading",
                self.blob.stream
            ))
        }))
    }

    /// Waits for the vault writer's outcome.
    async fn writer_outcome(&mut self) -> Result<StreamRecord> {
        match self.done.take() {
            Some(done) => done.await.unwrap_or_else(|_| {
                Err(Error::engine(format!(
                    "the vault writer of {} vanished",
                    self.blob.stream
                )))
            }),
            None => Err(Error::engine(format!(
                "the vault writer of {} already ended",
                self.blob.stream
            ))),
        }
    }

    /// Put Blob: empty creates or clears the blob (nothing written yet);
    /// with content it is the whole stripe, committed at once.
    async fn put_blob(&mut self, content: Bytes) -> Step {
        let written = self.with_state(|state| state.written.len());
        if written > 0 {
            return self.failed(Error::engine(format!(
                "SQL Server replaced {} after {written} of its blocks were written to the vault, which cannot be taken back",
                self.blob.name
            )));
        }
        self.with_state(|state| state.window.clear());
        if content.is_empty() {
            let mut meta = lock(&self.blob.meta);
            meta.exists = true;
            meta.touch();
            let headers = [
                ("etag", meta.etag()),
                ("last-modified", super::azure::http_date(meta.modified)),
            ];
            return (reply(StatusCode::CREATED, &headers), None);
        }
        let size = content.len() as u64;
        if let Err(error) = self.send(Chunk::Data(content)).await {
            return self.failed(error);
        }
        self.commit(Vec::new(), size).await
    }

    /// Put Block: into the window; the block leaving it goes to the vault.
    async fn put_block(&mut self, id: BlockId, content: Bytes) -> Step {
        if self.with_state(|state| state.written_ids.contains(&id)) {
            return self.failed(
                Error::engine(format!(
                    "SQL Server put block {id} of {} again after it left the reorder window of {} blocks and was written to the vault",
                    self.blob.stream, self.window
                ))
                .in_message("stream", &self.blob.stream)
                .hint("raise reorder_window (blocks held in memory per backup, shared by its stripes) in the instance's [sqlserver.<name>] section, and run the backup again"),
            );
        }
        let window = self.window;
        for leaving in self.with_state(|state| state.put(id, content, window)) {
            if let Err(error) = self.send(Chunk::Data(leaving)).await {
                return self.failed(error);
            }
        }
        (reply(StatusCode::CREATED, &[]), None)
    }

    /// Put Block List: checks the order, writes the rest of the blocks in
    /// list order, ends the stream and waits until it is in the vault.
    async fn put_block_list(&mut self, ids: &[BlockId]) -> Step {
        let (stream, window) = (self.blob.stream.clone(), self.window);
        let rest = match self.with_state(|state| state.commit_order(ids, &stream, window)) {
            Ok(rest) => rest,
            Err(error) => {
                let (response, error) = self.fail(error, invalid_list);
                return (response, Some(Err(error)));
            }
        };
        let mut blocks = self.with_state(|state| state.written.clone());
        for (id, bytes) in rest {
            blocks.push((id, bytes.len() as u64));
            if let Err(error) = self.send(Chunk::Data(bytes)).await {
                return self.failed(error);
            }
        }
        let size = blocks.iter().map(|(_, size)| size).sum();
        self.commit(blocks, size).await
    }

    /// Ends the stream, waits for the vault, and commits `blocks` (`size`
    /// bytes in all).
    async fn commit(&mut self, blocks: Vec<(BlockId, u64)>, size: u64) -> Step {
        if let Err(error) = self.send(Chunk::End).await {
            return self.failed(error);
        }
        self.feed = None;
        let record = match self.writer_outcome().await {
            Ok(record) => record,
            Err(error) => return self.failed(error),
        };
        if record.raw_size != size {
            return self.failed(
                Error::integrity(format!(
                    "the vault recorded {} bytes for {}, but its blocks hold {size}",
                    record.raw_size, self.blob.stream
                ))
                .in_message("stream", &self.blob.stream),
            );
        }
        let mut meta = lock(&self.blob.meta);
        if let Content::Backup(state) = &mut meta.content {
            state.phase = Phase::Committed { blocks, size };
        }
        meta.exists = true;
        meta.touch();
        tracing::info!(
            stream = self.blob.stream,
            bytes = size,
            "backup stripe committed"
        );
        let headers = [
            ("etag", meta.etag()),
            ("last-modified", super::azure::http_date(meta.modified)),
        ];
        (reply(StatusCode::CREATED, &headers), Some(Ok(record)))
    }

    /// Delete Blob while receiving: harmless before any block is written
    /// (SQL Server may clear a blob before writing it), the end of the
    /// stripe after (SQL Server abandoned the backup).
    fn delete(&mut self) -> Step {
        let (exists, held, written) = {
            let meta = lock(&self.blob.meta);
            let (held, written) = match &meta.content {
                Content::Backup(state) => (state.window.len(), state.written.len()),
                Content::Restore { .. } => (0, 0),
            };
            (meta.exists, held, written)
        };
        if written > 0 {
            let error = Error::engine(format!(
                "SQL Server deleted {} before committing its block list: the backup was abandoned",
                self.blob.name
            ))
            .hint("see SQL Server's error log for why its BACKUP failed");
            let (_, error) = self.fail(error, AzureError::internal);
            return (reply(StatusCode::ACCEPTED, &[]), Some(Err(error)));
        }
        if !exists && held == 0 {
            return (AzureError::blob_not_found(&self.blob.name).response(), None);
        }
        self.with_state(|state| state.window.clear());
        let mut meta = lock(&self.blob.meta);
        meta.exists = false;
        meta.lease = None;
        meta.touch();
        (reply(StatusCode::ACCEPTED, &[]), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::ErrorKind;

    fn id(n: u8) -> BlockId {
        BlockId(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [n],
        ))
    }

    #[test]
    fn the_window_emits_the_oldest_block_and_a_re_put_replaces_bytes() {
        let mut state = StripeState::default();
        assert!(state.put(id(0), Bytes::from_static(b"a"), 2).is_empty());
        assert!(state.put(id(1), Bytes::from_static(b"b"), 2).is_empty());
        // A retried block replaces what the window holds.
        assert!(state.put(id(0), Bytes::from_static(b"A"), 2).is_empty());
        assert_eq!(
            state.put(id(2), Bytes::from_static(b"c"), 2),
            [Bytes::from_static(b"A")]
        );
        let rest = state
            .commit_order(&[id(0), id(2), id(1)], "stripe-000", 2)
            .unwrap();
        let rest: Vec<_> = rest.into_iter().map(|(_, b)| b).collect();
        assert_eq!(rest, [Bytes::from_static(b"c"), Bytes::from_static(b"b")]);
    }

    /// Puts blocks `arrivals` (numbers, ids made by `id_of`) into a window
    /// of 4, then commits them in number order; the bytes written in order.
    fn stream_of(id_of: fn(usize) -> BlockId, arrivals: &[usize]) -> Result<Vec<u8>> {
        let mut state = StripeState::default();
        let mut stream = Vec::new();
        for &n in arrivals {
            for bytes in state.put(id_of(n), Bytes::from(vec![n as u8]), 4) {
                stream.extend_from_slice(&bytes);
            }
        }
        let mut list: Vec<usize> = arrivals.to_vec();
        list.sort_unstable();
        list.dedup();
        let list: Vec<BlockId> = list.into_iter().map(id_of).collect();
        for (_, bytes) in state.commit_order(&list, "stripe-000", 4)? {
            stream.extend_from_slice(&bytes);
        }
        Ok(stream)
    }

    const SHUFFLED: [usize; 16] = [1, 0, 3, 2, 4, 7, 5, 6, 10, 8, 9, 11, 15, 12, 14, 13];

    #[test]
    fn sequence_numbered_ids_undo_reordering_within_the_window() {
        let decimal = |n: usize| {
            BlockId(base64::engine::general_purpose::STANDARD.encode(format!("{n:016}")))
        };
        let little = |n: usize| {
            BlockId(base64::engine::general_purpose::STANDARD.encode((n as u32).to_le_bytes()))
        };
        let big = |n: usize| {
            BlockId(
                base64::engine::general_purpose::STANDARD.encode((n as u64 + 1000).to_be_bytes()),
            )
        };
        let expected: Vec<u8> = (0..16).collect();
        for id_of in [decimal, little, big] {
            assert_eq!(stream_of(id_of, &SHUFFLED).unwrap(), expected);
        }
    }

    /// A block overtaken by more blocks than the window holds (SQL Server
    /// with several buffers in flight, one of them slow): the window waits
    /// for it instead of writing a later block first, then lets the queue
    /// out in order.
    #[test]
    fn a_missing_sequence_number_holds_the_window_until_it_arrives() {
        let decimal = |n: usize| {
            BlockId(base64::engine::general_purpose::STANDARD.encode(format!("{n:016}")))
        };
        let mut state = StripeState::default();
        let mut stream = Vec::new();
        // Block 1 comes after blocks 2 to 9.
        for n in [0, 2, 3, 4, 5, 6, 7, 8, 9] {
            for bytes in state.put(decimal(n), Bytes::from(vec![n as u8]), 4) {
                stream.extend_from_slice(&bytes);
            }
        }
        assert_eq!(stream, [0], "nothing after block 0 leaves before block 1");
        assert!(state.waiting(4));
        for bytes in state.put(decimal(1), Bytes::from(vec![1]), 4) {
            stream.extend_from_slice(&bytes);
        }
        assert!(!state.waiting(4));
        assert_eq!(stream, [0, 1, 2, 3, 4, 5]);
        let list: Vec<BlockId> = (0..10).map(decimal).collect();
        for (_, bytes) in state.commit_order(&list, "stripe-000", 4).unwrap() {
            stream.extend_from_slice(&bytes);
        }
        assert_eq!(stream, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn random_ids_leave_the_window_in_arrival_order() {
        // Ids with no order of their own: an in-order arrival commits...
        let random =
            |n: usize| BlockId(base64::engine::general_purpose::STANDARD.encode(blake3_like(n)));
        let in_order: Vec<usize> = (0..16).collect();
        assert_eq!(
            stream_of(random, &in_order).unwrap(),
            (0..16).collect::<Vec<u8>>()
        );
        // ...and reordering beyond the tail cannot be undone.
        assert!(stream_of(random, &SHUFFLED).is_err());
    }

    /// 16 bytes that look random, for id `n`.
    fn blake3_like(n: usize) -> [u8; 16] {
        let mut x = (n as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        x ^= x >> 61;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D_2545_F491_4F6C_DD1D);
        x.to_be_bytes()
    }

    #[test]
    fn an_order_the_written_blocks_do_not_match_is_refused() {
        let mut state = StripeState::default();
        for n in 0..4 {
            state.put(id(n), Bytes::from_static(b"x"), 1);
        }
        let err = state
            .commit_order(&[id(1), id(0), id(2), id(3)], "stripe-002", 1)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Engine);
        assert!(err.to_string().contains("stripe-002"), "{err}");
        assert!(
            err.to_string().contains("reorder window of 1 blocks"),
            "{err}"
        );
        let err = state
            .commit_order(&[id(0), id(1), id(2), id(3), id(9)], "stripe-002", 1)
            .unwrap_err();
        assert!(err.to_string().contains("never put"), "{err}");
    }
}

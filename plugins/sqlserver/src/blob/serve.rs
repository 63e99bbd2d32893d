//! Serving a committed backup's stripes to `RESTORE ... FROM URL`.
//!
//! SQL Server reads a URL device with ranged Get Blob requests, mostly one
//! after the other from the start. Each blob keeps one sequential read
//! open between requests: a GET that starts where the previous one ended
//! is served from it, and the read runs ahead into a bounded buffer while
//! SQL Server works on what it got. A GET anywhere else is one ranged read
//! of the vault ([`RestoreSource::read_range`]) that leaves the open read
//! in place (SQL Server reads a header, then comes back).
//!
//! The first chunk of every range is read before the response starts, so
//! that a vault error becomes a 500 SQL Server reports; an error after that
//! cuts the response short (SQL Server sees a failed read either way).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use strata_core::catalog::manifest::BackupId;
use strata_core::plugin::RestoreSource;
use strata_core::{Error, Result};
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::azure::{AzureError, BlobResponse, ResponseBody, reply};
use super::route::{Blob, Call, Op, lock};

/// How far a sequential read runs ahead of SQL Server, in bytes: four of
/// its `MAXTRANSFERSIZE` reads, so that the vault reader keeps decoding
/// while SQL Server takes one range and asks for the next.
const READ_AHEAD: usize = 16 * 1024 * 1024;

/// The size of the chunks a response is sent in, in bytes.
const CHUNK: u64 = 256 * 1024;

/// One blob of a restore and the calls for it.
pub struct ServedBlob {
    /// The blob.
    pub blob: Arc<Blob>,
    /// The backup it belongs to.
    pub backup: BackupId,
    /// The stream's raw size in bytes.
    pub size: u64,
    /// The blob's calls.
    pub calls: mpsc::Receiver<Call>,
}

/// A read of the vault in progress: the bytes `[next, end)` of a stream
/// still to come through a bounded pipe, and the read filling it.
struct OpenRead<'a> {
    /// The offset of the next byte `pipe` yields.
    next: u64,
    /// Where the read ends.
    end: u64,
    pipe: DuplexStream,
    /// The read of the vault, until it ends.
    filling: Option<Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>>>,
    /// How the read of the vault failed, once it did.
    failure: Option<Error>,
    /// `stripe-000 of backup X`, for messages.
    what: String,
}

impl<'a> OpenRead<'a> {
    /// Starts reading bytes `[offset, offset + len)` of `served` from
    /// `source`: the whole stream with `read_stream` (which also checks the
    /// stream's digest), any other range with `read_range`.
    fn start(source: &'a dyn RestoreSource, served: &ServedBlob, offset: u64, len: u64) -> Self {
        let (pipe, mut writer) = tokio::io::duplex(READ_AHEAD);
        let backup = served.backup.clone();
        let stream = served.blob.stream.clone();
        let whole = offset == 0 && len == served.size;
        let filling = Box::pin(async move {
            if whole {
                source.read_stream(&backup, &stream, &mut writer).await
            } else {
                source
                    .read_range(&backup, &stream, offset, len, &mut writer)
                    .await
            }
        });
        OpenRead {
            next: offset,
            end: offset + len,
            pipe,
            filling: Some(filling),
            failure: None,
            what: format!("{} of backup {}", served.blob.stream, served.backup),
        }
    }

    /// Lets the read run ahead until it ends (pending forever after).
    async fn run_ahead(&mut self) {
        match self.filling.as_mut() {
            Some(filling) => {
                if let Err(error) = filling.await {
                    self.failure = Some(error);
                }
                self.filling = None;
            }
            None => std::future::pending().await,
        }
    }

    /// The next bytes, at most `max`.
    async fn chunk(&mut self, max: u64) -> Result<Bytes> {
        let mut buffer = BytesMut::with_capacity(max as usize);
        loop {
            let (pipe, filling) = (&mut self.pipe, &mut self.filling);
            tokio::select! {
                biased;
                read = pipe.read_buf(&mut buffer) => {
                    let n = read.map_err(|e| Error::io(format!("reading {} from the vault: {e}", self.what)))?;
                    if n == 0 {
                        return Err(self.failure.take().unwrap_or_else(|| Error::integrity(format!(
                            "{} ended at byte {}, before byte {}: the vault holds less than its manifest records",
                            self.what, self.next, self.end
                        ))));
                    }
                    self.next += n as u64;
                    return Ok(buffer.freeze());
                }
                result = async { filling.as_mut().expect("polled only while filling").await }, if filling.is_some() => {
                    self.filling = None;
                    if let Err(error) = result {
                        self.failure = Some(error);
                    }
                }
            }
        }
    }
}

/// Answers the Get Blob requests of one blob until an error: a read of
/// the vault that failed (SQL Server was answered 500 first).
pub async fn serve(served: &mut ServedBlob, source: &dyn RestoreSource) -> Result<()> {
    let mut open: Option<OpenRead<'_>> = None;
    // Where the previous GET ended: a GET starting there is sequential.
    let mut previous_end = 0;
    loop {
        let ahead = async {
            match open.as_mut() {
                Some(read) => read.run_ahead().await,
                None => std::future::pending().await,
            }
        };
        let call = tokio::select! {
            call = served.calls.recv() => call,
            () = ahead => {
                if let Some(error) = open.as_mut().and_then(|read| read.failure.take()) {
                    return Err(error);
                }
                continue;
            }
        };
        let Some(call) = call else {
            return Ok(());
        };
        let Op::Get {
            offset,
            len,
            ranged,
        } = call.op
        else {
            let _ = call
                .reply
                .send(AzureError::internal("a restore blob is read only").response());
            continue;
        };
        let answer = Answer {
            reply: call.reply,
            offset,
            len,
            ranged,
        };
        let continues = open
            .as_ref()
            .is_some_and(|read| read.next == offset && read.end > offset);
        let result = if continues || offset == previous_end {
            if !continues {
                open = Some(OpenRead::start(
                    source,
                    served,
                    offset,
                    served.size - offset,
                ));
            }
            let read = open.as_mut().expect("opened above");
            answer.send(&served.blob, served.size, read).await
        } else {
            let mut once = OpenRead::start(source, served, offset, len);
            answer.send(&served.blob, served.size, &mut once).await
        };
        previous_end = offset + len;
        result?;
    }
}

/// A GET to answer: the range and where the answer goes.
struct Answer {
    reply: oneshot::Sender<BlobResponse>,
    offset: u64,
    len: u64,
    ranged: bool,
}

impl Answer {
    /// Sends `len` bytes from `read` as the answer (206 with
    /// `Content-Range` for a range, 200 for the whole blob of `size`
    /// bytes). A client that went away is not an error.
    async fn send(self, blob: &Blob, size: u64, read: &mut OpenRead<'_>) -> Result<()> {
        let first = if self.len == 0 {
            Bytes::new()
        } else {
            match read.chunk(self.len.min(CHUNK)).await {
                Ok(chunk) => chunk,
                Err(error) => {
                    let answer =
                        AzureError::internal(format!("reading {} failed: {error}", read.what));
                    tracing::error!(blob = blob.name, error = %error, "restore read failed");
                    let _ = self.reply.send(answer.response());
                    return Err(error);
                }
            }
        };
        let mut headers = lock(&blob.meta).headers();
        headers.push(("content-length", self.len.to_string()));
        let status = if self.ranged {
            let last = self.offset + self.len - 1;
            headers.push((
                "content-range",
                format!("bytes {}-{last}/{size}", self.offset),
            ));
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let (chunks, body) = mpsc::channel(2);
        let mut remaining = self.len - first.len() as u64;
        if !first.is_empty() {
            let _ = chunks.try_send(Ok(first));
        }
        let mut response = reply(status, &headers);
        *response.body_mut() = ResponseBody::Channel {
            chunks: body,
            remaining: self.len,
        };
        if self.reply.send(response).is_err() {
            return Ok(());
        }
        while remaining > 0 {
            match read.chunk(remaining.min(CHUNK)).await {
                Ok(chunk) => {
                    remaining -= chunk.len() as u64;
                    if chunks.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                }
                Err(error) => {
                    tracing::error!(blob = blob.name, error = %error, "restore read failed after the response started");
                    let _ = chunks
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

//! Requests to blobs: which job's blob a request names, the operations the
//! listener answers itself (properties, block lists, leases), and the
//! forwarding of the others to the job that owns the blob.
//!
//! A job registers its blobs under a token; the listener's connection
//! tasks look the blob up and either answer from the blob's shared state or
//! send the request (with its body read) to the job over the blob's channel
//! and wait for the job's answer. The job side runs inside the plugin's
//! `backup()`/`restore()` future, which lends it the vault's sink or source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::azure::{
    self, AzureError, BlobPath, BlobResponse, BlockId, Query, header, http_date, reply,
};
use super::block_list;
use super::stripe::{Phase, StripeState};

/// The largest request body the endpoint reads, in bytes. SQL Server puts
/// blocks of at most `MAXTRANSFERSIZE` (4 MiB); Azure's own limit is far
/// larger, but every body is held in memory until the job takes it.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// How many requests may wait for one blob's job.
const QUEUED_CALLS: usize = 16;

/// Locks `mutex`, also after a panic elsewhere (the state stays usable:
/// every update is a single assignment or push).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The jobs a listener serves, by token.
#[derive(Default)]
pub struct Routes {
    jobs: Mutex<HashMap<String, HashMap<String, Arc<Blob>>>>,
}

impl Routes {
    /// Serves `blobs` (by blob name) under `token` until [`remove`](Self::remove).
    pub fn insert(&self, token: String, blobs: Vec<Arc<Blob>>) {
        let blobs = blobs.into_iter().map(|b| (b.name.clone(), b)).collect();
        lock(&self.jobs).insert(token, blobs);
    }

    /// Stops serving `token`: its URLs answer 404 from now on.
    pub fn remove(&self, token: &str) {
        lock(&self.jobs).remove(token);
    }

    fn blob(&self, path: &BlobPath) -> Option<Arc<Blob>> {
        lock(&self.jobs).get(&path.token)?.get(&path.blob).cloned()
    }
}

/// A request the listener hands to the job owning the blob, with the
/// channel for the job's answer.
pub struct Call {
    /// What is asked.
    pub op: Op,
    /// Where the answer goes.
    pub reply: oneshot::Sender<BlobResponse>,
}

/// The operations a job answers.
#[derive(Debug)]
pub enum Op {
    /// Put Blob: the whole content (empty: create or clear the blob).
    PutBlob(Bytes),
    /// Put Block: an uncommitted block.
    PutBlock(BlockId, Bytes),
    /// Put Block List: the blocks of the blob, in order.
    PutBlockList(Vec<BlockId>),
    /// Delete Blob.
    Delete,
    /// Get Blob: `len` bytes from `offset`; `ranged` when a range was asked for.
    Get {
        /// The first byte.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// Whether the request named a range (206) or not (200).
        ranged: bool,
    },
}

/// One blob of a job: its name, the vault stream behind it, the state the
/// listener and the job share, and the channel to the job.
pub struct Blob {
    /// The blob's name in the URL (`stripe-000.bak`).
    pub name: String,
    /// The vault stream (`stripe-000`).
    pub stream: String,
    /// The shared state.
    pub meta: Mutex<BlobMeta>,
    calls: mpsc::Sender<Call>,
}

/// What the listener and the job share about a blob.
pub struct BlobMeta {
    /// Whether the blob exists (Put Blob or Put Block List made it).
    pub exists: bool,
    /// The active lease's id, if any. Leases never expire: a blob lives
    /// only as long as its job.
    pub lease: Option<String>,
    /// When the blob last changed.
    pub modified: DateTime<Utc>,
    /// Counts changes, for the ETag.
    pub version: u64,
    /// What the blob holds.
    pub content: Content,
}

/// What a blob holds.
pub enum Content {
    /// A stripe a backup is writing.
    Backup(StripeState),
    /// A stripe of a committed backup, served read-only, of `size` bytes.
    Restore {
        /// The stream's raw size.
        size: u64,
    },
}

impl BlobMeta {
    /// The ETag of the blob's current version.
    pub fn etag(&self) -> String {
        format!(
            "\"0x8D{:012X}{:04X}\"",
            self.modified.timestamp_millis(),
            self.version & 0xFFFF
        )
    }

    /// Records a change.
    pub fn touch(&mut self) {
        self.version += 1;
        self.modified = Utc::now();
    }

    /// The committed size in bytes.
    pub fn size(&self) -> u64 {
        match &self.content {
            Content::Backup(stripe) => stripe.committed_size(),
            Content::Restore { size } => *size,
        }
    }

    /// `Last-Modified`, `ETag`, the blob type and the lease headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("last-modified", http_date(self.modified)),
            ("etag", self.etag()),
            ("x-ms-blob-type", "BlockBlob".to_owned()),
            ("accept-ranges", "bytes".to_owned()),
        ];
        if self.lease.is_some() {
            headers.push(("x-ms-lease-status", "locked".to_owned()));
            headers.push(("x-ms-lease-state", "leased".to_owned()));
            headers.push(("x-ms-lease-duration", "infinite".to_owned()));
        } else {
            headers.push(("x-ms-lease-status", "unlocked".to_owned()));
            headers.push(("x-ms-lease-state", "available".to_owned()));
        }
        headers
    }

    /// Whether a request with `headers` may go ahead given the blob's lease
    /// (Microsoft's "Lease Blob": writes to a leased blob need its lease id;
    /// any request that names a lease id must name the active one).
    fn check_lease(&self, headers: &HeaderMap, write: bool) -> Result<(), AzureError> {
        let given = header(headers, "x-ms-lease-id");
        match (&self.lease, given) {
            (Some(_), None) if write => Err(AzureError::new(
                StatusCode::PRECONDITION_FAILED,
                "LeaseIdMissing",
                "There is currently a lease on the blob and no lease ID was specified in the request.",
            )),
            (Some(active), Some(given)) if !active.eq_ignore_ascii_case(given) => {
                Err(AzureError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "LeaseIdMismatchWithBlobOperation",
                    "The lease ID specified did not match the lease ID for the blob.",
                ))
            }
            (None, Some(_)) => Err(AzureError::new(
                StatusCode::PRECONDITION_FAILED,
                "LeaseNotPresentWithBlobOperation",
                "There is currently no lease on the blob.",
            )),
            _ => Ok(()),
        }
    }
}

impl Blob {
    /// A blob a backup writes into stream `stream`; the receiver goes to
    /// the job.
    pub fn backup(stream: &str) -> (Arc<Blob>, mpsc::Receiver<Call>) {
        Self::with(stream, Content::Backup(StripeState::default()), false)
    }

    /// A blob serving stream `stream` of `size` bytes for a restore.
    pub fn restore(stream: &str, size: u64) -> (Arc<Blob>, mpsc::Receiver<Call>) {
        Self::with(stream, Content::Restore { size }, true)
    }

    fn with(stream: &str, content: Content, exists: bool) -> (Arc<Blob>, mpsc::Receiver<Call>) {
        let (calls, receiver) = mpsc::channel(QUEUED_CALLS);
        let blob = Blob {
            name: blob_name(stream),
            stream: stream.to_owned(),
            meta: Mutex::new(BlobMeta {
                exists,
                lease: None,
                modified: Utc::now(),
                version: 0,
                content,
            }),
            calls,
        };
        (Arc::new(blob), receiver)
    }

    /// Hands `op` to the job and waits for its answer.
    async fn forward(&self, op: Op) -> Result<BlobResponse, AzureError> {
        let (reply, answer) = oneshot::channel();
        if self.calls.send(Call { op, reply }).await.is_err() {
            return Err(self.not_served());
        }
        answer.await.map_err(|_| self.not_served())
    }

    /// Why no job answered: the stripe is done, failed, or nobody reads.
    fn not_served(&self) -> AzureError {
        match &lock(&self.meta).content {
            Content::Backup(stripe) => match &stripe.phase {
                Phase::Committed { .. } => committed(&self.name),
                Phase::Failed(why) => AzureError::internal(why.clone()),
                Phase::Receiving => AzureError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServerBusy",
                    format!("No backup job is receiving {}.", self.name),
                ),
            },
            Content::Restore { .. } => AzureError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusy",
                format!("No restore is serving {}.", self.name),
            ),
        }
    }
}

/// The blob name of stream `stream` in URLs.
pub fn blob_name(stream: &str) -> String {
    format!("{stream}.bak")
}

/// 409 for a write to a stripe whose block list is committed.
fn committed(blob: &str) -> AzureError {
    AzureError::new(
        StatusCode::CONFLICT,
        "BlobAlreadyExists",
        format!("{blob} is committed to the vault and cannot be changed."),
    )
}

/// 403 for a write to a blob served for a restore.
fn read_only(blob: &str) -> AzureError {
    AzureError::new(
        StatusCode::FORBIDDEN,
        "AuthorizationPermissionMismatch",
        format!("{blob} belongs to a backup served read-only for a restore."),
    )
}

/// Answers one request: the blob's operation, or Azure's error, with the
/// headers every response carries. Errors are logged.
pub async fn handle(routes: &Routes, request: Request<Incoming>) -> BlobResponse {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let mut response = match dispatch(routes, &parts, body).await {
        Ok(response) => response,
        Err(error) => {
            let (method, path) = (&parts.method, parts.uri.path());
            let (status, code, message) = (error.status.as_u16(), error.code, &error.message);
            if error.status.is_server_error() {
                tracing::error!(%method, path, status, code, message, request_id, "blob endpoint request failed");
            } else {
                tracing::warn!(%method, path, status, code, message, request_id, "blob endpoint request refused");
            }
            error.response()
        }
    };
    azure::finish(&mut response, &parts.headers, &request_id);
    response
}

async fn dispatch(
    routes: &Routes,
    parts: &Parts,
    body: Incoming,
) -> Result<BlobResponse, AzureError> {
    let path = BlobPath::parse(parts.uri.path())
        .ok_or_else(|| AzureError::blob_not_found(parts.uri.path()))?;
    let blob = routes
        .blob(&path)
        .ok_or_else(|| AzureError::blob_not_found(parts.uri.path()))?;
    let query = Query::parse(parts.uri.query())?;
    let headers = &parts.headers;
    match (&parts.method, query.comp.as_deref()) {
        (&Method::PUT, Some("lease")) => lease(&blob, headers),
        (&Method::HEAD, None) => properties(&blob, headers),
        (&Method::GET, Some("blocklist")) => block_list(&blob, headers, &query),
        (&Method::GET, None) => {
            let (offset, len, ranged) = {
                let meta = lock(&blob.meta);
                meta.check_lease(headers, false)?;
                match &meta.content {
                    Content::Restore { size } => match azure::parse_range(headers, *size)? {
                        Some((offset, len)) => (offset, len, true),
                        None => (0, *size, false),
                    },
                    Content::Backup(_) => {
                        return Err(AzureError::new(
                            StatusCode::CONFLICT,
                            "OperationNotAllowed",
                            format!(
                                "{} is being written by a backup and cannot be read.",
                                blob.name
                            ),
                        ));
                    }
                }
            };
            blob.forward(Op::Get {
                offset,
                len,
                ranged,
            })
            .await
        }
        (&Method::PUT, None) => {
            check_write(&blob, headers)?;
            let content = read_body(body).await?;
            blob.forward(Op::PutBlob(content)).await
        }
        (&Method::PUT, Some("block")) => {
            let id = query
                .blockid
                .as_deref()
                .ok_or_else(|| AzureError::bad_query("blockid", "missing"))?;
            let id = BlockId::parse(id)?;
            check_write(&blob, headers)?;
            let content = read_body(body).await?;
            blob.forward(Op::PutBlock(id, content)).await
        }
        (&Method::PUT, Some("blocklist")) => {
            check_write(&blob, headers)?;
            let ids = block_list::parse(&read_body(body).await?)?;
            blob.forward(Op::PutBlockList(ids)).await
        }
        (&Method::DELETE, None) => delete(&blob, headers).await,
        (method, comp) => Err(AzureError::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedHttpVerb",
            format!(
                "The endpoint does not support {method} with comp={} on a blob.",
                comp.unwrap_or("(none)")
            ),
        )),
    }
}

/// Refuses a write the blob's state or lease forbids.
fn check_write(blob: &Blob, headers: &HeaderMap) -> Result<(), AzureError> {
    let meta = lock(&blob.meta);
    match &meta.content {
        Content::Restore { .. } => return Err(read_only(&blob.name)),
        Content::Backup(stripe) => match &stripe.phase {
            Phase::Committed { .. } => return Err(committed(&blob.name)),
            Phase::Failed(why) => return Err(AzureError::internal(why.clone())),
            Phase::Receiving => {}
        },
    }
    meta.check_lease(headers, true)
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, AzureError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AzureError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            format!("The request body is larger than {MAX_BODY} bytes."),
        )),
        Err(e) => Err(AzureError::new(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("The request body could not be read: {e}."),
        )),
    }
}

/// Delete Blob: a committed or failed stripe is only marked deleted (its
/// bytes are in the vault, or were discarded); one being received is the
/// job's to decide.
async fn delete(blob: &Blob, headers: &HeaderMap) -> Result<BlobResponse, AzureError> {
    {
        let mut meta = lock(&blob.meta);
        let receiving = match &meta.content {
            Content::Restore { .. } => return Err(read_only(&blob.name)),
            Content::Backup(stripe) => matches!(stripe.phase, Phase::Receiving),
        };
        if !receiving {
            if !meta.exists {
                return Err(AzureError::blob_not_found(&blob.name));
            }
            meta.check_lease(headers, true)?;
            tracing::warn!(
                blob = blob.name,
                "SQL Server deleted a stripe it had finished"
            );
            meta.exists = false;
            meta.lease = None;
            meta.touch();
            return Ok(reply(StatusCode::ACCEPTED, &[]));
        }
        meta.check_lease(headers, true)?;
    }
    blob.forward(Op::Delete).await
}

/// Get Blob Properties (HEAD).
fn properties(blob: &Blob, headers: &HeaderMap) -> Result<BlobResponse, AzureError> {
    let meta = lock(&blob.meta);
    if !meta.exists {
        return Err(AzureError::blob_not_found(&blob.name));
    }
    meta.check_lease(headers, false)?;
    let mut response_headers = meta.headers();
    response_headers.push(("content-length", meta.size().to_string()));
    Ok(reply(StatusCode::OK, &response_headers))
}

/// Get Block List: the committed blocks and, while a backup writes the
/// stripe, the blocks received so far.
fn block_list(blob: &Blob, headers: &HeaderMap, query: &Query) -> Result<BlobResponse, AzureError> {
    let meta = lock(&blob.meta);
    meta.check_lease(headers, false)?;
    let (want_committed, want_uncommitted) = match query
        .blocklisttype
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("committed") => (true, false),
        Some("uncommitted") => (false, true),
        Some("all") => (true, true),
        Some(_) => {
            return Err(AzureError::bad_query(
                "blocklisttype",
                "expected committed, uncommitted or all",
            ));
        }
    };
    let (committed, uncommitted) = match &meta.content {
        Content::Backup(stripe) => (stripe.committed_blocks(), stripe.uncommitted_blocks()),
        Content::Restore { .. } => (Vec::new(), Vec::new()),
    };
    if !meta.exists && uncommitted.is_empty() {
        return Err(AzureError::blob_not_found(&blob.name));
    }
    let xml = block_list::render(
        want_committed.then_some(&committed[..]),
        want_uncommitted.then_some(&uncommitted[..]),
    );
    let mut response_headers = meta.headers();
    response_headers.push(("x-ms-blob-content-length", meta.size().to_string()));
    response_headers.push(("content-type", "application/xml".to_owned()));
    let mut response = reply(StatusCode::OK, &response_headers);
    *response.body_mut() = azure::ResponseBody::full(xml);
    Ok(response)
}

/// Lease Blob (Microsoft's "Lease Blob"): acquire, renew, change, release
/// and break. A lease is infinite whatever duration was asked (the blob
/// lives only as long as its job), and a break takes effect at once.
fn lease(blob: &Blob, headers: &HeaderMap) -> Result<BlobResponse, AzureError> {
    let action = header(headers, "x-ms-lease-action")
        .ok_or_else(|| AzureError::bad_header("x-ms-lease-action", "missing"))?
        .to_ascii_lowercase();
    let given = header(headers, "x-ms-lease-id");
    let proposed = header(headers, "x-ms-proposed-lease-id");
    let mut meta = lock(&blob.meta);
    if !meta.exists {
        return Err(AzureError::blob_not_found(&blob.name));
    }
    let mismatch = || {
        AzureError::new(
            StatusCode::CONFLICT,
            "LeaseIdMismatchWithLeaseOperation",
            "The lease ID specified did not match the lease ID for the blob.",
        )
    };
    let not_present = || {
        AzureError::new(
            StatusCode::CONFLICT,
            "LeaseNotPresentWithLeaseOperation",
            "There is currently no lease on the blob.",
        )
    };
    // The active lease, which `given` must name.
    let check_given = |active: &Option<String>| -> Result<String, AzureError> {
        let given = given.ok_or_else(|| AzureError::bad_header("x-ms-lease-id", "missing"))?;
        match active {
            None => Err(not_present()),
            Some(active) if !active.eq_ignore_ascii_case(given) => Err(mismatch()),
            Some(active) => Ok(active.clone()),
        }
    };
    let (status, id) = match action.as_str() {
        "acquire" => {
            if let Some(duration) = header(headers, "x-ms-lease-duration") {
                let valid = matches!(duration.trim().parse::<i64>(), Ok(-1 | 15..=60));
                if !valid {
                    return Err(AzureError::bad_header(
                        "x-ms-lease-duration",
                        "-1 (infinite) or 15 to 60 seconds",
                    ));
                }
            }
            let id = match (&meta.lease, proposed) {
                (Some(active), Some(proposed)) if active.eq_ignore_ascii_case(proposed) => {
                    active.clone()
                }
                (Some(_), _) => {
                    return Err(AzureError::new(
                        StatusCode::CONFLICT,
                        "LeaseAlreadyPresent",
                        "There is already a lease present.",
                    ));
                }
                (None, Some(proposed)) => proposed.to_owned(),
                (None, None) => uuid::Uuid::new_v4().to_string(),
            };
            meta.lease = Some(id.clone());
            (StatusCode::CREATED, Some(id))
        }
        "renew" => (StatusCode::OK, Some(check_given(&meta.lease)?)),
        "change" => {
            check_given(&meta.lease)?;
            let proposed = proposed
                .ok_or_else(|| AzureError::bad_header("x-ms-proposed-lease-id", "missing"))?;
            meta.lease = Some(proposed.to_owned());
            (StatusCode::OK, Some(proposed.to_owned()))
        }
        "release" => {
            check_given(&meta.lease)?;
            meta.lease = None;
            (StatusCode::OK, None)
        }
        "break" => {
            if meta.lease.take().is_none() {
                return Err(not_present());
            }
            (StatusCode::ACCEPTED, None)
        }
        _ => {
            return Err(AzureError::bad_header(
                "x-ms-lease-action",
                "expected acquire, renew, change, release or break",
            ));
        }
    };
    let mut response_headers = vec![
        ("last-modified", http_date(meta.modified)),
        ("etag", meta.etag()),
    ];
    if let Some(id) = id {
        response_headers.push(("x-ms-lease-id", id));
    }
    if action == "break" {
        response_headers.push(("x-ms-lease-time", "0".to_owned()));
    }
    Ok(reply(status, &response_headers))
}

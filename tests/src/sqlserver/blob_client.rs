//! The HTTP calls SQL Server makes against Azure Blob Storage for a URL
//! device, so that the emulator exercises Strata's blob endpoint the way
//! a real server does.
//!
//! With a credential of type `SHARED ACCESS SIGNATURE` named after the
//! container, SQL Server writes block blobs ("SQL Server back up to URL for
//! Microsoft Azure Blob Storage"). For each URL of a `BACKUP ... TO URL`
//! statement it makes these requests (the Blob service REST API pages
//! "Put Blob", "Lease Blob", "Put Block", "Put Block List"):
//!
//! 1. `PUT <blob>` with `Content-Length: 0` and `x-ms-blob-type: BlockBlob`
//!    (create or, `WITH FORMAT`, clear the blob);
//! 2. `PUT <blob>?comp=lease` with `x-ms-lease-action: acquire`,
//!    `x-ms-lease-duration: -1` (infinite) and `x-ms-proposed-lease-id`;
//! 3. `PUT <blob>?comp=block&blockid=<base64>` for each block of
//!    `MAXTRANSFERSIZE` bytes, with `x-ms-lease-id`; block ids of one blob
//!    all have the same length, as the service requires;
//! 4. `PUT <blob>?comp=blocklist` with the block list as XML **in UTF-16
//!    with a byte-order mark**, with `x-ms-lease-id`;
//! 5. `PUT <blob>?comp=lease` with `x-ms-lease-action: release`.
//!
//! `RESTORE ... FROM URL` reads each blob with `HEAD` (its length), then
//! `GET`s of `MAXTRANSFERSIZE` bytes with `x-ms-range`, in order.
//!
//! The SAS secret of the credential is put first in every query string,
//! before the operation's parameters, as SQL Server does. Every request
//! carries `x-ms-version`, `x-ms-date` and a SQL Server user agent.
//! Names resolve through the configured map only (SQL Server resolves the
//! endpoint's name through the hosts file); certificates are checked
//! against the configured CAs only (the machine's trust store on a real
//! server).

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::Stream;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::media::{self, MAX_TRANSFER_SIZE, MediaBlocks, MediaError};

/// The REST API version SQL Server sends (`x-ms-version`).
pub const API_VERSION: &str = "2019-02-02";

/// The user agent of the emulated SQL Server's backup-to-URL client.
pub const USER_AGENT: &str = "SQLServer/16.0.4135.4 (Strata emulator; BackupToUrl)";

/// How the emulated SQL Server reaches blob storage.
#[derive(Clone, Debug, Default)]
pub struct BlobClientConfig {
    /// The CA certificates (PEM, one or several per entry) it trusts; no
    /// other root is trusted.
    pub trusted_ca_pem: Vec<Vec<u8>>,
    /// Host names and the addresses they resolve to (the hosts file); any
    /// other name does not resolve. The port of a URL replaces the port given here.
    pub resolve: Vec<(String, SocketAddr)>,
    /// The SAS secret of the credential (`sv=...&sig=...`, no leading `?`),
    /// put first in every query string; empty: none.
    pub sas: String,
    /// How many blocks of one blob are put at the same time (SQL Server's
    /// buffers; with more than one, blocks may arrive out of order). 0 counts as 1.
    pub blocks_in_flight: usize,
}

/// One request the client made, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `PUT`, `GET`, `HEAD`...
    pub method: String,
    /// The URL's path, without the query (e.g. `/strata/<token>/stripe-000.bak`).
    pub path: String,
    /// The `comp` parameter: `block`, `blocklist`, `lease`, or `None`.
    pub comp: Option<String>,
    /// The block id of a Put Block (base64, as sent before URL encoding).
    pub block_id: Option<String>,
    /// `x-ms-lease-action` of a Lease Blob.
    pub lease_action: Option<String>,
    /// `x-ms-lease-id` sent (writes under a lease, release).
    pub lease_id: Option<String>,
    /// `x-ms-range` of a ranged Get Blob (`bytes=a-b`).
    pub range: Option<String>,
    /// The length of the request body in bytes.
    pub body_len: u64,
    /// The response status; `None` when no response came (connection, TLS,
    /// name resolution failed).
    pub status: Option<u16>,
}

/// A URL device that failed. SQL Server reports it as 3201 "Cannot open
/// backup device '<device>'. Operating system error <os_error>."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError {
    /// The URL of the device.
    pub device: String,
    /// What failed, as SQL Server's HTTP stack words it: a WinHTTP error
    /// (`12007(...)` name not resolved, `12029(...)` cannot connect,
    /// `12175(...)` TLS or certificate, `12002(...)` timeout) or the HTTP
    /// status with the storage error code of the response body.
    pub os_error: String,
}

impl DeviceError {
    /// SQL Server's error number for a device that cannot be opened.
    pub const NUMBER: u32 = 3201;

    fn new(device: &str, os_error: impl Into<String>) -> DeviceError {
        DeviceError {
            device: device.to_owned(),
            os_error: os_error.into(),
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cannot open backup device '{}'. Operating system error {}.",
            self.device, self.os_error
        )
    }
}

impl std::error::Error for DeviceError {}

/// The HTTP client of the emulated SQL Server for URL devices. Clones share
/// the connection pool and the request record.
#[derive(Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    sas: Arc<str>,
    blocks_in_flight: usize,
    record: Arc<Mutex<Vec<RecordedRequest>>>,
    log_block_lists: bool,
}

impl fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobClient")
            .field("blocks_in_flight", &self.blocks_in_flight)
            .finish_non_exhaustive()
    }
}

/// Parameters of one request.
#[derive(Default)]
struct Call<'a> {
    comp: Option<&'a str>,
    block_id: Option<&'a str>,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl BlobClient {
    /// A client trusting only `config.trusted_ca_pem` and resolving only
    /// `config.resolve`.
    ///
    /// # Errors
    /// A [`DeviceError`] (with an empty device) when a CA is not PEM or the
    /// TLS stack cannot be set up.
    pub fn new(config: BlobClientConfig) -> Result<BlobClient, DeviceError> {
        let mut roots = Vec::new();
        for pem in &config.trusted_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                DeviceError::new("", format!("12044(The CA certificate is not PEM: {e})"))
            })?;
            roots.extend(certs);
        }
        let resolver = HostsFile(Arc::new(config.resolve.iter().cloned().collect()));
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        let http = reqwest::Client::builder()
            .tls_certs_only(roots)
            .dns_resolver(resolver)
            .https_only(true)
            .no_proxy()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| DeviceError::new("", format!("12175({})", chain(&e))))?;
        Ok(BlobClient {
            http,
            sas: config.sas.into(),
            blocks_in_flight: config.blocks_in_flight.max(1),
            record: Arc::new(Mutex::new(Vec::new())),
            log_block_lists: false,
        })
    }

    /// Writes one line to standard error for each Put Block List: when it
    /// was sent and when it was answered, in seconds since the Unix epoch
    /// (wall clock, to the microsecond), with the URL, the block count and the
    /// status: `put-block-list sent=<s> answered=<s> status=<n> blocks=<n> url=<url>`.
    /// A benchmark measures from these the time from the last block list to
    /// the backup's commit.
    pub fn with_block_list_log(mut self, on: bool) -> BlobClient {
        self.log_block_lists = on;
        self
    }

    /// `BACKUP ... TO URL`: writes `blocks` to `urls` as block blobs, block
    /// `i` to `urls[device_of(i, urls.len())]`. For each URL, concurrently:
    /// Put Blob (0 bytes), Lease Blob acquire (infinite), Put Block × n
    /// (`blocks_in_flight` at a time), Put Block List (UTF-16 with BOM),
    /// Lease Blob release. Returns the bytes written.
    ///
    /// # Errors
    /// The first device that failed (any answer but 2xx, or no answer); the
    /// blobs are left as they are (leased), as SQL Server leaves them.
    ///
    /// # Panics
    /// When `urls` is empty.
    pub async fn write_media(
        &self,
        urls: &[String],
        blocks: MediaBlocks,
    ) -> Result<u64, DeviceError> {
        assert!(!urls.is_empty(), "a backup goes to at least one URL");
        let leases: Vec<String> =
            futures::future::try_join_all(urls.iter().map(|url| self.open_blob(url))).await?;

        let gates: Vec<Arc<Semaphore>> = urls
            .iter()
            .map(|_| Arc::new(Semaphore::new(self.blocks_in_flight)))
            .collect();
        let mut block_ids: Vec<Vec<String>> = vec![Vec::new(); urls.len()];
        let mut puts: JoinSet<Result<(), DeviceError>> = JoinSet::new();
        let mut written = 0u64;
        let mut blocks = Some(blocks);
        for index in 0u64.. {
            // Generating a block is CPU work: keep it off the I/O threads.
            let mut source = blocks
                .take()
                .expect("the block source is back after each block");
            let (block, source) = tokio::task::spawn_blocking(move || (source.next(), source))
                .await
                .expect("the media generator does not panic");
            blocks = Some(source);
            let Some(block) = block else { break };

            let device = media::device_of(index, urls.len());
            let block_id = block_id(block_ids[device].len() as u64);
            block_ids[device].push(block_id.clone());
            written += block.len() as u64;

            let permit = gates[device]
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            while let Some(done) = puts.try_join_next() {
                done.expect("a Put Block task does not panic")?;
            }
            let client = self.clone();
            let url = urls[device].clone();
            let lease = leases[device].clone();
            puts.spawn(async move {
                let call = Call {
                    comp: Some("block"),
                    block_id: Some(&block_id),
                    headers: vec![("x-ms-lease-id", lease)],
                    body: block,
                };
                let result = client.expect_success(&url, Method::PUT, call).await;
                drop(permit);
                result.map(drop)
            });
        }
        while let Some(done) = puts.join_next().await {
            done.expect("a Put Block task does not panic")?;
        }

        let commits = urls
            .iter()
            .zip(&block_ids)
            .zip(&leases)
            .map(|((url, ids), lease)| self.commit_blob(url, ids, lease));
        futures::future::try_join_all(commits).await?;
        Ok(written)
    }

    /// Put Blob (empty) then Lease Blob acquire; returns the lease id.
    async fn open_blob(&self, url: &str) -> Result<String, DeviceError> {
        let create = Call {
            headers: vec![("x-ms-blob-type", "BlockBlob".to_owned())],
            ..Call::default()
        };
        self.expect_success(url, Method::PUT, create).await?;
        let lease = Uuid::new_v4().to_string();
        let acquire = Call {
            comp: Some("lease"),
            headers: vec![
                ("x-ms-lease-action", "acquire".to_owned()),
                ("x-ms-lease-duration", "-1".to_owned()),
                ("x-ms-proposed-lease-id", lease.clone()),
            ],
            ..Call::default()
        };
        self.expect_success(url, Method::PUT, acquire).await?;
        Ok(lease)
    }

    /// Put Block List (UTF-16 XML) then Lease Blob release.
    async fn commit_blob(
        &self,
        url: &str,
        block_ids: &[String],
        lease: &str,
    ) -> Result<(), DeviceError> {
        let commit = Call {
            comp: Some("blocklist"),
            headers: vec![
                ("x-ms-lease-id", lease.to_owned()),
                ("content-type", "application/xml".to_owned()),
            ],
            body: block_list_xml(block_ids),
            ..Call::default()
        };
        let sent = unix_now();
        let committed = self.expect_success(url, Method::PUT, commit).await;
        if self.log_block_lists {
            let status = committed.as_ref().map_or(0, |r| r.status().as_u16());
            eprintln!(
                "put-block-list sent={sent:.6} answered={:.6} status={status} blocks={} url={url}",
                unix_now(),
                block_ids.len()
            );
        }
        committed?;
        let release = Call {
            comp: Some("lease"),
            headers: vec![
                ("x-ms-lease-action", "release".to_owned()),
                ("x-ms-lease-id", lease.to_owned()),
            ],
            ..Call::default()
        };
        self.expect_success(url, Method::PUT, release).await?;
        Ok(())
    }

    /// `RESTORE ... FROM URL`: the bytes of the blob at `url`, read with
    /// `HEAD`, then `GET`s of [`MAX_TRANSFER_SIZE`] with `x-ms-range`, one
    /// after the other, each answered 206 with the `Content-Range` asked for.
    /// Nothing is requested before the stream is polled.
    ///
    /// Errors are SQL Server's: 3201 "Cannot open backup device" when
    /// `HEAD` fails, 3203 "Read on ... failed" when a `GET` does.
    pub fn read_device(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Stream<Item = Result<Bytes, MediaError>> + Send>> {
        let state = ReadState {
            client: self.clone(),
            url: url.to_owned(),
            offset: 0,
            len: None,
        };
        Box::pin(futures::stream::try_unfold(state, |mut state| async move {
            let len = match state.len {
                Some(len) => len,
                None => {
                    let len =
                        state
                            .client
                            .blob_length(&state.url)
                            .await
                            .map_err(|e| MediaError {
                                number: DeviceError::NUMBER,
                                message: e.to_string(),
                            })?;
                    state.len = Some(len);
                    len
                }
            };
            if state.offset >= len {
                return Ok(None);
            }
            let last = (state.offset + MAX_TRANSFER_SIZE as u64).min(len) - 1;
            let bytes = state
                .client
                .get_range(&state.url, state.offset, last)
                .await
                .map_err(|e| MediaError {
                    number: 3203,
                    message: format!("Read on \"{}\" failed: {}", e.device, e.os_error),
                })?;
            state.offset = last + 1;
            Ok(Some((bytes, state)))
        }))
    }

    /// Every request made so far, in the order their answers came.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.record
            .lock()
            .expect("the request record is not poisoned")
            .clone()
    }

    /// Get Blob Properties: the blob's `Content-Length`.
    async fn blob_length(&self, url: &str) -> Result<u64, DeviceError> {
        let response = self
            .expect_success(url, Method::HEAD, Call::default())
            .await?;
        response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                DeviceError::new(url, "13(The blob's properties have no Content-Length)")
            })
    }

    /// Get Blob of bytes `[first, last]`: checks 206, `Content-Range` and the length.
    async fn get_range(&self, url: &str, first: u64, last: u64) -> Result<Bytes, DeviceError> {
        let call = Call {
            headers: vec![("x-ms-range", format!("bytes={first}-{last}"))],
            ..Call::default()
        };
        let response = self.expect_success(url, Method::GET, call).await?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(DeviceError::new(
                url,
                format!(
                    "13(a ranged read was answered {}, not 206)",
                    response.status()
                ),
            ));
        }
        let range = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !range.starts_with(&format!("bytes {first}-{last}/")) {
            return Err(DeviceError::new(
                url,
                format!("13(asked for bytes {first}-{last}, the Content-Range is '{range}')"),
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| DeviceError::new(url, os_error(&e)))?;
        if bytes.len() as u64 != last - first + 1 {
            return Err(DeviceError::new(
                url,
                format!(
                    "38(asked for {} bytes, received {})",
                    last - first + 1,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Sends one request, records it, and fails on anything but 2xx.
    async fn expect_success(
        &self,
        url: &str,
        method: Method,
        call: Call<'_>,
    ) -> Result<reqwest::Response, DeviceError> {
        let mut query: Vec<String> = Vec::new();
        if !self.sas.is_empty() {
            query.push(self.sas.to_string());
        }
        if let Some(comp) = call.comp {
            query.push(format!("comp={comp}"));
        }
        if let Some(id) = call.block_id {
            query.push(format!("blockid={}", percent_encode_base64(id)));
        }
        let full = if query.is_empty() {
            url.to_owned()
        } else {
            format!("{url}?{}", query.join("&"))
        };
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let mut record = RecordedRequest {
            method: method.to_string(),
            path: reqwest::Url::parse(url).map_or_else(|_| url.to_owned(), |u| u.path().to_owned()),
            comp: call.comp.map(str::to_owned),
            block_id: call.block_id.map(str::to_owned),
            lease_action: header("x-ms-lease-action"),
            lease_id: header("x-ms-lease-id"),
            range: header("x-ms-range"),
            body_len: call.body.len() as u64,
            status: None,
        };

        let mut request = self
            .http
            .request(method, &full)
            .header("x-ms-date", http_date())
            .header("x-ms-client-request-id", Uuid::new_v4().to_string())
            .header(CONTENT_LENGTH, call.body.len());
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        let sent = request.body(call.body).send().await;
        record.status = sent.as_ref().ok().map(|r| r.status().as_u16());
        self.record
            .lock()
            .expect("the request record is not poisoned")
            .push(record);

        let response = sent.map_err(|e| DeviceError::new(url, os_error(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await.unwrap_or_default();
        Err(DeviceError::new(url, http_error(status, code, &body)))
    }
}

/// Where a [`BlobClient::read_device`] stream is.
struct ReadState {
    client: BlobClient,
    url: String,
    offset: u64,
    len: Option<u64>,
}

/// The id of block `n` of a blob: base64 of a fixed-length text, so that
/// every id of a blob has the same length (Put Block requires it).
pub fn block_id(n: u64) -> String {
    BASE64.encode(format!("{n:016}"))
}

/// The Put Block List body SQL Server sends: the XML declaration says
/// `utf-16` and the text is UTF-16LE after a byte-order mark.
pub fn block_list_xml(block_ids: &[String]) -> Bytes {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-16\"?><BlockList>");
    for id in block_ids {
        xml.push_str("<Latest>");
        xml.push_str(id);
        xml.push_str("</Latest>");
    }
    xml.push_str("</BlockList>");
    let mut body = Vec::with_capacity(2 + xml.len() * 2);
    body.extend_from_slice(&[0xff, 0xfe]);
    for unit in xml.encode_utf16() {
        body.extend_from_slice(&unit.to_le_bytes());
    }
    Bytes::from(body)
}

/// Base64 in a query string: `+`, `/` and `=` percent-encoded.
fn percent_encode_base64(id: &str) -> String {
    id.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// `x-ms-date`: RFC 1123 in GMT.
fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// A non-2xx answer: `(<status>) <reason>. <code>: <message>`, the storage
/// error code from `x-ms-error-code` (every answer, `HEAD` included) or
/// the XML error body, and the body's message ("Blob service error codes").
fn http_error(status: StatusCode, code: Option<String>, body: &str) -> String {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = start + body[start..].find(&format!("</{name}>"))?;
        Some(body[start..end].trim().to_owned())
    };
    let mut text = format!(
        "({}) {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    );
    if let Some(code) = code.or_else(|| element("Code")) {
        text.push_str(". ");
        text.push_str(&code);
        if let Some(message) = element("Message") {
            let first_line = message.lines().next().unwrap_or_default();
            text.push_str(": ");
            text.push_str(first_line.trim_end_matches('.'));
        }
    }
    text
}

/// A failed request as WinHTTP reports it (the error numbers SQL Server
/// shows for URL devices: "WinHTTP error codes").
fn os_error(error: &reqwest::Error) -> String {
    let detail = chain(error);
    if caused_by::<NameNotResolved>(error) {
        return format!("12007(The server name or address could not be resolved: {detail})");
    }
    if caused_by::<rustls::Error>(error) {
        return format!("12175(A security error occurred: {detail})");
    }
    if error.is_timeout() {
        format!("12002(The operation timed out: {detail})")
    } else if error.is_connect() {
        format!("12029(A connection with the server could not be established: {detail})")
    } else {
        format!("12030(The connection with the server was terminated abnormally: {detail})")
    }
}

/// Whether an error of type `T` is among the causes of `error`, looking
/// inside `io::Error`s too (their `source()` skips the error they wrap).
fn caused_by<T: std::error::Error + 'static>(error: &reqwest::Error) -> bool {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = error.source().into_iter().collect();
    while let Some(cause) = pending.pop() {
        if cause.is::<T>() {
            return true;
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            pending.push(inner);
        }
        pending.extend(cause.source());
    }
    false
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The hosts file of the emulated server: only these names resolve.
struct HostsFile(Arc<HashMap<String, SocketAddr>>);

/// A name that is not in the hosts file.
#[derive(Debug)]
struct NameNotResolved(String);

impl fmt::Display for NameNotResolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no address for host '{}'", self.0)
    }
}

impl std::error::Error for NameNotResolved {}

impl Resolve for HostsFile {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.get(name.as_str()).copied();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            match found {
                Some(addr) => Ok(Box::new(std::iter::once(addr)) as Addrs),
                None => {
                    Err(Box::new(NameNotResolved(name)) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

/// The wall clock in seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::Ipv4Addr;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::sqlserver::media::tests::sample_header;
    use crate::sqlserver::media::{Payload, decode_named, encode};

    const HOST: &str = "blob.test";
    const SAS: &str = "sv=2022-11-02&ss=b&srt=co&sp=rwdl&sig=c2VjcmV0";

    /// A request as the test endpoint saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        query: String,
        headers: reqwest::header::HeaderMap,
    }

    #[derive(Default)]
    struct TestBlob {
        committed: Vec<u8>,
        uncommitted: HashMap<String, Bytes>,
        lease: Option<String>,
        block_list_body: Vec<u8>,
    }

    #[derive(Default)]
    struct Store {
        blobs: HashMap<String, TestBlob>,
        seen: Vec<Seen>,
        /// How long a Put Block is held before it is answered.
        block_delay: Duration,
        /// Put Blocks being answered, per blob.
        blocks_in_flight: HashMap<String, usize>,
        /// The most Put Blocks of one blob answered at the same time.
        most_blocks_in_flight: usize,
    }

    /// A minimal Azure Blob endpoint over TLS on loopback: enough of Put
    /// Blob, Lease Blob, Put Block, Put Block List, HEAD and ranged GET to
    /// store what the client writes and serve it back.
    struct TestEndpoint {
        addr: SocketAddr,
        ca_pem: Vec<u8>,
        store: Arc<Mutex<Store>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestEndpoint {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestEndpoint {
        async fn start() -> TestEndpoint {
            let (ca_pem, tls) = certificates(HOST);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("bound address");
            let store = Arc::new(Mutex::new(Store::default()));
            let acceptor = TlsAcceptor::from(Arc::new(tls));
            let shared = store.clone();
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let store = shared.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |request| handle(store.clone(), request));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
            TestEndpoint {
                addr,
                ca_pem,
                store,
                task,
            }
        }

        fn url(&self, name: &str) -> String {
            format!("https://{HOST}:{}/strata/tok123/{name}", self.addr.port())
        }

        fn client(&self, blocks_in_flight: usize) -> BlobClient {
            BlobClient::new(BlobClientConfig {
                trusted_ca_pem: vec![self.ca_pem.clone()],
                resolve: vec![(HOST.to_owned(), self.addr)],
                sas: SAS.to_owned(),
                blocks_in_flight,
            })
            .expect("a client")
        }

        fn committed(&self, name: &str) -> Vec<u8> {
            let store = self.store.lock().expect("store");
            store.blobs[&format!("/strata/tok123/{name}")]
                .committed
                .clone()
        }
    }

    /// A CA and a certificate for `host` signed by it: (the CA's PEM, the
    /// server's TLS configuration, ring provider).
    fn certificates(host: &str) -> (Vec<u8>, rustls::ServerConfig) {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Strata test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let leaf = CertificateParams::new(vec![host.to_owned()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server TLS configuration");
        (ca_cert.pem().into_bytes(), config)
    }

    fn percent_decode(text: &str) -> String {
        text.replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=")
    }

    fn utf16_body(body: &[u8]) -> Option<String> {
        let text = body.strip_prefix(&[0xff, 0xfe])?;
        let units: Vec<u16> = text
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16(&units).ok()
    }

    fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body.into()));
        *response.status_mut() = StatusCode::from_u16(status).expect("a status");
        response
            .headers_mut()
            .insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        response
    }

    fn storage_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
        let mut response = reply(
            status,
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
                 <Message>{message}</Message></Error>"
            ),
        );
        let code = HeaderValue::from_str(code).expect("an error code is a header value");
        response.headers_mut().insert("x-ms-error-code", code);
        response
    }

    async fn handle(
        store: Arc<Mutex<Store>>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let params: HashMap<&str, String> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, percent_decode(v)))
            .collect();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if params.get("comp").map(String::as_str) == Some("block") {
            let delay = {
                let mut store = store.lock().expect("store");
                let store = &mut *store;
                let in_flight = store.blocks_in_flight.entry(path.clone()).or_default();
                *in_flight += 1;
                store.most_blocks_in_flight = store.most_blocks_in_flight.max(*in_flight);
                store.block_delay
            };
            tokio::time::sleep(delay).await;
            let mut store = store.lock().expect("store");
            *store.blocks_in_flight.entry(path.clone()).or_default() -= 1;
        }
        let mut store = store.lock().expect("store");
        store.seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
        });
        let comp = params.get("comp").map(String::as_str);
        let method = parts.method.as_str();
        if method == "PUT" && comp.is_none() {
            if header("x-ms-blob-type").as_deref() != Some("BlockBlob") || !body.is_empty() {
                return Ok(storage_error(
                    400,
                    "InvalidHeaderValue",
                    "block blobs only, created empty",
                ));
            }
            store.blobs.insert(path, TestBlob::default());
            return Ok(reply(201, Bytes::new()));
        }
        let Some(blob) = store.blobs.get_mut(&path) else {
            return Ok(storage_error(
                404,
                "BlobNotFound",
                "The specified blob does not exist.",
            ));
        };
        let lease_matches = blob.lease.is_none() || blob.lease == header("x-ms-lease-id");
        let response = match (method, comp) {
            ("PUT", Some("lease")) => match header("x-ms-lease-action").as_deref() {
                Some("acquire")
                    if blob.lease.is_none()
                        && header("x-ms-lease-duration").as_deref() == Some("-1") =>
                {
                    blob.lease = header("x-ms-proposed-lease-id");
                    reply(201, Bytes::new())
                }
                Some("release") if lease_matches => {
                    blob.lease = None;
                    reply(200, Bytes::new())
                }
                _ => storage_error(409, "LeaseAlreadyPresent", "unexpected lease action"),
            },
            _ if !lease_matches => storage_error(412, "LeaseIdMismatchWithBlobOperation", "lease"),
            ("PUT", Some("block")) => {
                blob.uncommitted.insert(params["blockid"].clone(), body);
                reply(201, Bytes::new())
            }
            ("PUT", Some("blocklist")) => {
                let Some(xml) = utf16_body(&body) else {
                    return Ok(storage_error(
                        400,
                        "InvalidXmlDocument",
                        "not UTF-16 with BOM",
                    ));
                };
                blob.block_list_body = body.to_vec();
                let mut committed = Vec::new();
                for piece in xml.split("<Latest>").skip(1) {
                    let id = piece.split("</Latest>").next().unwrap_or_default();
                    match blob.uncommitted.get(id) {
                        Some(block) => committed.extend_from_slice(block),
                        None => return Ok(storage_error(400, "InvalidBlockList", id)),
                    }
                }
                blob.committed = committed;
                reply(201, Bytes::new())
            }
            ("HEAD", None) => {
                let mut response = reply(200, Bytes::new());
                let headers = response.headers_mut();
                headers.insert(CONTENT_LENGTH, HeaderValue::from(blob.committed.len()));
                headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
                response
            }
            ("GET", None) => {
                let range = header("x-ms-range").unwrap_or_default();
                let (first, last) = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                    .unwrap_or((0, blob.committed.len().saturating_sub(1)));
                let last = last.min(blob.committed.len() - 1);
                let mut response =
                    reply(206, Bytes::copy_from_slice(&blob.committed[first..=last]));
                let total = blob.committed.len();
                response.headers_mut().insert(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {first}-{last}/{total}"))
                        .expect("header"),
                );
                response
            }
            _ => storage_error(400, "UnsupportedQueryParameter", "unexpected request"),
        };
        Ok(response)
    }

    fn media(payload_len: u64) -> MediaBlocks {
        encode(
            &sample_header(),
            b"rows",
            Payload {
                seed: 5,
                len: payload_len,
                compressible: true,
            },
        )
    }

    /// (method, comp, block id, lease action, body length, status) of each request.
    type Summary = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        u64,
        Option<u16>,
    );

    fn summary(requests: &[RecordedRequest]) -> Vec<Summary> {
        requests
            .iter()
            .map(|r| {
                (
                    r.method.clone(),
                    r.comp.clone(),
                    r.block_id.clone(),
                    r.lease_action.clone(),
                    r.body_len,
                    r.status,
                )
            })
            .collect()
    }

    fn expected(
        method: &str,
        comp: Option<&str>,
        block: Option<u64>,
        lease: Option<&str>,
        len: u64,
        status: u16,
    ) -> Summary {
        (
            method.to_owned(),
            comp.map(str::to_owned),
            block.map(block_id),
            lease.map(str::to_owned),
            len,
            Some(status),
        )
    }

    #[tokio::test]
    async fn a_backup_to_one_url_makes_sql_servers_requests_and_restores() {
        let endpoint = TestEndpoint::start().await;
        let client = endpoint.client(1);
        let url = endpoint.url("stripe-000.bak");
        let blocks = media(9 * 1024 * 1024);
        let total = blocks.total_len();
        let written = client
            .write_media(std::slice::from_ref(&url), blocks)
            .await
            .expect("backup");
        assert_eq!(written, total);

        let tail = total - 2 * MAX_TRANSFER_SIZE as u64;
        let list_len = block_list_xml(&[block_id(0), block_id(1), block_id(2)]).len() as u64;
        let mb = MAX_TRANSFER_SIZE as u64;
        assert_eq!(
            summary(&client.requests()),
            [
                expected("PUT", None, None, None, 0, 201),
                expected("PUT", Some("lease"), None, Some("acquire"), 0, 201),
                expected("PUT", Some("block"), Some(0), None, mb, 201),
                expected("PUT", Some("block"), Some(1), None, mb, 201),
                expected("PUT", Some("block"), Some(2), None, tail, 201),
                expected("PUT", Some("blocklist"), None, None, list_len, 201),
                expected("PUT", Some("lease"), None, Some("release"), 0, 200),
            ]
        );
        assert!(
            client
                .requests()
                .iter()
                .all(|r| r.path == "/strata/tok123/stripe-000.bak")
        );
        assert_eq!(
            endpoint.store.lock().expect("store").most_blocks_in_flight,
            1
        );

        {
            let store = endpoint.store.lock().expect("store");
            let seen = &store.seen;
            let sent: Vec<(String, String)> = client
                .requests()
                .iter()
                .map(|r| (r.method.clone(), r.path.clone()))
                .collect();
            let received: Vec<(String, String)> = seen
                .iter()
                .map(|r| (r.method.clone(), r.path.clone()))
                .collect();
            assert_eq!(
                received, sent,
                "the endpoint saw the requests in that order"
            );
            // The SAS first, then the operation's parameters; block ids URL-encoded.
            assert_eq!(seen[0].query, SAS);
            assert_eq!(
                seen[2].query,
                format!("{SAS}&comp=block&blockid=MDAwMDAwMDAwMDAwMDAwMA%3D%3D")
            );
            assert_eq!(seen[5].query, format!("{SAS}&comp=blocklist"));
            let lease = seen[1].headers["x-ms-proposed-lease-id"]
                .to_str()
                .expect("text")
                .to_owned();
            for request in &seen[2..] {
                assert_eq!(
                    request.headers["x-ms-lease-id"].to_str().ok(),
                    Some(lease.as_str())
                );
            }
            for request in seen {
                assert_eq!(request.headers["x-ms-version"], API_VERSION);
                assert!(
                    request.headers["x-ms-date"]
                        .to_str()
                        .expect("text")
                        .ends_with(" GMT")
                );
                assert!(
                    request.headers["user-agent"]
                        .to_str()
                        .expect("text")
                        .starts_with("SQLServer/")
                );
            }
            let blob = &store.blobs["/strata/tok123/stripe-000.bak"];
            assert_eq!(
                &blob.block_list_body[..2],
                &[0xff, 0xfe],
                "a UTF-16LE byte-order mark"
            );
            assert_eq!(
                utf16_body(&blob.block_list_body).expect("UTF-16"),
                "<?xml version=\"1.0\" encoding=\"utf-16\"?><BlockList>\
                 <Latest>MDAwMDAwMDAwMDAwMDAwMA==</Latest>\
                 <Latest>MDAwMDAwMDAwMDAwMDAwMQ==</Latest>\
                 <Latest>MDAwMDAwMDAwMDAwMDAwMg==</Latest></BlockList>"
            );
            assert_eq!(blob.lease, None, "the lease is released");
        }
        let media_bytes: Vec<u8> = media(9 * 1024 * 1024).flatten().collect();
        assert!(
            endpoint.committed("stripe-000.bak") == media_bytes,
            "the blob holds the media"
        );

        let before = client.requests().len();
        let decoded = decode_named(vec![(url.clone(), client.read_device(&url))], false)
            .await
            .expect("restore reads the media back");
        assert_eq!(decoded.header, sample_header());
        assert_eq!(decoded.content, b"rows");
        let reads: Vec<(String, Option<String>, Option<u16>)> = client.requests()[before..]
            .iter()
            .map(|r| (r.method.clone(), r.range.clone(), r.status))
            .collect();
        let last = total - 1;
        assert_eq!(
            reads,
            [
                ("HEAD".to_owned(), None, Some(200)),
                (
                    "GET".to_owned(),
                    Some("bytes=0-4194303".to_owned()),
                    Some(206)
                ),
                (
                    "GET".to_owned(),
                    Some("bytes=4194304-8388607".to_owned()),
                    Some(206)
                ),
                (
                    "GET".to_owned(),
                    Some(format!("bytes=8388608-{last}")),
                    Some(206)
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_backup_striped_over_two_urls_with_blocks_in_flight_restores() {
        let endpoint = TestEndpoint::start().await;
        endpoint.store.lock().expect("store").block_delay = Duration::from_millis(100);
        let client = endpoint.client(4);
        let urls = vec![
            endpoint.url("stripe-000.bak"),
            endpoint.url("stripe-001.bak"),
        ];
        let payload_len = 40 * 1024 * 1024;
        client
            .write_media(&urls, media(payload_len))
            .await
            .expect("backup");

        let mut stripes = [Vec::new(), Vec::new()];
        for (i, block) in media(payload_len).enumerate() {
            stripes[media::device_of(i as u64, 2)].extend_from_slice(&block);
        }
        assert!(endpoint.committed("stripe-000.bak") == stripes[0]);
        assert!(endpoint.committed("stripe-001.bak") == stripes[1]);
        let puts = client
            .requests()
            .iter()
            .filter(|r| r.comp.as_deref() == Some("block"))
            .count();
        assert_eq!(puts as u64, media(payload_len).block_count());
        let most = endpoint.store.lock().expect("store").most_blocks_in_flight;
        assert!(most >= 2, "blocks of one blob were put concurrently");
        assert!(
            most <= 4,
            "at most 4 blocks of one blob at once, not {most}"
        );

        let devices = urls
            .iter()
            .map(|url| (url.clone(), client.read_device(url)))
            .collect();
        let decoded = decode_named(devices, false).await.expect("restore");
        assert_eq!(decoded.payload_len, payload_len);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_naming_the_url() {
        let endpoint = TestEndpoint::start().await;
        let (other_ca, _) = certificates(HOST);
        let client = BlobClient::new(BlobClientConfig {
            trusted_ca_pem: vec![other_ca],
            resolve: vec![(HOST.to_owned(), endpoint.addr)],
            sas: SAS.to_owned(),
            blocks_in_flight: 1,
        })
        .expect("a client");
        let url = endpoint.url("stripe-000.bak");
        let error = client
            .write_media(std::slice::from_ref(&url), media(1024))
            .await
            .expect_err("the certificate is not trusted");
        assert_eq!(error.device, url);
        assert!(
            error
                .os_error
                .starts_with("12175(A security error occurred"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("Cannot open backup device '{url}'."))
        );
        assert_eq!(client.requests().len(), 1);
        assert_eq!(client.requests()[0].status, None);
        assert!(endpoint.store.lock().expect("store").blobs.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_host_or_a_closed_port_fails_naming_the_url() {
        let endpoint = TestEndpoint::start().await;
        let client = endpoint.client(1);
        let url = format!(
            "https://elsewhere.test:{}/strata/tok123/stripe-000.bak",
            endpoint.addr.port()
        );
        let error = client
            .write_media(std::slice::from_ref(&url), media(1024))
            .await
            .expect_err("the name does not resolve");
        assert_eq!(error.device, url);
        assert!(
            error
                .os_error
                .starts_with("12007(The server name or address could not be resolved"),
            "{error}"
        );

        let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = closed.local_addr().expect("address").port();
        drop(closed);
        let client = BlobClient::new(BlobClientConfig {
            trusted_ca_pem: vec![endpoint.ca_pem.clone()],
            resolve: vec![(
                HOST.to_owned(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            )],
            sas: String::new(),
            blocks_in_flight: 1,
        })
        .expect("a client");
        let url = format!("https://{HOST}:{port}/strata/tok123/stripe-000.bak");
        let error = client
            .write_media(std::slice::from_ref(&url), media(1024))
            .await
            .expect_err("nothing listens");
        assert_eq!(error.device, url);
        assert!(
            error
                .os_error
                .starts_with("12029(A connection with the server could not be established"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn reading_a_missing_blob_is_error_3201_with_the_storage_code() {
        let endpoint = TestEndpoint::start().await;
        let client = endpoint.client(1);
        let url = endpoint.url("nothing.bak");
        let error = decode_named(vec![(url.clone(), client.read_device(&url))], true)
            .await
            .expect_err("no such blob");
        assert_eq!(error.number, 3201);
        assert_eq!(
            error.message,
            format!(
                "Cannot open backup device '{url}'. Operating system error \
                 (404) Not Found. BlobNotFound."
            )
        );
    }
}

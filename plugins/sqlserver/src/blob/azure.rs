//! The pieces of Azure Blob Storage's REST protocol the endpoint speaks:
//! request URLs and query parameters, ranges, the error format and the
//! headers every response carries (Microsoft's "Blob service REST API",
//! "Blob service error codes" and "Specify the range header for Blob
//! service operations" pages).

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// The container every URL of the endpoint is under: the credential SQL
/// Server needs is named `https://<host>[:<port>]/strata`.
pub const CONTAINER: &str = "strata";

/// The service version the endpoint answers with when the request names
/// none (SQL Server names one in `x-ms-version`, and gets it back).
const DEFAULT_VERSION: &str = "2019-12-12";

/// The longest block id Azure accepts, in bytes before base64 encoding
/// (Microsoft's "Put Block" page).
const MAX_BLOCK_ID: usize = 64;

/// A response body: nothing, bytes in hand, or bytes that a job streams
/// through a channel (a Get Blob served from the vault).
pub enum ResponseBody {
    /// The whole body (possibly empty), until it is sent.
    Full(Option<Bytes>),
    /// Chunks from a job; an `Err` aborts the response (the connection is
    /// closed, and the client sees a short read).
    Channel {
        /// The chunks.
        chunks: mpsc::Receiver<std::io::Result<Bytes>>,
        /// Bytes still to come.
        remaining: u64,
    },
}

impl ResponseBody {
    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Channel { chunks, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match chunks.poll_recv(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the read from the vault ended before the range did",
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            ResponseBody::Channel { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Channel { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// A response of the endpoint.
pub type BlobResponse = Response<ResponseBody>;

/// A response of `status` with `headers` and no body.
pub fn reply(status: StatusCode, headers: &[(&'static str, String)]) -> BlobResponse {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    response
}

/// An error answered in Azure's format: the status, the error code (also in
/// `x-ms-error-code`) and a message in an XML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Azure's error code (`BlobNotFound`, `LeaseIdMissing`, ...).
    pub code: &'static str,
    /// What happened, for the log and the client.
    pub message: String,
}

impl AzureError {
    /// An error of `status` and `code` with `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AzureError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 `BlobNotFound`.
    pub fn blob_not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BlobNotFound",
            format!("The specified blob does not exist: {what}."),
        )
    }

    /// 400 `InvalidQueryParameterValue` naming the parameter.
    pub fn bad_query(parameter: &str, detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            format!("The value of query parameter {parameter} is not valid: {detail}."),
        )
    }

    /// 400 `InvalidHeaderValue` naming the header.
    pub fn bad_header(header: &str, detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidHeaderValue",
            format!("The value of HTTP header {header} is not valid: {detail}."),
        )
    }

    /// 500 `InternalError` with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The response: `x-ms-error-code` and the XML body
    /// `<Error><Code>..</Code><Message>..</Message></Error>` (UTF-8 with a
    /// byte order mark, as Azure writes it).
    pub fn response(&self) -> BlobResponse {
        let body = format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            quick_xml::escape::escape(self.message.as_str())
        );
        let mut response = reply(
            self.status,
            &[
                ("x-ms-error-code", self.code.to_owned()),
                ("content-type", "application/xml".to_owned()),
            ],
        );
        *response.body_mut() = ResponseBody::full(body);
        response
    }
}

/// Adds what every response carries: `x-ms-version` (the request's),
/// `x-ms-request-id`, `Date`, the client's `x-ms-client-request-id` back,
/// and a `Content-Length` for bodies in hand.
pub fn finish(response: &mut BlobResponse, request: &HeaderMap, request_id: &str) {
    let version = request
        .get("x-ms-version")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(DEFAULT_VERSION));
    let headers = response.headers_mut();
    headers.insert("x-ms-version", version);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-ms-request-id", id);
    }
    if let Some(client_id) = request.get("x-ms-client-request-id") {
        headers.insert("x-ms-client-request-id", client_id.clone());
    }
    if let Ok(date) = HeaderValue::from_str(&http_date(Utc::now())) {
        headers.insert(DATE, date);
    }
    if !headers.contains_key(CONTENT_LENGTH) {
        let len = match response.body() {
            ResponseBody::Full(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            ResponseBody::Channel { remaining, .. } => *remaining,
        };
        response.headers_mut().insert(CONTENT_LENGTH, len.into());
    }
    if !response.headers().contains_key(CONTENT_TYPE) {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
}

/// `time` as HTTP writes dates (RFC 1123, GMT): `Last-Modified`, `Date`.
pub fn http_date(time: DateTime<Utc>) -> String {
    time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Where a request goes: `/strata/<token>/<blob>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPath {
    /// The job's token.
    pub token: String,
    /// The blob's name under it (`stripe-000.bak`).
    pub blob: String,
}

impl BlobPath {
    /// The token and blob of a request path, percent-decoded; `None` for any
    /// other path (a container, an account, another container).
    pub fn parse(path: &str) -> Option<BlobPath> {
        let rest = path
            .strip_prefix('/')?
            .strip_prefix(CONTAINER)?
            .strip_prefix('/')?;
        let (token, blob) = rest.split_once('/')?;
        let token = percent_decode(token)?;
        let blob = percent_decode(blob)?;
        (!token.is_empty() && !blob.is_empty()).then_some(BlobPath { token, blob })
    }
}

/// The query parameters the endpoint reads. SQL Server appends its
/// credential's shared access signature (`sv=..&sig=..`) to every request;
/// every parameter but these is ignored, and nothing is authorized (the
/// endpoint listens on this host only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `comp`: which operation on the blob.
    pub comp: Option<String>,
    /// `blockid`: the base64 id of a Put Block.
    pub blockid: Option<String>,
    /// `blocklisttype`: `committed`, `uncommitted` or `all`.
    pub blocklisttype: Option<String>,
}

impl Query {
    /// The parameters of `query` (the text after `?`).
    ///
    /// # Errors
    /// 400 `InvalidQueryParameterValue` for an undecodable value of a
    /// parameter the endpoint reads.
    pub fn parse(query: Option<&str>) -> Result<Query, AzureError> {
        let mut parsed = Query::default();
        let pairs = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
        for pair in pairs {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "comp" => &mut parsed.comp,
                "blockid" => &mut parsed.blockid,
                "blocklisttype" => &mut parsed.blocklisttype,
                _ => continue,
            };
            let value =
                percent_decode(value).ok_or_else(|| AzureError::bad_query(name, "bad escape"))?;
            *slot = Some(value);
        }
        Ok(parsed)
    }
}

/// A block id as the client sent it: base64 text (Microsoft's "Put Block":
/// at most 64 bytes before encoding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId(pub String);

impl BlockId {
    /// Checks `text` is a base64 block id.
    ///
    /// # Errors
    /// 400 `InvalidQueryParameterValue` when it is not base64 or too long.
    pub fn parse(text: &str) -> Result<BlockId, AzureError> {
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(raw) if !raw.is_empty() && raw.len() <= MAX_BLOCK_ID => Ok(BlockId(text.to_owned())),
            Ok(_) => Err(AzureError::bad_query(
                "blockid",
                "a block id is 1 to 64 bytes before base64 encoding",
            )),
            Err(e) => Err(AzureError::bad_query(
                "blockid",
                &format!("not base64: {e}"),
            )),
        }
    }
}

impl std::fmt::Display for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+`, as base64 block
/// ids need); `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes what a URL path segment cannot hold as is (anything but
/// `[A-Za-z0-9._-]`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The byte range of a Get Blob: `x-ms-range` wins over `Range` (both
/// `bytes=<start>-[<end>]`, end inclusive). `Ok(None)` means the whole blob.
///
/// # Errors
/// 400 `InvalidHeaderValue` for a range that does not parse; 416
/// `InvalidRange` for one that starts at or past the end of a blob of
/// `size` bytes, or ends before it starts.
pub fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, AzureError> {
    let (name, value) = match (headers.get("x-ms-range"), headers.get(http::header::RANGE)) {
        (Some(value), _) => ("x-ms-range", value),
        (None, Some(value)) => ("Range", value),
        (None, None) => return Ok(None),
    };
    let bad = || AzureError::bad_header(name, "expected bytes=<start>-[<end>]");
    let text = value.to_str().map_err(|_| bad())?;
    let (start, end) = text
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: Option<u64> = match end.trim() {
        "" => None,
        end => Some(end.parse().map_err(|_| bad())?),
    };
    if start >= size || end.is_some_and(|end| end < start) {
        return Err(AzureError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            format!(
                "The range specified is invalid for the current size of the resource: {text} of {size} bytes."
            ),
        ));
    }
    let end = end.map_or(size, |end| end.saturating_add(1).min(size));
    Ok(Some((start, end - start)))
}

/// Headers of a request by lowercase name, as text (for the lease headers).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<(u64, u64)>, AzureError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-range", HeaderValue::from_str(value).unwrap());
        parse_range(&headers, size)
    }

    #[test]
    fn ranges_are_inclusive_clamped_and_refused_past_the_end() {
        assert_eq!(range("bytes=0-99", 1000).unwrap(), Some((0, 100)));
        assert_eq!(range("bytes=900-", 1000).unwrap(), Some((900, 100)));
        assert_eq!(range("bytes=900-5000", 1000).unwrap(), Some((900, 100)));
        assert_eq!(range("bytes=1000-1001", 1000).unwrap_err().status, 416);
        assert_eq!(range("bytes=10-5", 1000).unwrap_err().status, 416);
        assert_eq!(range("items=1-2", 1000).unwrap_err().status, 400);
        assert_eq!(parse_range(&HeaderMap::new(), 10).unwrap(), None);
    }

    #[test]
    fn only_the_blob_parameters_are_read_and_plus_stays_plus() {
        let query = Query::parse(Some(
            "sv=2020-10-02&sig=ab%2Bc%3D&comp=block&blockid=AB%2B%2FAw%3D%3D&se=x",
        ))
        .unwrap();
        assert_eq!(query.comp.as_deref(), Some("block"));
        assert_eq!(query.blockid.as_deref(), Some("AB+/Aw=="));
        assert_eq!(query.blocklisttype, None);
        assert!(BlockId::parse("AB+/Aw==").is_ok());
        assert_eq!(BlockId::parse("not base64!").unwrap_err().status, 400);
    }

    #[test]
    fn paths_name_a_token_and_a_blob_in_the_container() {
        assert_eq!(
            BlobPath::parse("/strata/abc/stripe-000.bak"),
            Some(BlobPath {
                token: "abc".into(),
                blob: "stripe-000.bak".into()
            })
        );
        assert_eq!(BlobPath::parse("/strata/abc"), None);
        assert_eq!(BlobPath::parse("/other/abc/x.bak"), None);
        assert_eq!(percent_encode("stripe 1"), "stripe%201");
        assert_eq!(percent_decode("stripe%201").as_deref(), Some("stripe 1"));
    }
}

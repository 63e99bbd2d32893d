//! Immutable vaults: the object store itself refuses to delete or overwrite
//! what Strata wrote for a number of days (write once, read many), so that
//! whoever holds the vault's credentials (ransomware included) cannot empty
//! it before then.
//!
//! | Store | What enforces it | Set up by |
//! |---|---|---|
//! | S3 | Object Lock: the bucket's default retention (compliance or governance mode, N days) on every new object version | `strata vault init --immutable N` sets the default retention; Object Lock itself must be enabled on the bucket first |
//! | Azure Blob | a time-based retention policy on the container (or version-level immutability) | the operator (`az storage container immutability-policy create`) |
//! | GCS | a bucket retention policy | the operator (`gcloud storage buckets update --retention-period`) |
//!
//! A vault's metadata records the lock ([`Immutability`]); it is written
//! only after a probe showed that the store refuses to delete a new object,
//! and every [`Vault::open`](super::Vault::open) repeats the probe, so a
//! lock removed behind Strata's back is noticed before anything relies on it.
//!
//! # The probe
//!
//! A probe is a small object `immutability/probe-<unix seconds>`, written
//! create-only, or `...-multipart`, written as an upload in parts (the way
//! the writer uploads segments larger than a part). Init tries both kinds;
//! every open tries the vault's recorded kind ([`ProbeKind`], multipart
//! unless init was told otherwise). The newest probe of that kind that stays
//! locked for at least another hour is reused; otherwise a new one is
//! written. Then Strata deletes it, the way it would delete any object (on
//! S3 the exact version, since a plain S3 delete only adds a delete
//! marker), and the store must refuse. A probe that could be deleted means
//! the lock is not enforced.
//!
//! # Deleting on an immutable vault
//!
//! An object written at `t` is locked until `t + days` (the store's own
//! rule for default retention and time-based policies). Retention, `vault
//! gc` and `strata delete` never send a delete for an object before then:
//! they report it as locked, with the date, and a later pass deletes it.
//! After the date, S3 objects are deleted by version, so that no delete
//! marker hides a version that still costs storage.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, ReqwestConnector};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The object lock of an immutable vault, as its metadata records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Immutability {
    /// S3 Object Lock's retention mode ([`LockMode`]); for Azure and GCS,
    /// whose policies have no modes, `compliance`.
    pub mode: LockMode,
    /// Days every object stays locked after it is written.
    pub days: u32,
    /// What enforces it: `s3-object-lock`, `azure-immutability-policy` or
    /// `gcs-retention-policy`.
    pub enforced_by: String,
    /// When the lock was first verified (UTC).
    pub since: DateTime<Utc>,
    /// How the probes are uploaded ([`ProbeKind`]).
    #[serde(default)]
    pub probe: ProbeKind,
}

impl Immutability {
    /// Until when an object written at `written` is locked.
    pub fn locked_until(&self, written: DateTime<Utc>) -> DateTime<Utc> {
        written + chrono::Duration::days(i64::from(self.days))
    }
}

/// S3 Object Lock's retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// No one, not even the account's root user, can delete a locked object
    /// version or shorten its retention.
    #[default]
    Compliance,
    /// Users with the `s3:BypassGovernanceRetention` permission can delete a
    /// locked version by asking to bypass the lock; Strata never asks.
    Governance,
}

impl LockMode {
    /// The mode as S3 spells it (`COMPLIANCE`, `GOVERNANCE`).
    pub fn s3_name(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Compliance => "compliance",
            LockMode::Governance => "governance",
        })
    }
}

impl std::str::FromStr for LockMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "compliance" => Ok(LockMode::Compliance),
            "governance" => Ok(LockMode::Governance),
            other => Err(
                Error::config(format!("`{other}` is not an Object Lock mode"))
                    .hint("use compliance (no one can delete a locked backup early) or governance"),
            ),
        }
    }
}

/// What asking to delete one object came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The object is gone (or was already).
    Deleted,
    /// The vault's lock keeps it: nothing was sent when `until` is known
    /// (the object's write time plus the vault's days); `None` when the
    /// store refused the delete itself (a longer lock than the vault's).
    Locked {
        /// When the lock ends, if known.
        until: Option<DateTime<Utc>>,
    },
}

/// Prefix of the lock probes (see the [module docs](self#the-probe)).
pub const PROBE_PREFIX: &str = "immutability";

/// The key of a probe written at `at`.
pub(crate) fn probe_key(at: DateTime<Utc>) -> String {
    format!("{PROBE_PREFIX}/probe-{:012}", at.timestamp())
}

/// What S3 says of a bucket's Object Lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLock {
    /// Object Lock is not enabled on the bucket.
    Disabled,
    /// Enabled, with this default retention (mode and days) if any.
    Enabled(Option<(LockMode, u32)>),
}

/// The S3 requests the object store API has no call for: the bucket's
/// Object Lock configuration and deleting one object version. Requests are
/// signed with the store's own credentials (SigV4, as the store signs).
#[derive(Debug)]
pub(crate) struct S3Access {
    s3: Arc<AmazonS3>,
    /// The store's client options; the HTTP client is made from them at
    /// the first request, since most opens of an S3 vault send none.
    options: object_store::ClientOptions,
    http: std::sync::OnceLock<HttpClient>,
    bucket: String,
    bucket_url: String,
    region: String,
    /// The store's retry settings, which these requests follow too.
    retry: object_store::RetryConfig,
}

impl S3Access {
    /// Access to the bucket of a store `builder` was configured for, with
    /// the same options (endpoint, region, credentials, HTTP client) and
    /// retry settings.
    pub(crate) fn new(
        builder: &AmazonS3Builder,
        bucket: &str,
        s3: Arc<AmazonS3>,
        options: &object_store::ClientOptions,
        retry: object_store::RetryConfig,
    ) -> S3Access {
        let value = |key| builder.get_config_value(&key);
        let bucket = value(AmazonS3ConfigKey::Bucket).unwrap_or_else(|| bucket.to_owned());
        let region = value(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_owned());
        let virtual_hosted = value(AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let bucket_url = match value(AmazonS3ConfigKey::Endpoint) {
            Some(endpoint) if virtual_hosted => endpoint.trim_end_matches('/').to_owned(),
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        S3Access {
            s3,
            options: options.clone(),
            http: std::sync::OnceLock::new(),
            bucket,
            bucket_url,
            region,
            retry,
        }
    }

    /// The bucket's name.
    pub(crate) fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Sends one signed request; returns the status and the body as text
    /// (S3 answers in XML).
    ///
    /// Every request here is idempotent (reading or setting the bucket's
    /// lock, listing, deleting a version, aborting an upload), so a
    /// connection that fails or an answer of 500-599, 429 or 408 is tried
    /// again as the store's own requests are: up to `max_retries` times
    /// within `retry_timeout`, after backoffs from `init_backoff` growing
    /// `base` times each (at most `max_backoff`). Without that, one 503
    /// during `vault gc`'s listing of unfinished uploads failed the gc.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<(http::StatusCode, String)> {
        let started = std::time::Instant::now();
        let mut retries = 0;
        loop {
            let answer = self
                .send_once(method.clone(), url, body.clone(), headers)
                .await;
            let transient = match &answer {
                Ok((status, _)) => transient_status(*status),
                Err(e) => e.is_retryable(),
            };
            if !transient
                || retries >= self.retry.max_retries
                || started.elapsed() >= self.retry.retry_timeout
            {
                return answer;
            }
            let backoff = &self.retry.backoff;
            let pause = (backoff.init_backoff.as_secs_f64()
                * backoff.base.powi(retries.min(64) as i32))
            .min(backoff.max_backoff.as_secs_f64());
            tracing::info!(%method, url, retries, "an S3 request failed; trying again");
            tokio::time::sleep(std::time::Duration::from_secs_f64(pause)).await;
            retries += 1;
        }
    }

    /// One attempt of [`S3Access::send`].
    async fn send_once(
        &self,
        method: http::Method,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<(http::StatusCode, String)> {
        let credential = self.s3.credentials().get_credential().await?;
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let mut request: HttpRequest = builder.body(body.into()).map_err(|e| {
            Error::storage(format!("cannot build the S3 request {method} {url}: {e}"))
        })?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(Error::from)?;
        let http = match self.http.get() {
            Some(http) => http,
            None => {
                let made = ReqwestConnector::default()
                    .connect(&self.options)
                    .map_err(Error::from)?;
                self.http.get_or_init(|| made)
            }
        };
        let response = http.execute(request).await.map_err(|e| {
            Error::storage(format!("S3 request {method} {url} failed: {e}"))
                .retryable(true)
                .hint("check that the vault is reachable; the operation can be retried")
        })?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| {
            // An answer cut midway: the request can be sent again.
            Error::storage(format!("reading the answer to {method} {url}: {e}"))
                .retryable(true)
                .hint("check that the vault is reachable; the operation can be retried")
        })?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The bucket's Object Lock configuration.
    pub(crate) async fn bucket_lock(&self) -> Result<BucketLock> {
        let url = format!("{}?object-lock=", self.bucket_url);
        let (status, text) = self.send(http::Method::GET, &url, Vec::new(), &[]).await?;
        if status.as_u16() == 404 && text.contains("ObjectLockConfigurationNotFound") {
            return Ok(BucketLock::Disabled);
        }
        if !status.is_success() {
            return Err(s3_error(
                "reading the Object Lock configuration of",
                &self.bucket,
                status,
                &text,
            ));
        }
        if xml_value(&text, "ObjectLockEnabled").as_deref() != Some("Enabled") {
            return Ok(BucketLock::Disabled);
        }
        let rule = match (xml_value(&text, "Mode"), xml_value(&text, "Days")) {
            (Some(mode), Some(days)) => Some((
                mode.parse()?,
                days.parse::<u32>().map_err(|_| {
                    Error::storage(format!("S3 answered an Object Lock rule of `{days}` days"))
                })?,
            )),
            // A rule in years: report it in days, as S3 counts a year.
            (Some(mode), None) => {
                match xml_value(&text, "Years").and_then(|y| y.parse::<u32>().ok()) {
                    Some(years) => Some((mode.parse()?, years * 365)),
                    None => None,
                }
            }
            _ => None,
        };
        Ok(BucketLock::Enabled(rule))
    }

    /// Sets the bucket's default retention to `mode` for `days`.
    pub(crate) async fn set_default_retention(&self, mode: LockMode, days: u32) -> Result<()> {
        use base64::Engine as _;
        use md5::Digest as _;
        let body = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention>\
             <Mode>{}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>",
            mode.s3_name()
        )
        .into_bytes();
        // S3 requires Content-MD5 on this request.
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let url = format!("{}?object-lock=", self.bucket_url);
        let (status, answer) = self
            .send(
                http::Method::PUT,
                &url,
                body,
                &[
                    ("content-md5", md5),
                    ("content-type", "application/xml".to_owned()),
                ],
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(s3_error(
                "setting the default retention of",
                &self.bucket,
                status,
                &answer,
            ))
        }
    }

    /// Whether any version or delete marker of exactly `path` exists: a key
    /// with versions but no current object was deleted by a plain delete
    /// (a delete marker hides it), and its versions can be brought back.
    pub(crate) async fn has_versions(&self, path: &Path) -> Result<bool> {
        let key = path.as_ref();
        let url = format!(
            "{}?versions=&prefix={}",
            self.bucket_url,
            encode(key, false)
        );
        let (status, text) = self.send(http::Method::GET, &url, Vec::new(), &[]).await?;
        if !status.is_success() {
            return Err(s3_error(
                &format!("listing the versions of {key} in"),
                &self.bucket,
                status,
                &text,
            ));
        }
        Ok(text.contains(&format!("<Key>{}</Key>", xml_escape(key))))
    }

    /// The multipart uploads begun and never completed or aborted under
    /// `prefix`: `(key, upload id, initiated)`. S3 keeps them (and bills
    /// their parts) until they are aborted; no object listing shows them.
    pub(crate) async fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{}?uploads=&prefix={}",
                self.bucket_url,
                encode(prefix, false)
            );
            if let Some((key, id)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(key, false),
                    encode(id, false)
                ));
            }
            let (status, text) = self.send(http::Method::GET, &url, Vec::new(), &[]).await?;
            if !status.is_success() {
                return Err(s3_error(
                    "listing the unfinished uploads of",
                    &self.bucket,
                    status,
                    &text,
                ));
            }
            for upload in text.split("<Upload>").skip(1) {
                let (Some(key), Some(id), Some(initiated)) = (
                    xml_value(upload, "Key"),
                    xml_value(upload, "UploadId"),
                    xml_value(upload, "Initiated"),
                ) else {
                    continue;
                };
                let Ok(initiated) = DateTime::parse_from_rfc3339(&initiated) else {
                    continue;
                };
                found.push((
                    xml_unescape(&key),
                    xml_unescape(&id),
                    initiated.with_timezone(&Utc),
                ));
            }
            if xml_value(&text, "IsTruncated").as_deref() != Some("true") {
                return Ok(found);
            }
            match (
                xml_value(&text, "NextKeyMarker"),
                xml_value(&text, "NextUploadIdMarker"),
            ) {
                (Some(key), Some(id)) => markers = Some((xml_unescape(&key), xml_unescape(&id))),
                _ => return Ok(found),
            }
        }
    }

    /// When upload `upload_id` of `key` was last written: its newest part's
    /// time, `None` for an upload with no part yet.
    pub(crate) async fn last_part_written(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let mut newest: Option<DateTime<Utc>> = None;
        let mut marker: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/{}?uploadId={}",
                self.bucket_url,
                encode(key, true),
                encode(upload_id, false)
            );
            if let Some(marker) = &marker {
                url.push_str(&format!("&part-number-marker={marker}"));
            }
            let (status, text) = self.send(http::Method::GET, &url, Vec::new(), &[]).await?;
            if status.as_u16() == 404 {
                return Ok(newest);
            }
            if !status.is_success() {
                return Err(s3_error(
                    &format!("listing the parts of {key} in"),
                    &self.bucket,
                    status,
                    &text,
                ));
            }
            for part in text.split("<Part>").skip(1) {
                if let Some(written) = xml_value(part, "LastModified")
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                {
                    let written = written.with_timezone(&Utc);
                    newest = Some(newest.map_or(written, |n| n.max(written)));
                }
            }
            if xml_value(&text, "IsTruncated").as_deref() != Some("true") {
                return Ok(newest);
            }
            match xml_value(&text, "NextPartNumberMarker") {
                Some(next) => marker = Some(next),
                None => return Ok(newest),
            }
        }
    }

    /// Aborts multipart upload `upload_id` of `key` (a full key in the
    /// bucket), deleting its parts. An upload already gone is fine.
    pub(crate) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            encode(key, true),
            encode(upload_id, false)
        );
        let (status, text) = self
            .send(http::Method::DELETE, &url, Vec::new(), &[])
            .await?;
        if status.is_success() || status.as_u16() == 404 {
            Ok(())
        } else {
            Err(s3_error(
                &format!("aborting the upload of {key} in"),
                &self.bucket,
                status,
                &text,
            ))
        }
    }

    /// Deletes version `version` of `path`; a refusal by the lock is
    /// [`Deletion::Locked`].
    pub(crate) async fn delete_version(&self, path: &Path, version: &str) -> Result<Deletion> {
        let url = format!(
            "{}/{}?versionId={}",
            self.bucket_url,
            encode(path.as_ref(), true),
            encode(version, false)
        );
        let (status, text) = self
            .send(http::Method::DELETE, &url, Vec::new(), &[])
            .await?;
        match status.as_u16() {
            200..=299 => Ok(Deletion::Deleted),
            404 => Ok(Deletion::Deleted),
            403 if text.contains("AccessDenied") => Ok(Deletion::Locked { until: None }),
            _ => Err(s3_error(
                &format!("deleting {path} from"),
                &self.bucket,
                status,
                &text,
            )),
        }
    }
}

/// The text of the first `<tag>` element of an S3 XML answer.
fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_owned())
}

/// `text` with XML's special characters escaped, as S3 writes keys.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The inverse of [`xml_escape`].
fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Percent-encodes everything but unreserved characters (and `/` when
/// `keep_slash`), as S3's canonical URIs need.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// An answer that a later attempt may not get: 500-599, 429 (too many
/// requests) and 408 (request timeout). [`S3Access::send`] tries those
/// again, and an error made of one is retryable.
fn transient_status(status: http::StatusCode) -> bool {
    status.is_server_error()
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::REQUEST_TIMEOUT
}

fn s3_error(doing: &str, bucket: &str, status: http::StatusCode, body: &str) -> Error {
    let code = xml_value(body, "Code").unwrap_or_default();
    let message = xml_value(body, "Message").unwrap_or_default();
    let error = Error::storage(format!(
        "{doing} bucket {bucket} failed: HTTP {status} {code} {message}"
    ));
    if transient_status(status) {
        return error.retryable(true).hint(
            "the store is unavailable or overloaded: the operation can be retried once it answers",
        );
    }
    match status.as_u16() {
        403 => error.hint("the credentials need s3:GetBucketObjectLockConfiguration, s3:PutBucketObjectLockConfiguration, s3:GetObjectVersion and s3:DeleteObjectVersion on the bucket"),
        _ => error,
    }
}

/// Whether an error from a plain delete is the store refusing because of a
/// retention policy or legal hold (Azure answers 409, GCS 403).
pub(crate) fn is_lock_refusal(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. } => true,
        other => {
            let text = other.to_string();
            ["409", "403", "Immutab", "retention", "Retention", "held"]
                .iter()
                .any(|needle| text.contains(needle))
        }
    }
}

/// Deletes `path` as any Strata deletion would, without looking at the
/// lock's date: the exact version on S3, a plain delete elsewhere.
pub(crate) async fn delete_now(
    store: &Arc<dyn ObjectStore>,
    s3: Option<&S3Access>,
    path: &Path,
) -> Result<Deletion> {
    if let Some(s3) = s3 {
        let meta = match store.head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(Deletion::Deleted),
            Err(e) => return Err(Error::from(e).context(format!("checking {path}"))),
        };
        return delete_known(store, Some(s3), &meta).await;
    }
    delete_known_path(store, path).await
}

/// [`delete_now`] of an object whose metadata was just read: on S3 its
/// version goes, with no second HEAD.
pub(crate) async fn delete_known(
    store: &Arc<dyn ObjectStore>,
    s3: Option<&S3Access>,
    meta: &object_store::ObjectMeta,
) -> Result<Deletion> {
    if let (Some(s3), Some(version)) = (s3, &meta.version) {
        return s3.delete_version(&meta.location, version).await;
    }
    delete_known_path(store, &meta.location).await
}

async fn delete_known_path(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Deletion> {
    // A delete whose connection was reset under way is tried again:
    // object_store does not (S3 deletes through a bulk POST it does not
    // count as idempotent), and deleting twice is harmless.
    let (answer, _) = super::retry_when_cut("a delete", || store.delete(path)).await;
    match answer {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Deletion::Deleted),
        Err(e) if is_lock_refusal(&e) => Ok(Deletion::Locked { until: None }),
        Err(e) => Err(Error::from(e).context(format!("deleting {path}"))),
    }
}

/// How a lock probe is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A multipart upload, as the writer uploads segments larger than a
    /// part (and, at init, a single upload too): the default.
    #[default]
    Multipart,
    /// A single upload only, for stores that lock those but not multipart
    /// uploads (the moto emulator): segments uploaded in parts may then be
    /// unlocked, and `vault info` says so.
    Simple,
}

impl ProbeKind {
    fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Multipart => "-multipart",
            ProbeKind::Simple => "",
        }
    }
}

impl std::str::FromStr for ProbeKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "multipart" => Ok(ProbeKind::Multipart),
            "simple" => Ok(ProbeKind::Simple),
            other => Err(Error::config(format!("`{other}` is not a lock probe kind"))
                .hint("use multipart (the default) or simple")),
        }
    }
}

/// Runs the [probe](self#the-probe) of `kind`: reuses the newest probe of
/// that kind under `root` still locked for another hour (when `days` is
/// known), or writes a new one, and tries to delete it.
/// [`Deletion::Locked`] means the store enforces the lock.
pub(crate) async fn probe(
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    s3: Option<&S3Access>,
    days: Option<u32>,
    kind: ProbeKind,
) -> Result<Deletion> {
    use futures::TryStreamExt;
    let now = Utc::now();
    let join = |key: &str| super::layout::join(root, &key.split('/').collect::<Vec<_>>());
    let mut reusable = None;
    if let Some(days) = days {
        let probes: Vec<object_store::ObjectMeta> = store
            .list(Some(&join(PROBE_PREFIX)))
            .try_collect()
            .await
            .map_err(|e| Error::from(e).context("listing the vault's lock probes"))?;
        let lasts_until = |at: DateTime<Utc>| at + chrono::Duration::days(i64::from(days));
        let multipart = ProbeKind::Multipart.suffix();
        reusable = probes
            .iter()
            .filter(|meta| {
                meta.location.as_ref().ends_with(multipart) == (kind == ProbeKind::Multipart)
            })
            .filter(|meta| lasts_until(meta.last_modified) > now + chrono::Duration::hours(1))
            .max_by_key(|meta| meta.last_modified)
            .map(|meta| meta.location.clone());
    }
    let path = match reusable {
        Some(path) => path,
        None => {
            let path = join(&format!("{}{}", probe_key(now), kind.suffix()));
            let body = format!(
                "{{\"written_at\": \"{}\", \"note\": \"a probe Strata tries to delete to check that the store enforces the vault's lock\"}}",
                now.to_rfc3339()
            )
            .into_bytes();
            let written = match kind {
                ProbeKind::Simple => store
                    .put_opts(
                        &path,
                        body.into(),
                        object_store::PutOptions::from(object_store::PutMode::Create),
                    )
                    .await
                    .map(|_| ()),
                ProbeKind::Multipart => {
                    async {
                        let mut upload = store.put_multipart(&path).await?;
                        upload.put_part(body.into()).await?;
                        upload.complete().await.map(|_| ())
                    }
                    .await
                }
            };
            match written {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    return Err(Error::from(e).context("writing the vault's lock probe"));
                }
            }
            path
        }
    };
    delete_now(store, s3, &path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An S3 endpoint on loopback that answers each request with the next
    /// of `answers` (status line and body), the last one for ever; counts
    /// the requests.
    async fn endpoint(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = answers[n.min(answers.len() - 1)];
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, count)
    }

    fn access(endpoint: &str, max_retries: usize) -> S3Access {
        let builder = AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id("key")
            .with_secret_access_key("secret");
        let s3 = Arc::new(builder.clone().build().unwrap());
        let options = object_store::ClientOptions::new().with_allow_http(true);
        let retry = object_store::RetryConfig {
            max_retries,
            retry_timeout: std::time::Duration::from_secs(30),
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(1),
                max_backoff: std::time::Duration::from_millis(10),
                base: 2.0,
            },
        };
        S3Access::new(&builder, "b", s3, &options, retry)
    }

    const SLOW_DOWN: (&str, &str) = (
        "503 Service Unavailable",
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    );

    /// A 503 from S3 is tried again, as the store's own requests are: one
    /// answered `vault gc`'s listing of unfinished uploads and failed it.
    #[tokio::test]
    async fn an_unavailable_bucket_is_asked_again() {
        let (url, count) = endpoint(vec![
            SLOW_DOWN,
            SLOW_DOWN,
            (
                "404 Not Found",
                "<Error><Code>ObjectLockConfigurationNotFound</Code></Error>",
            ),
        ])
        .await;
        let lock = access(&url, 3).bucket_lock().await.unwrap();
        assert_eq!(lock, BucketLock::Disabled);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// Past `max_retries` the error says the store is unavailable, that it
    /// can be retried, and what to do.
    #[tokio::test]
    async fn an_outage_longer_than_the_retries_is_a_clear_error() {
        let (url, count) = endpoint(vec![SLOW_DOWN]).await;
        let err = access(&url, 2).bucket_lock().await.unwrap_err();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(err.kind(), crate::ErrorKind::Storage, "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("503"), "{err}");
        assert!(err.to_string().contains("SlowDown"), "{err}");
        assert!(
            err.hint_text().is_some_and(|h| h.contains("retried")),
            "{err:?}"
        );
    }

    #[test]
    fn probe_keys_name_their_time() {
        let at = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let key = probe_key(at);
        assert_eq!(key, "immutability/probe-001790000000");
    }

    #[test]
    fn xml_values_and_encoding() {
        let xml = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>3</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(xml_value(xml, "Mode").as_deref(), Some("GOVERNANCE"));
        assert_eq!(xml_value(xml, "Days").as_deref(), Some("3"));
        assert_eq!(xml_value(xml, "Years"), None);
        assert_eq!(encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(
            "Governance".parse::<LockMode>().unwrap(),
            LockMode::Governance
        );
        assert!("hold".parse::<LockMode>().is_err());
    }
}

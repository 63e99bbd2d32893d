//! Vaults: where backups live.
//!
//! A vault is a prefix in an object store, opened from a URL:
//!
//! | URL | Store | Credentials and options |
//! |---|---|---|
//! | `file:///var/lib/strata/vault` or a plain absolute path | local directory | none |
//! | `memory://name` | in-process memory (tests); one store per name and process | none |
//! | `s3://bucket/prefix` | Amazon S3 or compatible | `AWS_*` environment variables, `[vault.options]` (e.g. `aws_endpoint`, `aws_region`) |
//! | `az://container/prefix` | Azure Blob | `AZURE_*` environment variables (e.g. `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_USE_EMULATOR`), options |
//! | `gs://bucket/prefix` | Google Cloud Storage | `GOOGLE_*` environment variables, options |
//!
//! On the cloud stores, `[vault.options]` also takes Strata's `max_retries`
//! (default 10) and `retry_timeout` (default `5m`): how often and how long a
//! failed request is retried before its error is reported.
//!
//! [`Vault::init`] writes the vault metadata ([`layout::VAULT_META`]) create-only
//! and refuses to initialise over an existing vault. [`Vault::open`] reads it,
//! refuses a newer format, and checks the encryption key.

pub mod archive;
pub mod deletion;
pub mod gc;
pub mod immutability;
pub mod layout;
pub mod local;
pub mod reader;
mod slots;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode,
    PutOptions, RetryConfig,
};
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::{BackupId, Manifest};
use crate::crypto::VaultKey;
use crate::error::{Error, ErrorKind, IoResultExt, Result};

/// The vault format this build writes and the newest it opens.
///
/// Format 2 added soft delete (`deleted/` keeps a deleted backup's data for
/// [`VaultMeta::soft_delete_days`]) and immutable vaults: a build that knows
/// only format 1 would purge soft-deleted data at once and try to delete
/// locked objects, so it must refuse these vaults. Format 1 vaults open as
/// they are, with soft delete's default.
pub const VAULT_FORMAT: u32 = 2;

/// Days a deleted backup's data is kept by default, as Azure Backup's soft
/// delete keeps it.
pub const DEFAULT_SOFT_DELETE_DAYS: u32 = 14;

/// The longest soft delete period or lock a vault takes: 100 years, S3
/// Object Lock's own limit for a retention period.
pub const MAX_DAYS: u32 = 36_500;

fn default_soft_delete_days() -> u32 {
    DEFAULT_SOFT_DELETE_DAYS
}

/// How to reach a vault: its URL, store options and the key file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The vault's URL (see the module docs).
    pub url: String,
    /// Object store options (`aws_endpoint`, `azure_storage_account_name`, ...),
    /// applied over the environment.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The vault key file, for encrypted vaults.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl VaultConfig {
    /// A configuration with just a URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        VaultConfig {
            url: url.into(),
            ..Default::default()
        }
    }
}

/// Parses and checks the manifest read from vault key `key`
/// ([`Manifest::from_json`]), and that it is the manifest of the backup
/// that key names: another backup's manifest copied or renamed over it
/// would otherwise be listed and restored as this backup.
///
/// # Errors
/// [`ErrorKind::Integrity`] naming the key when the object is not a
/// readable manifest, or holds another backup's.
pub fn manifest_at(bytes: &[u8], key: &str) -> Result<Manifest> {
    let manifest = Manifest::from_json(bytes, key)?;
    let own = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
    if own != key {
        return Err(Error::integrity(format!(
            "manifest {key} holds the manifest of another backup, {} of {} {} (whose key is {own})",
            manifest.id, manifest.engine, manifest.instance
        ))
        .hint("the object was replaced or renamed in the vault; the backup it should commit cannot be restored from it"));
    }
    Ok(manifest)
}

/// The vault's metadata, stored at [`layout::VAULT_META`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultMeta {
    /// Vault format version.
    pub format: u32,
    /// A random identifier of this vault.
    pub vault_id: String,
    /// When the vault was created.
    pub created_at: DateTime<Utc>,
    /// The Strata version that created it.
    pub created_by: String,
    /// Present when the vault is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<VaultEncryption>,
    /// Days a deleted backup's data stays, restorable with `strata
    /// undelete`, before it is purged (0: purged at once). See
    /// [`deletion`].
    #[serde(default = "default_soft_delete_days")]
    pub soft_delete_days: u32,
    /// Present when the store locks every object the vault writes (see
    /// [`immutability`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutability: Option<immutability::Immutability>,
}

impl VaultMeta {
    /// Parses and checks the metadata read from the vault at `url` (named
    /// in errors). A format newer than [`VAULT_FORMAT`] is refused: this
    /// build would misread such a vault.
    ///
    /// The metadata carries a [`checksum`](crate::checksum) (metadata
    /// written before checksums has none): damaged metadata is refused with
    /// an integrity error naming `strata-vault.json` and how to get it back,
    /// never read as other settings (another key check, soft delete period
    /// or lock).
    pub fn from_json(bytes: &[u8], url: &str) -> Result<VaultMeta> {
        let damaged = |why: String| {
            Error::integrity(format!(
                "the vault metadata {} at {url} is damaged: {why}",
                layout::VAULT_META
            ))
            .hint(format!(
                "the backups do not depend on it, but no command opens the vault without it: \
                 put back a sound copy of {} (an earlier version of the object, a replica \
                 of the bucket, or a copy of the vault), leaving everything else as it is",
                layout::VAULT_META
            ))
        };
        let checked = crate::checksum::check(bytes).map_err(damaged)?;
        let bytes = match &checked {
            crate::checksum::Checked::Sound(original) => original.as_slice(),
            crate::checksum::Checked::Absent => bytes,
        };
        let meta: VaultMeta =
            serde_json::from_slice(bytes).map_err(|e| damaged(format!("it is not valid: {e}")))?;
        if meta.format > VAULT_FORMAT {
            return Err(Error::config(format!(
                "the vault at {url} has format {}, newer than this Strata supports ({VAULT_FORMAT})",
                meta.format
            ))
            .hint("upgrade Strata on this host to use this vault"));
        }
        // Periods beyond what `vault init` sets were altered: read as they
        // are, a deletion's purge date (`now + days`) would overflow and
        // panic. Found by fuzzing (fuzz/corpus/vault_meta/beyond-max-days).
        let lock_days = meta.immutability.as_ref().map_or(0, |lock| lock.days);
        for (what, days) in [
            ("soft_delete_days", meta.soft_delete_days),
            ("immutability days", lock_days),
        ] {
            if days > MAX_DAYS {
                return Err(damaged(format!(
                    "its {what} is {days}, beyond the longest period Strata sets ({MAX_DAYS} days)"
                )));
            }
        }
        Ok(meta)
    }
}

/// How [`Vault::init_with`] creates a vault.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// [`VaultMeta::soft_delete_days`].
    pub soft_delete_days: u32,
    /// Make the vault immutable: the lock mode (S3) and the days every
    /// object stays locked.
    pub immutable: Option<(immutability::LockMode, u32)>,
    /// How the lock is probed (see [`immutability::ProbeKind`]).
    pub probe: immutability::ProbeKind,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            soft_delete_days: DEFAULT_SOFT_DELETE_DAYS,
            immutable: None,
            probe: immutability::ProbeKind::default(),
        }
    }
}

/// The encryption settings of a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultEncryption {
    /// The part AEAD ([`crate::crypto::PART_ALGORITHM`]).
    pub algorithm: String,
    /// A check value derived from the vault key (see [`VaultKey::check_value`]).
    pub key_check: String,
}

/// An open vault. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<VaultInner>,
}

struct VaultInner {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: Path,
    meta: VaultMeta,
    key: Option<VaultKey>,
    /// S3 requests beyond the object store API (immutable vaults).
    s3: Option<Arc<immutability::S3Access>>,
    /// The time deletions judge locks and purge dates by, when not the
    /// clock's ([`Vault::at`]).
    clock: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("url", &self.inner.url)
            .field("vault_id", &self.inner.meta.vault_id)
            .field("encrypted", &self.inner.key.is_some())
            .finish()
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Our HTTP client defaults, then the store's client variables from the
/// environment (`<prefix>ALLOW_HTTP`, `<prefix>PROXY_URL`, ...): the builders'
/// `from_env` reads those too, but `with_client_options` replaces them.
fn client_options(env_prefix: &str) -> ClientOptions {
    // Parts are small (a few MiB), but a slow link must not cut a request
    // that is making progress: no overall limit, a stall detector instead.
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(900))
        .with_read_timeout(Duration::from_secs(60));
    for (key, value) in std::env::vars_os() {
        if let (Some(key), Some(value)) = (key.to_str(), value.to_str())
            && let Some(name) = key.strip_prefix(env_prefix)
            && let Ok(key) = name.to_ascii_lowercase().parse()
        {
            options = options.with_config(key, value);
        }
    }
    options
}

/// Strata's own keys of `[vault.options]`: how a cloud store retries a
/// failed request (with exponential backoff) before the error is given up.
/// `max_retries` (a whole number, default 10) and `retry_timeout` (a
/// duration such as `30s` or `5m`, default 5 minutes): lower them where a
/// caller must not wait long, such as PostgreSQL's `restore_command`.
const RETRY_OPTIONS: [&str; 2] = ["max_retries", "retry_timeout"];

/// How long a cloud store waits before each retry. object_store draws
/// each backoff between 100 ms and `base` times the one before
/// (decorrelated jitter), at most 15 s. With its default base of 2 the
/// backoffs stay near 100 to 300 ms: ten retries gave up after 1 to 12 s
/// of outage, 2.6 s typically, and a 3-second burst of 503s failed five
/// backups in six. A base of 4 doubles them on average, as the retries
/// are documented: ten retries ride out 3 s of outage in 99 cases in 100,
/// typically 35 s, at most about 100 s.
fn retry_backoff() -> BackoffConfig {
    BackoffConfig {
        base: 4.0,
        ..BackoffConfig::default()
    }
}

/// The retry settings of a cloud vault ([`RETRY_OPTIONS`]).
fn retry_config(raw: &str, options: &BTreeMap<String, String>) -> Result<RetryConfig> {
    let invalid = |key: &str, value: &str, example: &str| {
        Error::config(format!(
            "vault option {key} = \"{value}\" for vault {raw} is not valid"
        ))
        .hint(format!("write it as in {key} = \"{example}\""))
    };
    let mut retry = RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(300),
        backoff: retry_backoff(),
    };
    if let Some(value) = options.get("max_retries") {
        retry.max_retries = value
            .trim()
            .parse()
            .map_err(|_| invalid("max_retries", value, "10"))?;
    }
    if let Some(value) = options.get("retry_timeout") {
        retry.retry_timeout = humantime::parse_duration(value.trim())
            .map_err(|_| invalid("retry_timeout", value, "5m"))?;
    }
    Ok(retry)
}

/// How many times, in all, a request the network cut is tried when
/// object_store does not retry it itself: a create-only put
/// ([`put_create_retrying`]), a delete.
pub(crate) const CUT_REQUEST_ATTEMPTS: u32 = 5;

/// The pause before attempt `attempt + 1` of a request the network cut:
/// 0.2, 0.4, 0.8 then 1.6 s, so a cut shorter than 3 s is ridden out.
pub(crate) fn cut_request_pause(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.min(6))
}

/// Puts `payload` at `path` only if nothing is there (`PutMode::Create`),
/// trying again when the network cut the request (up to
/// [`CUT_REQUEST_ATTEMPTS`] in all, [`cut_request_pause`] apart).
///
/// The object store retries a failed request itself, but not a
/// create-only put whose connection was reset or timed out under way: it
/// cannot know whether the store applied it. A retry is safe here, and is
/// what keeps a blip of the network from failing a commit (a manifest, a
/// WAL segment, a Backint version marker): if the cut attempt did land,
/// the retry finds the object (`AlreadyExists`), which the caller reads
/// back and compares. Other failures are not retried again: the store's
/// client did, as far as `max_retries` and `retry_timeout` allow. Returns
/// the last attempt's answer and whether an earlier attempt was cut, i.e.
/// whether an `AlreadyExists` may be our own write.
pub(crate) async fn put_create_retrying(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    payload: bytes::Bytes,
) -> (object_store::Result<object_store::PutResult>, bool) {
    retry_when_cut("a create-only put", || {
        store.put_opts(
            path,
            payload.clone().into(),
            PutOptions::from(PutMode::Create),
        )
    })
    .await
}

/// Runs `request` until it is not cut by the network (up to
/// [`CUT_REQUEST_ATTEMPTS`] in all, [`cut_request_pause`] apart), for the
/// requests object_store does not retry itself once under way. Returns
/// the last answer and whether an earlier attempt was cut.
pub(crate) async fn retry_when_cut<T, F, Fut>(
    what: &str,
    mut request: F,
) -> (object_store::Result<T>, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match request().await {
            Err(e) if attempt < CUT_REQUEST_ATTEMPTS && crate::error::request_was_cut(&e) => {
                tracing::warn!(error = %e, attempt, "{what} was cut; trying again");
                tokio::time::sleep(cut_request_pause(attempt)).await;
                attempt += 1;
            }
            answer => return (answer, attempt > 1),
        }
    }
}

/// The `[vault.options]` passed on to the object store.
fn store_options(options: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    options
        .iter()
        .filter(|(key, _)| !RETRY_OPTIONS.contains(&key.as_str()))
}

fn unknown_option(url: &str, key: &str) -> Error {
    Error::config(format!("unknown object store option `{key}` for vault {url}")).hint(
        "see the object_store configuration keys: aws_endpoint, aws_region, azure_storage_account_name, google_service_account, ...",
    )
}

/// A cloud store: its builder from the environment, Strata's client and
/// retry defaults, then the configured options over them.
macro_rules! cloud_store {
    ($builder:ty, $env_prefix:literal, $url:expr, $config:expr, $raw:expr) => {{
        let mut builder = <$builder>::from_env()
            .with_url($url.as_str())
            .with_client_options(client_options($env_prefix))
            .with_retry(retry_config($raw, &$config.options)?);
        for (key, value) in store_options(&$config.options) {
            let key = key.parse().map_err(|_| unknown_option($raw, key))?;
            builder = builder.with_config(key, value);
        }
        Arc::new(builder.build().map_err(|e| config_store_error($raw, e))?)
    }};
}

/// Parses a vault URL; a bare absolute path is a local directory.
fn parse_vault_url(raw: &str) -> std::result::Result<url::Url, url::ParseError> {
    if raw.starts_with('/') {
        url::Url::parse(&format!("file://{raw}"))
    } else {
        url::Url::parse(raw)
    }
}

/// Builds the object store and root prefix for a vault URL.
pub fn build_store(config: &VaultConfig) -> Result<(Arc<dyn ObjectStore>, Path)> {
    build_store_with_access(config).map(|(store, root, _)| (store, root))
}

/// [`build_store`], and for S3 the access to the requests the object store
/// API lacks ([`immutability::S3Access`]).
fn build_store_with_access(
    config: &VaultConfig,
) -> Result<(Arc<dyn ObjectStore>, Path, Option<immutability::S3Access>)> {
    let raw = config.url.trim();
    if raw.is_empty() {
        return Err(Error::config("the vault URL is empty")
            .hint("set [vault] url in the config, or pass --vault file:///var/lib/strata/vault"));
    }
    let url = parse_vault_url(raw).map_err(|e| {
        Error::config(format!(
            "`{}` is not a valid vault URL: {e}",
            redacted_unparsed_url(raw)
        ))
            .hint("examples: file:///var/lib/strata/vault, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix")
    })?;
    refuse_credentials_in_url(&url)?;
    if url.scheme() == "memory" {
        let name = format!("{}{}", url.host_str().unwrap_or(""), url.path());
        let store = memory_stores()
            .lock()
            .expect("memory store registry poisoned")
            .entry(name)
            .or_insert_with(|| Arc::new(InMemory::new()))
            .clone();
        return Ok((store, Path::default(), None));
    }
    let (scheme, root) = ObjectStoreScheme::parse(&url).map_err(|e| {
        Error::config(format!("unsupported vault URL `{raw}`: {e}"))
            .hint("use file://, memory://, s3://, az:// or gs://")
    })?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            let dir = url.to_file_path().map_err(|_| {
                Error::config(format!("`{raw}` is not a local path"))
                    .hint("write file URLs as file:///absolute/path")
            })?;
            if !config.options.is_empty() {
                let key = config.options.keys().next().expect("non-empty");
                return Err(unknown_option(raw, key));
            }
            if !dir.is_dir() {
                return Err(Error::not_found(format!(
                    "the vault directory {} does not exist",
                    dir.display()
                ))
                .hint("if the vault's file system is not mounted (or was moved), mount it first: backups and WAL written to a new empty vault would be missing from the old one")
                .hint(format!("only for a vault that never existed here: `strata vault init {raw}`")));
            }
            let fs = local::DurableLocalStore::new(&dir).map_err(Error::from)?;
            return Ok((Arc::new(fs), Path::default(), None));
        }
        ObjectStoreScheme::AmazonS3 => {
            let mut options = client_options("AWS_");
            // Uploads that carry a checksum say which (as AWS's SDKs do):
            // S3 requires one of uploads that Object Lock retains.
            if let Some(algorithm) = config.options.get("aws_checksum_algorithm") {
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = http::HeaderValue::from_str(&algorithm.to_ascii_uppercase()) {
                    headers.insert("x-amz-sdk-checksum-algorithm", value);
                }
                options = options.with_default_headers(headers);
            }
            let retry = retry_config(raw, &config.options)?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .with_client_options(options.clone())
                .with_retry(retry.clone());
            for (key, value) in store_options(&config.options) {
                let key = key.parse().map_err(|_| unknown_option(raw, key))?;
                builder = builder.with_config(key, value);
            }
            let s3 = Arc::new(
                builder
                    .clone()
                    .build()
                    .map_err(|e| config_store_error(raw, e))?,
            );
            let bucket = url.host_str().unwrap_or_default();
            let access = immutability::S3Access::new(&builder, bucket, s3.clone(), &options, retry);
            return Ok((s3, root, Some(access)));
        }
        ObjectStoreScheme::MicrosoftAzure => {
            cloud_store!(
                object_store::azure::MicrosoftAzureBuilder,
                "AZURE_",
                &url,
                config,
                raw
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            cloud_store!(
                object_store::gcp::GoogleCloudStorageBuilder,
                "GOOGLE_",
                &url,
                config,
                raw
            )
        }
        _ => {
            return Err(
                Error::config(format!("unsupported vault URL scheme in `{raw}`"))
                    .hint("use file://, memory://, s3://, az:// or gs://"),
            );
        }
    };
    Ok((store, root, None))
}

/// A vault URL that does not parse, as messages show it: whatever stands
/// between `://` and the last `@` (user-info, which a secret key with a `/`
/// in it makes unparsable) and any query string are replaced by
/// `<redacted>`. Errs on the side of hiding: an `@` in a path hides more
/// than it needs to.
fn redacted_unparsed_url(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(at) => raw.split_at(at + 3),
        None => ("", raw),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("<redacted>{}", &rest[at..]),
        None => rest.to_owned(),
    };
    match rest.find('?') {
        Some(at) => format!("{scheme}{}?<redacted>", &rest[..at]),
        None => format!("{scheme}{rest}"),
    }
}

/// Refuses a vault URL that carries credentials: a password in its user
/// information (`s3://key:secret@bucket`) or a query string (where an Azure
/// SAS token goes in a blob URL). Vault URLs are shown in messages, lists
/// and the service's job history, so credentials belong in the environment
/// or in `[vault.options]`; the error shows the URL without them.
fn refuse_credentials_in_url(url: &url::Url) -> Result<()> {
    let what = if url.password().is_some() {
        "a password (`user:password@`)"
    } else if url.query().is_some() {
        "a query string (`?...`, where a SAS token would be)"
    } else {
        return Ok(());
    };
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    shown.set_query(None);
    Err(Error::config(format!(
        "the vault URL {shown} carries {what}: vault URLs are shown in messages and job history, so they must hold no credentials"
    ))
    .hint("give credentials in the environment (AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_SAS_KEY, ...) or under [vault.options] (aws_secret_access_key, azure_storage_sas_key, ...)"))
}

/// Refuses to create a vault where backups already are, even without the
/// metadata object: one deleted by hand, or hidden by an S3 delete marker,
/// must not become a new vault that its backups do not belong to.
async fn refuse_leftover_vault(url: &str, store: &Arc<dyn ObjectStore>, root: &Path) -> Result<()> {
    if store
        .head(&layout::join(root, &[layout::VAULT_META]))
        .await
        .is_ok()
    {
        return Err(already_exists(url));
    }
    for prefix in [
        layout::MANIFESTS,
        layout::DATA,
        layout::ENGINES,
        layout::DELETED,
    ] {
        let mut listing = store.list(Some(&layout::join(root, &[prefix])));
        match listing.next().await {
            None => {}
            Some(Ok(found)) => {
                return Err(Error::conflict(format!(
                    "{url} already holds backups ({} exists) but its {} is missing",
                    found.location,
                    layout::VAULT_META
                ))
                .hint("the vault's metadata was deleted, or on a versioned S3 bucket hidden by a delete marker: bring it back (`aws s3api list-object-versions`, then delete the marker's version) instead of creating a vault its backups do not belong to"));
            }
            // A missing bucket or an unreachable store: the create that
            // follows says which, precisely.
            Some(Err(_)) => return Ok(()),
        }
    }
    Ok(())
}

fn missing_bucket(url: &str, source: object_store::Error) -> Error {
    Error::not_found(format!("the bucket or container of {url} does not exist"))
        .hint("create it with your cloud's tools first (Strata never creates buckets or containers), then run `strata vault init` again")
        .with_source(source)
}

fn already_exists(url: &str) -> Error {
    Error::conflict(format!("a Strata vault already exists at {url}"))
        .hint("use it as it is, or choose another URL; init never overwrites a vault")
}

/// The store configuration of a vault: for an immutable S3 vault, with
/// SHA-256 checksums on uploads (unless configured otherwise).
fn store_config(config: &VaultConfig, immutable: bool) -> VaultConfig {
    let mut config = config.clone();
    if immutable && config.url.trim().starts_with("s3://") {
        config
            .options
            .entry("aws_checksum_algorithm".to_owned())
            .or_insert_with(|| "sha256".to_owned());
    }
    config
}

/// Sets up and verifies the lock of a new immutable vault.
async fn lock_new_vault(
    config: &VaultConfig,
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    s3: Option<&immutability::S3Access>,
    mode: immutability::LockMode,
    days: u32,
    probe: immutability::ProbeKind,
) -> Result<immutability::Immutability> {
    use immutability::BucketLock;
    let url = &config.url;
    if days == 0 || days > MAX_DAYS {
        return Err(Error::config(format!(
            "--immutable {days}: a lock is 1 to {MAX_DAYS} days"
        )));
    }
    let scheme = url.trim().split("://").next().unwrap_or_default();
    let enforced_by = match scheme {
        "s3" => "s3-object-lock",
        "az" | "azure" | "abfs" | "abfss" => "azure-immutability-policy",
        "gs" => "gcs-retention-policy",
        _ => {
            return Err(Error::config(format!(
                "{url} cannot be immutable: only an object store locks objects"
            ))
            .hint("use an s3://, az:// or gs:// vault for --immutable"));
        }
    };
    if let Some(s3) = s3 {
        let bucket = s3.bucket().to_owned();
        match s3.bucket_lock().await? {
            BucketLock::Disabled => {
                return Err(Error::config(format!(
                    "the S3 bucket {bucket} does not have Object Lock enabled"
                ))
                .hint(format!("enable versioning and Object Lock on it first (`aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`, then `aws s3api put-object-lock-configuration --bucket {bucket} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\"}}'`), or create the bucket with `--object-lock-enabled-for-bucket`")));
            }
            BucketLock::Enabled(Some(rule)) if rule != (mode, days) => {
                return Err(Error::conflict(format!(
                    "the S3 bucket {bucket} already has a default retention of {} days in {} mode, which applies to every object in it",
                    rule.1, rule.0
                ))
                .hint(format!("run again with --immutable {} --lock-mode {} to use it, or use a bucket of its own", rule.1, rule.0)));
            }
            BucketLock::Enabled(Some(_)) => {}
            BucketLock::Enabled(None) => s3.set_default_retention(mode, days).await?,
        }
    }
    use immutability::{Deletion, ProbeKind};
    let simple = immutability::probe(store, root, s3, None, ProbeKind::Simple).await?;
    if simple == Deletion::Deleted {
        return Err(not_enforced(url, enforced_by, days));
    }
    if probe == ProbeKind::Multipart
        && immutability::probe(store, root, s3, None, ProbeKind::Multipart).await?
            == Deletion::Deleted
    {
        return Err(Error::config(format!(
            "the store of {url} locks objects uploaded at once but not objects uploaded in parts: backup segments larger than a part would not be immutable"
        ))
        .hint("S3 locks both; an S3-compatible store or emulator that does not cannot hold an immutable vault (for the moto emulator in tests only: --lock-probe simple)"));
    }
    match simple {
        Deletion::Locked { .. } => Ok(immutability::Immutability {
            mode: if s3.is_some() {
                mode
            } else {
                immutability::LockMode::Compliance
            },
            days,
            enforced_by: enforced_by.to_owned(),
            since: Utc::now(),
            probe,
        }),
        Deletion::Deleted => Err(not_enforced(url, enforced_by, days)),
    }
}

/// Repeats the lock probe of an immutable vault at open.
async fn check_lock(
    url: &str,
    lock: &immutability::Immutability,
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    s3: Option<&immutability::S3Access>,
) -> Result<()> {
    // On S3 the bucket's default retention is what locks new objects: a
    // rule removed or shortened is caught here, before a probe that an
    // older object (still locked) would pass.
    if let Some(s3) = s3 {
        let rule = s3.bucket_lock().await?;
        if rule != immutability::BucketLock::Enabled(Some((lock.mode, lock.days))) {
            return Err(Error::config(format!(
                "the vault at {url} is immutable ({} days, {} mode), but its bucket's Object Lock default retention is now {}: new backups would not be locked as recorded",
                lock.days,
                lock.mode,
                match rule {
                    immutability::BucketLock::Disabled => "off".to_owned(),
                    immutability::BucketLock::Enabled(None) => "not set".to_owned(),
                    immutability::BucketLock::Enabled(Some((mode, days))) => format!("{days} days in {mode} mode"),
                }
            ))
            .hint(format!(
                "set it back: `aws s3api put-object-lock-configuration --bucket {} --object-lock-configuration '{{\"ObjectLockEnabled\":\"Enabled\",\"Rule\":{{\"DefaultRetention\":{{\"Mode\":\"{}\",\"Days\":{}}}}}}}'`",
                s3.bucket(),
                lock.mode.s3_name(),
                lock.days
            )));
        }
    }
    match immutability::probe(store, root, s3, Some(lock.days), lock.probe).await? {
        immutability::Deletion::Locked { .. } => Ok(()),
        immutability::Deletion::Deleted => Err(not_enforced(url, &lock.enforced_by, lock.days)
            .with_message(format!(
                "the vault at {url} is immutable ({} days, {}), but the store no longer enforces it: a new object could be deleted at once",
                lock.days, lock.enforced_by
            ))),
    }
}

fn not_enforced(url: &str, enforced_by: &str, days: u32) -> Error {
    let error = Error::config(format!(
        "the store of {url} does not refuse deletes: a new object could be deleted at once, so the vault would not be immutable"
    ));
    // The bucket or container is the URL's host.
    let bucket = parse_vault_url(url.trim())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "<bucket>".to_owned());
    match enforced_by {
        "s3-object-lock" => error.hint(format!("check the bucket's Object Lock default retention: `aws s3api get-object-lock-configuration --bucket {bucket}`")),
        "azure-immutability-policy" => error.hint(format!("set a time-based retention policy on the container first: `az storage container immutability-policy create --account-name <account> --container-name {bucket} --period {days}`, then lock it with `az storage container immutability-policy lock`")),
        _ => error.hint(format!("set a retention policy on the bucket first: `gcloud storage buckets update gs://{bucket} --retention-period={days}d`")),
    }
}

fn config_store_error(url: &str, err: object_store::Error) -> Error {
    Error::config(format!(
        "cannot configure the object store for {url}: {err}"
    ))
    .hint("check the URL and the credentials in the environment or in [vault.options]")
}

fn unreachable(url: &str, err: Error) -> Error {
    if err.kind() == ErrorKind::Storage {
        // The HTTP client refuses a plain-http endpoint before connecting,
        // saying "builder error" (the conversion of the store's error names
        // its root cause, "URL scheme is not allowed"): name the setting
        // that allows it.
        let text = err.to_string();
        let plain_http = text.contains("http://")
            && (text.contains("builder error") || text.contains("URL scheme is not allowed"));
        // The conversion of the store's error decided whether a retry helps.
        let error = Error::storage(format!("the vault {url} could not be reached: {err}"))
            .retryable(err.is_retryable() && !plain_http)
            .with_source(err);
        if plain_http {
            error.hint("the endpoint is plain http://, which is refused unless allowed: set AWS_ALLOW_HTTP=true (or allow_http = \"true\" under [vault.options]) for an emulator or a private endpoint")
        } else {
            error.hint("check the network, the endpoint and the credentials; nothing was changed")
        }
    } else {
        err
    }
}

impl Vault {
    /// Creates a new vault at `config.url`. Refuses if one already exists.
    /// When `key` is given the vault is encrypted with it.
    pub async fn init(config: &VaultConfig, key: Option<VaultKey>) -> Result<Vault> {
        Self::init_with(config, key, VaultOptions::default()).await
    }

    /// [`Vault::init`] with soft delete's days and, for an immutable vault,
    /// the lock: on S3 the bucket's default retention is set (Object Lock
    /// must be enabled on the bucket), on Azure and GCS the container's or
    /// bucket's policy must exist; either way a probe must show that the
    /// store refuses to delete a new object before the vault is created.
    pub async fn init_with(
        config: &VaultConfig,
        key: Option<VaultKey>,
        options: VaultOptions,
    ) -> Result<Vault> {
        if options.soft_delete_days > MAX_DAYS {
            return Err(Error::config(format!(
                "--soft-delete-days {}: the period is 0 to {MAX_DAYS} days",
                options.soft_delete_days
            )));
        }
        let config = &store_config(config, options.immutable.is_some());
        let trimmed = config.url.trim();
        if let Some(path) = trimmed
            .strip_prefix("file://")
            .or_else(|| trimmed.starts_with('/').then_some(trimmed))
        {
            std::fs::create_dir_all(path).doing_at("cannot create the vault directory", path)?;
        }
        let (store, root, s3) = build_store_with_access(config)?;
        let meta_path = layout::join(&root, &[layout::VAULT_META]);
        refuse_leftover_vault(&config.url, &store, &root).await?;
        let immutability = match options.immutable {
            None => None,
            Some((mode, days)) => Some(
                lock_new_vault(
                    config,
                    &store,
                    &root,
                    s3.as_ref(),
                    mode,
                    days,
                    options.probe,
                )
                .await?,
            ),
        };
        if let (None, Some(s3)) = (&immutability, &s3)
            && let Ok(immutability::BucketLock::Enabled(Some((mode, days)))) =
                s3.bucket_lock().await
        {
            return Err(Error::config(format!(
                "the S3 bucket {} locks every object for {days} days ({mode} mode): a vault in it is immutable whether Strata knows it or not",
                s3.bucket()
            ))
            .hint(format!("run again with --immutable {days} --lock-mode {mode}, so that deletions wait for the lock instead of failing, or use a bucket without Object Lock")));
        }
        let meta = VaultMeta {
            format: VAULT_FORMAT,
            vault_id: hex::encode(rand::random::<[u8; 16]>()),
            created_at: Utc::now(),
            created_by: format!("strata {}", env!("CARGO_PKG_VERSION")),
            encryption: key.as_ref().map(|k| VaultEncryption {
                algorithm: crate::crypto::PART_ALGORITHM.to_owned(),
                key_check: k.check_value(),
            }),
            soft_delete_days: options.soft_delete_days,
            immutability,
        };
        let body = crate::checksum::append(&serde_json::to_vec_pretty(&meta)?);
        match store
            .put_opts(&meta_path, body.into(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(already_exists(&config.url));
            }
            // A create can only find nothing when the bucket itself is missing.
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(missing_bucket(&config.url, e));
            }
            Err(e) => return Err(unreachable(&config.url, e.into())),
        }
        Ok(Vault {
            inner: Arc::new(VaultInner {
                url: config.url.clone(),
                store,
                root,
                meta,
                key,
                s3: s3.map(Arc::new),
                clock: None,
            }),
        })
    }

    /// Opens the vault at `config.url`, loading the key file if configured.
    pub async fn open(config: &VaultConfig) -> Result<Vault> {
        let key = crate::crypto::load_optional_key(config.key_file.as_deref())?;
        Self::open_with_key(config, key).await
    }

    /// Opens the vault with an already loaded key.
    pub async fn open_with_key(config: &VaultConfig, key: Option<VaultKey>) -> Result<Vault> {
        let url = &config.url;
        let (mut store, mut root, mut s3) = build_store_with_access(config)?;
        let meta_path = layout::join(&root, &[layout::VAULT_META]);
        let bytes = match store.get(&meta_path).await {
            Ok(r) => r.bytes().await.map_err(|e| unreachable(url, e.into()))?,
            Err(object_store::Error::NotFound { .. }) => {
                if let Err(leftover) = refuse_leftover_vault(url, &store, &root).await
                    && leftover.kind() == ErrorKind::Conflict
                {
                    return Err(Error::not_found(leftover.to_string().replace(
                        "already holds backups",
                        "is a vault whose metadata is gone: it holds backups",
                    ))
                    .hint(leftover.hint_text().unwrap_or_default().to_owned()));
                }
                return Err(
                    Error::not_found(format!("there is no Strata vault at {url}"))
                        .hint(format!("create one with `strata vault init {url}`")),
                );
            }
            Err(e) => return Err(unreachable(url, e.into())),
        };
        let meta = VaultMeta::from_json(&bytes, url)?;
        let key = match (&meta.encryption, key) {
            (Some(enc), Some(key)) => {
                if key.check_value() != enc.key_check {
                    return Err(Error::crypto(format!(
                        "the key does not belong to the vault at {url}"
                    ))
                    .hint(
                        "use the key file written by `strata vault init --encrypt` for this vault",
                    )
                    .hint(format!(
                        "if that is the key given, the vault's {} (which records the key's check value) was replaced by another vault's: put back its own",
                        layout::VAULT_META
                    )));
                }
                Some(key)
            }
            (Some(_), None) => {
                return Err(Error::crypto(format!(
                    "the vault at {url} is encrypted and no key was given"
                ))
                .hint("set [vault] key_file in the config or pass --key-file"));
            }
            (None, Some(_)) => {
                tracing::warn!(%url, "the vault is not encrypted; the configured key is not used");
                None
            }
            (None, None) => None,
        };
        // An immutable S3 vault's writes carry checksums, which S3 requires
        // of uploads that Object Lock retains.
        if meta.immutability.is_some() && s3.is_some() {
            (store, root, s3) = build_store_with_access(&store_config(config, true))?;
        }
        if let Some(lock) = &meta.immutability {
            check_lock(url, lock, &store, &root, s3.as_ref()).await?;
        }
        Ok(Vault {
            inner: Arc::new(VaultInner {
                url: url.clone(),
                store,
                root,
                meta,
                key,
                s3: s3.map(Arc::new),
                clock: None,
            }),
        })
    }

    /// The URL the vault was opened from.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The directory of a local (`file://`) vault; `None` for other stores.
    pub fn local_dir(&self) -> Option<PathBuf> {
        let url = parse_vault_url(self.inner.url.trim()).ok()?;
        (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten()
    }

    /// The vault metadata.
    pub fn meta(&self) -> &VaultMeta {
        &self.inner.meta
    }

    /// The vault key, when the vault is encrypted.
    pub fn key(&self) -> Option<&VaultKey> {
        self.inner.key.as_ref()
    }

    /// The underlying object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The object path of `key` (relative to the vault root).
    pub fn path(&self, key: &str) -> Path {
        let mut path = self.inner.root.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// The key of `path` relative to the vault root.
    pub fn relative_key(&self, path: &Path) -> String {
        match path.prefix_match(&self.inner.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    /// Writes `body` at `key` only if nothing is there yet.
    /// A second put of the same key fails with [`ErrorKind::Conflict`].
    ///
    /// An attempt the network cut is tried again (object_store does not
    /// retry a create-only put whose connection was reset under way);
    /// when a later attempt finds the object already there, it is read
    /// back, and the put succeeds if it holds exactly `body` (the cut
    /// attempt landed).
    pub async fn put_create(&self, key: &str, body: Vec<u8>) -> Result<()> {
        let body = bytes::Bytes::from(body);
        let (put, retried) = put_create_retrying(self.store(), &self.path(key), body.clone()).await;
        match put {
            Ok(_) => Ok(()),
            Err(e @ object_store::Error::AlreadyExists { .. }) if retried => {
                let err = Error::from(e).context(format!("writing {key}"));
                match self.get_bytes(key).await {
                    Ok(existing) if existing == body => Ok(()),
                    _ => Err(err),
                }
            }
            Err(e) => Err(Error::from(e).context(format!("writing {key}"))),
        }
    }

    /// Reads the whole object at `key`.
    pub async fn get_bytes(&self, key: &str) -> Result<bytes::Bytes> {
        let result = self
            .store()
            .get(&self.path(key))
            .await
            .map_err(|e| Error::from(e).context(format!("reading {key}")))?;
        result
            .bytes()
            .await
            .map_err(|e| Error::from(e).context(format!("reading {key}")))
    }

    /// Lists the keys (relative to the root) under `prefix`.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = self.path(prefix);
        let metas: Vec<_> = self
            .store()
            .list(Some(&prefix_path))
            .try_collect()
            .await
            .map_err(|e| {
                unreachable(
                    self.url(),
                    Error::from(e).context(format!("listing {prefix}")),
                )
            })?;
        let mut keys: Vec<String> = metas
            .iter()
            .map(|m| self.relative_key(&m.location))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Commits a manifest: a create-only put at its key. This is the commit
    /// point of a backup; it fails with [`ErrorKind::Conflict`] if a manifest
    /// with the same id exists.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<String> {
        self.ensure_present().await?;
        let key = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
        self.put_create(&key, manifest.to_json()?).await?;
        Ok(key)
    }

    /// Checks that the vault opened is still there (its metadata object
    /// exists), right before a manifest commits a backup into it. A local
    /// vault whose directory was moved, deleted or unmounted while a backup
    /// ran would otherwise have its directories recreated by the writes,
    /// and the backup "committed" into a place no later command reads.
    async fn ensure_present(&self) -> Result<()> {
        let url = &self.inner.url;
        let meta_path = layout::join(&self.inner.root, &[layout::VAULT_META]);
        match self.inner.store.head(&meta_path).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(Error::storage(format!(
                "the vault at {url} is gone: its {} is missing",
                layout::VAULT_META
            ))
            .hint("the vault was moved, deleted or unmounted while the backup ran; nothing was committed: bring the vault back and run the backup again")),
            Err(e) => Err(unreachable(url, e.into())),
        }
    }

    /// Reads the manifest of backup `id` of an engine instance (checked as
    /// [`manifest_at`] does).
    pub async fn read_manifest(
        &self,
        engine: &str,
        instance: &str,
        id: &BackupId,
    ) -> Result<Manifest> {
        let key = layout::manifest_key(engine, instance, id);
        let bytes = self.get_bytes(&key).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!("backup {id} of {engine} {instance} does not exist"))
                    .hint("`strata list` shows the committed backups")
            } else {
                e
            }
        })?;
        manifest_at(&bytes, &key)
    }

    /// Whether backup `id` of an engine instance is committed (its manifest
    /// exists), without reading the manifest.
    pub async fn manifest_exists(
        &self,
        engine: &str,
        instance: &str,
        id: &BackupId,
    ) -> Result<bool> {
        let key = layout::manifest_key(engine, instance, id);
        match self.store().head(&self.path(&key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::from(e).context(format!("checking {key}"))),
        }
    }

    /// Reads every manifest under `prefix` (a [`layout::MANIFESTS`] sub-prefix),
    /// in key order, reading a few in parallel.
    pub async fn read_manifests(&self, prefix: &str) -> Result<Vec<Manifest>> {
        let keys = self.manifest_keys(prefix).await?;
        self.read_manifest_keys(keys).await
    }

    /// The keys of the manifests under `prefix`.
    async fn manifest_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_keys(prefix)
            .await?
            .into_iter()
            .filter(|k| k.ends_with(".json"))
            .collect())
    }

    /// Reads the manifests at `keys`, a few in parallel, in the order given:
    /// each key with its manifest, or the integrity error of one that
    /// cannot be read as a manifest; a storage failure fails the call.
    async fn parse_manifest_keys(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, std::result::Result<Manifest, Error>)>> {
        futures::stream::iter(keys)
            .map(|key| async move {
                let bytes = self.get_bytes(&key).await?;
                match manifest_at(&bytes, &key) {
                    Err(err) if err.kind() != ErrorKind::Integrity => Err(err),
                    parsed => Ok((key, parsed)),
                }
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// The manifests under `prefix` that cannot be read as one (damaged,
    /// truncated, from a newer Strata), each with its key and why: what
    /// [`Vault::read_manifests`] leaves out with a warning, for `verify` to
    /// report as findings.
    pub async fn damaged_manifests(&self, prefix: &str) -> Result<Vec<(String, Error)>> {
        let keys = self.manifest_keys(prefix).await?;
        Ok(self
            .parse_manifest_keys(keys)
            .await?
            .into_iter()
            .filter_map(|(key, parsed)| parsed.err().map(|err| (key, err)))
            .collect())
    }

    /// Reads and checks the manifests at `keys` (relative to the root), a few
    /// in parallel, in the order given.
    ///
    /// A manifest that cannot be read as one (damaged, truncated, from a
    /// newer Strata) is left out with a warning naming its key, so that one
    /// bad object never hides every other backup (listing, restoring and
    /// rebuilding the index go on); a storage failure still fails the call.
    pub async fn read_manifest_keys(&self, keys: Vec<String>) -> Result<Vec<Manifest>> {
        let read = self.parse_manifest_keys(keys).await?;
        Ok(read
            .into_iter()
            .filter_map(|(key, parsed)| match parsed {
                Ok(manifest) => Some(manifest),
                Err(err) => {
                    tracing::warn!(
                        manifest = %key,
                        error = %err,
                        "a damaged manifest was left out: its backup cannot be listed or restored; keep the object for inspection, or delete it once you know it is unusable"
                    );
                    None
                }
            })
            .collect())
    }

    /// Every committed manifest in the vault.
    pub async fn all_manifests(&self) -> Result<Vec<Manifest>> {
        self.read_manifests(layout::MANIFESTS).await
    }

    /// The vault's lock, when it is immutable.
    pub fn immutability(&self) -> Option<&immutability::Immutability> {
        self.inner.meta.immutability.as_ref()
    }

    pub(crate) fn s3_access(&self) -> Option<&immutability::S3Access> {
        self.inner.s3.as_deref()
    }

    /// Whether the vault is an immutable S3 vault, whose bucket is
    /// versioned: a missing object may be hidden by a delete marker.
    pub(crate) fn is_versioned(&self) -> bool {
        self.immutability().is_some() && self.s3_access().is_some()
    }

    /// The same vault, judging locks and purge dates as if it were `now`:
    /// for drills and tests with compressed time (`--now`).
    pub fn at(&self, now: DateTime<Utc>) -> Vault {
        let inner = &self.inner;
        Vault {
            inner: Arc::new(VaultInner {
                url: inner.url.clone(),
                store: inner.store.clone(),
                root: inner.root.clone(),
                meta: inner.meta.clone(),
                key: inner.key.clone(),
                s3: inner.s3.clone(),
                clock: Some(now),
            }),
        }
    }

    /// The time deletions judge by: the clock's, or the one [`Vault::at`] set.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.unwrap_or_else(Utc::now)
    }
}

pub use crate::plugin::Progress;
pub use archive::VaultArchive;
pub use deletion::{PurgeReport, Tombstone};
pub use immutability::Deletion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsable_vault_url_is_shown_without_user_info_or_query() {
        for (raw, shown) in [
            ("s3://AKIA:Se/cret@bucket/p", "s3://<redacted>@bucket/p"),
            (
                "s3://AKIA:Secret@my_bucket:99999/p",
                "s3://<redacted>@my_bucket:99999/p",
            ),
            ("file://user:pw@/tmp/v", "file://<redacted>@/tmp/v"),
            ("az://c/p?sv=1&sig=Se/cret", "az://c/p?<redacted>"),
            ("s3://bucket:99999/p", "s3://bucket:99999/p"),
            ("bucket@x?y", "<redacted>@x?<redacted>"),
        ] {
            assert_eq!(redacted_unparsed_url(raw), shown, "{raw}");
        }
        let err = build_store(&VaultConfig::from_url("s3://AKIA:Se/cret@bucket:99999/p"))
            .expect_err("an unparsable URL");
        assert!(!err.to_string().contains("Se/cret"), "{err}");
        assert!(err.to_string().contains("not a valid vault URL"), "{err}");
    }

    #[test]
    fn retry_options_are_read_by_strata_and_checked() {
        let options = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let default = retry_config("s3://b", &options(&[])).unwrap();
        assert_eq!(default.max_retries, 10);
        assert_eq!(default.retry_timeout, Duration::from_secs(300));
        // Backoffs that double on average (see `retry_backoff`).
        assert_eq!(default.backoff.base, 4.0);
        assert_eq!(default.backoff.init_backoff, Duration::from_millis(100));
        let set = options(&[
            ("max_retries", "2"),
            ("retry_timeout", "30s"),
            ("aws_region", "eu-west-1"),
        ]);
        let retry = retry_config("s3://b", &set).unwrap();
        assert_eq!(retry.max_retries, 2);
        assert_eq!(retry.retry_timeout, Duration::from_secs(30));
        let passed: Vec<&String> = store_options(&set).map(|(k, _)| k).collect();
        assert_eq!(passed, ["aws_region"]);
        for (key, value, example) in [
            ("max_retries", "many", "10"),
            ("retry_timeout", "soon", "5m"),
        ] {
            let err = retry_config("s3://b", &options(&[(key, value)])).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert_eq!(
                err.to_string(),
                format!("vault option {key} = \"{value}\" for vault s3://b is not valid")
            );
            assert_eq!(
                err.hint_text(),
                Some(format!("write it as in {key} = \"{example}\"").as_str())
            );
        }
    }

    #[tokio::test]
    async fn init_refuses_existing_and_open_checks_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/v", dir.path().display());
        let config = VaultConfig::from_url(&url);
        let key = VaultKey::generate();
        Vault::init(&config, Some(key.clone())).await.unwrap();
        let err = Vault::init(&config, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("already exists"), "{err}");

        let err = Vault::open_with_key(&config, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Crypto);
        let err = Vault::open_with_key(&config, Some(VaultKey::generate()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let vault = Vault::open_with_key(&config, Some(key)).await.unwrap();
        assert!(vault.key().is_some());
    }

    /// A vault URL holding a password or a SAS token is refused before any
    /// request, and the refusal shows the URL without them.
    #[tokio::test]
    async fn urls_with_credentials_are_refused_without_showing_them() {
        for (url, shown, what) in [
            (
                "s3://AKIA:S3cret-Url-1@bucket/prefix",
                "s3://AKIA@bucket/prefix",
                "a password",
            ),
            (
                "az://container/prefix?sv=2022-11-02&sig=S3cret-Url-1",
                "az://container/prefix",
                "a query string",
            ),
            (
                "https://acct.blob.core.windows.net/c/p?sig=S3cret-Url-1",
                "https://acct.blob.core.windows.net/c/p",
                "a query string",
            ),
        ] {
            let err = Vault::open(&VaultConfig::from_url(url)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}");
            let said = format!("{err} {}", err.hint_text().unwrap_or_default());
            assert!(!said.contains("S3cret-Url-1"), "{said}");
            assert!(
                err.to_string()
                    .starts_with(&format!("the vault URL {shown} carries {what}")),
                "{err}"
            );
            assert!(
                err.hint_text().unwrap().contains("[vault.options]"),
                "{err:?}"
            );
        }
        // A user name without a password (an Azure container in abfss://) is no credential.
        assert!(
            refuse_credentials_in_url(
                &url::Url::parse("abfss://c@a.dfs.core.windows.net/p").unwrap()
            )
            .is_ok()
        );
    }

    #[tokio::test]
    async fn open_missing_vault_says_how_to_create_one() {
        let err = Vault::open(&VaultConfig::from_url("memory://nothing-here"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.hint_text().unwrap().contains("strata vault init"));
        let err = Vault::open(&VaultConfig::from_url("/definitely/not/here"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn newer_vault_format_is_refused() {
        let config = VaultConfig::from_url("memory://newer-format");
        let (store, root) = build_store(&config).unwrap();
        let meta = serde_json::json!({"format": 42, "vault_id": "x", "created_at": "2026-01-01T00:00:00Z", "created_by": "future"});
        store
            .put(
                &layout::join(&root, &[layout::VAULT_META]),
                serde_json::to_vec(&meta).unwrap().into(),
            )
            .await
            .unwrap();
        let err = Vault::open(&config).await.unwrap_err();
        assert!(err.to_string().contains("format 42"), "{err}");
        assert!(err.hint_text().unwrap().contains("upgrade"));
    }
}

/// Requests the network cuts ([`put_create_retrying`], deletes): tried
/// again, a create found when it had landed, and nothing retried that
/// object_store retried already or that a retry cannot cure.
#[cfg(test)]
mod cut_request_tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutPayload, PutResult,
    };

    use super::*;
    use crate::plugin::{ArchiveStore, Attributes, PutOnce};

    /// What happens to the next put.
    #[derive(Debug, Clone, Copy)]
    enum Cut {
        /// The connection is reset before the store sees the put.
        Before,
        /// The store applies the put; its answer is lost in a reset.
        After,
        /// The store refuses it.
        Denied,
        /// The store answers 503 (after object_store's own retries).
        Unavailable,
        /// Another writer's object lands at the key; ours is reset before
        /// the store sees it.
        Rival,
    }

    /// A store whose puts fail as the queued cuts say, then work.
    #[derive(Debug)]
    struct CutStore {
        inner: Arc<dyn ObjectStore>,
        cuts: Mutex<VecDeque<Cut>>,
        puts: AtomicUsize,
        /// Cuts of the next deletes (`Before` and `After` only).
        delete_cuts: Mutex<VecDeque<Cut>>,
        deletes: AtomicUsize,
    }

    impl std::fmt::Display for CutStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CutStore({})", self.inner)
        }
    }

    /// A request the network cut, as object_store reports it.
    fn reset() -> object_store::Error {
        use object_store::client::{HttpError, HttpErrorKind};
        object_store::Error::Generic {
            store: "cut",
            source: Box::new(HttpError::new(
                HttpErrorKind::Interrupted,
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ),
            )),
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for CutStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let cut = self.cuts.lock().unwrap().pop_front();
            match cut {
                None => self.inner.put_opts(location, payload, opts).await,
                Some(Cut::Before) => Err(reset()),
                Some(Cut::After) => {
                    self.inner.put_opts(location, payload, opts).await?;
                    Err(reset())
                }
                Some(Cut::Unavailable) => Err(object_store::Error::Generic {
                    store: "cut",
                    source: "Server returned non-2xx status code: 503 Service Unavailable".into(),
                }),
                Some(Cut::Denied) => Err(object_store::Error::PermissionDenied {
                    path: location.to_string(),
                    source: "denied".into(),
                }),
                Some(Cut::Rival) => {
                    let rival = PutPayload::from_static(b"rival");
                    self.inner.put_opts(location, rival, opts).await?;
                    Err(reset())
                }
            }
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.deletes.fetch_add(1, Ordering::SeqCst);
            let cut = self.delete_cuts.lock().unwrap().pop_front();
            match cut {
                Some(Cut::Before) => locations.map(|_| Err(reset())).boxed(),
                Some(Cut::After) => self
                    .inner
                    .delete_stream(locations)
                    .map(|_| Err(reset()))
                    .boxed(),
                _ => self.inner.delete_stream(locations),
            }
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A memory vault whose puts are cut as `cuts` say, and its store.
    async fn cut_vault(cuts: &[Cut]) -> (Vault, Arc<CutStore>) {
        let url = format!("memory://create-retry-{:016x}", rand::random::<u64>());
        let vault = Vault::init(&VaultConfig::from_url(&url), None)
            .await
            .unwrap();
        let store = Arc::new(CutStore {
            inner: vault.store().clone(),
            cuts: Mutex::new(cuts.iter().copied().collect()),
            puts: AtomicUsize::new(0),
            delete_cuts: Mutex::new(VecDeque::new()),
            deletes: AtomicUsize::new(0),
        });
        let inner = &vault.inner;
        let cut = Vault {
            inner: Arc::new(VaultInner {
                url: inner.url.clone(),
                store: store.clone(),
                root: inner.root.clone(),
                meta: inner.meta.clone(),
                key: None,
                s3: None,
                clock: None,
            }),
        };
        (cut, store)
    }

    #[tokio::test]
    async fn a_create_cut_before_the_store_saw_it_is_tried_again() {
        let (vault, store) = cut_vault(&[Cut::Before]).await;
        vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(store.puts.load(Ordering::SeqCst), 2);
        assert_eq!(
            &vault.get_bytes("manifests/a.json").await.unwrap()[..],
            b"{}"
        );
    }

    #[tokio::test]
    async fn a_create_whose_answer_was_lost_is_found_by_the_retry() {
        let (vault, store) = cut_vault(&[Cut::After]).await;
        vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(store.puts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_existing_object_is_still_a_conflict() {
        let (vault, store) = cut_vault(&[]).await;
        vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap();
        let err = vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        // Other bytes that a retry finds are another writer's.
        store.cuts.lock().unwrap().push_back(Cut::Rival);
        let err = vault
            .put_create("manifests/b.json", b"[2]".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert_eq!(
            &vault.get_bytes("manifests/b.json").await.unwrap()[..],
            b"rival"
        );
    }

    #[tokio::test]
    async fn a_create_is_tried_a_bounded_number_of_times() {
        let cuts = [Cut::Before; CUT_REQUEST_ATTEMPTS as usize + 1];
        let (vault, store) = cut_vault(&cuts).await;
        let err = vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(
            store.puts.load(Ordering::SeqCst),
            CUT_REQUEST_ATTEMPTS as usize
        );
    }

    #[tokio::test]
    async fn a_refused_create_is_not_tried_again() {
        // An unavailable store was retried by object_store already.
        let (vault, store) = cut_vault(&[Cut::Unavailable]).await;
        let err = vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(store.puts.load(Ordering::SeqCst), 1);
        let (vault, store) = cut_vault(&[Cut::Denied]).await;
        let err = vault
            .put_create("manifests/a.json", b"{}".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
        assert_eq!(store.puts.load(Ordering::SeqCst), 1);
    }

    /// `vault gc`, retention, `delete`: a delete the network cut (S3's
    /// bulk delete is a POST object_store does not retry) is tried again,
    /// whether or not the cut one had deleted the object.
    #[tokio::test]
    async fn a_cut_delete_is_tried_again() {
        let (vault, store) = cut_vault(&[]).await;
        vault
            .put_create("data/x/1", b"segment".to_vec())
            .await
            .unwrap();
        store
            .delete_cuts
            .lock()
            .unwrap()
            .extend([Cut::After, Cut::Before]);
        assert_eq!(
            vault.delete_object("data/x/1").await.unwrap(),
            Deletion::Deleted
        );
        assert_eq!(store.deletes.load(Ordering::SeqCst), 3);
        assert_eq!(
            vault.get_bytes("data/x/1").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    /// `wal-push` and Backint's version markers: an archive object whose
    /// put was cut is stored by the retry, or found identical when the cut
    /// put had landed.
    #[tokio::test]
    async fn an_archive_object_rides_out_a_cut_put() {
        let (vault, store) = cut_vault(&[Cut::Before]).await;
        let archive = VaultArchive::new(vault, "postgres", "main");
        let first = archive
            .put_once(
                "wal/1/00000001/000000010000000000000001",
                bytes::Bytes::from_static(b"one"),
                Attributes::new(),
            )
            .await
            .unwrap();
        assert!(matches!(first, PutOnce::Stored { .. }), "{first:?}");
        store.cuts.lock().unwrap().push_back(Cut::After);
        let second = archive
            .put_once(
                "wal/1/00000001/000000010000000000000002",
                bytes::Bytes::from_static(b"two"),
                Attributes::new(),
            )
            .await
            .unwrap();
        assert_eq!(second, PutOnce::Identical);
        assert_eq!(store.puts.load(Ordering::SeqCst), 4);
        let got = archive
            .get("wal/1/00000001/000000010000000000000002")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got.bytes[..], b"two");
    }
}

/// Objects altered in the vault behind Strata's back (found by the damage
/// campaign): each is refused naming its key, never read as something else.
#[cfg(test)]
mod damage_tests {
    use object_store::ObjectStoreExt;

    use super::*;

    fn manifest(id: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "engine": "stream", "instance": "a", "kind": "full",
            "started_at": "2026-11-22T00:15:00Z", "ended_at": "2026-11-22T00:15:01Z",
            "compression": {"algorithm": "zstd", "level": 3}, "streams": [],
        }))
        .unwrap()
    }

    async fn put(vault: &Vault, key: &str, bytes: Vec<u8>) {
        vault
            .store()
            .put(&vault.path(key), bytes.into())
            .await
            .unwrap();
    }

    /// Another backup's manifest copied over a manifest's key would be
    /// listed and restored as that backup; a manifest altered into other
    /// valid JSON would be planned by. Both are refused naming the key.
    #[tokio::test]
    async fn a_replaced_or_altered_manifest_is_refused_naming_its_key() {
        let vault = Vault::init(&VaultConfig::from_url("memory://damage-manifests"), None)
            .await
            .unwrap();
        let (one, two) = (
            manifest("20261122T001500.123Z-00000001"),
            manifest("20261122T001600.123Z-00000002"),
        );
        for m in [&one, &two] {
            let key = layout::manifest_key("stream", "a", &m.id);
            vault.put_create(&key, m.to_json().unwrap()).await.unwrap();
            assert_eq!(&vault.read_manifest("stream", "a", &m.id).await.unwrap(), m);
        }
        let key_one = layout::manifest_key("stream", "a", &one.id);
        let key_two = layout::manifest_key("stream", "a", &two.id);
        let sound = vault.get_bytes(&key_one).await.unwrap();

        put(
            &vault,
            &key_one,
            vault.get_bytes(&key_two).await.unwrap().to_vec(),
        )
        .await;
        let err = vault
            .read_manifest("stream", "a", &one.id)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "manifest {key_one} holds the manifest of another backup"
            )),
            "{err}"
        );
        let damaged = vault.damaged_manifests(layout::MANIFESTS).await.unwrap();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].0, key_one);

        let text = String::from_utf8(sound.to_vec()).unwrap();
        let altered = text.replacen("00:15:01Z", "00:15:09Z", 1);
        assert_ne!(altered, text);
        put(&vault, &key_one, altered.into_bytes()).await;
        let err = vault
            .read_manifest("stream", "a", &one.id)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "manifest {key_one} is damaged: its checksum does not match"
            )),
            "{err}"
        );
    }

    /// Found by fuzzing (fuzz/corpus/vault_meta/beyond-max-days): metadata
    /// whose soft delete period or lock is beyond `MAX_DAYS` was accepted,
    /// and a deletion then panicked computing its purge date.
    #[test]
    fn vault_metadata_with_periods_beyond_the_limit_is_refused() {
        let meta = |soft: u64, lock: u64| {
            format!(
                r#"{{"format":2,"vault_id":"v","created_at":"2026-12-01T00:00:00Z","created_by":"strata",
                "soft_delete_days":{soft},"immutability":{{"mode":"compliance","days":{lock},
                "enforced_by":"s3-object-lock","since":"2026-12-01T00:00:00Z"}}}}"#
            )
        };
        let sound = VaultMeta::from_json(meta(14, 36_500).as_bytes(), "memory://v").unwrap();
        assert_eq!(
            (sound.soft_delete_days, sound.immutability.unwrap().days),
            (14, 36_500)
        );
        for (soft, lock, what) in [
            (63_500, 30, "soft_delete_days is 63500"),
            (4_294_967_295, 30, "soft_delete_days is 4294967295"),
            (14, 4_294_967_295, "immutability days is 4294967295"),
        ] {
            let err = VaultMeta::from_json(meta(soft, lock).as_bytes(), "memory://v").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
            assert!(err.to_string().contains("strata-vault.json"), "{err}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    /// Damaged vault metadata is an integrity error naming
    /// `strata-vault.json` and saying how to get it back; a value altered
    /// into another valid one (the soft delete period) is caught too.
    #[tokio::test]
    async fn damaged_vault_metadata_names_strata_vault_json_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = VaultConfig::from_url(format!("file://{}/v", dir.path().display()));
        Vault::init(&config, None).await.unwrap();
        let path = dir.path().join("v").join(layout::VAULT_META);
        let sound = std::fs::read_to_string(&path).unwrap();
        for damaged in [
            sound.replacen("\"soft_delete_days\": 14", "\"soft_delete_days\": 15", 1),
            sound[..sound.len() / 2].to_owned(),
        ] {
            assert_ne!(damaged, sound);
            std::fs::write(&path, &damaged).unwrap();
            let err = Vault::open(&config).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
            assert!(
                err.to_string()
                    .contains("the vault metadata strata-vault.json at file://"),
                "{err}"
            );
            assert!(
                err.hint_text()
                    .is_some_and(|h| h.contains("put back a sound copy")),
                "{err}"
            );
        }
        std::fs::write(&path, &sound).unwrap();
        Vault::open(&config).await.unwrap();
    }

    /// A tombstone replaced by another deleted backup's is neither undeleted
    /// nor listed as this backup, a damaged one is named by `undelete`, and
    /// one gone while the backup's data is still there is named too.
    #[tokio::test]
    async fn a_damaged_replaced_or_lost_tombstone_is_named_by_undelete() {
        let vault = Vault::init(&VaultConfig::from_url("memory://damage-tombstones"), None)
            .await
            .unwrap();
        let (one, two) = (
            manifest("20261122T001500.123Z-00000001"),
            manifest("20261122T001600.123Z-00000002"),
        );
        for m in [&one, &two] {
            let key = layout::manifest_key("stream", "a", &m.id);
            vault.put_create(&key, m.to_json().unwrap()).await.unwrap();
            vault.delete_backup(m, "test").await.unwrap();
        }
        let key_one = layout::tombstone_key("stream", "a", &one.id);
        let key_two = layout::tombstone_key("stream", "a", &two.id);
        let sound = vault.get_bytes(&key_one).await.unwrap().to_vec();

        put(
            &vault,
            &key_one,
            vault.get_bytes(&key_two).await.unwrap().to_vec(),
        )
        .await;
        let damaged = vault.damaged_tombstones(layout::DELETED).await.unwrap();
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0]
                .1
                .to_string()
                .contains("holds the tombstone of another backup"),
            "{}",
            damaged[0].1
        );
        let err = vault.undelete(&one.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(err.to_string().contains(&key_one), "{err}");
        let listed: Vec<BackupId> = vault
            .deleted_backups()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.manifest.id)
            .collect();
        assert_eq!(listed, std::slice::from_ref(&two.id));

        // Gone, with data of the backup still in the vault.
        put(&vault, &key_one, sound).await;
        ObjectStoreExt::delete(vault.store().as_ref(), &vault.path(&key_one))
            .await
            .unwrap();
        let data = format!(
            "{}/00000.00000.zst",
            layout::backup_data_prefix("stream", "a", &one.id)
        );
        put(&vault, &data, b"a segment".to_vec()).await;
        let err = vault.undelete(&one.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains(&key_one), "{err}");
    }
}

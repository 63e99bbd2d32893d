//! The one error type of Strata's public API.
//!
//! An unattended agent has to decide, for every failure, whether to try
//! again later or to wake somebody up, and the person woken up needs to know
//! what failed, where, and what to do. [`Error`] carries exactly that:
//!
//! - a **kind** ([`ErrorKind`]): what went wrong, broadly (configuration,
//!   object storage, the engine, integrity of stored data, crypto, local I/O,
//!   not found, conflict, cancelled, the catalog index). The CLI maps each
//!   kind to an exit code.
//! - **whether a retry can succeed** ([`Error::is_retryable`]). It is decided
//!   once, where a foreign error is converted, never guessed at the sites
//!   that pass an error on (see *Retry policy* below).
//! - a **message** and the **context** it was met in. [`Error::context`]
//!   records what the caller was doing ("committing backup X"), and
//!   [`Error::with`] records structured fields (`path`, `object`, `part`,
//!   `stream`, `backup`, `database`, ...) that machines read through
//!   [`Error::fields`] and [`Error::field`].
//! - **hints** for the operator ([`Error::hints`]): every layer may add one,
//!   none replaces another.
//! - the underlying **cause** ([`std::error::Error::source`]): the foreign
//!   error itself, so an `io::Error` keeps its OS error code and kind.
//!
//! # How it reads
//!
//! `Display` renders everything but the hints, once, in a fixed order:
//!
//! ```text
//! <context, outermost first>: ... : <message> (<field>: <value>, ...): <cause>
//! ```
//!
//! The cause is left out when the text before it already contains it, and a
//! field that the message itself names (recorded with
//! [`Error::in_message`], as the constructors of this module do for the
//! paths and object keys they put in their messages) is not repeated. The
//! CLI prints that line, then one `hint: ...` line per hint; with `--json`
//! it prints `kind`, `message`, `retryable`, `hints`, `hint` (the hints
//! joined, for older consumers), `context` (the fields) and `while` (the
//! contexts).
//!
//! # Retry policy
//!
//! Retryable means "the same operation, unchanged, may succeed later". The
//! conversions decide it, one place per foreign type:
//!
//! - **object storage** (`object_store::Error`): network failures (connect,
//!   request, timeout, interrupted or undecodable responses), HTTP 5xx, 429
//!   and 408, S3's "200 with an error body", and interrupted or timed-out
//!   local I/O are retryable; a failure the chain does not explain is too (a
//!   retry costs one request, a false alarm wakes a person). Not found,
//!   already exists, precondition failed, not modified, permission denied,
//!   unauthenticated, not supported or implemented, invalid paths, unknown
//!   options, other 4xx statuses, redirects without a location and local
//!   I/O failures such as a full disk are not.
//! - **local I/O** (`std::io::Error`), by [`std::io::ErrorKind`]:
//!   `Interrupted`, `TimedOut`, `WouldBlock`, `ConnectionReset`,
//!   `ConnectionAborted`, `ConnectionRefused` and `NotConnected` are
//!   retryable; everything else (`NotFound`, `PermissionDenied`,
//!   `StorageFull` (ENOSPC), `QuotaExceeded` (EDQUOT), `InvalidInput`,
//!   `InvalidData`, `UnexpectedEof`, `BrokenPipe`, ...) is not. A full disk
//!   or an exhausted quota adds the hint "free space on `<path>`'s file
//!   system", a read-only file system (EROFS) the hint to remount it
//!   read-write. Build path-aware errors with [`Error::io_at`],
//!   [`Error::io_doing_at`] or [`IoResultExt`]: they keep the `io::Error`
//!   as the cause and the path as the `path` field.
//! - **SQLite** (`rusqlite::Error`): a busy or locked database is
//!   retryable, anything else is not.
//! - **JSON** (`serde_json::Error`): malformed data is an integrity error,
//!   never retryable; an I/O error under it follows the I/O policy.
//! - **tokio tasks** (`tokio::task::JoinError`): never retryable; a
//!   cancelled task is [`ErrorKind::Cancelled`], a panicked one
//!   [`ErrorKind::Io`].
//!
//! Engine plugins convert their drivers' errors the same way, in one
//! function each (`tokio-postgres` in the PostgreSQL plugin, `hdbconnect` in
//! the HANA plugin). Errors built from scratch ([`Error::config`],
//! [`Error::integrity`], ...) are not retryable; [`Error::retryable`] exists
//! for the rare error that knows better, and should say why where it is
//! called.
//!
//! # Across pipes, tasks and `io::Write`
//!
//! An error that must pass through an interface speaking `io::Result` keeps
//! itself whole: [`Error::into_io`] wraps it in an `io::Error` of the same
//! I/O kind, and `Error::from` unwraps it again, path, hints and retry
//! verdict included. [`PathWriter`] does this for a writer of one file.
//! When two ends of a pipe fail together, [`pipe_outcome`] reports the
//! cause rather than the echo (a full disk, not the broken pipe it caused).
//!
//! # Hints
//!
//! Hints are kept in the order they were added. Errors travel outwards, so
//! the first hint comes from the site nearest the cause and is the most
//! specific ("free space on /var/lib/pg's file system"); later ones come
//! from the layers that passed the error on ("nothing was committed; run
//! the backup again"). A hint equal to one already present is not added
//! twice. [`Error::hint_text`] joins them with `"; "` in that order.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Shorthand for results carrying Strata's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, broadly. The CLI maps each kind to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration, a key file, a parameter file or command-line input is wrong.
    Config,
    /// The object store failed or could not be reached.
    Storage,
    /// The database engine failed or refused.
    Engine,
    /// Stored data does not match its checksum or digest, or a manifest is malformed.
    Integrity,
    /// A key is missing or wrong, or authenticated decryption failed.
    Crypto,
    /// A local file, pipe or socket failed.
    Io,
    /// The requested backup, object or point in time does not exist.
    NotFound,
    /// The object already exists (a create-only put lost), or the target is not empty.
    Conflict,
    /// The work was cancelled.
    Cancelled,
    /// The local catalog index failed.
    Catalog,
}

impl ErrorKind {
    /// A short lowercase name (`config`, `storage`, ...), used in logs and `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Storage => "storage",
            ErrorKind::Engine => "engine",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Crypto => "crypto",
            ErrorKind::Io => "io",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Catalog => "catalog",
        }
    }

    /// The kind named `name` ([`as_str`](Self::as_str)'s names).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        [
            ErrorKind::Config,
            ErrorKind::Storage,
            ErrorKind::Engine,
            ErrorKind::Integrity,
            ErrorKind::Crypto,
            ErrorKind::Io,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Cancelled,
            ErrorKind::Catalog,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Strata's error: a kind, a message, the context it was met in (what the
/// caller was doing, and structured fields), hints for the operator,
/// whether retrying makes sense, and the underlying cause. See the [module
/// documentation](self) for the model.
pub struct Error {
    // Boxed: errors are rare, and a small `Result` keeps every call cheap.
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    /// What the callers were doing, innermost first.
    contexts: Vec<String>,
    fields: Vec<Field>,
    hints: Vec<String>,
    /// `hints` joined with "; ", kept so that [`Error::hint_text`] can lend it.
    hint_text: Option<String>,
    retryable: bool,
    source: Option<Cause>,
}

struct Field {
    key: &'static str,
    value: String,
    /// Whether the message already names it (then `Display` does not repeat it).
    in_message: bool,
}

impl Error {
    /// A new error of `kind` with `message`; not retryable, no hint.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                contexts: Vec::new(),
                fields: Vec::new(),
                hints: Vec::new(),
                hint_text: None,
                retryable: false,
                source: None,
            }),
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// An object-storage error.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }

    /// A database-engine error.
    pub fn engine(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Engine, message)
    }

    /// Stored data failed a check.
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }

    /// A key or decryption problem.
    pub fn crypto(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Crypto, message)
    }

    /// A local I/O problem described in words. Prefer [`Error::io_at`] when
    /// an `io::Error` and its path are at hand.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }

    /// Something asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Something already exists.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// The work was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// A local I/O failure on `path`: `"<path>: <OS error>"`, for example
    /// `/var/lib/pg/base/1/2: No space left on device (os error 28)`.
    ///
    /// The `io::Error` stays the cause (with its kind and OS error code),
    /// the path is the `path` field, retryable follows the I/O policy of the
    /// [module documentation](self), and a full disk or exhausted quota
    /// adds a hint naming the path's file system.
    pub fn io_at(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        let path = path.as_ref();
        Self::from_io(path.display().to_string(), Some(path), err)
    }

    /// Like [`Error::io_at`], worded `"<what> <path>: <OS error>"`, for
    /// example `cannot create /srv/pg: Permission denied (os error 13)`.
    pub fn io_doing_at(
        what: impl fmt::Display,
        path: impl AsRef<Path>,
        err: std::io::Error,
    ) -> Self {
        let path = path.as_ref();
        Self::from_io(format!("{what} {}", path.display()), Some(path), err)
    }

    fn from_io(message: String, path: Option<&Path>, err: std::io::Error) -> Self {
        let mut error = Error::io(message).retryable(io_is_retryable(err.kind()));
        if let Some(path) = path {
            error = error.in_message("path", path.display());
        }
        if let Some(hint) = io_hint(&err, path) {
            error = error.hint(hint);
        }
        error.with_source(err)
    }

    /// Adds a line telling the operator what to do. Hints accumulate: the
    /// first added (nearest the cause) comes first, and a hint already
    /// present is not added again.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        let hint = hint.into();
        let inner = &mut *self.inner;
        if !inner.hints.contains(&hint) {
            inner.hint_text = Some(match inner.hint_text.take() {
                Some(text) => format!("{text}; {hint}"),
                None => hint.clone(),
            });
            inner.hints.push(hint);
        }
        self
    }

    /// Sets whether a retry may cure the error. The conversions from
    /// foreign errors decide this already; call it only for an error that
    /// knows better, and say why.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    /// Attaches the underlying cause. `Display` appends its text unless the
    /// message already contains it.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// Records what the caller was doing when the error happened; `Display`
    /// puts it in front of the message (`"reading manifest X: <message>"`),
    /// outermost first.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.inner.contexts.push(context.to_string());
        self
    }

    /// Records a structured field (`path`, `object`, `part`, `stream`,
    /// `backup`, `database`, ...), shown by `Display` after the message as
    /// `(key: value, ...)`. The first value recorded for a key wins: the
    /// site nearest the cause knows it best.
    pub fn with(self, key: &'static str, value: impl fmt::Display) -> Self {
        self.add_field(key, value.to_string(), false)
    }

    /// Records a field that the message already names (so `Display` does
    /// not repeat it); otherwise as [`Error::with`].
    pub fn in_message(self, key: &'static str, value: impl fmt::Display) -> Self {
        self.add_field(key, value.to_string(), true)
    }

    fn add_field(mut self, key: &'static str, value: String, in_message: bool) -> Self {
        if !self.inner.fields.iter().any(|f| f.key == key) {
            self.inner.fields.push(Field {
                key,
                value,
                in_message,
            });
        }
        self
    }

    /// Replaces the message and keeps everything else (kind, retryable,
    /// hints, fields, context, cause): for a site that words a converted
    /// foreign error its own way while the conversion still decides the
    /// kind and whether to retry.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.inner.message = message.into();
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message alone: no context, fields, hints or cause.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// What the callers were doing, outermost first (as `Display` shows them).
    pub fn contexts(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.inner.contexts.iter().rev().map(String::as_str)
    }

    /// The structured fields, in the order they were recorded.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.inner.fields.iter().map(|f| (f.key, f.value.as_str()))
    }

    /// The value of field `key`, if recorded.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.inner
            .fields
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_str())
    }

    /// Every hint, most specific (nearest the cause) first.
    pub fn hints(&self) -> &[String] {
        &self.inner.hints
    }

    /// The hints as one line, joined with `"; "` most specific first, or
    /// `None` when there is none.
    pub fn hint_text(&self) -> Option<&str> {
        self.inner.hint_text.as_deref()
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut text = String::new();
        for context in inner.contexts.iter().rev() {
            text.push_str(context);
            text.push_str(": ");
        }
        text.push_str(&inner.message);
        let mut shown = inner.fields.iter().filter(|f| !f.in_message).peekable();
        if shown.peek().is_some() {
            text.push_str(" (");
            for (i, field) in shown.enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(field.key);
                text.push_str(": ");
                text.push_str(&field.value);
            }
            text.push(')');
        }
        f.write_str(&text)?;
        if let Some(source) = &inner.source {
            let cause = source.to_string();
            if !text.contains(&cause) {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {self}", self.inner.kind)?;
        for hint in &self.inner.hints {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Path-aware conversion of I/O results, see [`Error::io_at`].
///
/// ```
/// use strata_core::error::IoResultExt;
/// # fn main() -> strata_core::Result<()> {
/// let dir = std::env::temp_dir();
/// std::fs::metadata(&dir).at_path(&dir)?;
/// std::fs::metadata(&dir).doing_at("cannot stat", &dir)?;
/// # Ok(())
/// # }
/// ```
pub trait IoResultExt<T> {
    /// Converts an I/O failure into [`Error::io_at`] for `path`.
    fn at_path(self, path: impl AsRef<Path>) -> Result<T>;
    /// Converts an I/O failure into [`Error::io_doing_at`] for `what` and `path`.
    fn doing_at(self, what: impl fmt::Display, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn at_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io_at(path, e))
    }

    fn doing_at(self, what: impl fmt::Display, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io_doing_at(what, path, e))
    }
}

/// An async writer whose failures name the file it writes: each `io::Error`
/// carries [`Error::io_doing_at`]`("writing", path, ..)` (see
/// [`Error::into_io`]), so a layer that only sees `io::Result`s, such as
/// the vault reader writing a restored stream, still reports
/// `writing /srv/dump.sql.partial: No space left on device (os error 28)`.
pub struct PathWriter<W> {
    inner: W,
    path: std::path::PathBuf,
}

impl<W> PathWriter<W> {
    /// Wraps `inner`, which writes `path`.
    pub fn new(inner: W, path: impl Into<std::path::PathBuf>) -> Self {
        PathWriter {
            inner,
            path: path.into(),
        }
    }

    /// The writer inside.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn named<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        polled.map(|r| r.map_err(|e| Error::io_doing_at("writing", &self.path, e).into_io()))
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for PathWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.named(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.named(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.named(polled)
    }
}

/// The I/O retry policy of the [module documentation](self): whether a
/// later attempt can cure an I/O failure of this kind. For plugins that
/// classify a driver error by the I/O error under it.
pub fn io_is_retryable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
    )
}

/// The hint an I/O failure implies by itself: a full disk or quota, or a
/// file system mounted read-only (which no retry and no permission change
/// cures; a read-only remount is also what the kernel does to a file
/// system after an I/O error).
fn io_hint(err: &std::io::Error, path: Option<&Path>) -> Option<String> {
    let place = match path {
        Some(path) => format!("{}'s file system", path.display()),
        None => "the file system being written".to_owned(),
    };
    match err.kind() {
        std::io::ErrorKind::StorageFull => Some(format!("free space on {place}")),
        std::io::ErrorKind::QuotaExceeded => Some(format!(
            "free space on {place}, or raise this user's disk quota there"
        )),
        std::io::ErrorKind::ReadOnlyFilesystem => Some(format!(
            "{place} is mounted read-only: remount it read-write, or write elsewhere"
        )),
        _ => None,
    }
}

impl From<std::io::Error> for Error {
    /// An I/O failure whose path is not known (`"I/O error: <OS error>"`);
    /// prefer [`Error::io_at`]. An `io::Error` that carries an [`Error`]
    /// (made by [`Error::into_io`] to cross an `io::Write`, a pipe or a task)
    /// gives that error back whole, with its path, hints and retry verdict.
    fn from(err: std::io::Error) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = err.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        Self::from_io("I/O error".to_owned(), None, err)
    }
}

impl Error {
    /// This error as an `io::Error`, for interfaces that speak `io::Result`
    /// (`Read`/`Write` implementations, pipes between tasks). The kind is
    /// the underlying I/O error's where there is one (so a `BrokenPipe` is
    /// still seen as one), and converting back with `Error::from` returns
    /// this error unchanged.
    pub fn into_io(self) -> std::io::Error {
        let kind = self.io_kind().unwrap_or(std::io::ErrorKind::Other);
        std::io::Error::new(kind, self)
    }

    /// The kind of the I/O error at the root of this one, if there is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut current: Option<&(dyn std::error::Error + 'static)> =
            self.inner.source.as_deref().map(|e| e as _);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            current = error.source();
        }
        None
    }
}

/// The outcome of two ends of a pipe run together: `producer` feeding
/// `consumer`, both values when both succeeded. When one end fails the
/// other usually fails too, as an echo: a producer whose reader went away
/// sees `BrokenPipe`, a consumer whose producer stopped sees a truncated
/// stream. The error reported is the cause: the producer's, unless it is
/// only a broken pipe, then the consumer's (a full disk on the restore
/// target is reported as such, not as a broken pipe).
pub fn pipe_outcome<P, C>(producer: Result<P>, consumer: Result<C>) -> Result<(P, C)> {
    match (producer, consumer) {
        (Ok(produced), Ok(consumed)) => Ok((produced, consumed)),
        (Ok(_), Err(consumer)) => Err(consumer),
        (Err(producer), Err(consumer))
            if producer.io_kind() == Some(std::io::ErrorKind::BrokenPipe) =>
        {
            Err(consumer)
        }
        (Err(producer), _) => Err(producer),
    }
}

#[cfg(feature = "vault")]
/// Whether `err` is a request the network cut (the connection was reset
/// or timed out while the request was under way), which object_store
/// retries only for idempotent requests: a create-only put is not one, as
/// the store may have applied it. Its caller can retry such a put safely
/// (see `vault::put_create_retrying`); every other failure object_store
/// has already retried as far as its settings allow.
pub(crate) fn request_was_cut(err: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Interrupted | HttpErrorKind::Timeout
            );
        }
        current = error.source();
    }
    false
}

#[cfg(feature = "vault")]
/// What the source chain of an object-store error says about retrying it,
/// and the hints it implies; `None` when the chain does not say.
fn classify_storage_chain(err: &object_store::Error) -> Option<(bool, Vec<String>)> {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        // A store of ours (the durable local store) that already decided.
        if let Some(ours) = error.downcast_ref::<Error>() {
            return Some((ours.is_retryable(), ours.hints().to_vec()));
        }
        if let Some(http) = error.downcast_ref::<HttpError>() {
            let retryable = matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
                    | HttpErrorKind::Decode
            );
            return Some((retryable, Vec::new()));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some((
                io_is_retryable(io.kind()),
                io_hint(io, None).into_iter().collect(),
            ));
        }
        // object_store's retry error (which carries the HTTP status) is not
        // public in 0.14; its text is the only way to read the status.
        let text = error.to_string();
        if let Some(status) = http_status_in(&text) {
            return Some((status >= 500 || status == 429 || status == 408, Vec::new()));
        }
        // S3 can answer 200 with an error in the body; object_store retries
        // those as it retries a 5xx.
        if text.contains("Server returned error response") {
            return Some((true, Vec::new()));
        }
        if text.contains("Received redirect without LOCATION") {
            return Some((false, Vec::new()));
        }
        current = error.source();
    }
    None
}

#[cfg(feature = "vault")]
/// The status in object_store's "Server returned non-2xx status code: 503 ..." text.
fn http_status_in(text: &str) -> Option<u16> {
    const MARK: &str = "Server returned non-2xx status code: ";
    let start = text.find(MARK)? + MARK.len();
    let digits = text.get(start..start + 3)?;
    digits.parse().ok()
}

#[cfg(feature = "vault")]
impl From<object_store::Error> for Error {
    fn from(err: object_store::Error) -> Self {
        use object_store::Error as E;
        match &err {
            E::NotFound { path, .. } => {
                let message = format!("object {path} not found");
                Error::not_found(message)
                    .in_message("object", path)
                    .with_source(err)
            }
            E::AlreadyExists { path, .. } => {
                let message = format!("object {path} already exists");
                Error::conflict(message)
                    .in_message("object", path)
                    .with_source(err)
            }
            E::Precondition { path, .. } => {
                let message = format!("object {path} changed concurrently");
                Error::conflict(message)
                    .in_message("object", path)
                    .with_source(err)
            }
            E::PermissionDenied { path, .. } | E::Unauthenticated { path, .. } => {
                Error::storage(format!("access to {path} was denied"))
                    .in_message("object", path)
                    .hint("check the vault credentials (for example AWS_ACCESS_KEY_ID, AZURE_STORAGE_ACCOUNT_KEY) and the bucket's permissions")
                    .with_source(err)
            }
            E::NotSupported { .. } | E::NotImplemented { .. } => {
                Error::storage("the object store does not support an operation Strata needs")
                    .with_source(err)
            }
            E::NotModified { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. }
            | E::JoinError { .. } => Error::storage("object storage request failed")
                .hint("check the vault URL and its options")
                .with_source(err),
            _ => {
                let (retryable, hints) = classify_storage_chain(&err).unwrap_or((true, Vec::new()));
                let mut error = Error::storage("object storage request failed").retryable(retryable);
                if hints.is_empty() && retryable {
                    error = error.hint("check that the vault is reachable; the operation can be retried");
                } else if hints.is_empty() {
                    error = error.hint(
                        "check the vault URL, its options and the credentials; the same request would fail again",
                    );
                }
                for hint in hints {
                    error = error.hint(hint);
                }
                error.with_source(StoreFailure::new(err))
            }
        }
    }
}

#[cfg(feature = "vault")]
/// An object-store failure worded for the operator: object_store's text,
/// with a failed HTTP exchange named by its root cause. The HTTP client
/// says only "error sending request" (rendered "HTTP error: error sending
/// request"); the cause under it ("Connection refused", "Connection reset
/// by peer", "connection closed before message completed") is what tells
/// an unreachable store from a dropped connection. The store's error stays
/// the source, whole.
#[derive(Debug)]
struct StoreFailure {
    text: String,
    inner: object_store::Error,
}

#[cfg(feature = "vault")]
impl StoreFailure {
    fn new(inner: object_store::Error) -> StoreFailure {
        use object_store::client::HttpError;
        let mut text = inner.to_string();
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&inner);
        while let Some(error) = current {
            if error.downcast_ref::<HttpError>().is_some() {
                let said = error.to_string();
                let mut root = error.source();
                while let Some(deeper) = root.and_then(|e| e.source()) {
                    root = Some(deeper);
                }
                if let Some(root) = root.map(|e| e.to_string())
                    && !said.contains(&root)
                {
                    text = text.replace(&said, &format!("HTTP error: {root}"));
                }
                break;
            }
            current = error.source();
        }
        StoreFailure { text, inner }
    }
}

#[cfg(feature = "vault")]
impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(feature = "vault")]
impl std::error::Error for StoreFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner)
    }
}

#[cfg(feature = "vault")]
/// Whether a SQLite failure is one a later attempt can cure (another
/// process holds the database). Used by every conversion of `rusqlite`
/// errors, here and in the catalog index.
pub(crate) fn sqlite_is_retryable(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(feature = "vault")]
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::new(ErrorKind::Catalog, "catalog index error")
            .hint("the index is a cache: `strata catalog rebuild` recreates it from the vault")
            .retryable(sqlite_is_retryable(&err))
            .with_source(err)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        let retryable = err.io_error_kind().is_some_and(io_is_retryable);
        Error::integrity("malformed JSON")
            .retryable(retryable)
            .with_source(err)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        if err.is_cancelled() {
            Error::cancelled("a background task was cancelled").with_source(err)
        } else {
            Error::io("a background task failed").with_source(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn os_error(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn an_error_crosses_io_interfaces_whole() {
        let full = Error::io_doing_at("writing", "/srv/pg/base/1/2", os_error(28))
            .hint("restore to another directory");
        let crossed = full.into_io();
        assert_eq!(crossed.kind(), io::ErrorKind::StorageFull);
        let back = Error::from(crossed).context("restoring stream data.0");
        assert_eq!(
            back.to_string(),
            "restoring stream data.0: writing /srv/pg/base/1/2: No space left on device (os error 28)"
        );
        assert_eq!(back.field("path"), Some("/srv/pg/base/1/2"));
        assert_eq!(
            back.hints(),
            [
                "free space on /srv/pg/base/1/2's file system",
                "restore to another directory"
            ]
        );
        assert_eq!(back.io_kind(), Some(io::ErrorKind::StorageFull));
        // An error with no I/O cause crosses as `Other`.
        let config = Error::config("bad").into_io();
        assert_eq!(config.kind(), io::ErrorKind::Other);
        assert_eq!(Error::from(config).kind(), ErrorKind::Config);
    }

    #[test]
    fn a_pipe_reports_the_cause_not_the_echo() {
        let broken = || Err(Error::from(io::Error::from(io::ErrorKind::BrokenPipe)));
        let full = || Err::<(), _>(Error::io_at("/t/f", os_error(28)));
        // The consumer filled the disk; the producer only met the closed pipe.
        let err = pipe_outcome::<(), ()>(broken(), full()).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::StorageFull), "{err}");
        // The producer (the vault) failed; the consumer only saw a short stream.
        let vault_down = Err(Error::storage("the vault is unreachable"));
        let short = Err::<(), _>(Error::integrity("truncated"));
        let err = pipe_outcome::<(), ()>(vault_down, short).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage);
        // One side alone.
        assert_eq!(pipe_outcome(Ok(()), Ok(7)).unwrap().1, 7);
        let err = pipe_outcome(Ok(()), full()).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::StorageFull), "{err}");
        assert_eq!(
            pipe_outcome::<(), _>(Err(Error::storage("x")), Ok(1))
                .unwrap_err()
                .kind(),
            ErrorKind::Storage
        );
    }

    #[tokio::test]
    async fn a_path_writer_names_its_file_in_every_failure() {
        use tokio::io::AsyncWriteExt;
        /// A writer on a full disk.
        struct Full;
        impl tokio::io::AsyncWrite for Full {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(os_error(28)))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Err(os_error(28)))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Err(os_error(28)))
            }
        }
        let mut out = PathWriter::new(Full, "/srv/dump.sql.partial");
        let failures = [
            out.write_all(b"x").await.unwrap_err(),
            out.flush().await.unwrap_err(),
            out.shutdown().await.unwrap_err(),
        ];
        for failure in failures {
            let err = Error::from(failure);
            assert_eq!(
                err.to_string(),
                "writing /srv/dump.sql.partial: No space left on device (os error 28)"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn display_includes_cause_once() {
        let io = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        let err = Error::from(io).context("reading part 3");
        assert_eq!(err.to_string(), "reading part 3: I/O error: timed out");
        assert!(err.is_retryable());
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[cfg(feature = "vault")]
    #[test]
    fn already_exists_is_a_conflict() {
        let err = Error::from(object_store::Error::AlreadyExists {
            path: "m.json".into(),
            source: "exists".into(),
        });
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("m.json"));
    }

    #[test]
    fn contexts_render_outermost_first_and_stay_structured() {
        let err = Error::integrity("bad part")
            .context("reading stream db")
            .context("restoring backup B");
        assert_eq!(
            err.to_string(),
            "restoring backup B: reading stream db: bad part"
        );
        assert_eq!(err.message(), "bad part");
        assert_eq!(
            err.contexts().collect::<Vec<_>>(),
            ["restoring backup B", "reading stream db"]
        );
    }

    #[test]
    fn fields_render_once_after_the_message() {
        let err = Error::storage("upload failed")
            .with("object", "data/x")
            .with("part", 3)
            .with("part", 4)
            .in_message("backup", "B")
            .context("committing")
            .with_source(io::Error::other("reset"));
        assert_eq!(
            err.to_string(),
            "committing: upload failed (object: data/x, part: 3): reset"
        );
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            [("object", "data/x"), ("part", "3"), ("backup", "B")]
        );
        assert_eq!(err.field("part"), Some("3"), "the first value wins");
        assert_eq!(err.field("database"), None);
    }

    #[test]
    fn hints_accumulate_most_specific_first() {
        let err = Error::io("disk full")
            .hint("free space on /srv's file system")
            .hint("nothing was committed; run the backup again")
            .hint("free space on /srv's file system");
        assert_eq!(
            err.hints(),
            [
                "free space on /srv's file system",
                "nothing was committed; run the backup again"
            ]
        );
        assert_eq!(
            err.hint_text(),
            Some("free space on /srv's file system; nothing was committed; run the backup again")
        );
        assert_eq!(Error::io("x").hint_text(), None);
        assert!(Error::io("x").hints().is_empty());
        assert_eq!(
            format!("{err:?}"),
            "[io] disk full (hint: free space on /srv's file system) (hint: nothing was committed; run the backup again)"
        );
    }

    #[test]
    fn with_message_keeps_the_conversion() {
        let err = Error::from(io::Error::from(io::ErrorKind::TimedOut))
            .hint("h")
            .with_message("reading the pipe");
        assert_eq!(err.to_string(), "reading the pipe: timed out");
        assert!(err.is_retryable());
        assert_eq!(err.hints(), ["h"]);
    }

    #[test]
    fn full_disk_names_the_path_and_its_file_system() {
        let err = Error::io_at("/var/lib/pg/base/1", os_error(libc_enospc()));
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "/var/lib/pg/base/1: No space left on device (os error 28)"
        );
        assert_eq!(err.field("path"), Some("/var/lib/pg/base/1"));
        assert_eq!(
            err.hints(),
            ["free space on /var/lib/pg/base/1's file system"]
        );
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error is the cause");
        assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        assert_eq!(source.raw_os_error(), Some(28));

        let err = Error::io_doing_at("writing", "/srv/q", os_error(122));
        assert_eq!(
            err.to_string(),
            "writing /srv/q: Disk quota exceeded (os error 122)"
        );
        assert!(!err.is_retryable());
        assert!(
            err.hint_text().unwrap().contains("/srv/q's file system"),
            "{err:?}"
        );
        assert!(err.hint_text().unwrap().contains("quota"), "{err:?}");

        let err = Error::from(os_error(28));
        assert_eq!(
            err.to_string(),
            "I/O error: No space left on device (os error 28)"
        );
        assert_eq!(err.hints(), ["free space on the file system being written"]);
    }

    /// A read-only file system (a read-only mount, or one the kernel
    /// remounted read-only after an I/O error) says so and what cures it;
    /// no retry does.
    #[test]
    fn read_only_file_system_says_remount_read_write() {
        let err = Error::io_doing_at("cannot create", "/srv/copy", os_error(30));
        assert_eq!(
            err.to_string(),
            "cannot create /srv/copy: Read-only file system (os error 30)"
        );
        assert!(!err.is_retryable());
        assert_eq!(
            err.hints(),
            [
                "/srv/copy's file system is mounted read-only: remount it read-write, or write elsewhere"
            ]
        );
        let err = Error::from(os_error(30));
        assert_eq!(
            err.hints(),
            [
                "the file system being written is mounted read-only: remount it read-write, or write elsewhere"
            ]
        );
    }

    fn libc_enospc() -> i32 {
        28
    }

    #[test]
    fn io_kinds_follow_the_retry_policy() {
        use io::ErrorKind as K;
        for kind in [
            K::Interrupted,
            K::TimedOut,
            K::WouldBlock,
            K::ConnectionReset,
            K::ConnectionAborted,
            K::ConnectionRefused,
            K::NotConnected,
        ] {
            let err = Error::io_at("/p", io::Error::from(kind));
            assert!(err.is_retryable(), "{kind:?}");
            assert!(err.hints().is_empty(), "{kind:?}");
            assert_eq!(err.kind(), ErrorKind::Io);
        }
        for kind in [
            K::NotFound,
            K::PermissionDenied,
            K::StorageFull,
            K::QuotaExceeded,
            K::InvalidInput,
            K::InvalidData,
            K::UnexpectedEof,
            K::BrokenPipe,
            K::AlreadyExists,
            K::Other,
        ] {
            let err = Error::io_at("/p", io::Error::from(kind));
            assert!(!err.is_retryable(), "{kind:?}");
            assert!(err.to_string().starts_with("/p: "), "{err}");
        }
        let err = std::fs::read("/nonexistent/strata-test")
            .doing_at("cannot read", "/nonexistent/strata-test")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/strata-test: No such file or directory (os error 2)"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.field("path"), Some("/nonexistent/strata-test"));
    }

    /// A stand-in with the text of object_store 0.14's (private) retry error.
    #[derive(Debug)]
    struct StatusText(&'static str);

    impl fmt::Display for StatusText {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for StatusText {}

    /// A provider's error (such as S3's) around the failure that caused it.
    #[derive(Debug)]
    struct Provider<E>(E);

    impl<E: std::error::Error> fmt::Display for Provider<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Error performing request: {}", self.0)
        }
    }

    impl<E: std::error::Error + 'static> std::error::Error for Provider<E> {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        }
    }

    #[test]
    fn object_store_statuses_decide_retry() {
        for (text, retryable) in [
            (
                "Error performing PUT http://s3/b/k in 1s, after 10 retries, max_retries: 10, retry_timeout: 180s  - Server returned non-2xx status code: 503 Service Unavailable: slow down",
                true,
            ),
            (
                "Error performing GET http://s3/b/k in 1s - Server returned non-2xx status code: 500 Internal Server Error: ",
                true,
            ),
            (
                "Error performing GET http://s3/b/k in 1s - Server returned non-2xx status code: 429 Too Many Requests: ",
                true,
            ),
            (
                "Error performing GET http://s3/b/k in 1s - Server returned non-2xx status code: 408 Request Timeout: ",
                true,
            ),
            (
                "Error performing POST http://s3/b/k in 1s - Server returned error response: <Error><Code>InternalError</Code></Error>",
                true,
            ),
            (
                "Error performing PUT http://s3/b/k in 1s - Server returned non-2xx status code: 400 Bad Request: EntityTooLarge",
                false,
            ),
            (
                "Error performing GET http://s3/b/k in 1s - Received redirect without LOCATION, this normally indicates an incorrectly configured region",
                false,
            ),
        ] {
            let err = Error::from(generic(StatusText(text)));
            assert_eq!(err.kind(), ErrorKind::Storage, "{text}");
            assert_eq!(err.is_retryable(), retryable, "{text}");
            assert!(
                err.to_string()
                    .starts_with("object storage request failed: Generic S3 error: "),
                "{err}"
            );
            assert_eq!(err.hints().len(), 1, "{err:?}");
            if retryable {
                assert!(
                    err.hint_text().unwrap().contains("can be retried"),
                    "{err:?}"
                );
            } else {
                assert!(
                    err.hint_text().unwrap().contains("would fail again"),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn object_store_transport_failures_decide_retry() {
        use object_store::client::{HttpError, HttpErrorKind as H};
        for (kind, retryable) in [
            (H::Connect, true),
            (H::Request, true),
            (H::Timeout, true),
            (H::Interrupted, true),
            (H::Decode, true),
            (H::Unknown, false),
        ] {
            // As object_store nests it: a provider error around the HTTP error.
            let err = Error::from(generic(Provider(HttpError::new(kind, StatusText("tls")))));
            assert_eq!(err.kind(), ErrorKind::Storage);
            assert_eq!(err.is_retryable(), retryable, "{kind:?}");
        }
        // A cause the chain does not explain: treated as transient.
        let err = Error::from(generic(StatusText("something odd")));
        assert!(err.is_retryable());
    }

    /// The HTTP client's "error sending request" under object_store's
    /// "HTTP error: " read "HTTP error: error sending request", which says
    /// nothing an operator can act on: the root cause is named instead,
    /// and the store's error stays the source.
    #[test]
    fn a_failed_http_exchange_is_named_by_its_root_cause() {
        use object_store::client::{HttpError, HttpErrorKind};
        #[derive(Debug)]
        struct Sending(io::Error);
        impl fmt::Display for Sending {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Sending {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        let http = HttpError::new(HttpErrorKind::Connect, Sending(refused));
        let err = Error::from(generic(Provider(http)));
        let text = err.to_string();
        assert_eq!(
            text,
            "object storage request failed: Generic S3 error: Error performing request: \
             HTTP error: Connection refused"
        );
        assert!(!text.contains("error: error"), "{text}");
        assert!(err.is_retryable());
        let store = std::error::Error::source(&err)
            .and_then(std::error::Error::source)
            .and_then(|e| e.downcast_ref::<object_store::Error>());
        assert!(store.is_some(), "the store's error is kept: {err:?}");
        // A cause already in the text is not repeated.
        let plain = Error::from(generic(Provider(HttpError::new(
            HttpErrorKind::Request,
            StatusText("connection closed before message completed"),
        ))));
        assert!(
            plain
                .to_string()
                .ends_with("HTTP error: connection closed before message completed"),
            "{plain}"
        );
    }

    #[test]
    fn object_store_local_io_follows_the_io_policy() {
        let local = |e: io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(Error::io_doing_at("writing", "/vault/data/x", e)),
        };
        let err = Error::from(local(os_error(28)));
        assert!(!err.is_retryable());
        assert_eq!(err.hints(), ["free space on /vault/data/x's file system"]);
        assert!(
            err.to_string()
                .contains("/vault/data/x: No space left on device"),
            "{err}"
        );
        let err = Error::from(local(io::Error::from(io::ErrorKind::Interrupted)));
        assert!(err.is_retryable());
        // object_store's own local store puts the io::Error in the chain.
        let err = Error::from(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(os_error(28)),
        });
        assert!(!err.is_retryable());
        assert_eq!(err.hints(), ["free space on the file system being written"]);
        let err = Error::from(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::from(io::ErrorKind::PermissionDenied)),
        });
        assert!(!err.is_retryable());
        assert!(
            err.hint_text().unwrap().contains("would fail again"),
            "{err:?}"
        );
    }

    #[test]
    fn object_store_refusals_are_not_retryable() {
        use object_store::Error as E;
        let cases: Vec<(E, ErrorKind, &str)> = vec![
            (
                E::NotFound {
                    path: "a/b".into(),
                    source: "404".into(),
                },
                ErrorKind::NotFound,
                "object a/b not found: Object at location a/b not found: 404",
            ),
            (
                E::AlreadyExists {
                    path: "a/b".into(),
                    source: "409".into(),
                },
                ErrorKind::Conflict,
                "object a/b already exists: Object at location a/b already exists: 409",
            ),
            (
                E::Precondition {
                    path: "a/b".into(),
                    source: "412".into(),
                },
                ErrorKind::Conflict,
                "object a/b changed concurrently: Request precondition failure for path a/b: 412",
            ),
            (
                E::PermissionDenied {
                    path: "a/b".into(),
                    source: "403".into(),
                },
                ErrorKind::Storage,
                "access to a/b was denied: The operation lacked the necessary privileges to complete for path a/b: 403",
            ),
            (
                E::Unauthenticated {
                    path: "a/b".into(),
                    source: "401".into(),
                },
                ErrorKind::Storage,
                "access to a/b was denied: The operation lacked valid authentication credentials for path a/b: 401",
            ),
            (
                E::NotSupported {
                    source: "no".into(),
                },
                ErrorKind::Storage,
                "the object store does not support an operation Strata needs: Operation not supported: no",
            ),
            (
                E::NotImplemented {
                    operation: "copy".into(),
                    implementer: "X".into(),
                },
                ErrorKind::Storage,
                "the object store does not support an operation Strata needs: Operation copy not yet implemented by X.",
            ),
            (
                E::UnknownConfigurationKey {
                    store: "S3",
                    key: "k".into(),
                },
                ErrorKind::Storage,
                "object storage request failed: Configuration key: 'k' is not valid for store 'S3'.",
            ),
        ];
        for (source, kind, text) in cases {
            let err = Error::from(source);
            assert_eq!(err.kind(), kind, "{err}");
            assert!(!err.is_retryable(), "{err}");
            assert_eq!(err.to_string(), text);
        }
        let err = Error::from(E::PermissionDenied {
            path: "a/b".into(),
            source: "403".into(),
        });
        assert!(err.hint_text().unwrap().contains("credentials"));
        assert_eq!(err.field("object"), Some("a/b"));
    }

    #[test]
    fn sqlite_busy_is_retryable_and_the_rest_is_not() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let err = Error::from(busy);
        assert_eq!(err.kind(), ErrorKind::Catalog);
        assert!(err.is_retryable());
        assert!(
            err.to_string().starts_with("catalog index error: "),
            "{err}"
        );
        assert!(err.hint_text().unwrap().contains("strata catalog rebuild"));

        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        assert!(!Error::from(corrupt).is_retryable());
        assert!(!Error::from(rusqlite::Error::QueryReturnedNoRows).is_retryable());
    }

    #[test]
    fn malformed_json_is_integrity() {
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let err = Error::from(json);
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "malformed JSON: EOF while parsing an object at line 1 column 1"
        );
        let io = serde_json::Error::io(io::Error::from(io::ErrorKind::TimedOut));
        assert!(Error::from(io).is_retryable());
    }

    #[tokio::test]
    async fn join_errors_are_never_retryable() {
        let panicked = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let err = Error::from(panicked).with_message("a background task of the reader failed");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            format!(
                "a background task of the reader failed: {}",
                std::error::Error::source(&err).unwrap()
            )
        );
        assert!(err.to_string().contains("panicked"), "{err}");

        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let err = Error::from(task.await.unwrap_err());
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert!(!err.is_retryable());
    }
}

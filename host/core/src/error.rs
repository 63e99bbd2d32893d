//! The one error type of Strata's public API.
//!
//! Every error carries a [`ErrorKind`] (what went wrong, broadly), whether a
//! retry can succeed, and an optional line of guidance for the operator: the
//! unattended service decides "retry or alert" from [`Error::is_retryable`],
//! and the CLI prints the message followed by the guidance.
//!
//! Internal code builds errors with the constructors ([`Error::config`],
//! [`Error::integrity`], ...) and adds guidance with [`Error::hint`]; foreign
//! errors convert through `From` (object storage, I/O, SQLite, JSON).

use std::fmt;

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
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Strata's error: a kind, a message, an optional hint for the operator,
/// whether retrying makes sense, and the underlying cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    retryable: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with `message`; not retryable, no hint.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            retryable: false,
            source: None,
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

    /// A local I/O problem.
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

    /// Adds a line telling the operator what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Marks the error as one a retry may cure (a timeout, a 503).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefixes the message with context (`"reading manifest X: <message>"`).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without hint or cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operator guidance, if any.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            let text = source.to_string();
            if !self.message.contains(&text) {
                write!(f, ": {text}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {self}", self.kind)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(feature = "vault")]
impl From<object_store::Error> for Error {
    fn from(err: object_store::Error) -> Self {
        use object_store::Error as E;
        match &err {
            E::NotFound { path, .. } => {
                Error::not_found(format!("object {path} not found")).with_source(err)
            }
            E::AlreadyExists { path, .. } => {
                Error::conflict(format!("object {path} already exists")).with_source(err)
            }
            E::Precondition { path, .. } => {
                Error::conflict(format!("object {path} changed concurrently")).with_source(err)
            }
            E::PermissionDenied { path, .. } | E::Unauthenticated { path, .. } => {
                Error::storage(format!("access to {path} was denied"))
                    .hint("check the vault credentials (for example AWS_ACCESS_KEY_ID, AZURE_STORAGE_ACCOUNT_KEY) and the bucket's permissions")
                    .with_source(err)
            }
            E::NotSupported { .. } | E::NotImplemented { .. } => {
                Error::storage("the object store does not support an operation Strata needs")
                    .with_source(err)
            }
            _ => Error::storage("object storage request failed")
                .hint("check that the vault is reachable; the operation can be retried")
                .retryable(true)
                .with_source(err),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        let retryable = matches!(
            err.kind(),
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
        );
        Error::io("I/O error").retryable(retryable).with_source(err)
    }
}

#[cfg(feature = "vault")]
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::new(ErrorKind::Catalog, "catalog index error")
            .hint("the index is a cache: `strata catalog rebuild` recreates it from the vault")
            .with_source(err)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::integrity("malformed JSON").with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
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
}

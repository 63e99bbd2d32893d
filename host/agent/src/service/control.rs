//! The control socket: how the CLI and PostgreSQL's `archive_command` talk
//! to a running service.
//!
//! A Unix socket at `[service] socket` (default `/run/strata/strata.sock`),
//! mode 0660, group `[service] socket_group`: who may use it is decided by
//! the operating system, from the file's owner, group and mode. One request
//! per connection: the client writes one JSON object and a newline, the
//! service answers with one JSON object and a newline, then closes. No
//! HTTP stack sits in the per-segment archive path: a `wal-push` client is a
//! connect, a write and a read.
//!
//! Requests (`op`):
//! - `wal-push` `{cluster, path, data_directory}`: archive one WAL file;
//!   the answer comes once it is durable in the vault. The service also
//!   archives ahead the segments PostgreSQL has marked ready
//!   (`pg_wal/archive_status/*.ready`, each a finished segment), as
//!   pgBackRest's asynchronous archiving does, so that the archiver's next
//!   calls find their segment already stored.
//! - `status`: what `strata status` prints, as JSON.
//! - `jobs` `{limit}`: the job history, newest first.
//!
//! Answers: `{"ok": true, "result": ...}` or `{"ok": false, "error":
//! {"kind", "message", "hints", "retryable"}}`, the error model of the CLI.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use strata_core::vault::Vault;
use strata_core::{Error, ErrorKind, Result};
use strata_postgres::wal::{PushOutcome, WalArchive};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// How long a client waits for an answer (a WAL push of a large segment on
/// a slow link included) before it gives up on the service.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest request the service reads, in bytes.
const MAX_REQUEST: u64 = 64 << 10;

/// Segments archived ahead at once.
const READ_AHEAD: usize = 4;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Archive one WAL file.
    WalPush {
        /// The `[postgres.<name>]` cluster.
        cluster: String,
        /// The file, absolute.
        path: PathBuf,
        /// The cluster's data directory, as the archiver runs in it.
        data_directory: PathBuf,
        /// The caller's catalog index: a service of another configuration
        /// (another vault) leaves the file to the caller.
        index: PathBuf,
    },
    /// The status of every protected database.
    Status {
        /// The caller's catalog index: a service with another one (another
        /// configuration) does not answer for it.
        index: PathBuf,
    },
    /// Run a backup now, as a job of the service (`strata backup ... --now`);
    /// the answer is the job, once it ended.
    Backup {
        /// The engine.
        engine: String,
        /// The configured instance.
        instance: String,
        /// `full`, `diff` or `incr`.
        kind: String,
        /// The caller's catalog index.
        index: PathBuf,
    },
    /// The job history.
    Jobs {
        /// How many, newest first.
        limit: usize,
        /// The caller's catalog index.
        index: PathBuf,
    },
}

/// An error as it crosses the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// [`ErrorKind::as_str`].
    pub kind: String,
    /// The message.
    pub message: String,
    /// The hints, most specific first.
    pub hints: Vec<String>,
    /// Whether a retry can succeed.
    pub retryable: bool,
}

impl From<&Error> for WireError {
    fn from(err: &Error) -> Self {
        WireError {
            kind: err.kind().as_str().into(),
            message: err.to_string(),
            hints: err.hints().to_vec(),
            retryable: err.is_retryable(),
        }
    }
}

impl From<WireError> for Error {
    fn from(wire: WireError) -> Self {
        let kind = ErrorKind::from_name(&wire.kind).unwrap_or(ErrorKind::Engine);
        let mut err = Error::new(kind, wire.message).retryable(wire.retryable);
        for hint in wire.hints {
            err = err.hint(hint);
        }
        err
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<WireError>,
}

/// What a client gets when it asks the service.
pub enum Reply {
    /// No service listens (no socket, or nobody behind it), or the one
    /// that does runs with another catalog index.
    NoService,
    /// The service answered.
    Answered(Result<serde_json::Value>),
}

/// Sends `request` to the service at `socket` and waits for the answer
/// (blocking: used before any runtime exists). A socket the caller may not
/// use is an error naming the group to join.
pub fn ask(socket: &Path, request: &Request) -> Reply {
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Reply::NoService;
        }
        Err(e) => {
            return Reply::Answered(Err(Error::io_doing_at(
                "cannot connect to the service at",
                socket,
                e,
            )
            .hint("the control socket's group may use it: add your user to that group ([service] socket_group)")));
        }
    };
    let mut exchange = || -> std::io::Result<Answer> {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer)?;
        if answer.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the service closed the connection without answering (it stopped or failed)",
            ));
        }
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    };
    let answer = exchange();
    if let Ok(Answer {
        error: Some(error), ..
    }) = &answer
        && error.kind == ErrorKind::Conflict.as_str()
        && error.message.starts_with(OTHER_SERVICE)
    {
        return Reply::NoService;
    }
    Reply::Answered(match answer {
        Ok(Answer {
            ok: true, result, ..
        }) => Ok(result.unwrap_or_default()),
        Ok(Answer { error, .. }) => Err(error
            .map(Error::from)
            .unwrap_or_else(|| Error::engine("the service failed without saying why"))),
        Err(e) => Err(Error::io_doing_at("talking to the service at", socket, e)
            .retryable(true)
            .hint("`systemctl status strata` shows whether the service is healthy")),
    })
}

/// Binds the control socket: 0660, in `group` when given. A socket file
/// left by a service that is gone is replaced; one a live service holds is
/// refused.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::conflict(format!(
                "another service already listens on {}",
                path.display()
            ))
            .hint("stop it first (`systemctl stop strata`), or give this one another [service] socket"));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io_doing_at("cannot remove the stale socket", path, e))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io_doing_at("cannot create the socket's directory", parent, e))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io_doing_at("cannot listen on", path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io_doing_at("cannot set the mode of", path, e))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::config(format!(
                    "[service] socket_group `{group}` is not a group on this host"
                ))
                .hint("create it (groupadd) or name an existing one")
            })?
            .gid;
        std::os::unix::fs::chown(path, None, Some(gid.as_raw()))
            .map_err(|e| Error::io_doing_at("cannot give the socket to its group:", path, e))?;
    }
    Ok(listener)
}

/// What the socket's requests run on: the running service's state.
pub struct Service<'a> {
    /// The configuration.
    pub ctx: &'a Context,
    /// The vault and lifecycle.
    pub host: &'a strata_core::lifecycle::Host,
    /// The catalog index (job history).
    pub index: Option<&'a strata_core::catalog::index::CatalogIndex>,
    /// The job slots the passes use too.
    pub slots: &'a super::run::JobSlots,
    /// Cancels running jobs (after the shutdown grace).
    pub cancel: CancellationToken,
    /// Cancelled when the service stops taking jobs (it still answers, and
    /// archives WAL, until its running jobs ended).
    pub stopping: CancellationToken,
}

/// Serves `listener` until `stop` is cancelled.
pub async fn serve(listener: UnixListener, service: Service<'_>, stop: CancellationToken) {
    let pushes = Arc::new(WalPushes::new(service.host.vault().clone()));
    let mut handlers = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => handlers.push(handle(stream, &service, pushes.clone())),
                Err(err) => tracing::warn!(error = %err, "accepting on the control socket failed"),
            },
            Some(()) = handlers.next() => {}
            _ = stop.cancelled() => break,
        }
    }
    // Answer what was asked before the stop.
    while handlers.next().await.is_some() {}
}

async fn handle(stream: UnixStream, service: &Service<'_>, pushes: Arc<WalPushes>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is a few hundred bytes: a member of the socket's group
    // cannot make the service buffer more than this.
    let limited = tokio::io::AsyncReadExt::take(read, MAX_REQUEST);
    if tokio::io::BufReader::new(limited)
        .read_line(&mut line)
        .await
        .is_err()
    {
        return;
    }
    let result = match serde_json::from_str::<Request>(&line) {
        Ok(request) => answer(request, service, &pushes).await,
        Err(e) => Err(Error::config(format!("not a control request: {e}"))),
    };
    let answer = match result {
        Ok(value) => Answer {
            ok: true,
            result: Some(value),
            error: None,
        },
        Err(err) => Answer {
            ok: false,
            result: None,
            error: Some(WireError::from(&err)),
        },
    };
    if let Ok(mut bytes) = serde_json::to_vec(&answer) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

async fn answer(
    request: Request,
    service: &Service<'_>,
    pushes: &Arc<WalPushes>,
) -> Result<serde_json::Value> {
    let ctx = service.ctx;
    match request {
        Request::WalPush {
            cluster,
            path,
            data_directory,
            index,
        } => {
            same_index(ctx, &index)?;
            let configured = ctx.config.postgres.get(&cluster).ok_or_else(|| {
                Error::config(format!("the service has no PostgreSQL cluster `{cluster}`")).hint(
                    "archive_command must name a [postgres.<name>] section of the service's config",
                )
            })?;
            inside_data_directory(&path, &data_directory, &configured.data_directory)?;
            let outcome = pushes.push(&cluster, &path, &data_directory).await?;
            tracing::info!(cluster = %cluster, file = %path.display(), key = %outcome.key, "archived through the control socket");
            pushes.clone().read_ahead(&cluster, &data_directory);
            Ok(serde_json::to_value(outcome)?)
        }
        Request::Status { index } => {
            same_index(ctx, &index)?;
            let rows = super::commands::status_rows(ctx, None).await?;
            Ok(serde_json::to_value(rows)?)
        }
        Request::Backup {
            engine,
            instance,
            kind,
            index,
        } => {
            same_index(ctx, &index)?;
            if service.stopping.is_cancelled() {
                return Err(
                    Error::conflict("the service is stopping and starts no new job")
                        .hint("run the backup without --now, or once the service is back"),
                );
            }
            let kind: strata_core::catalog::manifest::BackupKind = kind.parse()?;
            let plugin: Arc<dyn strata_core::plugin::EnginePlugin> =
                crate::engines::plugin(ctx, &engine, &instance)?.into();
            let policy = ctx
                .config
                .protect
                .iter()
                .find(|p| p.instance.get_ref() == &instance)
                .and_then(|p| ctx.config.policy.get(p.policy.get_ref()));
            let item = super::run::Protected {
                database: strata_core::plugin::DatabaseRef::instance(&instance),
                plugin,
                policy_name: String::new(),
                policy: policy.cloned().ok_or_else(|| {
                    Error::config(format!(
                        "{engine} `{instance}` is not protected by this service"
                    ))
                    .hint("add a [[protect]] item for it, or back it up without --now")
                })?,
            };
            let due = super::schedule::Due {
                kind,
                trigger: super::schedule::Trigger::Manual,
                slot: None,
            };
            let jobs = super::run::run_job(
                service.host,
                service.index,
                &ctx.config.service,
                service.slots,
                &item,
                due,
                chrono::Utc::now(),
                service.cancel.clone(),
            )
            .await;
            Ok(serde_json::to_value(jobs)?)
        }
        Request::Jobs { limit, index } => {
            same_index(ctx, &index)?;
            Ok(serde_json::to_value(ctx.index()?.jobs(None, None, limit)?)?)
        }
    }
}

/// How an answer about another configuration starts.
const OTHER_SERVICE: &str = "the service on this socket runs with another catalog index";

/// A service answers status and jobs only for callers of its own
/// configuration (the same catalog index).
fn same_index(ctx: &Context, index: &Path) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canonical(index) != canonical(&ctx.index_path()) {
        return Err(Error::conflict(format!(
            "{OTHER_SERVICE} ({}, not {})",
            ctx.index_path().display(),
            index.display()
        )));
    }
    Ok(())
}

/// The service archives only files inside the configured data directory:
/// a member of the socket's group cannot make it read anything else.
fn inside_data_directory(path: &Path, data_directory: &Path, configured: &Path) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, data, configured) = (
        canonical(path),
        canonical(data_directory),
        canonical(configured),
    );
    if data != configured || !path.starts_with(&data) {
        return Err(Error::config(format!(
            "{} is not inside the cluster's data directory {}",
            path.display(),
            configured.display()
        ))
        .hint("archive_command must pass %p of the cluster the --cluster section names"));
    }
    Ok(())
}

/// What a push did, as the client reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// The object key.
    pub key: String,
    /// Whether it was stored now (`false`: it was there already).
    pub stored: bool,
}

type Shared = Arc<tokio::sync::OnceCell<std::result::Result<Pushed, WireError>>>;

/// WAL pushes in flight and recently done, by file, so that a segment
/// archived ahead is not archived again when PostgreSQL asks for it.
struct WalPushes {
    vault: Vault,
    state: Mutex<PushState>,
}

#[derive(Default)]
struct PushState {
    entries: HashMap<PathBuf, (FileStamp, Shared)>,
    order: VecDeque<PathBuf>,
    ahead: usize,
}

/// Size and modification time: a file PostgreSQL rewrote is pushed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(u64, Option<SystemTime>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        let meta = std::fs::metadata(path).ok();
        FileStamp(
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        )
    }
}

/// Files remembered after their push.
const REMEMBERED: usize = 4096;

impl WalPushes {
    fn new(vault: Vault) -> Self {
        WalPushes {
            vault,
            state: Mutex::new(PushState::default()),
        }
    }

    fn entry(&self, path: &Path) -> Shared {
        let stamp = FileStamp::of(path);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, cell)) = state.entries.get(path) {
            let failed = matches!(cell.get(), Some(Err(_)));
            if *seen == stamp && !failed {
                return cell.clone();
            }
        }
        let cell: Shared = Arc::default();
        if state
            .entries
            .insert(path.to_path_buf(), (stamp, cell.clone()))
            .is_none()
        {
            state.order.push_back(path.to_path_buf());
        }
        while state.order.len() > REMEMBERED {
            if let Some(old) = state.order.pop_front() {
                state.entries.remove(&old);
            }
        }
        cell
    }

    async fn push(&self, cluster: &str, path: &Path, data_directory: &Path) -> Result<Pushed> {
        let cell = self.entry(path);
        let vault = self.vault.clone();
        let result = cell
            .get_or_init(|| async move {
                let store = crate::pg::wal_store(&vault, cluster);
                match WalArchive::new(&store).push(path, data_directory).await {
                    Ok(PushOutcome::Stored { key, .. }) => Ok(Pushed { key, stored: true }),
                    Ok(PushOutcome::Duplicate { key }) => Ok(Pushed { key, stored: false }),
                    Err(err) => Err(WireError::from(&err)),
                }
            })
            .await;
        result.clone().map_err(Error::from)
    }

    /// Archives ahead, in the background, the finished segments PostgreSQL
    /// has not asked for yet (its `.ready` files), at most [`READ_AHEAD`]
    /// at a time.
    fn read_ahead(self: Arc<Self>, cluster: &str, data_directory: &Path) {
        let status = data_directory.join("pg_wal/archive_status");
        let Ok(entries) = std::fs::read_dir(&status) else {
            return;
        };
        let mut ready: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let segment = name.strip_suffix(".ready")?;
                (segment.len() == 24 && segment.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| segment.to_owned())
            })
            .collect();
        ready.sort();
        for segment in ready {
            let path = data_directory.join("pg_wal").join(&segment);
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.ahead >= READ_AHEAD || state.entries.contains_key(&path) {
                    if state.ahead >= READ_AHEAD {
                        return;
                    }
                    continue;
                }
                state.ahead += 1;
            }
            let (this, cluster, data) = (
                self.clone(),
                cluster.to_owned(),
                data_directory.to_path_buf(),
            );
            tokio::spawn(async move {
                if let Err(err) = this.push(&cluster, &path, &data).await {
                    tracing::debug!(segment = %path.display(), error = %err, "archiving ahead failed; PostgreSQL's own call will try again");
                }
                let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
                state.ahead -= 1;
            });
        }
    }
}

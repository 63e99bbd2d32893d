//! The four Backint functions: backup, restore, inquire and delete.
//!
//! Each input line gets exactly one result line, written as soon as it is
//! known. Pipes are served concurrently (at most `max_channels` at once) but
//! **taken in input order**: the agent starts opening a pipe once the pipe
//! before it is open, and its open deadline runs only once the pipe before
//! it is done, so HANA may open its pipes late and one at a time.
//! Log backups (`log_backup_*`, the catalog included) are restored strictly
//! one after the other, in input order, because HANA consumes them serially.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use futures::future::join_all;
use strata_core::catalog::manifest::Manifest;
use strata_core::lifecycle::{BackupResult, Host};
use strata_core::plugin::{BackupRequest, DatabaseRef, PushedInput};
use strata_core::vault::Progress;
use strata_core::vault::reader::{ReaderConfig, read_stream};
use strata_core::{Error, Result};
use strata_hana::HanaEngine;
use strata_hana::backint::BackintObject;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::args::Invocation;
use crate::params::Params;
use crate::pipes;
use crate::protocol::{ApiVersion, InputFile, InputLine, LineError, OutputLine};
use crate::report::{Logger, Output};
use crate::versions::{ObjectMeta, VersionStore, is_log_object, kind_of, name_location};

/// Everything one agent run works with.
pub struct Agent {
    /// The command line.
    pub invocation: Invocation,
    /// The parsed input file.
    pub input: InputFile,
    /// The parameter file.
    pub params: Params,
    /// The versions in the vault.
    pub store: VersionStore,
    /// The backup lifecycle over the same vault (writer settings, index).
    pub host: Host,
    /// The Backint version of this conversation.
    pub version: ApiVersion,
    /// Result lines.
    pub output: Arc<Output>,
    /// The detailed log.
    pub log: Arc<Logger>,
    /// Becomes `true` when the run is cancelled (SIGTERM, SIGINT).
    pub cancel: watch::Receiver<bool>,
    /// The parent process id at start: when it changes, HANA is gone.
    pub parent: u32,
}

/// Counts the bytes moved through one pipe.
#[derive(Default)]
struct Counter(AtomicU64);

impl Progress for Counter {
    fn add(&self, raw_bytes: u64) {
        self.0.fetch_add(raw_bytes, Ordering::Relaxed);
    }
}

/// The bytes of one pipe, ending in an error instead of end-of-file when
/// HANA (our parent) is gone: a pipe whose writer died is closed early, and
/// its short content must never be committed as the object.
struct ParentWatch<R> {
    inner: R,
    parent: u32,
    name: String,
}

impl<R: AsyncRead + Unpin> AsyncRead for ParentWatch<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled
            && buf.filled().len() == before
            && std::os::unix::process::parent_id() != self.parent
        {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                format!(
                    "HANA ended while writing {}; the bytes received were discarded",
                    self.name
                ),
            )));
        }
        polled
    }
}

/// Waits for the previous entry's signal; a dropped sender counts as given.
async fn wait_gate(gate: Option<oneshot::Receiver<()>>) {
    if let Some(gate) = gate {
        let _ = gate.await;
    }
}

fn give(gate: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = gate.take() {
        let _ = tx.send(());
    }
}

async fn cancelled(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Agent {
    fn error(&self, fields: Vec<String>, reason: &str) {
        self.log.log(format!("ERROR {fields:?}: {reason}"));
        self.output.note_failure(reason);
        self.output.emit(&OutputLine::Error(fields));
        self.output
            .emit(&OutputLine::Comment(format!("strata: {reason}")));
    }

    fn line_error(&self, line_no: usize, err: &LineError) {
        let fields = err.name.iter().cloned().collect();
        self.error(fields, &format!("input line {line_no}: {}", err.message));
    }

    fn unexpected(&self, line_no: usize, line: &InputLine) {
        let fields = line.object_name().map(str::to_owned).into_iter().collect();
        let expected = match self.invocation.function {
            Some(crate::args::Function::Backup) => "#PIPE or #FILE",
            Some(crate::args::Function::Restore) => {
                "#EBID \"<ebid>\" \"<name>\" or #NULL \"<name>\""
            }
            Some(crate::args::Function::Inquire) => "#NULL or #EBID",
            _ => "#EBID \"<ebid>\" \"<name>\"",
        };
        self.error(
            fields,
            &format!(
                "input line {line_no}: {} is not valid for -f {}; expected {expected}",
                line.keyword(),
                self.function_name()
            ),
        );
    }

    fn function_name(&self) -> &str {
        self.invocation.function.map(|f| f.as_str()).unwrap_or("?")
    }

    // ----- backup -----

    /// `-f backup`: every `#PIPE` (or `#FILE`) read to its end straight into
    /// the vault, one Strata backup per object, concurrently.
    pub async fn backup(&self) {
        let slots = Semaphore::new(self.params.max_channels);
        let mut opened_gate: Option<oneshot::Receiver<()>> = None;
        let mut done_gate: Option<oneshot::Receiver<()>> = None;
        let mut jobs = Vec::new();
        for (line_no, entry) in &self.input.entries {
            let (opened_tx, opened_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let gates = (opened_gate.replace(opened_rx), done_gate.replace(done_rx));
            match entry {
                Ok(InputLine::Pipe { name, size }) | Ok(InputLine::File { name, size }) => {
                    let keyword = if matches!(entry, Ok(InputLine::Pipe { .. })) {
                        "PIPE"
                    } else {
                        "FILE"
                    };
                    jobs.push(self.backup_one(
                        name,
                        keyword,
                        *size,
                        gates,
                        (opened_tx, done_tx),
                        &slots,
                    ));
                }
                Ok(other) => self.unexpected(*line_no, other),
                Err(e) => self.line_error(*line_no, e),
            }
        }
        join_all(jobs).await;
    }

    async fn backup_one(
        &self,
        name: &str,
        keyword: &str,
        size_hint: Option<u64>,
        gates: (Option<oneshot::Receiver<()>>, Option<oneshot::Receiver<()>>),
        signals: (oneshot::Sender<()>, oneshot::Sender<()>),
        slots: &Semaphore,
    ) {
        let (after_opened, after_done) = gates;
        let (mut opened, mut done) = (Some(signals.0), Some(signals.1));
        wait_gate(after_opened).await;
        let _slot = slots.acquire().await;
        let result = self
            .backup_pipe(name, keyword, size_hint, &mut opened, wait_gate(after_done))
            .await;
        give(&mut opened);
        give(&mut done);
        match result {
            Ok((ebid, size)) => {
                self.log
                    .log(format!("SAVED {name:?} as {ebid}: {size} bytes"));
                self.output.emit(&OutputLine::Saved {
                    ebid,
                    name: name.to_owned(),
                    size,
                });
            }
            Err(e) => self.error(vec![name.to_owned()], &one_line(&e)),
        }
    }

    async fn backup_pipe(
        &self,
        name: &str,
        keyword: &str,
        size_hint: Option<u64>,
        opened: &mut Option<oneshot::Sender<()>>,
        clock: impl Future<Output = ()>,
    ) -> Result<(String, u64)> {
        let path = Path::new(name);
        let source = tokio::select! {
            s = pipes::open_source(path, self.params.open_timeout, clock) => s?,
            _ = cancelled(self.cancel.clone()) => return Err(Error::cancelled("the backup was cancelled before HANA opened the pipe")),
        };
        give(opened);
        let sid = self.store.sid_of(name);
        let database = name_location(name)
            .1
            .or_else(|| self.invocation.database().map(str::to_owned));
        let level = self.invocation.level.as_deref();
        let plugin = HanaEngine::backint(&sid);
        let mut request = BackupRequest::new(
            DatabaseRef {
                instance: sid.clone(),
                database,
            },
            kind_of(level, name),
        );
        request.options = serde_json::to_value(BackintObject {
            name: name.to_owned(),
            source: keyword.to_owned(),
            hana_backup_id: self.invocation.backup_id.clone(),
            level: self.invocation.level.clone(),
            user: self.invocation.user.clone(),
            count: self.invocation.count.clone(),
            api: self.input.version.map(|v| v.to_string()),
        })?;
        request.input = Some(PushedInput {
            reader: Box::new(ParentWatch {
                inner: source,
                parent: self.parent,
                name: name.to_owned(),
            }),
            size: size_hint,
        });
        self.log
            .log(format!("reading {name:?} (size hint {size_hint:?})"));
        let counter = Counter::default();
        let cancel = CancellationToken::new();
        let watch = {
            let cancel = cancel.clone();
            let stop = cancelled(self.cancel.clone());
            tokio::spawn(async move {
                stop.await;
                cancel.cancel();
            })
        };
        let result = self
            .host
            .backup(&plugin, request, Some(&counter), cancel)
            .await;
        watch.abort();
        match result? {
            BackupResult::Committed(manifest) => Ok((manifest.id.to_string(), manifest.raw_size())),
            BackupResult::Delegated(_) => {
                Err(Error::engine(format!("the object {name} was not stored")))
            }
        }
    }

    // ----- restore -----

    /// `-f restore`: each `#EBID`/`#NULL` line's object written into the pipe
    /// HANA opens for reading.
    pub async fn restore(&self) {
        let slots = Semaphore::new(self.params.max_channels);
        let mut opened_gate: Option<oneshot::Receiver<()>> = None;
        let mut done_gate: Option<oneshot::Receiver<()>> = None;
        let mut jobs = Vec::new();
        for (line_no, entry) in &self.input.entries {
            let (opened_tx, opened_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let after_opened = opened_gate.replace(opened_rx);
            let after_done = done_gate.replace(done_rx);
            match entry {
                Ok(InputLine::Ebid {
                    ebid,
                    name: Some(name),
                    dest,
                }) => jobs.push(self.restore_one(
                    Some(ebid),
                    name,
                    dest.as_deref(),
                    (after_opened, after_done),
                    (opened_tx, done_tx),
                    &slots,
                )),
                Ok(InputLine::Null {
                    name: Some(name),
                    dest,
                }) => jobs.push(self.restore_one(
                    None,
                    name,
                    dest.as_deref(),
                    (after_opened, after_done),
                    (opened_tx, done_tx),
                    &slots,
                )),
                Ok(other) => self.unexpected(*line_no, other),
                Err(e) => self.line_error(*line_no, e),
            }
        }
        join_all(jobs).await;
    }

    async fn restore_one(
        &self,
        ebid: Option<&String>,
        name: &str,
        dest: Option<&str>,
        gates: (Option<oneshot::Receiver<()>>, Option<oneshot::Receiver<()>>),
        signals: (oneshot::Sender<()>, oneshot::Sender<()>),
        slots: &Semaphore,
    ) {
        let (mut opened, mut done) = (Some(signals.0), Some(signals.1));
        let (after_opened, after_done) = gates;
        // Find the version while earlier entries stream.
        let found = match ebid {
            Some(ebid) => self.store.find(ebid, Some(name)).await,
            None => match self.store.newest(name).await {
                Ok(Some(v)) => self.store.find(&v.ebid, Some(name)).await,
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
        };
        // Logs start only when the previous entry is done; data pieces start
        // opening once the previous one is open, and their open deadline
        // runs only once it is done (HANA may read pipes one after another).
        let clock = if is_log_object(name) {
            wait_gate(after_opened).await;
            wait_gate(after_done).await;
            None
        } else {
            wait_gate(after_opened).await;
            after_done
        };
        let manifest = match found {
            Ok(Some(m)) => m,
            Ok(None) => {
                give(&mut opened);
                give(&mut done);
                // Name what was looked for: a version HANA's catalog
                // records is gone only if its manifest is.
                let looked = ebid
                    .and_then(|e| e.parse::<strata_core::catalog::manifest::BackupId>().ok())
                    .map(|id| {
                        let sid = self.store.sid_of(name);
                        format!(
                            ": the vault holds no manifest {}",
                            strata_core::vault::layout::manifest_key(
                                strata_hana::ENGINE,
                                &sid,
                                &id
                            )
                        )
                    })
                    .unwrap_or_default();
                self.log
                    .log(format!("NOTFOUND {name:?} (ebid {ebid:?}){looked}"));
                self.output
                    .emit(&OutputLine::NotFound(vec![name.to_owned()]));
                return;
            }
            Err(e) => {
                give(&mut opened);
                give(&mut done);
                self.error(vec![name.to_owned()], &one_line(&e));
                return;
            }
        };
        let _slot = slots.acquire().await;
        let result = self
            .restore_pipe(&manifest, name, dest, &mut opened, wait_gate(clock))
            .await;
        give(&mut opened);
        give(&mut done);
        match result {
            Ok(bytes) => {
                self.log.log(format!(
                    "RESTORED {name:?} from {} into {:?}: {bytes} bytes",
                    manifest.id,
                    dest.unwrap_or(name)
                ));
                self.output.emit(&OutputLine::Restored {
                    ebid: manifest.id.to_string(),
                    name: name.to_owned(),
                });
            }
            Err(e) => self.error(vec![name.to_owned()], &one_line(&e)),
        }
    }

    async fn restore_pipe(
        &self,
        manifest: &Manifest,
        name: &str,
        dest: Option<&str>,
        opened: &mut Option<oneshot::Sender<()>>,
        clock: impl Future<Output = ()>,
    ) -> Result<u64> {
        let target = Path::new(dest.unwrap_or(name));
        let as_file = ObjectMeta::of(manifest).is_some_and(|m| m.source == "FILE");
        let stream = manifest
            .streams
            .first()
            .ok_or_else(|| Error::integrity(format!("backup {} has no stream", manifest.id)))?
            .name
            .clone();
        let mut sink = tokio::select! {
            s = pipes::open_sink(target, self.params.open_timeout, as_file, clock) => s?,
            _ = cancelled(self.cancel.clone()) => return Err(Error::cancelled("the restore was cancelled")),
        };
        give(opened);
        let counter = Counter::default();
        let reader_config = ReaderConfig::default();
        let written = async {
            let stats = tokio::select! {
                r = read_stream(self.store.vault(), manifest, &stream, &mut sink, &reader_config, Some(&counter)) => r,
                _ = cancelled(self.cancel.clone()) => Err(Error::cancelled("the restore was cancelled")),
            }
            .map_err(|e| {
                e.context(format!(
                    "after {} bytes into {}",
                    counter.0.load(Ordering::Relaxed),
                    target.display()
                ))
            })?;
            sink.shutdown()
                .await
                .map_err(|e| Error::from(e).context(format!("closing {}", target.display())))?;
            Ok(stats.raw_bytes)
        }
        .await;
        if written.is_err() && as_file && is_regular_file(target) {
            // A `#FILE` restored in part would look restored: HANA was told
            // #ERROR, and no truncated copy stays behind to be mistaken for it.
            drop(sink);
            let _ = std::fs::remove_file(target);
        }
        written
    }

    // ----- inquire -----

    /// `-f inquire`: which versions exist.
    pub async fn inquire(&self) {
        let stamp = |v: chrono::DateTime<Utc>| self.version.has_timestamps().then_some(v);
        for (line_no, entry) in &self.input.entries {
            match entry {
                Ok(InputLine::Null { name: None, .. }) => {
                    let sid = self.invocation.sid().unwrap_or_default().to_owned();
                    match self.store.all(&sid).await {
                        Ok(versions) if versions.is_empty() => {
                            self.output.emit(&OutputLine::NotFound(vec![]))
                        }
                        Ok(versions) => {
                            for v in versions {
                                self.output.emit(&OutputLine::Backup {
                                    ebid: v.ebid,
                                    name: v.name,
                                    created: stamp(v.created),
                                });
                            }
                        }
                        Err(e) => self.error(vec![], &one_line(&e)),
                    }
                }
                Ok(InputLine::Null {
                    name: Some(name), ..
                }) => match self.store.versions(name).await {
                    Ok(versions) if versions.is_empty() => {
                        self.output.emit(&OutputLine::NotFound(vec![name.clone()]))
                    }
                    Ok(versions) => {
                        for v in versions {
                            self.output.emit(&OutputLine::Backup {
                                ebid: v.ebid,
                                name: v.name,
                                created: stamp(v.created),
                            });
                        }
                    }
                    Err(e) => self.error(vec![name.clone()], &one_line(&e)),
                },
                Ok(InputLine::Ebid { ebid, name, .. }) => {
                    let fields: Vec<String> =
                        std::iter::once(ebid.clone()).chain(name.clone()).collect();
                    match self.store.find(ebid, name.as_deref()).await {
                        Ok(Some(m)) => {
                            let meta = ObjectMeta::of(&m);
                            let created = meta.as_ref().map_or(m.started_at, |m| m.created);
                            self.output.emit(&OutputLine::Backup {
                                ebid: m.id.to_string(),
                                name: meta.map(|m| m.name).or(name.clone()).unwrap_or_default(),
                                created: stamp(created),
                            });
                        }
                        Ok(None) => self.output.emit(&OutputLine::NotFound(fields)),
                        Err(e) => self.error(fields, &one_line(&e)),
                    }
                }
                Ok(other) => self.unexpected(*line_no, other),
                Err(e) => self.line_error(*line_no, e),
            }
        }
    }

    // ----- delete -----

    /// `-f delete`: each `#EBID` version deleted from the vault.
    pub async fn delete(&self) {
        for (line_no, entry) in &self.input.entries {
            match entry {
                Ok(InputLine::Ebid { ebid, name, .. }) => {
                    let fields: Vec<String> =
                        std::iter::once(ebid.clone()).chain(name.clone()).collect();
                    let result = async {
                        match self.store.find(ebid, name.as_deref()).await? {
                            Some(m) => self.store.delete(&m).await.map(|()| true),
                            None => Ok(false),
                        }
                    }
                    .await;
                    match result {
                        Ok(true) => {
                            self.log.log(format!("DELETED {ebid} {name:?}"));
                            self.output.emit(&OutputLine::Deleted {
                                ebid: ebid.clone(),
                                name: name.clone().unwrap_or_default(),
                            });
                        }
                        Ok(false) => self.output.emit(&OutputLine::NotFound(fields)),
                        Err(e) => self.error(fields, &one_line(&e)),
                    }
                }
                Ok(other) => self.unexpected(*line_no, other),
                Err(e) => self.line_error(*line_no, e),
            }
        }
    }
}

/// Whether `path` is a regular file (not a FIFO HANA reads, nor absent).
fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// An error as one line: message, then the hint.
pub fn one_line(err: &Error) -> String {
    let text = match err.hint_text() {
        Some(hint) => format!("{err} ({hint})"),
        None => err.to_string(),
    };
    text.replace(['\r', '\n'], " ")
}

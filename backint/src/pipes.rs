//! Opening the pipes HANA creates, without ever creating one and without
//! hanging when HANA does not come.
//!
//! - **Backup**: HANA `mkfifo`s the pipe and opens it for writing, possibly
//!   after the agent started. Opening for reading blocks until a writer
//!   comes, so the open runs on a blocking thread under a deadline; when the
//!   deadline passes, the agent opens the pipe's write end itself for an
//!   instant (non-blocking) to release that thread, and reports the timeout.
//! - **Restore**: HANA creates the pipe and opens it for reading, late and one
//!   pipe at a time. The agent opens the write end non-blocking (`ENXIO`
//!   while no reader is there) and retries with backoff until the deadline;
//!   the pipe then stays write-only, so a reader that goes away surfaces as
//!   `EPIPE` rather than a write that blocks forever.
//!
//! A path that does not exist is an error, never a file to create.

use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use strata_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// A byte source for a backup: a FIFO or, for `#FILE`, a regular file.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;
/// A byte sink for a restore: a FIFO or, for `#FILE`, a regular file.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

fn describe(path: &Path) -> String {
    format!("{}", path.display())
}

/// Checks that `path` is an existing FIFO (or a regular file when
/// `allow_file`) and says which.
fn check_kind(path: &Path, allow_file: bool) -> Result<bool> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::io(format!("the pipe {} does not exist", describe(path)))
                .hint("HANA creates the pipe before it calls hdbbackint; check the name in the input file and that the backint directory is not full")
        } else {
            Error::io_doing_at("cannot inspect", path, e)
                .hint("check that <sid>adm may access the backint directory")
        }
    })?;
    let kind = meta.file_type();
    if kind.is_fifo() {
        Ok(true)
    } else if allow_file && kind.is_file() {
        Ok(false)
    } else {
        Err(Error::io(format!("{} is not a named pipe", describe(path)))
            .hint("HANA passes named pipes (FIFOs); nothing was written to this path"))
    }
}

/// Opens `path` (which HANA writes) for reading, waiting for HANA to open
/// its end at most `timeout` after `clock` completes (the deadline starts
/// once the previous pipe is done, since HANA may write pipes one after
/// another). A regular file is accepted too (`#FILE`).
pub async fn open_source(
    path: &Path,
    timeout: Duration,
    clock: impl Future<Output = ()>,
) -> Result<Source> {
    let is_fifo = check_kind(path, true)?;
    if !is_fifo {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io_doing_at("cannot open", path, e))?;
        return Ok(Box::new(file));
    }
    let owned = path.to_owned();
    let opening =
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().read(true).open(&owned));
    let expiry = async {
        clock.await;
        tokio::time::sleep(timeout).await;
    };
    let outcome = tokio::select! {
        joined = opening => Some(joined),
        () = expiry => None,
    };
    match outcome {
        Some(joined) => {
            let file = joined
                .map_err(|e| Error::from(e).context(format!("opening {}", describe(path))))?
                .map_err(|e| Error::io_doing_at("cannot open", path, e))?;
            let receiver = pipe::Receiver::from_file(file)
                .map_err(|e| Error::io_doing_at("cannot read", path, e))?;
            Ok(Box::new(receiver))
        }
        None => {
            // Release the thread blocked in open(): a non-blocking writer
            // open succeeds because that thread is a waiting reader.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            Err(Error::io(format!(
                "HANA did not open {} for writing within {} s",
                describe(path),
                timeout.as_secs()
            ))
            .hint("raise open_timeout in the parameter file if HANA needs longer to start writing"))
        }
    }
}

/// Opens `path` (which HANA reads) for writing, waiting for HANA to open its
/// end at most `timeout` after `clock` completes (HANA may read pipes one
/// after another). `as_file` restores a `#FILE` object: a regular file is
/// created (or replaced) at `path`.
pub async fn open_sink(
    path: &Path,
    timeout: Duration,
    as_file: bool,
    clock: impl Future<Output = ()>,
) -> Result<Sink> {
    if as_file {
        let is_fifo = std::fs::metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        if !is_fifo {
            let file = tokio::fs::File::create(path)
                .await
                .map_err(|e| Error::io_doing_at("cannot create", path, e))?;
            // Its write failures name the file (a full disk: which one to free).
            return Ok(Box::new(strata_core::error::PathWriter::new(file, path)));
        }
    } else {
        check_kind(path, false)?;
    }
    let mut clock = std::pin::pin!(clock);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut pause = Duration::from_millis(5);
    loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Ok(sender) => return Ok(Box::new(sender)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if deadline.is_none() && clock.as_mut().now_or_never().is_some() {
                    deadline = Some(tokio::time::Instant::now() + timeout);
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return Err(Error::io(format!(
                        "HANA did not open {} for reading within {} s",
                        describe(path),
                        timeout.as_secs()
                    ))
                    .hint("raise open_timeout in the parameter file if HANA needs longer"));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(Error::io_doing_at("cannot open for writing", path, e));
            }
        }
    }
}

//! The output file (results for HANA) and the log file (detail for people).
//!
//! Result lines are written and flushed as each object finishes, under a
//! lock, so that concurrent channels never interleave and a crash loses at
//! most the line being written. `#SOFTWAREID` is always the first line.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;

use crate::protocol::OutputLine;

/// Where result lines go: the `-o` file, or standard output.
pub struct Output {
    sink: Mutex<Box<dyn Write + Send>>,
    failed: AtomicBool,
    broken: AtomicBool,
    first_failure: Mutex<Option<String>>,
}

impl Output {
    /// Opens (creating or truncating) the output file, or standard output.
    pub fn open(path: Option<&Path>) -> io::Result<Output> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(File::create(path)?),
            None => Box::new(io::stdout()),
        };
        Ok(Output {
            sink: Mutex::new(sink),
            failed: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            first_failure: Mutex::new(None),
        })
    }

    /// Writes one line and flushes it. An `#ERROR` line marks the run failed.
    pub fn emit(&self, line: &OutputLine) {
        if matches!(line, OutputLine::Error(_)) {
            self.failed.store(true, Ordering::SeqCst);
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let written = writeln!(sink, "{line}").and_then(|()| sink.flush());
        if written.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
    }

    /// Whether any `#ERROR` was written.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Remembers why an object failed: the first reason is what the
    /// agent's one line on stderr, which HANA shows, says.
    pub fn note_failure(&self, reason: &str) {
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(reason.replace(['\r', '\n'], " "));
        }
    }

    /// The first reason given to [`Output::note_failure`].
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether writing the output file failed (HANA then cannot see results).
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }
}

/// The detailed log: timestamped lines appended to the configured file.
/// Without a log file, nothing is written (HANA shows the agent's console
/// output in its own error messages, so the console stays terse).
pub struct Logger {
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
    pid: u32,
}

impl Logger {
    /// A logger that writes nowhere.
    pub fn none() -> Logger {
        Logger {
            file: None,
            path: None,
            pid: std::process::id(),
        }
    }

    /// Appends to `path`, creating it readable by its owner only.
    pub fn open(path: &Path) -> io::Result<Logger> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Logger {
            file: Some(Mutex::new(file)),
            path: Some(path.to_owned()),
            pid: std::process::id(),
        })
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends one line (newlines inside `text` are kept, indented).
    pub fn log(&self, text: impl AsRef<str>) {
        let Some(file) = &self.file else { return };
        let stamp = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let body = text.as_ref().replace('\n', "\n    ");
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{stamp} [{}] {body}", self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first failure's reason is kept, on one line, for the agent's
    /// line on stderr; later ones do not replace it.
    #[test]
    fn the_first_failure_is_kept_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output::open(Some(&dir.path().join("out"))).unwrap();
        assert_eq!(output.first_failure(), None);
        output.note_failure("the vault s3://b/v could not be reached:\n503 Slow Down");
        output.note_failure("a later failure");
        assert_eq!(
            output.first_failure().as_deref(),
            Some("the vault s3://b/v could not be reached: 503 Slow Down")
        );
    }
}

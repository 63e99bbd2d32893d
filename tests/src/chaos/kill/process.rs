//! Starting the commands the campaign kills, killing them with `SIGKILL`
//! at a chosen moment, and finding processes that others started (the
//! `wal-push` PostgreSQL's archiver runs) in `/proc`.

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cli::strata_bin;

/// Variables that would point a command at the operator's configuration.
const SCRUBBED: &[&str] = &["STRATA_CONFIG", "STRATA_KEY_FILE", "STRATA_VAULT"];

/// How a command the campaign started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited by itself (or was killed by someone else) with this status.
    Exited(ExitStatus),
    /// The campaign killed it (`SIGKILL`) while it ran.
    Killed,
}

impl Ending {
    /// Whether it exited by itself with code 0.
    pub fn succeeded(self) -> bool {
        matches!(self, Ending::Exited(status) if status.success())
    }

    /// How it ended, for messages.
    pub fn describe(self) -> String {
        match self {
            Ending::Exited(status) => format!("exited with {status}"),
            Ending::Killed => "killed".to_owned(),
        }
    }
}

/// `strata` with `args`, prepared to be killed: no inherited operator
/// configuration, standard input empty.
pub(crate) fn strata<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    program(strata_bin(), args)
}

/// `program` with `args`, prepared like [`strata`].
pub(crate) fn program<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    for variable in SCRUBBED {
        command.env_remove(variable);
    }
    command
}

/// Starts `command` with its standard output in `<log>.out` and its
/// standard error in `<log>.err`.
///
/// # Panics
/// When it cannot be started.
pub(crate) fn spawn(mut command: Command, log: &Path) -> Child {
    let out = File::create(log.with_extension("out"))
        .unwrap_or_else(|e| panic!("cannot create {}.out: {e}", log.display()));
    let err = File::create(log.with_extension("err"))
        .unwrap_or_else(|e| panic!("cannot create {}.err: {e}", log.display()));
    command
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// What a run wrote to its `<log>.out` and `<log>.err`.
pub(crate) fn output(log: &Path) -> (String, String) {
    let read = |ext| std::fs::read_to_string(log.with_extension(ext)).unwrap_or_default();
    (read("out"), read("err"))
}

/// Waits `delay` for `child` to end by itself, then kills it with
/// `SIGKILL` and reaps it.
pub(crate) fn kill_after(child: &mut Child, delay: Duration) -> Ending {
    let deadline = Instant::now() + delay;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Ending::Exited(status);
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
    }
    let _ = child.kill();
    let status = child.wait().expect("reaping a killed child");
    // It may have exited in the instant before the signal.
    if status.code().is_some() {
        Ending::Exited(status)
    } else {
        Ending::Killed
    }
}

/// Waits for `child` to end; kills it after `timeout` and returns `None`.
pub(crate) fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `SIGKILL` to `pid`; whether the signal was delivered.
pub(crate) fn kill_pid(pid: u32) -> bool {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The command line of process `pid`, if it still runs.
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        // A zombie, or a kernel thread.
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Running processes whose command line holds every one of `needles`
/// (as whole arguments or inside one), with their command lines.
pub(crate) fn processes_with(needles: &[&str]) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(args) = cmdline(pid) else {
            continue;
        };
        if needles
            .iter()
            .all(|needle| args.iter().any(|a| a.contains(needle)))
        {
            found.push((pid, args));
        }
    }
    found
}

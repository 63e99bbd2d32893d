//! Running the built `strata` binary as an operator (or an engine) would.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The variable that points the tests at a `strata` binary elsewhere.
pub const STRATA_BIN_VARIABLE: &str = "STRATA_BIN";

/// How long a command may run before [`Strata::run`] kills it, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Variables that would point a command at the operator's own configuration
/// or keys; they are removed from every command's environment.
const SCRUBBED: &[&str] = &["STRATA_CONFIG", "STRATA_KEY_FILE", "STRATA_VAULT"];

/// The path of the `strata` binary of this build: `$STRATA_BIN` if set,
/// otherwise `strata` in the target directory this test executable was built
/// into (`target/<profile>/strata`, next to `target/<profile>/deps/`).
///
/// Building it is not the test's job: `scripts/test.sh` builds the
/// workspace's binaries first (`cargo build --workspace --bins`).
///
/// # Panics
/// When the binary does not exist, with the command that builds it.
pub fn strata_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(STRATA_BIN_VARIABLE) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{STRATA_BIN_VARIABLE}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path is known");
    let name = format!("strata{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return candidate;
        }
        candidates.push(candidate);
    }
    panic!(
        "the strata binary was not found (looked at {}): build it first with \
         `cargo build -p strata` (scripts/test.sh does), or set {STRATA_BIN_VARIABLE}",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A `strata` command line being prepared. Its environment is the test's
/// minus the operator's configuration variables; standard input is empty
/// unless [`stdin`](Self::stdin) gives bytes.
#[derive(Debug)]
pub struct Strata {
    command: Command,
    shown: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Default for Strata {
    fn default() -> Self {
        Self::new()
    }
}

impl Strata {
    /// `strata` with no arguments yet.
    pub fn new() -> Strata {
        Self::program(strata_bin())
    }

    /// Another program (`hdbbackint`, `pg_ctl`), prepared the same way.
    pub fn program(path: impl AsRef<Path>) -> Strata {
        let path = path.as_ref();
        let mut command = Command::new(path);
        for variable in SCRUBBED {
            command.env_remove(variable);
        }
        let shown = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Strata {
            command,
            shown: vec![shown],
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Strata {
        self.shown.push(arg.as_ref().to_string_lossy().into_owned());
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Strata
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Strata {
        self.command.env(key, value);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Strata {
        self.command.env_remove(key);
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Strata {
        self.command.current_dir(dir);
        self
    }

    /// Feeds `bytes` to standard input, then closes it.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Strata {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kills the command if it runs longer than `timeout` (default
    /// [`DEFAULT_TIMEOUT`]); the run then panics.
    pub fn timeout(mut self, timeout: Duration) -> Strata {
        self.timeout = timeout;
        self
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        self.shown.join(" ")
    }

    /// Runs the command to completion and captures its output.
    ///
    /// # Panics
    /// When the program cannot be started, or runs past its timeout (it is
    /// killed first).
    pub fn run(mut self) -> RunOutput {
        let line = self.command_line();
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        let feeder = self.stdin.take().map(|bytes| {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A command that exits without reading its input closes the
            // pipe; that is its business, not a test failure here.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })
        });
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let status = wait_or_kill(&mut child, self.timeout, &line);
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        RunOutput {
            command: line,
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

fn wait_or_kill(child: &mut Child, timeout: Duration, line: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{line}` ran longer than {timeout:?} and was killed");
            }
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    }
}

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The command line.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

impl RunOutput {
    /// The exit code; `None` when a signal ended the command.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Standard output parsed as JSON (what `--json` prints).
    ///
    /// # Panics
    /// When standard output is not JSON, with both outputs.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}", self.describe("to print JSON")))
    }

    /// Asserts exit code 0 and returns the output.
    ///
    /// # Panics
    /// When the command failed, with its exit code and both outputs.
    pub fn success(self) -> RunOutput {
        assert!(self.status.success(), "{}", self.describe("to succeed"));
        self
    }

    /// Asserts that the command exited with `code` and returns the output.
    ///
    /// # Panics
    /// When it exited otherwise, with its exit code and both outputs.
    pub fn failure(self, code: i32) -> RunOutput {
        assert_eq!(
            self.code(),
            Some(code),
            "{}",
            self.describe(&format!("to exit with {code}"))
        );
        self
    }

    /// Asserts that standard error contains `text` and returns the output.
    ///
    /// # Panics
    /// When it does not, with both outputs.
    pub fn stderr_contains(self, text: &str) -> RunOutput {
        let said = self.stderr_text();
        self.says(&said, "stderr", text)
    }

    /// Asserts that standard output contains `text` and returns the output.
    ///
    /// # Panics
    /// When it does not, with both outputs.
    pub fn stdout_contains(self, text: &str) -> RunOutput {
        let said = self.stdout_text();
        self.says(&said, "stdout", text)
    }

    fn says(self, said: &str, stream: &str, text: &str) -> RunOutput {
        assert!(
            said.contains(text),
            "{}",
            self.describe(&format!("to say `{text}` on {stream}"))
        );
        self
    }

    fn describe(&self, expected: &str) -> String {
        let stdout = self.stdout_text();
        let shown = if stdout.len() > 4000 {
            let mut end = 4000;
            while !stdout.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}... ({} bytes)", &stdout[..end], stdout.len())
        } else {
            stdout
        };
        format!(
            "expected `{}` {expected}, but it exited with {}\n--- stdout ---\n{shown}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stderr_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_exit_code_output_and_stdin() {
        let out = Strata::program("/bin/sh")
            .args(["-c", "cat; echo oops >&2; exit 3"])
            .stdin("piped bytes")
            .run()
            .failure(3)
            .stderr_contains("oops");
        assert_eq!(out.stdout, b"piped bytes");
        assert_eq!(out.command, "sh -c cat; echo oops >&2; exit 3");
    }

    #[test]
    fn scrubs_operator_configuration() {
        let strata = Strata::program("/bin/sh");
        let removed: Vec<_> = strata
            .command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for variable in SCRUBBED {
            assert!(removed.iter().any(|r| r == variable), "{variable} is kept");
        }
        // A test can still set one on purpose.
        let out = strata
            .env("STRATA_CONFIG", "/etc/strata/strata.toml")
            .args(["-c", "echo \"${STRATA_CONFIG:-unset}\""])
            .run()
            .success();
        assert_eq!(out.stdout_text().trim(), "/etc/strata/strata.toml");
    }

    #[test]
    #[should_panic(expected = "ran longer than")]
    fn a_hung_command_is_killed() {
        Strata::program("/bin/sh")
            .args(["-c", "exec sleep 30"])
            .timeout(Duration::from_millis(200))
            .run();
    }
}

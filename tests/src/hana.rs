//! A harness that plays SAP HANA's side of Backint, exactly as HANA does.
//!
//! - A HANA-shaped directory tree under a temporary root:
//!   `<root>/usr/sap/<SID>/SYS/global/hdb/backint/{SYSTEMDB,DB_<TENANT>}` for
//!   the pipes, `<root>/usr/sap/<SID>/SYS/global/hdb/opt/hdbconfig` for
//!   parameter files, `<root>/var/tmp` for input and output files.
//! - Pipes are FIFOs made with `mkfifo` before the agent starts. For a backup
//!   the harness opens them for writing (as HANA does) and streams
//!   deterministic data, recording its BLAKE3 digest; for a restore it opens
//!   fresh FIFOs for reading, late and one at a time, and digests what arrives.
//! - Input files are written as HANA writes them (`#SOFTWAREID "backint
//!   <version>" "HANA HDB server ..."`, then quoted `#PIPE`/`#EBID`/`#NULL`
//!   lines); the output file is an empty temp file the agent fills.
//! - The agent runs with HANA's argv:
//!   `hdbbackint -f <function> -p <par> -i <in> -o <out> -u <SID|DB@SID> -s <backup id> -c <count> -l <level>`.
//!
//! Output files are parsed with an independent tokenizer written from the
//! specification's rules, not with the agent's own.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The variable that points the tests at an `hdbbackint` binary elsewhere.
pub const HDBBACKINT_BIN_VARIABLE: &str = "HDBBACKINT_BIN";

/// How long the harness waits for one agent run, by default.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The software string HANA 2.0 SPS07 sends in `#SOFTWAREID`.
pub const HANA_SOFTWARE: &str = "HANA HDB server 2.00.071.00.1687900751";

/// The `hdbbackint` binary of this build: `$HDBBACKINT_BIN`, or
/// `hdbbackint` in the target directory this test executable was built into.
///
/// # Panics
/// When it does not exist, with the command that builds it.
pub fn hdbbackint_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(HDBBACKINT_BIN_VARIABLE) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path is known");
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("hdbbackint");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the hdbbackint binary was not found next to {}: build it first with \
         `cargo build -p strata-backint` (scripts/test.sh does), or set {HDBBACKINT_BIN_VARIABLE}",
        exe.display()
    );
}

/// Creates a FIFO at `path`, as HANA does before it calls the agent.
pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg("-m")
        .arg("0600")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {} failed", path.display());
}

/// Whether `path` is (still) a FIFO: the agent must never replace a pipe
/// with a regular file.
pub fn is_fifo(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// A HANA installation's directory tree under a temporary root.
pub struct HanaHost {
    _dir: tempfile::TempDir,
    root: PathBuf,
    counter: AtomicU64,
}

impl Default for HanaHost {
    fn default() -> Self {
        Self::new()
    }
}

impl HanaHost {
    /// A new, empty root.
    pub fn new() -> HanaHost {
        let dir = tempfile::Builder::new()
            .prefix("strata-hana-")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("var/tmp")).expect("var/tmp");
        HanaHost {
            _dir: dir,
            root,
            counter: AtomicU64::new(0),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/usr/sap/<SID>/SYS/global/hdb/backint/<dir>`, created: `dir`
    /// is `SYSTEMDB` or `DB_<TENANT>`.
    pub fn backint_dir(&self, sid: &str, dir: &str) -> PathBuf {
        let path = self
            .root
            .join(format!("usr/sap/{sid}/SYS/global/hdb/backint/{dir}"));
        std::fs::create_dir_all(&path).expect("backint directory");
        path
    }

    /// Writes a parameter file under `.../hdb/opt/hdbconfig/` and returns its path.
    pub fn param_file(&self, sid: &str, name: &str, text: &str) -> PathBuf {
        let dir = self
            .root
            .join(format!("usr/sap/{sid}/SYS/global/hdb/opt/hdbconfig"));
        std::fs::create_dir_all(&dir).expect("hdbconfig directory");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("parameter file");
        path
    }

    /// A parameter file pointing at `vault_url`, with small parts so that
    /// part boundaries are exercised by small objects.
    pub fn standard_params(&self, sid: &str, name: &str, vault_url: &str, extra: &str) -> PathBuf {
        let log = self.root.join(format!("usr/sap/{sid}/strata-backint.log"));
        self.param_file(
            sid,
            name,
            &format!(
                "# Strata parameters for {sid}\nvault = {vault_url}\npart_size = {PART_SIZE}\n\
                 log_file = {}\n{extra}\n",
                log.display()
            ),
        )
    }

    /// A fresh pair of `mkstemp`-style input/output file paths under `var/tmp`.
    fn temp_files(&self, sid: &str) -> (PathBuf, PathBuf) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = self.root.join("var/tmp");
        (
            dir.join(format!("hdbbackint_{sid}.in{pid}x{n}")),
            dir.join(format!("hdbbackint_{sid}.out{pid}x{n}")),
        )
    }
}

/// The part size the standard parameter file sets: 64 KiB, the smallest.
pub const PART_SIZE: usize = 64 << 10;

/// One call of the agent, prepared the way HANA prepares it.
#[derive(Debug, Clone)]
pub struct BackintCall {
    function: String,
    sid: String,
    user: String,
    params: Option<PathBuf>,
    backup_id: Option<String>,
    count: Option<usize>,
    level: Option<String>,
    api: Option<String>,
    lines: Vec<String>,
    extra_args: Vec<String>,
}

/// Quotes a value for an input file by the specification's rules.
pub fn q(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\\\""))
}

impl BackintCall {
    /// A call of `function` (`backup`, `restore`, `inquire`, `delete`) by system `sid`.
    pub fn new(function: &str, sid: &str) -> BackintCall {
        BackintCall {
            function: function.to_owned(),
            sid: sid.to_owned(),
            user: sid.to_owned(),
            params: None,
            backup_id: None,
            count: None,
            level: None,
            api: Some("1.50".to_owned()),
            lines: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// `-u` as `DBNAME@SID` instead of `SID`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_owned();
        self
    }

    /// `-p`.
    pub fn params(mut self, path: &Path) -> Self {
        self.params = Some(path.to_owned());
        self
    }

    /// `-s`.
    pub fn backup_id(mut self, id: &str) -> Self {
        self.backup_id = Some(id.to_owned());
        self
    }

    /// `-c`.
    pub fn count(mut self, count: usize) -> Self {
        self.count = Some(count);
        self
    }

    /// `-l`.
    pub fn level(mut self, level: &str) -> Self {
        self.level = Some(level.to_owned());
        self
    }

    /// The Backint version in `#SOFTWAREID` (`1.04`, `1.50`, `1.50.2`); `None`
    /// leaves the line out.
    pub fn api(mut self, version: Option<&str>) -> Self {
        self.api = version.map(str::to_owned);
        self
    }

    /// An extra command-line argument (HANA never sends one; agents must tolerate it).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// A raw input line.
    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// `#PIPE "<path>"`.
    pub fn pipe(self, path: &Path) -> Self {
        let line = format!("#PIPE {}", q(&path.display().to_string()));
        self.line(line)
    }

    /// `#EBID "<ebid>" "<name>"`.
    pub fn ebid(self, ebid: &str, name: &Path) -> Self {
        let line = format!("#EBID {} {}", q(ebid), q(&name.display().to_string()));
        self.line(line)
    }

    /// `#EBID "<ebid>" "<name>" "<dest>"`.
    pub fn ebid_to(self, ebid: &str, name: &Path, dest: &Path) -> Self {
        let line = format!(
            "#EBID {} {} {}",
            q(ebid),
            q(&name.display().to_string()),
            q(&dest.display().to_string())
        );
        self.line(line)
    }

    /// `#NULL "<name>"`.
    pub fn null(self, name: &Path) -> Self {
        let line = format!("#NULL {}", q(&name.display().to_string()));
        self.line(line)
    }

    /// Writes the input file and starts the agent.
    pub fn spawn(&self, host: &HanaHost) -> RunningAgent {
        self.spawn_with(host, &hdbbackint_bin(), &[])
    }

    /// Starts the agent through `launcher` (a program that runs the agent as
    /// its child, standing in for the HANA service process) with
    /// `launcher_args` before the agent's path.
    pub fn spawn_with(
        &self,
        host: &HanaHost,
        program: &Path,
        launcher_args: &[&str],
    ) -> RunningAgent {
        let (input, output) = host.temp_files(&self.sid);
        let mut text = String::new();
        if let Some(api) = &self.api {
            text.push_str(&format!(
                "#SOFTWAREID {} {}\n",
                q(&format!("backint {api}")),
                q(HANA_SOFTWARE)
            ));
        }
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&input, text).expect("input file");
        std::fs::write(&output, "").expect("output file");
        let mut args: Vec<String> = vec!["-f".into(), self.function.clone()];
        if let Some(p) = &self.params {
            args.extend(["-p".into(), p.display().to_string()]);
        }
        args.extend([
            "-i".into(),
            input.display().to_string(),
            "-o".into(),
            output.display().to_string(),
            "-u".into(),
            self.user.clone(),
        ]);
        if let Some(s) = &self.backup_id {
            args.extend(["-s".into(), s.clone()]);
        }
        if let Some(c) = self.count {
            args.extend(["-c".into(), c.to_string()]);
        }
        if let Some(l) = &self.level {
            args.extend(["-l".into(), l.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        let mut command = if launcher_args.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new(program);
            c.args(launcher_args).arg(hdbbackint_bin());
            c
        };
        command
            .args(&args)
            .env_remove("STRATA_CONFIG")
            .env_remove("STRATA_VAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("the agent starts");
        RunningAgent {
            child,
            output,
            started: Instant::now(),
        }
    }

    /// Runs the agent to completion (for calls without pipes).
    pub fn run(&self, host: &HanaHost) -> AgentResult {
        self.spawn(host).finish(AGENT_TIMEOUT)
    }
}

/// A started agent.
pub struct RunningAgent {
    child: Child,
    output: PathBuf,
    started: Instant,
}

impl RunningAgent {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL), as a crashing HANA service would die.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// The output file's path.
    pub fn output_path(&self) -> &Path {
        &self.output
    }

    /// Waits for the agent to exit (killing it after `timeout`) and reads its
    /// output file, as HANA does after the process ends.
    ///
    /// # Panics
    /// When the agent does not exit within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> AgentResult {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the agent") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hdbbackint did not finish within {} s; output so far:\n{}",
                    timeout.as_secs(),
                    std::fs::read_to_string(&self.output).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let mut stdout = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        AgentResult {
            code: status.code(),
            lines: parse_output(&text),
            text,
            stderr,
            stdout,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Splits an output line by the specification's rules (an independent
/// implementation: `\"` inside quotes is a quote, other backslashes stay).
pub fn split_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(first) = chars.next() else { break };
        let mut token = String::new();
        if first == '"' {
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&'"') {
                    chars.next();
                    token.push('"');
                } else if c == '"' {
                    break;
                } else {
                    token.push(c);
                }
            }
        } else {
            token.push(first);
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                token.push(c);
                chars.next();
            }
        }
        out.push(token);
    }
    out
}

/// The keyword lines of an output file, each split into its fields
/// (keyword first); comment lines are dropped.
pub fn parse_output(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(split_line)
        .collect()
}

/// What one agent run produced.
#[derive(Debug, Clone)]
pub struct AgentResult {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The keyword lines of the output file, split.
    pub lines: Vec<Vec<String>>,
    /// The whole output file.
    pub text: String,
    /// What the agent wrote on stderr.
    pub stderr: String,
    /// What the agent wrote on stdout.
    pub stdout: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl AgentResult {
    /// Lines with `keyword` (e.g. `#SAVED`), fields after the keyword.
    pub fn with(&self, keyword: &str) -> Vec<Vec<String>> {
        self.lines
            .iter()
            .filter(|l| l[0] == keyword)
            .map(|l| l[1..].to_vec())
            .collect()
    }

    /// The `#SAVED` line for `name`: (EBID, size).
    ///
    /// # Panics
    /// When there is not exactly one.
    pub fn saved(&self, name: &Path) -> (String, u64) {
        let name = name.display().to_string();
        let found: Vec<_> = self
            .with("#SAVED")
            .into_iter()
            .filter(|f| f.get(1) == Some(&name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one #SAVED for {name} expected in:\n{}",
            self.describe()
        );
        let f = &found[0];
        assert!(!f[0].is_empty(), "empty EBID in:\n{}", self.describe());
        (f[0].clone(), f[2].parse().expect("a numeric size"))
    }

    /// Asserts the run's basic contract: `#SOFTWAREID` first, the expected exit code.
    ///
    /// # Panics
    /// When it is not met.
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.lines.first().map(|l| l[0].as_str()),
            Some("#SOFTWAREID"),
            "the first output line must be #SOFTWAREID:\n{}",
            self.describe()
        );
        assert_eq!(self.code, Some(code), "exit code:\n{}", self.describe());
        self
    }

    /// Everything the run produced, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- output file ---\n{}--- stderr ---\n{}--- stdout ---\n{}",
            self.code, self.elapsed, self.text, self.stderr, self.stdout
        )
    }
}

/// A deterministic byte pattern of any length, generated in chunks so that
/// multi-GiB streams need no memory: SplitMix64 words from `seed`.
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    /// `len` bytes from `seed`.
    pub fn new(len: u64, seed: u64) -> Pattern {
        Pattern {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            left: len,
        }
    }

    /// Fills `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        n
    }

    /// The BLAKE3 digest of the whole pattern.
    pub fn digest(len: u64, seed: u64) -> String {
        let mut p = Pattern::new(len, seed);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = p.fill(&mut buf);
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// What went through a pipe: its length and BLAKE3 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes.
    pub bytes: u64,
    /// BLAKE3, lowercase hex.
    pub blake3: String,
}

/// Opens a FIFO, giving up after `timeout`: on timeout the harness opens
/// the other end itself, non-blocking, to release the waiting thread.
fn open_fifo(path: &Path, write: bool, timeout: Duration) -> std::io::Result<std::fs::File> {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_owned();
    std::thread::spawn(move || {
        let file = if write {
            OpenOptions::new().write(true).open(&owned)
        } else {
            OpenOptions::new().read(true).open(&owned)
        };
        let _ = tx.send(file);
    });
    match rx.recv_timeout(timeout) {
        Ok(file) => file,
        Err(_) => {
            let _ = if write {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
            } else {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
            };
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the agent did not open {} within {timeout:?}",
                    path.display()
                ),
            ))
        }
    }
}

/// Writes `len` pattern bytes from `seed` into the FIFO at `path`, as HANA
/// writes a backup pipe: open for writing (waiting at most `timeout` for the
/// agent), stream, close. `stop_after` cuts the stream short and returns
/// without closing cleanly being any different (the caller decides what
/// else dies).
pub fn feed_pipe(
    path: &Path,
    len: u64,
    seed: u64,
    timeout: Duration,
) -> JoinHandle<std::io::Result<Transfer>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut file = open_fifo(&path, true, timeout)?;
        let mut pattern = Pattern::new(len, seed);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = pattern.fill(&mut buf);
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        drop(file);
        Ok(Transfer {
            bytes: total,
            blake3: hasher.finalize().to_hex().to_string(),
        })
    })
}

/// Opens the FIFO at `path` for reading (waiting at most `timeout` for the
/// agent to open its end) and reads it to EOF, as HANA reads a restore pipe.
pub fn drain_pipe(path: &Path, timeout: Duration) -> std::io::Result<Transfer> {
    let mut file = open_fifo(path, false, timeout)?;
    drain(&mut file)
}

/// Reads an open pipe to EOF.
pub fn drain(file: &mut std::fs::File) -> std::io::Result<Transfer> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(Transfer {
        bytes: total,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// Opens a restore FIFO for reading, waiting at most `timeout` for the agent.
pub fn open_for_reading(path: &Path, timeout: Duration) -> std::io::Result<std::fs::File> {
    open_fifo(path, false, timeout)
}

/// Whether a writer puts bytes into the FIFO at `path` while the harness
/// holds it open for reading (non-blocking) for `hold`. Used to prove that
/// the agent does not start on a pipe early: an agent that would, finds a
/// reader there and writes. Any bytes read are lost, which only matters
/// when the answer is `true` (and the test fails anyway).
pub fn receives_data_within(path: &Path, hold: Duration) -> bool {
    let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    std::thread::sleep(hold);
    let mut byte = [0u8; 1];
    matches!(file.read(&mut byte), Ok(n) if n > 0)
}

/// A vault initialised in a temporary directory.
pub struct TestVault {
    dir: tempfile::TempDir,
    url: String,
}

impl TestVault {
    /// Creates an encrypted `file://` vault; its key file is `<dir>/vault.key`
    /// (see [`key_file`](Self::key_file)).
    pub fn encrypted() -> TestVault {
        Self::create(true)
    }

    /// The key file of an encrypted vault.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("vault.key")
    }

    /// Creates an unencrypted `file://` vault.
    pub fn new() -> TestVault {
        Self::create(false)
    }

    fn create(encrypted: bool) -> TestVault {
        let dir = tempfile::Builder::new()
            .prefix("strata-vault-")
            .tempdir()
            .expect("a temporary directory");
        let url = format!("file://{}/vault", dir.path().display());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let key = encrypted.then(|| {
            let key = strata_core::crypto::VaultKey::generate();
            key.save_new(&dir.path().join("vault.key"))
                .expect("key file");
            key
        });
        runtime
            .block_on(strata_core::vault::Vault::init(
                &strata_core::vault::VaultConfig::from_url(&url),
                key,
            ))
            .expect("vault init");
        TestVault { dir, url }
    }

    /// The vault URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The vault's directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    /// Every committed manifest in the vault.
    pub fn manifests(&self) -> Vec<strata_core::catalog::manifest::Manifest> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut config = strata_core::vault::VaultConfig::from_url(&self.url);
        if self.key_file().is_file() {
            config.key_file = Some(self.key_file());
        }
        runtime.block_on(async {
            let vault = strata_core::vault::Vault::open(&config)
                .await
                .expect("vault opens");
            vault.all_manifests().await.expect("manifests")
        })
    }
}

impl Default for TestVault {
    fn default() -> Self {
        Self::new()
    }
}

/// One object HANA writes into a pipe: its path and the pattern it streams
/// (`len` bytes from `seed`, see [`Pattern`]).
#[derive(Debug, Clone)]
pub struct Piece {
    /// The pipe's path, which is also the Backint object name.
    pub path: PathBuf,
    /// Bytes HANA writes.
    pub len: u64,
    /// The pattern's seed.
    pub seed: u64,
}

impl Piece {
    /// A piece named `name` in `dir`, its FIFO created.
    pub fn fifo(dir: &Path, name: &str, len: u64, seed: u64) -> Piece {
        let path = dir.join(name);
        mkfifo(&path);
        Piece { path, len, seed }
    }

    /// The BLAKE3 digest of the bytes HANA writes.
    pub fn digest(&self) -> String {
        Pattern::digest(self.len, self.seed)
    }
}

/// Runs `call` (a `backup` call without its `#PIPE` lines) with one
/// `#PIPE` per piece while HANA writes every piece at once, as the services
/// of one data backup do; asserts exit 0, that every piece was read to its
/// end and saved with its size, and returns the run.
///
/// # Panics
/// When any of that does not hold.
pub fn back_up(host: &HanaHost, mut call: BackintCall, pieces: &[&Piece]) -> AgentResult {
    for piece in pieces {
        call = call.pipe(&piece.path);
    }
    let agent = call.spawn(host);
    let feeders: Vec<_> = pieces
        .iter()
        .map(|p| feed_pipe(&p.path, p.len, p.seed, Duration::from_secs(60)))
        .collect();
    let result = agent.finish(AGENT_TIMEOUT);
    for (piece, feeder) in pieces.iter().zip(feeders) {
        let sent = feeder
            .join()
            .expect("the feeder thread")
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", piece.path.display(), result.describe()));
        assert_eq!(sent.bytes, piece.len);
    }
    result.assert_exit(0);
    for piece in pieces {
        assert_eq!(result.saved(&piece.path).1, piece.len);
    }
    result
}

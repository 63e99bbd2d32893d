//! What `strata-chaos` leaves behind when it is interrupted (Ctrl-C,
//! SIGTERM): nothing that runs, and no temporary work directory.
//!
//! A campaign starts PostgreSQL clusters (daemons of their own, outside
//! the campaign's process group), `strata serve` daemons, and mounts small
//! file systems, all below its work directory ([`super::WorkDir`], which
//! registers itself here). On SIGINT or SIGTERM, [`stop_on_signal`]'s
//! thread stops every postmaster whose `postmaster.pid` lies below a
//! registered directory (SIGQUIT, PostgreSQL's immediate shutdown; SIGKILL
//! after 5 s), kills every other process whose command line names such a
//! directory, unmounts what is mounted below it, deletes the temporary
//! directories (a `--work-dir` one is kept), says what it did on stderr
//! and exits with 128 + the signal's number. `kill -9` of `strata-chaos`
//! itself cannot be caught: its clusters keep running until stopped by
//! hand (`pg_ctl stop -D <dir>`), and its directory stays.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A work directory a running campaign uses.
struct Active {
    root: PathBuf,
    /// Deleted on interruption (a temporary directory); a `--work-dir`
    /// one is kept.
    temporary: bool,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());

/// Set when a signal arrived: what the campaign sees from then on is the
/// clean-up stopping its clusters, not a fault of Strata's.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a signal arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Never returns once a signal arrived: the signal thread is cleaning up
/// and ends the process. Called before a summary is printed, so that runs
/// the clean-up broke are not reported as findings.
pub fn hold_if_interrupted() {
    while interrupted() {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Registers a campaign's work directory.
pub(crate) fn register(root: &Path, temporary: bool) {
    lock().push(Active {
        root: root.to_path_buf(),
        temporary,
    });
}

/// Forgets a work directory whose campaign finished.
pub(crate) fn unregister(root: &Path) {
    lock().retain(|a| a.root != root);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Active>> {
    ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the thread that cleans up and exits on SIGINT or SIGTERM.
pub fn stop_on_signal() {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the signal thread");
        let signal = runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = interrupt.recv() => ("SIGINT", libc::SIGINT),
                _ = terminate.recv() => ("SIGTERM", libc::SIGTERM),
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!(
            "strata-chaos: {}: stopping what the campaign started",
            signal.0
        );
        for line in clean_up() {
            eprintln!("strata-chaos: {line}");
        }
        std::process::exit(128 + signal.1);
    });
}

/// Stops, unmounts and deletes what the registered work directories hold;
/// returns one line per thing done.
fn clean_up() -> Vec<String> {
    let active: Vec<(PathBuf, bool)> = lock()
        .iter()
        .map(|a| (a.root.clone(), a.temporary))
        .collect();
    let mut done = Vec::new();
    for (root, temporary) in &active {
        let postmasters = postmasters_below(root);
        for (pid, data) in &postmasters {
            signal(*pid, "QUIT");
            done.push(format!(
                "stopped PostgreSQL (pid {pid}) of {}",
                data.display()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while postmasters.iter().any(|(pid, _)| alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (pid, _) in postmasters.iter().filter(|(pid, _)| alive(*pid)) {
            signal(*pid, "KILL");
        }
        for (pid, command) in processes_naming(root) {
            signal(pid, "KILL");
            done.push(format!("killed pid {pid} ({command})"));
        }
        for mount in mounts_below(root) {
            let unmounted = std::process::Command::new("umount")
                .arg("-l")
                .arg(&mount)
                .status()
                .is_ok_and(|s| s.success());
            if unmounted {
                done.push(format!("unmounted {}", mount.display()));
            }
        }
        if *temporary {
            match std::fs::remove_dir_all(root) {
                Ok(()) => done.push(format!("deleted {}", root.display())),
                Err(e) => done.push(format!("could not delete {}: {e}", root.display())),
            }
        } else {
            done.push(format!("kept {}", root.display()));
        }
    }
    done
}

/// The postmasters whose data directories lie below `root`: the pid on
/// the first line of each `postmaster.pid`, with its data directory.
fn postmasters_below(root: &Path) -> Vec<(u32, PathBuf)> {
    crate::fixture::files_below(root)
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n == "postmaster.pid"))
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
            let data = path.parent()?.to_path_buf();
            alive(pid).then_some((pid, data))
        })
        .collect()
}

/// The processes other than this one whose command line names `root`
/// (`strata serve --config <root>/...`, a command a run started).
fn processes_naming(root: &Path) -> Vec<(u32, String)> {
    let own = std::process::id();
    // Below `root`, not a sibling whose name starts with its name.
    let needle = format!("{}/", root.to_string_lossy());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let command = String::from_utf8_lossy(&raw).replace('\0', " ");
            command
                .contains(&needle)
                .then(|| (pid, command.trim().chars().take(120).collect()))
        })
        .collect()
}

/// Mount points below `root`, deepest first (from `/proc/self/mounts`,
/// where a space in a path is written `\040`).
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|at| PathBuf::from(at.replace("\\040", " ")))
        .filter(|at| at.starts_with(root) && at != root)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

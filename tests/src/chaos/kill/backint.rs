//! `hdbbackint`: Backint backups (two pipes per call, fed by HANA as
//! [`crate::hana`] plays it) and restores, the agent killed after a
//! seeded delay.
//!
//! Run 0 (a backup) and run 1 (a restore) are not killed: their durations
//! set the delays. Every object name is used once, so each version that
//! `hdbbackint -f inquire` lists maps to the bytes its pipe was fed; each
//! new version is restored once and compared. A killed restore is run
//! again and must then deliver the whole object. Versions `inquire` lists
//! and the backups `strata list` shows must be the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

use super::vault::{self, Cli};
use super::{Case, Shared};
use crate::hana::{
    AGENT_TIMEOUT, AgentResult, BackintCall, HanaHost, Piece, drain_pipe, feed_pipe,
};

/// The system.
const SID: &str = "HDB";
/// How long HANA's side waits for the agent to open a pipe.
const OPEN: Duration = Duration::from_secs(20);

/// Runs the case.
pub(crate) fn run(case: &mut Case, _shared: &mut Shared) {
    let host = HanaHost::new();
    let cli = Cli::vault(&case.path("vault"), &case.path("catalog.db"), None);
    cli.run(&["vault", "init", &cli.url()]).success();
    let par = host.standard_params(
        SID,
        "chaos.utl",
        &cli.url(),
        &format!(
            "catalog = {}\nopen_timeout = 10",
            case.path("backint-catalog.db").display()
        ),
    );
    let dir = host.backint_dir(SID, "DB_HDB");
    let mut objects = Objects::default();
    let mut measured = [Duration::ZERO; 2];
    for run in 0..case.runs {
        let restore = match run {
            0 => false,
            1 => true,
            _ => {
                objects
                    .versions
                    .iter()
                    .any(|(_, name)| name.ends_with("_1"))
                    && case.rng.random_bool(0.4)
            }
        };
        let delay = (run >= 2).then(|| case.delay(measured[usize::from(restore)]));
        if restore {
            // The large pieces, so that every restore takes about as long.
            let versions: Vec<&(String, String)> = objects
                .versions
                .iter()
                .filter(|(_, name)| name.ends_with("_1"))
                .collect();
            let (ebid, name) = versions[case.rng.random_range(0..versions.len())].clone();
            let (killed, took) = restore_killed(case, &host, &par, &objects, &ebid, &name, delay);
            if run == 1 || (!killed && took < measured[1]) {
                measured[1] = took;
            }
            case.run_made(usize::from(killed));
            case.say(
                run,
                format!("restore of {ebid}, delay {delay:?}: killed {killed} after {took:?}"),
            );
            if killed {
                case.count("restores killed", 1);
                // HANA runs the recovery again.
                match restore_once(&host, &par, &ebid, &name, None) {
                    Ok(transfer) if Some(&transfer) == objects.digests.get(&name) => {
                        case.count("killed restores re-run", 1)
                    }
                    Ok(transfer) => case.lost(
                        Some(run),
                        format!("the re-run restore of {ebid} delivered other bytes ({transfer})"),
                    ),
                    Err(e) => case.failed(
                        Some(run),
                        format!("the re-run restore of {ebid} after a kill failed: {e}"),
                    ),
                }
            } else {
                case.count("restores completed", 1);
            }
        } else {
            let seed: u64 = case.rng.random();
            let pieces: Vec<Piece> = [(12u64 << 20, 1), (3 << 20, 2)]
                .iter()
                .map(|(len, n)| {
                    Piece::fifo(
                        &dir,
                        &format!("COMPLETE_DATA_BACKUP_chaos_{run}_{n}"),
                        *len,
                        seed ^ n,
                    )
                })
                .collect();
            for piece in &pieces {
                objects
                    .digests
                    .insert(piece.path.display().to_string(), piece.digest());
            }
            let (result, took) = backup_killed(&host, &par, run, &pieces, delay);
            let killed = result.code.is_none();
            if run == 0 || (!killed && took < measured[0]) {
                measured[0] = took;
            }
            case.run_made(usize::from(killed));
            case.say(
                run,
                format!(
                    "backup, delay {delay:?}: exit {:?} after {took:?}",
                    result.code
                ),
            );
            objects.check_backup(case, &host, &par, &cli, run, &pieces, &result);
        }
    }
    let markers = orphan_markers(&cli.vault_dir).len();
    case.count("name markers of uncommitted versions", markers);
    let removed = vault::gc_checked(case, &cli);
    case.count("leftovers gc removed", removed);
    // A version's name marker is written before its manifest: one whose
    // manifest never came is a leftover of a killed backup too.
    let markers = orphan_markers(&cli.vault_dir);
    if !markers.is_empty() {
        case.failed(
            None,
            format!("`vault gc` leaves the name markers of versions never committed: {markers:?}"),
        );
    }
    // Every version is still whole after gc.
    objects.checked.clear();
    objects.check_listed(case, &host, &par, &cli, None);
}

/// What the case backed up: the digest of each object name's bytes, the
/// versions listed, and the versions restored already.
#[derive(Default)]
struct Objects {
    /// Object name to the digest of what HANA fed it.
    digests: BTreeMap<String, String>,
    /// Listed versions: (EBID, name).
    versions: BTreeSet<(String, String)>,
    /// Versions restored and compared.
    checked: BTreeSet<String>,
}

impl Objects {
    /// After backup run `run`: an agent that exited 0 saved every piece,
    /// and each is listed; a killed one saved some or none; every version
    /// not checked yet restores bit-exact.
    #[allow(clippy::too_many_arguments)]
    fn check_backup(
        &mut self,
        case: &mut Case,
        host: &HanaHost,
        par: &Path,
        cli: &Cli,
        run: usize,
        pieces: &[Piece],
        result: &AgentResult,
    ) {
        let listed = self.check_listed(case, host, par, cli, Some(run));
        let committed = pieces
            .iter()
            .filter(|p| {
                listed
                    .iter()
                    .any(|(_, name)| *name == p.path.display().to_string())
            })
            .count();
        match result.code {
            Some(0) => {
                case.count("backups completed", 1);
                for (ebid, name) in result
                    .with("#SAVED")
                    .iter()
                    .filter_map(|f| Some((f.first()?, f.get(1)?)))
                {
                    if !listed.contains(&(ebid.clone(), name.clone())) {
                        case.lost(
                            Some(run),
                            format!("hdbbackint reported #SAVED {ebid} {name}, which inquire does not list"),
                        );
                    }
                }
            }
            Some(code) => case.failed(
                Some(run),
                format!(
                    "hdbbackint failed by itself (exit {code}):\n{}",
                    result.describe()
                ),
            ),
            None if committed == 0 => case.count("backups killed before any commit", 1),
            None if committed < pieces.len() => case.count("backups killed between pieces", 1),
            None => case.count("backups killed after the commits", 1),
        }
    }

    /// Lists every version (`inquire` with `#NULL`), compares that with
    /// `strata list`, and restores the versions not checked yet.
    fn check_listed(
        &mut self,
        case: &mut Case,
        host: &HanaHost,
        par: &Path,
        cli: &Cli,
        run: Option<usize>,
    ) -> BTreeSet<(String, String)> {
        let inquire = BackintCall::new("inquire", SID)
            .params(par)
            .line("#NULL")
            .run(host);
        if inquire.code != Some(0) && inquire.with("#NOTFOUND").is_empty() {
            case.failed(run, format!("inquire failed:\n{}", inquire.describe()));
        }
        let listed: BTreeSet<(String, String)> = inquire
            .with("#BACKUP")
            .into_iter()
            .filter_map(|f| Some((f.first()?.clone(), f.get(1)?.clone())))
            .collect();
        match cli.list() {
            Ok(list) => {
                let strata: BTreeSet<String> = list
                    .iter()
                    .filter(|b| b.engine == "hana")
                    .map(|b| b.id.clone())
                    .collect();
                let inquired: BTreeSet<String> = listed.iter().map(|(e, _)| e.clone()).collect();
                if strata != inquired {
                    case.failed(
                        run,
                        format!("inquire lists {inquired:?}, `strata list` shows {strata:?}"),
                    );
                }
            }
            Err(e) => case.failed(run, e),
        }
        for (ebid, name) in &listed {
            if self.checked.insert(ebid.clone()) {
                let Some(expected) = self.digests.get(name) else {
                    case.failed(
                        run,
                        format!("inquire lists {ebid} {name}, which no run fed"),
                    );
                    continue;
                };
                match restore_once(host, par, ebid, name, None) {
                    Ok(got) if &got == expected => case.count("versions restored", 1),
                    Ok(got) => case.lost(
                        run,
                        format!("listed version {ebid} of {name} restores other bytes (BLAKE3 {got}, fed {expected})"),
                    ),
                    Err(e) => case.lost(run, format!("listed version {ebid} of {name} does not restore: {e}")),
                }
            }
        }
        self.versions = listed.clone();
        listed
    }
}

/// Runs a backup of `pieces` and kills the agent after `delay` (or waits
/// for it); what it wrote and how long it ran.
fn backup_killed(
    host: &HanaHost,
    par: &Path,
    run: usize,
    pieces: &[Piece],
    delay: Option<Duration>,
) -> (AgentResult, Duration) {
    let mut call = BackintCall::new("backup", SID)
        .params(par)
        .backup_id(&run.to_string())
        .count(pieces.len())
        .level("COMPLETE");
    for piece in pieces {
        call = call.pipe(&piece.path);
    }
    let started = Instant::now();
    let mut agent = call.spawn(host);
    let feeders: Vec<_> = pieces
        .iter()
        .map(|p| feed_pipe(&p.path, p.len, p.seed, OPEN))
        .collect();
    if let Some(delay) = delay {
        sleep_while_alive(agent.pid(), delay);
        agent.kill();
    }
    let result = agent.finish(AGENT_TIMEOUT);
    let took = started.elapsed();
    // A writer still waiting for the dead agent to open its pipe.
    for piece in pieces {
        release(&piece.path, true);
    }
    for feeder in feeders {
        let _ = feeder.join();
    }
    (result, took)
}

/// Restores version `ebid` of `name` into its pipe, killed after `delay`
/// (or not): whether the kill hit the agent while it ran, and how long
/// it ran.
fn restore_killed(
    case: &mut Case,
    host: &HanaHost,
    par: &Path,
    objects: &Objects,
    ebid: &str,
    name: &str,
    delay: Option<Duration>,
) -> (bool, Duration) {
    let started = Instant::now();
    let outcome = run_restore(host, par, ebid, name, delay);
    let took = started.elapsed();
    match outcome {
        Restore::Killed => (true, took),
        Restore::Done(Ok(got)) if Some(&got) == objects.digests.get(name) => (false, took),
        Restore::Done(Ok(got)) => {
            case.lost(
                None,
                format!("restore of {ebid} {name} delivered other bytes ({got})"),
            );
            (false, took)
        }
        Restore::Done(Err(e)) => {
            case.lost(None, format!("restore of {ebid} {name} failed: {e}"));
            (false, took)
        }
    }
}

/// A restore uninterrupted: the digest of the bytes HANA read, or why not.
fn restore_once(
    host: &HanaHost,
    par: &Path,
    ebid: &str,
    name: &str,
    delay: Option<Duration>,
) -> Result<String, String> {
    match run_restore(host, par, ebid, name, delay) {
        Restore::Done(result) => result,
        Restore::Killed => Err("killed".to_owned()),
    }
}

enum Restore {
    Killed,
    Done(Result<String, String>),
}

fn run_restore(
    host: &HanaHost,
    par: &Path,
    ebid: &str,
    name: &str,
    delay: Option<Duration>,
) -> Restore {
    let pipe = PathBuf::from(name);
    let mut agent = BackintCall::new("restore", SID)
        .params(par)
        .ebid(ebid, &pipe)
        .spawn(host);
    let reader = {
        let pipe = pipe.clone();
        std::thread::spawn(move || drain_pipe(&pipe, OPEN))
    };
    if let Some(delay) = delay {
        sleep_while_alive(agent.pid(), delay);
        agent.kill();
    }
    let result = agent.finish(AGENT_TIMEOUT);
    // A reader still waiting for the dead agent to open its end.
    release(&pipe, false);
    let read = reader.join().expect("the reader thread");
    if result.code.is_none() {
        return Restore::Killed;
    }
    let restored = result
        .with("#RESTORED")
        .iter()
        .any(|f| f.first().map(String::as_str) == Some(ebid));
    Restore::Done(match (result.code, restored, read) {
        (Some(0), true, Ok(transfer)) => Ok(transfer.blake3),
        (_, _, read) => Err(format!(
            "exit {:?}, read {:?}:\n{}",
            result.code,
            read.map(|t| t.bytes),
            result.describe()
        )),
    })
}

/// Sleeps `delay`, or less when process `pid` ends first.
fn sleep_while_alive(pid: u32, delay: Duration) {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) S ...`: Z once it exited.
        let running = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
        if !running {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens the other end of the FIFO at `path` without blocking and closes
/// it: a side of HANA's still waiting in `open` for an agent that died
/// wakes up (and then sees the pipe closed).
fn release(path: &Path, writer_waits: bool) {
    let mut options = OpenOptions::new();
    if writer_waits {
        options.read(true);
    } else {
        options.write(true);
    }
    let _ = options.custom_flags(libc::O_NONBLOCK).open(path);
}

/// The name markers under `engines/hana/<SID>/objects` whose version
/// (the marker's file name is its EBID) has no manifest.
fn orphan_markers(vault: &Path) -> Vec<String> {
    let root = vault.join(format!("engines/hana/{SID}/objects"));
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let ebid = entry.file_name().to_string_lossy().into_owned();
            let manifest = vault.join(format!("manifests/hana/{SID}/{ebid}.json"));
            if !manifest.exists() && !ebid.contains('#') {
                found.push(
                    path.strip_prefix(vault)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found
}

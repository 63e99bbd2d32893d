//! `vault gc`: `strata vault gc` killed while it deletes, then run again.
//!
//! Before each run the vault gets fresh work for gc: three backups killed
//! while they upload (segments no manifest names, staging files), and two
//! backups soft-deleted with `strata delete`, beside committed backups
//! that must survive. Half the runs judge purge dates a month ahead
//! (`--now`), so the soft-deleted backups' data is purged too; in the
//! others it must stay, and `strata undelete` must bring this run's
//! deleted backup back whole. Run 0 is not killed: it measures gc.
//!
//! After the kill, gc runs again and must succeed; then nothing the walk
//! of the vault calls a leftover is left, every listed backup restores
//! bit-exact and `verify` passes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;

use super::process::{self, Ending};
use super::vault::{self, Cli, GC_GRACE, Leftovers};
use super::{Case, Shared};
use crate::data::{blake3_hex, random_bytes};
use crate::fixture::{files_below, relative_files_below};

/// Small parts and segments: killed backups leave many objects.
const WRITER: &str = "[writer]\npart_size = \"256KiB\"\nsegment_size = \"512KiB\"\n";

/// Runs the case.
pub(crate) fn run(case: &mut Case, _shared: &mut Shared) {
    let config = case.path("strata.toml");
    std::fs::write(&config, WRITER).expect("writer settings");
    let cli = Cli::vault(&case.path("vault"), &case.path("catalog.db"), Some(&config));
    cli.run(&["vault", "init", &cli.url()]).success();
    // Backup id to (stream name, digest) of every backup committed here.
    let mut committed: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut measured = Duration::ZERO;
    for run in 0..case.runs {
        let data_seed: u64 = case.rng.random();
        let purge = case.rng.random_bool(0.5);
        let delay = (run > 0).then(|| case.delay(measured));
        // The work gc finds.
        let kept = format!("kept-{run}");
        let (kept_id, kept_digest) = commit(&cli, &kept, data_seed);
        committed.insert(kept_id, (kept, kept_digest));
        let doomed = format!("deleted-{run}");
        let (doomed_id, doomed_digest) = commit(&cli, &doomed, data_seed ^ 1);
        let (other_id, _) = commit(&cli, &format!("deleted-{run}-b"), data_seed ^ 2);
        cli.run(&["delete", &doomed_id, &other_id]).success();
        for k in 0..3 {
            kill_mid_upload(
                case,
                &cli,
                &format!("killed-{run}-{k}"),
                data_seed ^ (3 + k),
            );
        }
        std::thread::sleep(GC_GRACE + Duration::from_millis(200));
        let before = Leftovers::of(&cli.vault_dir);
        let files_before = relative_files_below(&cli.vault_dir);
        case.count("leftovers made", before.len());
        let mut args: Vec<String> = ["vault", "gc", "--older-than", "1s"]
            .map(str::to_owned)
            .into();
        if purge {
            let month = chrono::Utc::now() + chrono::Duration::days(31);
            args.extend(["--now".to_owned(), month.to_rfc3339()]);
        }
        let started = Instant::now();
        let mut child = process::spawn(cli.command(&args), &case.log("gc", run));
        let ending = match delay {
            Some(delay) => process::kill_after(&mut child, delay),
            None => Ending::Exited(
                process::wait(&mut child, Duration::from_secs(300))
                    .expect("an uninterrupted gc ends within 5 minutes"),
            ),
        };
        let took = started.elapsed();
        if run == 0 || (ending.succeeded() && took < measured) {
            measured = took.max(Duration::from_millis(10));
        }
        case.run_made(usize::from(ending == Ending::Killed));
        case.say(
            run,
            format!(
                "gc{}, delay {delay:?}: {} after {took:?}",
                if purge { " --now +31d" } else { "" },
                ending.describe()
            ),
        );
        match ending {
            Ending::Killed => {
                // Work left: leftovers, and with --now the soft-deleted
                // backups (their tombstones go last).
                let left = Leftovers::of(&cli.vault_dir).len()
                    + if purge {
                        relative_files_below(&cli.vault_dir.join("deleted"))
                            .iter()
                            .filter(|f| f.extension().is_some_and(|e| e == "json"))
                            .count()
                    } else {
                        0
                    };
                let deleted = files_before
                    .difference(&relative_files_below(&cli.vault_dir))
                    .count();
                case.count(
                    if deleted == 0 {
                        "gc runs killed before deleting anything"
                    } else if left > 0 {
                        "gc runs killed mid-deletion"
                    } else {
                        "gc runs killed after their work"
                    },
                    1,
                );
            }
            Ending::Exited(status) if status.success() => case.count("gc runs completed", 1),
            Ending::Exited(status) => case.failed(
                Some(run),
                format!(
                    "`vault gc` failed by itself ({status}): {}",
                    process::output(&case.log("gc", run)).1
                ),
            ),
        }
        let again = cli.run(&args);
        if !again.status.success() {
            case.failed(
                Some(run),
                format!(
                    "`vault gc` run again after the kill failed ({}): {}",
                    again.status,
                    again.stderr_text()
                ),
            );
        }
        let left =
            Leftovers::of(&cli.vault_dir).older_than(std::time::SystemTime::now() - GC_GRACE);
        if !left.is_empty() {
            case.failed(
                Some(run),
                format!("gc, run again after the kill, left: {}", left.describe()),
            );
        }
        // Everything listed is whole.
        check_listed(case, &cli, &committed, run);
        let doomed_dir = cli
            .vault_dir
            .join(format!("data/stream/{doomed}/{doomed_id}"));
        if purge {
            if doomed_dir.exists() {
                case.failed(
                    Some(run),
                    format!(
                        "the soft-deleted backup {doomed_id} is past its date and still holds data"
                    ),
                );
            }
        } else {
            // Inside its soft delete period: gc must have left it whole.
            let out = cli.run(&["undelete", &doomed_id]);
            if !out.status.success() {
                case.lost(
                    Some(run),
                    format!(
                        "soft-deleted backup {doomed_id} cannot be undeleted after gc ({}): {}",
                        out.status,
                        out.stderr_text()
                    ),
                );
            } else {
                match restore(&cli, &doomed, &doomed_id) {
                    Ok(got) if got == doomed_digest => {
                        case.count("soft-deleted backups undeleted whole", 1)
                    }
                    Ok(got) => case.lost(
                        Some(run),
                        format!("undeleted backup {doomed_id} restores other bytes ({got})"),
                    ),
                    Err(e) => case.lost(Some(run), format!("undeleted backup {doomed_id}: {e}")),
                }
                cli.run(&["delete", &doomed_id]).success();
            }
        }
        vault::verify(case, &cli, &[], Some(run));
    }
    let removed = vault::gc_checked(case, &cli);
    case.count("leftovers gc removed at the end", removed);
}

/// Backs up `seed`'s data as `name`, committed: its id and digest.
fn commit(cli: &Cli, name: &str, seed: u64) -> (String, String) {
    let data = random_bytes(4 << 20, seed);
    let out = cli
        .strata(&["backup", "stream", name])
        .stdin(data.clone())
        .run()
        .success();
    (out.stdout_text().trim().to_owned(), blake3_hex(&data))
}

/// Segments a killed backup leaves at least.
const KILLED_SEGMENTS: usize = 16;

/// Starts a backup of `name`, feeds it until [`KILLED_SEGMENTS`] of its
/// segments are in the vault, and kills it.
fn kill_mid_upload(case: &Case, cli: &Cli, name: &str, seed: u64) {
    let mut command = cli.command(&["backup", "stream", name]);
    command.stdin(Stdio::piped());
    let mut child = process::spawn(command, &case.log(name, 0));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let folder = cli.vault_dir.join("data/stream").join(name);
    let chunk = random_bytes(256 << 10, seed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_below(&folder).len() < KILLED_SEGMENTS && Instant::now() < deadline {
        if stdin.write_all(&chunk).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every listed stream backup restores to the bytes it was given.
fn check_listed(
    case: &mut Case,
    cli: &Cli,
    committed: &BTreeMap<String, (String, String)>,
    run: usize,
) {
    let listed = match cli.list() {
        Ok(list) => list,
        Err(e) => {
            case.failed(Some(run), e);
            return;
        }
    };
    for backup in &listed {
        let Some((name, digest)) = committed.get(&backup.id) else {
            case.failed(
                Some(run),
                format!(
                    "{} is listed, and was not committed by this case",
                    backup.id
                ),
            );
            continue;
        };
        match restore(cli, name, &backup.id) {
            Ok(got) if &got == digest => {}
            Ok(got) => case.lost(
                Some(run),
                format!(
                    "listed backup {} restores other bytes after gc ({got})",
                    backup.id
                ),
            ),
            Err(e) => case.lost(Some(run), format!("listed backup {}: {e}", backup.id)),
        }
    }
    for (id, (name, _)) in committed {
        if !name.starts_with("kept-") {
            continue;
        }
        if !listed.iter().any(|b| &b.id == id) {
            case.lost(
                Some(run),
                format!("committed backup {id} ({name}) is gone after gc"),
            );
        }
    }
}

/// Restores backup `id` of stream `name`: the digest of its bytes.
fn restore(cli: &Cli, name: &str, id: &str) -> Result<String, String> {
    let out = cli.run(&["restore", "stream", name, "--backup", id]);
    if out.status.success() {
        Ok(blake3_hex(&out.stdout))
    } else {
        Err(format!(
            "does not restore ({}): {}",
            out.status,
            out.stderr_text()
        ))
    }
}

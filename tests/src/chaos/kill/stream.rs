//! `backup stream`: `strata backup stream` of deterministic data, from a
//! file or a pipe, killed after a seeded delay.
//!
//! Run 0 is not killed: its duration (and later the shortest run that
//! finished by itself) sets the delays of the others (0 to 1.25 times it,
//! so some kills land after the commit, and some runs finish). Each run's data is labelled with its run number, so
//! every listed backup is restored and compared with what that run fed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;

use super::process::{self, Ending};
use super::vault::{self, Cli, Listed};
use super::{Case, Shared};
use crate::data::{blake3_hex, random_bytes};

/// The stream's name in the vault.
const NAME: &str = "chaos-stream";
/// The label that names the run a backup came from.
const RUN_LABEL: &str = "chaos.run";
/// Bytes per run: many parts in several segments, a fraction of a second
/// on an idle machine.
const LEN: usize = 32 << 20;
/// Parts of 1 MiB in segments of 4 MiB: a kill finds uploads in flight.
const WRITER: &str = "[writer]\npart_size = \"1MiB\"\nsegment_size = \"4MiB\"\n";

/// Runs the case.
pub(crate) fn run(case: &mut Case, _shared: &mut Shared) {
    let config = case.path("strata.toml");
    std::fs::write(&config, WRITER).expect("writer settings");
    let cli = Cli::vault(&case.path("vault"), &case.path("catalog.db"), Some(&config));
    cli.run(&["vault", "init", &cli.url()]).success();
    let mut backups = StreamBackups::default();
    let mut measured = Duration::ZERO;
    for run in 0..case.runs {
        let data_seed = case.rng.random::<u64>();
        let piped = case.rng.random_bool(0.5);
        let delay = (run > 0).then(|| case.delay(measured));
        let data = random_bytes(LEN, data_seed);
        backups.expected.insert(run, blake3_hex(&data));
        let ending = back_up(case, &cli, run, data, piped, delay);
        // The shortest uninterrupted run so far: a first run on a cold
        // machine would otherwise stretch every delay.
        if run == 0 || (ending.0.succeeded() && ending.1 < measured) {
            measured = ending.1.max(Duration::from_millis(20));
        }
        case.run_made(usize::from(ending.0 == Ending::Killed));
        case.say(
            run,
            format!(
                "{} input, delay {delay:?}: {} after {:?}",
                if piped { "piped" } else { "file" },
                ending.0.describe(),
                ending.1
            ),
        );
        backups.check_run(case, &cli, run, ending.0);
    }
    let removed = vault::gc_checked(case, &cli);
    case.count("leftovers gc removed", removed);
    // Nothing a listed backup needs went with the leftovers.
    backups.restore_all(case, &cli);
}

/// Backs up `data` as run `run`, from a pipe or a file, killed after
/// `delay` (or waited for); how it ended, and when.
fn back_up(
    case: &Case,
    cli: &Cli,
    run: usize,
    data: Vec<u8>,
    piped: bool,
    delay: Option<Duration>,
) -> (Ending, Duration) {
    let label = format!("{RUN_LABEL}={run}");
    let mut args = vec!["backup", "stream", NAME, "--label", &label];
    let input = case.path(format!("input-{run}.bin"));
    let input_text = input.display().to_string();
    if !piped {
        std::fs::write(&input, &data).expect("input file");
        args.extend(["--input", &input_text]);
    }
    let mut command = cli.command(&args);
    if piped {
        command.stdin(Stdio::piped());
    }
    let started = Instant::now();
    let mut child = process::spawn(command, &case.log("backup", run));
    let feeder = child.stdin.take().map(|mut stdin| {
        // A killed backup closes the pipe: the rest goes nowhere.
        std::thread::spawn(move || {
            for chunk in data.chunks(1 << 20) {
                if stdin.write_all(chunk).is_err() {
                    break;
                }
            }
        })
    });
    let ending = match delay {
        Some(delay) => process::kill_after(&mut child, delay),
        None => match process::wait(&mut child, Duration::from_secs(300)) {
            Some(status) => Ending::Exited(status),
            None => panic!("an uninterrupted `backup stream` ran for 5 minutes"),
        },
    };
    let took = started.elapsed();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let _ = std::fs::remove_file(&input);
    (ending, took)
}

/// What the case knows of its backups.
#[derive(Default)]
struct StreamBackups {
    /// The digest of each run's data.
    expected: BTreeMap<usize, String>,
    /// Backups restored and checked already.
    checked: BTreeSet<String>,
}

impl StreamBackups {
    /// After run `run`: its backup is listed if and only if it committed
    /// (always when the command exited 0), and every backup not checked
    /// yet restores bit-exact and verifies.
    fn check_run(&mut self, case: &mut Case, cli: &Cli, run: usize, ending: Ending) {
        let listed = match cli.list() {
            Ok(list) => list,
            Err(e) => {
                case.failed(Some(run), e);
                return;
            }
        };
        let of_run: Vec<&Listed> = listed
            .iter()
            .filter(|b| b.labels.get(RUN_LABEL) == Some(&run.to_string()))
            .collect();
        let log = case.log("backup", run);
        let (stdout, stderr) = process::output(&log);
        match ending {
            Ending::Exited(status) if status.success() => {
                case.count("completed", 1);
                let id = stdout.trim();
                if !of_run.iter().any(|b| b.id == id) {
                    case.lost(
                        Some(run),
                        format!(
                            "`backup stream` exited 0 reporting backup `{id}`, which `list` does not show"
                        ),
                    );
                }
            }
            Ending::Exited(status) => case.failed(
                Some(run),
                format!("`backup stream` failed by itself ({status}): {stderr}"),
            ),
            Ending::Killed if of_run.is_empty() => case.count("killed before commit", 1),
            Ending::Killed => case.count("killed after commit", 1),
        }
        if of_run.len() > 1 {
            case.failed(
                Some(run),
                format!("one run committed {} backups", of_run.len()),
            );
        }
        let new: Vec<Listed> = listed
            .into_iter()
            .filter(|b| b.engine == "stream" && !self.checked.contains(&b.id))
            .collect();
        for backup in &new {
            self.restore_checked(case, cli, backup, Some(run));
        }
        let ids: Vec<String> = new.iter().map(|b| b.id.clone()).collect();
        if !ids.is_empty() {
            vault::verify(case, cli, &ids, Some(run));
        }
    }

    /// Restores `backup` and compares it with the data of the run its
    /// label names.
    fn restore_checked(&mut self, case: &mut Case, cli: &Cli, backup: &Listed, run: Option<usize>) {
        self.checked.insert(backup.id.clone());
        let Some(expected) = backup
            .labels
            .get(RUN_LABEL)
            .and_then(|r| r.parse::<usize>().ok())
            .and_then(|r| self.expected.get(&r))
        else {
            case.failed(
                run,
                format!(
                    "backup {} has no known run label: {:?}",
                    backup.id, backup.labels
                ),
            );
            return;
        };
        let output = case.path("restored.bin");
        let out = cli.run(&[
            "restore",
            "stream",
            NAME,
            "--backup",
            &backup.id,
            "--output",
            &output.display().to_string(),
            "--force",
        ]);
        if !out.status.success() {
            case.lost(
                run,
                format!(
                    "listed backup {} does not restore ({}): {}",
                    backup.id,
                    out.status,
                    out.stderr_text()
                ),
            );
            return;
        }
        let got = std::fs::read(&output)
            .map(|b| blake3_hex(&b))
            .unwrap_or_default();
        let _ = std::fs::remove_file(&output);
        if &got != expected {
            case.lost(
                run,
                format!(
                    "listed backup {} restores other bytes (BLAKE3 {got}, fed {expected})",
                    backup.id
                ),
            );
        }
    }

    /// Restores every listed backup again (after gc).
    fn restore_all(&mut self, case: &mut Case, cli: &Cli) {
        let listed = match cli.list() {
            Ok(list) => list,
            Err(e) => {
                case.failed(None, e);
                return;
            }
        };
        for backup in listed.iter().filter(|b| b.engine == "stream") {
            self.restore_checked(case, cli, backup, None);
        }
    }
}

//! `restore pg`: `strata restore pg --start` into an alternate data
//! directory, killed after a seeded delay, then run again into a fresh
//! directory.
//!
//! The case takes a full backup first and adds rows after it, so each
//! restore lays down the full and replays WAL; the target is `--latest`
//! or a time after the last change, at random. Run 0 is not killed: it
//! measures a restore, and when its files were all written (when
//! `recovery.signal` appears; the copy starts after that). Half the kills
//! aim at the writing, the others anywhere in the restore.
//!
//! Strata writes a restore's data files first, then `pg_control`,
//! `backup_label`, the recovery settings and `recovery.signal` last
//! (`plugins/postgres/src/restore.rs`), and refuses a target directory
//! that is not empty. So what a killed restore leaves must never pass for
//! a finished cluster: a re-run into it without `--force` is refused, and
//! PostgreSQL either refuses to start it or, when the kill came after
//! everything was written (while the copy started), recovers it to the
//! same rows as a finished restore. A copy that starts with other rows is
//! a loss.

use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;

use super::pg_env::{self, ARCHIVE_WAIT, PgEnv, Target};
use super::process::{self, Ending};
use super::vault;
use super::{Case, Shared};
use crate::net::free_port;
use crate::pg::{PgCluster, as_postgres, give_to_postgres};

/// Runs the case.
pub(crate) fn run(case: &mut Case, shared: &mut Shared) {
    let env = shared.pg();
    // A fresh full, then rows the restore must replay from WAL.
    env.change();
    let full = env.cli.run(&["backup", "pg", "main", "--kind", "full"]);
    if !full.status.success() {
        case.failed(
            None,
            format!("the full backup to restore failed: {}", full.stderr_text()),
        );
        return;
    }
    env.change();
    let expected = env.state();
    // A time after the last change; the WAL switch that archives it
    // comes after it, so the archive covers it.
    let at = Utc::now();
    if let Err(e) = env.drain_archive(ARCHIVE_WAIT) {
        case.failed(None, e);
        return;
    }
    let mut measured = Duration::ZERO;
    let mut files_written = Duration::ZERO;
    for run in 0..case.runs {
        let target = if case.rng.random_bool(0.5) {
            Target::Latest
        } else {
            Target::Time(at)
        };
        // Half the kills aim at the writing of the files (until
        // `recovery.signal`), the rest anywhere in the restore.
        let delay = (run > 0).then(|| {
            if case.rng.random_bool(0.5) {
                case.delay(files_written)
            } else {
                case.delay(measured)
            }
        });
        let dir = env.dir.join("restores").join(format!("killed-{run}"));
        let port = free_port();
        let command = env.cli.command(&pg_env::restore_args(target, &dir, port));
        let started = Instant::now();
        let mut child = process::spawn(command, &case.log("restore", run));
        let ending = match delay {
            Some(delay) => process::kill_after(&mut child, delay),
            None => {
                let (status, written) = wait_watching(&mut child, &dir);
                files_written = written.unwrap_or(files_written);
                Ending::Exited(status)
            }
        };
        let took = started.elapsed();
        if run == 0 || (ending.succeeded() && took < measured) {
            measured = took;
        }
        case.run_made(usize::from(ending == Ending::Killed));
        case.say(
            run,
            format!(
                "{target:?}, delay {delay:?}: {} after {took:?} (files written in {files_written:?})",
                ending.describe()
            ),
        );
        let copy = PgCluster::adopt(dir.clone(), port, env.cluster.socket_dir.clone());
        match ending {
            Ending::Exited(status) if status.success() => {
                case.count("completed", 1);
                pg_env::check_copy(case, &copy, &format!("killed-{run}"), &expected, Some(run));
            }
            Ending::Exited(status) => case.failed(
                Some(run),
                format!(
                    "`restore pg` failed by itself ({status}): {}",
                    process::output(&case.log("restore", run)).1
                ),
            ),
            Ending::Killed => {
                examine_killed(case, env, &copy, target, &expected, run);
                drop(copy);
                let _ = std::fs::remove_dir_all(&dir);
                // The operator runs the restore again, into a new directory
                // (a failure is recorded as the loss it is).
                if env.restore_checked(case, &format!("rerun-{run}"), target, &expected, Some(run))
                {
                    case.count("killed restores re-run", 1);
                }
                continue;
            }
        }
        drop(copy);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let acknowledged = env.check_acknowledged(case, None);
    case.count("acknowledged segments fetched back", acknowledged);
    let removed = vault::gc_checked(case, &env.cli);
    case.count("leftovers gc removed", removed);
}

/// What a killed restore left in `copy`'s directory must not pass for a
/// finished cluster: see the module docs.
fn examine_killed(
    case: &mut Case,
    env: &PgEnv,
    copy: &PgCluster,
    target: Target,
    expected: &str,
    run: usize,
) {
    let dir = &copy.data;
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        case.count("killed before writing", 1);
        return;
    }
    // Strata does not take the directory for a finished restore.
    let again = env.cli.run(&pg_env::restore_args(target, dir, free_port()));
    if again.code() != Some(9) {
        case.failed(
            Some(run),
            format!(
                "a restore into the directory a killed restore left was not refused as a conflict ({}): {}",
                again.status,
                again.stderr_text()
            ),
        );
    }
    if copy.is_running() {
        // Killed while it started the copy: everything was written, and
        // recovery goes on without it.
        case.count("killed while starting the copy", 1);
        if wait_promoted(copy, Duration::from_secs(120)) {
            pg_env::check_copy(case, copy, &format!("killed-{run}"), expected, Some(run));
        } else {
            case.failed(
                Some(run),
                format!(
                    "the copy a killed restore started never finished recovery:\n{}",
                    pg_env::tail(
                        &std::fs::read_to_string(dir.join("strata-restore.log"))
                            .unwrap_or_default()
                    )
                ),
            );
        }
        copy.stop_mode("immediate");
        return;
    }
    // As an operator who finds the directory would try: start it (never
    // archiving into the vault, whatever its settings say).
    give_to_postgres(dir);
    let recovery_signal = dir.join("recovery.signal").exists();
    let log = dir.with_extension("log");
    let mut pg_ctl = as_postgres(copy.bin.join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!("-p {} -c archive_mode=off", copy.port))
        .args(["-w", "-t", "60", "start"]);
    let started = pg_ctl.output().is_ok_and(|o| o.status.success());
    if !started {
        case.count("killed restores PostgreSQL refuses to start", 1);
        copy.stop_mode("immediate");
        return;
    }
    if wait_promoted(copy, Duration::from_secs(120)) && recovery_signal {
        if pg_env::check_copy(case, copy, &format!("killed-{run}"), expected, Some(run)) {
            case.count("killed after the last file (starts with the rows)", 1);
        }
    } else {
        case.lost(
            Some(run),
            format!(
                "PostgreSQL starts the directory a killed restore left (recovery.signal: {recovery_signal}):\n{}",
                pg_env::tail(&std::fs::read_to_string(&log).unwrap_or_default())
            ),
        );
    }
    copy.stop_mode("immediate");
}

/// Waits for an uninterrupted restore into `dir`: its status, and when
/// its last file (`recovery.signal`) appeared.
fn wait_watching(
    child: &mut std::process::Child,
    dir: &std::path::Path,
) -> (std::process::ExitStatus, Option<Duration>) {
    let started = Instant::now();
    let mut written = None;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the restore") {
            return (status, written);
        }
        if written.is_none() && dir.join("recovery.signal").exists() {
            written = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "an uninterrupted restore ran for 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `copy` accepts connections and is out of recovery.
fn wait_promoted(copy: &PgCluster, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if copy.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
            return true;
        }
        if !copy.is_running() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

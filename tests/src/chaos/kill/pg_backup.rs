//! `backup pg`: full and differential backups of the shared cluster, rows
//! added between runs, killed after a seeded delay.
//!
//! Run 0, a full, is not killed: its duration sets the delays of the
//! later runs (of a differential too, which reads every page as well,
//! until one ran uninterrupted; then the shortest uninterrupted run of
//! each kind). Run 1 is a differential, the others either kind. Each run
//! records the cluster's rows before it starts; nothing changes while it
//! runs, so a backup that `list` shows is restored (once, at the end of
//! the case) to the time it ended and must hold exactly those rows.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;

use super::pg_env::Target;
use super::process::{self, Ending};
use super::vault::{self, Listed};
use super::{Case, Shared};

/// One run: when it ran and what the cluster held.
struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    state: String,
}

/// Runs the case.
pub(crate) fn run(case: &mut Case, shared: &mut Shared) {
    let env = shared.pg();
    let mut windows: Vec<Window> = Vec::new();
    let mut to_restore: Vec<(Listed, String)> = Vec::new();
    let mut seen = match env.cli.list() {
        Ok(list) => vault::ids(&list),
        Err(e) => {
            case.failed(None, e);
            return;
        }
    };
    let mut measured = [Duration::ZERO; 2];
    for run in 0..case.runs {
        env.change();
        let state = env.state();
        let full = match run {
            0 => true,
            1 => false,
            _ => case.rng.random_bool(0.4),
        };
        let kind = if full { "full" } else { "diff" };
        let delay = (run >= 1).then(|| case.delay(measured[usize::from(!full)]));
        let log = case.log(kind, run);
        let command = env
            .cli
            .command(&["--json", "backup", "pg", "main", "--kind", kind]);
        let from = Utc::now();
        let started = Instant::now();
        let mut child = process::spawn(command, &log);
        let ending = match delay {
            Some(delay) => process::kill_after(&mut child, delay),
            None => match process::wait(&mut child, Duration::from_secs(600)) {
                Some(status) => Ending::Exited(status),
                None => panic!("an uninterrupted `backup pg` ran for 10 minutes"),
            },
        };
        let took = started.elapsed();
        let to = Utc::now();
        // The shortest uninterrupted run of each kind so far; until a
        // differential ran uninterrupted, the full's time (both read every
        // page).
        if run == 0 {
            measured = [took; 2];
        }
        let slot = &mut measured[usize::from(!full)];
        if ending.succeeded() && took < *slot {
            *slot = took;
        }
        case.run_made(usize::from(ending == Ending::Killed));
        case.say(
            run,
            format!(
                "{kind}, delay {delay:?}: {} after {took:?}",
                ending.describe()
            ),
        );
        windows.push(Window { from, to, state });
        let listed = match env.cli.list() {
            Ok(list) => list,
            Err(e) => {
                case.failed(Some(run), e);
                continue;
            }
        };
        let new: Vec<Listed> = listed
            .into_iter()
            .filter(|b| b.engine == "postgres" && !seen.contains(&b.id))
            .collect();
        let (stdout, stderr) = process::output(&log);
        let mine: Vec<&Listed> = new
            .iter()
            .filter(|b| b.started_at >= from && b.ended_at <= to)
            .collect();
        match ending {
            Ending::Exited(status) if status.success() => {
                case.count("completed", 1);
                let id = serde_json::from_str::<serde_json::Value>(&stdout)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if !mine.iter().any(|b| b.id == id) {
                    case.lost(
                        Some(run),
                        format!("`backup pg --kind {kind}` exited 0 reporting `{id}`, which `list` does not show"),
                    );
                }
            }
            Ending::Exited(status) => case.failed(
                Some(run),
                format!("`backup pg --kind {kind}` failed by itself ({status}): {stderr}"),
            ),
            Ending::Killed if mine.is_empty() => case.count("killed before commit", 1),
            Ending::Killed => case.count("killed after commit", 1),
        }
        if mine.len() > 1 {
            case.failed(
                Some(run),
                format!("one run committed {} backups", mine.len()),
            );
        }
        let ids: Vec<String> = new.iter().map(|b| b.id.clone()).collect();
        if !ids.is_empty() {
            vault::verify(case, &env.cli, &ids, Some(run));
        }
        for backup in new {
            seen.insert(backup.id.clone());
            match windows
                .iter()
                .find(|w| backup.started_at >= w.from && backup.ended_at <= w.to)
            {
                Some(w) => to_restore.push((backup, w.state.clone())),
                None => case.failed(
                    Some(run),
                    format!(
                        "backup {} ({} to {}) was made by no run of this case",
                        backup.id, backup.started_at, backup.ended_at
                    ),
                ),
            }
        }
    }
    // Every listed backup restores to the rows it was taken with.
    if let Err(e) = env.mark() {
        case.failed(None, e);
    }
    for (backup, state) in &to_restore {
        let name = format!("backup-{}", backup.id);
        if env.restore_checked(case, &name, Target::Time(backup.ended_at), state, None) {
            case.count("backups restored", 1);
        }
    }
    let acknowledged = env.check_acknowledged(case, None);
    case.count("acknowledged segments fetched back", acknowledged);
    let removed = vault::gc_checked(case, &env.cli);
    case.count("leftovers gc removed", removed);
}

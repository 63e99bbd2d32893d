//! `serve`: the service killed while it runs a job and while it applies
//! retention, then started again.
//!
//! A cluster of its own (1 MiB WAL segments, a vault without soft delete,
//! so that retention deletes at once), protected by a policy with a full
//! on Sundays, a differential every other day and `daily = 1` retention:
//! from the third day on, every pass expires the previous differential
//! and the WAL no kept backup needs.
//!
//! - Run 0: `strata serve` in the foreground, as systemd runs it, killed
//!   at a seeded moment of its initial full; started again, it must take
//!   the full, and the history must show the killed job cancelled.
//! - Later runs are passes in compressed time, `strata serve --once --now
//!   T` a day apart (the service's own pass, with the clock it is tested
//!   with), killed after a seeded delay (up to 1.25 times a measured
//!   pass) or the moment retention starts deleting (a manifest goes). The
//!   pass is then run again, as the restarted service would, and must
//!   succeed. One pass before them is not killed: it measures a pass.
//!
//! After each run: `strata jobs --json` reads, no job is left `running`,
//! a job cancelled by the kill did not commit a backup the history denies,
//! the day's backup job succeeded, no deletion is left half done (no
//! tombstone), `verify` passes, and each new backup restores to the rows
//! of its day.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::Rng;

use super::pg_env::{self, PgEnv, Target};
use super::process::{self, Ending};
use super::vault::{self, Listed};
use super::{Case, Shared};
use crate::fixture::files_below;
use crate::pg::running_as_root;

/// Runs the case.
pub(crate) fn run(case: &mut Case, _shared: &mut Shared) {
    let dir = case.path("cluster");
    let socket = dir.join("strata.sock");
    let group = if running_as_root() {
        // archive_command runs as postgres: the socket's group.
        "socket_group = \"postgres\"\n"
    } else {
        ""
    };
    let service = format!(
        "\n[service]\nsocket = \"{}\"\n{group}shutdown_grace = \"0s\"\nretries = 0\n\n\
         [policy.chaos]\ntime_zone = \"UTC\"\nfull = \"0 2 * * SUN\"\ndiff = \"0 2 * * MON-SAT\"\n\n\
         [policy.chaos.retention]\ndaily = 1\nlog_days = 1\n\n\
         [[protect]]\nengine = \"postgres\"\ninstance = \"main\"\npolicy = \"chaos\"\n",
        socket.display()
    );
    let mut env = PgEnv::create(
        &dir,
        &["--wal-segsize=1"],
        &["--soft-delete-days", "0"],
        &service,
        1,
    );
    let mut service = Service {
        seen: BTreeSet::new(),
        days: Vec::new(),
    };
    if case.runs == 0 {
        return;
    }
    // Run 0: the daemon, killed during its initial full.
    env.change();
    let state = env.state();
    let from = Utc::now();
    let killed = daemon_killed(case, &env);
    service.days.push(Day {
        from,
        to: Utc::now(),
        state,
    });
    service.check(case, &env, 0, None);
    if let Some(to) = killed {
        let jobs = history(&env);
        let listed = env.cli.list().unwrap_or_default();
        service.committed_by_killed(case, &jobs, &listed, from, to, 0);
    }
    // Passes a day apart from tomorrow on, at 03:00.
    let today = Utc::now();
    let mut day = Utc
        .with_ymd_and_hms(today.year(), today.month(), today.day(), 3, 0, 0)
        .single()
        .expect("a valid time");
    let mut measured = Duration::ZERO;
    // Pass 0 is not killed, and not counted as a run: it measures a pass.
    for run in 0..case.runs {
        day += chrono::Duration::days(1);
        env.change();
        let state = env.state();
        let at_expiry = run % 2 == 0;
        let delay = if run == 0 {
            None
        } else if at_expiry {
            Some(Duration::from_micros(case.rng.random_range(0..20_000)))
        } else {
            Some(case.delay(measured))
        };
        let from = Utc::now();
        let log = case.log("pass", run);
        let started = Instant::now();
        let ending = pass(&env, day, &log, delay, at_expiry && run > 0);
        let took = started.elapsed();
        let to = Utc::now();
        if run == 0 || (ending.succeeded() && took < measured) {
            measured = took;
        }
        if run > 0 {
            case.run_made(usize::from(ending == Ending::Killed));
        }
        case.say(
            run,
            format!(
                "pass at {day}{}, delay {delay:?}: {} after {took:?}",
                if at_expiry && run > 0 {
                    " (killed when retention deletes)"
                } else {
                    ""
                },
                ending.describe()
            ),
        );
        let killed_window = (ending == Ending::Killed).then_some((from, to));
        match ending {
            Ending::Killed => {
                case.count(
                    if at_expiry {
                        "passes killed during retention"
                    } else {
                        "passes killed at a random moment"
                    },
                    1,
                );
                // The service starts again and takes the day again.
                let again = env
                    .cli
                    .run(&["--json", "serve", "--once", "--now", &day.to_rfc3339()]);
                if !again.status.success() {
                    case.failed(
                        Some(run),
                        format!(
                            "the pass after the kill failed ({}): {}{}",
                            again.status,
                            again.stdout_text(),
                            again.stderr_text()
                        ),
                    );
                }
            }
            Ending::Exited(status) if status.success() => case.count("passes completed", 1),
            Ending::Exited(status) => case.failed(
                Some(run),
                format!(
                    "`serve --once` failed by itself ({status}): {}",
                    process::output(&log).1
                ),
            ),
        }
        // The re-run of a killed pass backs up the same rows.
        service.days.push(Day {
            from,
            to: Utc::now(),
            state,
        });
        service.check(case, &env, run, Some((day, killed_window)));
    }
    let removed = vault::gc_checked(case, &env.cli);
    case.count("leftovers gc removed", removed);
}

/// When a run ran: from, to.
type Window = (DateTime<Utc>, DateTime<Utc>);

/// One pass or daemon run: when it ran and the rows it backed up.
struct Day {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    state: String,
}

struct Service {
    /// Backups restored and checked already.
    seen: BTreeSet<String>,
    days: Vec<Day>,
}

impl Service {
    /// The checks after run `run` (see the module docs). `pass`: the
    /// simulated day, and when the killed pass ran (if it was killed).
    fn check(
        &mut self,
        case: &mut Case,
        env: &PgEnv,
        run: usize,
        pass: Option<(DateTime<Utc>, Option<Window>)>,
    ) {
        let out = env.cli.run(&["--json", "jobs", "--limit", "1000"]);
        let jobs: Vec<serde_json::Value> = match out.status.success() {
            true => match serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                Ok(jobs) => jobs,
                Err(e) => {
                    case.failed(
                        Some(run),
                        format!("`strata jobs --json` printed no list: {e}"),
                    );
                    return;
                }
            },
            false => {
                case.failed(
                    Some(run),
                    format!(
                        "the job history cannot be read ({}): {}",
                        out.status,
                        out.stderr_text()
                    ),
                );
                return;
            }
        };
        if let Some(job) = jobs.iter().find(|j| j["result"] == "running") {
            case.failed(
                Some(run),
                format!("a job is left running in the history: {job}"),
            );
        }
        let listed = match env.cli.list() {
            Ok(list) => list,
            Err(e) => {
                case.failed(Some(run), e);
                return;
            }
        };
        if let Some((day, killed)) = pass {
            let slot = day
                .date_naive()
                .and_hms_opt(2, 0, 0)
                .expect("02:00")
                .and_utc();
            let done = jobs.iter().any(|j| {
                j["kind"] != "expire"
                    && j["result"] == "succeeded"
                    && j["scheduled_for"]
                        .as_str()
                        .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                        == Some(slot)
            });
            if !done {
                case.failed(
                    Some(run),
                    format!(
                        "no backup job for the slot {slot} succeeded: {}",
                        serde_json::Value::from(jobs.clone())
                    ),
                );
            }
            if let Some((from, to)) = killed {
                self.committed_by_killed(case, &jobs, &listed, from, to, run);
            }
        } else {
            // The daemon's initial full.
            if !has_full(&jobs) {
                case.failed(
                    Some(run),
                    "the restarted service did not take the initial full",
                );
            }
        }
        // A deletion the kill interrupted was finished (no soft delete here).
        let tombstones = tombstones(&env.cli.vault_dir);
        if tombstones > 0 {
            case.failed(
                Some(run),
                format!("{tombstones} deletion(s) left half done after the service ran again"),
            );
        }
        vault::verify(case, &env.cli, &[], Some(run));
        // Every segment acknowledged so far comes back, unless retention
        // expired it (before what the oldest listed backup needs).
        let kept_from = pg_env::first_needed_segment(env, 1);
        let acknowledged = env.check_acknowledged_from(case, Some(run), kept_from.as_deref());
        case.count("acknowledged segments checked", acknowledged);
        let new: Vec<&Listed> = listed
            .iter()
            .filter(|b| !self.seen.contains(&b.id))
            .collect();
        if new.is_empty() {
            return;
        }
        if let Err(e) = env.mark() {
            case.failed(Some(run), e);
        }
        for backup in new {
            self.seen.insert(backup.id.clone());
            let Some(day) = self
                .days
                .iter()
                .find(|d| backup.started_at >= d.from && backup.ended_at <= d.to)
            else {
                case.failed(
                    Some(run),
                    format!("backup {} was made by no run of this case", backup.id),
                );
                continue;
            };
            let state = day.state.clone();
            if env.restore_checked(
                case,
                &format!("serve-{}", backup.id),
                Target::Time(backup.ended_at),
                &state,
                Some(run),
            ) {
                case.count("backups restored", 1);
            }
        }
    }

    /// A job the kill cut short is marked cancelled, "nothing was
    /// committed": no backup may have been committed by the killed pass
    /// while the history says so.
    fn committed_by_killed(
        &self,
        case: &mut Case,
        jobs: &[serde_json::Value],
        listed: &[Listed],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        run: usize,
    ) {
        let committed: Vec<&Listed> = listed
            .iter()
            .filter(|b| b.started_at >= from && b.ended_at <= to)
            .collect();
        let denied = jobs.iter().any(|j| {
            j["result"] == "cancelled"
                && j["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("nothing was committed"))
                && j["ended_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| t >= from)
        });
        if !committed.is_empty() {
            case.count("kills after the job's backup committed", 1);
            if denied {
                case.failed(
                    Some(run),
                    format!(
                        "the killed pass committed {}, and the job history says it committed nothing",
                        committed[0].id
                    ),
                );
            }
        } else if denied {
            case.count("kills mid-job", 1);
        }
    }
}

/// `serve --once --now <day>`, killed after `delay` or, when
/// `at_expiry`, that long after a manifest disappears (retention
/// deletes); waited for when `delay` is `None`.
fn pass(
    env: &PgEnv,
    day: DateTime<Utc>,
    log: &Path,
    delay: Option<Duration>,
    at_expiry: bool,
) -> Ending {
    let command = env
        .cli
        .command(&["--json", "serve", "--once", "--now", &day.to_rfc3339()]);
    let mut child = process::spawn(command, log);
    let Some(delay) = delay else {
        return match process::wait(&mut child, Duration::from_secs(600)) {
            Some(status) => Ending::Exited(status),
            None => panic!("a pass of the service ran for 10 minutes"),
        };
    };
    if !at_expiry {
        return process::kill_after(&mut child, delay);
    }
    let manifests = env.cli.vault_dir.join("manifests/postgres/main");
    let mut most = files_below(&manifests).len();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the pass") {
            return Ending::Exited(status);
        }
        let now = files_below(&manifests).len();
        if now < most {
            return process::kill_after(&mut child, delay);
        }
        most = most.max(now);
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// `strata serve` in the foreground, killed at a seeded moment of its
/// initial full, then started again until the full succeeded, then
/// stopped with SIGTERM. When it was killed: the time of the kill.
fn daemon_killed(case: &mut Case, env: &PgEnv) -> Option<DateTime<Utc>> {
    let logs = (case.log("serve", 0), case.log("serve-again", 0));
    let serve = |log: &Path| process::spawn(env.cli.command(&["-v", "serve"]), log);
    let mut daemon = serve(&logs.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !history(env).iter().any(|j| j["result"] == "running") {
        if Instant::now() > deadline || daemon.try_wait().ok().flatten().is_some() {
            case.failed(Some(0), "the service never started its initial full");
            let _ = daemon.kill();
            let _ = daemon.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let delay = Duration::from_millis(case.rng.random_range(0..1000));
    let ending = process::kill_after(&mut daemon, delay);
    let killed_at = Utc::now();
    case.run_made(usize::from(ending == Ending::Killed));
    case.say(
        0,
        format!(
            "daemon, {delay:?} into its initial full: {}",
            ending.describe()
        ),
    );
    let mut daemon = serve(&logs.1);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let jobs = history(env);
        if has_full(&jobs) {
            // The first job is the one the kill hit, or finished before it.
            let first = jobs
                .iter()
                .min_by_key(|j| j["id"].as_i64().unwrap_or(i64::MAX));
            if ending == Ending::Killed {
                case.count(
                    match first.map(|j| j["result"].clone()) {
                        Some(r) if r == "cancelled" => "daemon killed mid-job",
                        _ => "daemon killed after its job",
                    },
                    1,
                );
            }
            break;
        }
        if Instant::now() > deadline || daemon.try_wait().ok().flatten().is_some() {
            case.failed(
                Some(0),
                format!(
                    "the service started again never completed its initial full: {jobs:?}\n{}",
                    process::output(&logs.1).1
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once it listens (a service still starting dies of SIGTERM, which
    // systemd counts as a clean stop too): SIGTERM, exit 0.
    let socket = env.dir.join("strata.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    match process::wait(&mut daemon, Duration::from_secs(60)) {
        Some(status) if status.success() => {}
        other => case.failed(
            Some(0),
            format!("the service did not stop cleanly on SIGTERM: {other:?}"),
        ),
    }
    (ending == Ending::Killed).then_some(killed_at)
}

/// The job history (`strata jobs --json`), empty when it cannot be read
/// (the checks say so).
fn history(env: &PgEnv) -> Vec<serde_json::Value> {
    let out = env.cli.run(&["--json", "jobs", "--limit", "1000"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The tombstones in `vault` (not the staging file of a tombstone whose
/// write was killed: a leftover for gc).
fn tombstones(vault: &Path) -> usize {
    files_below(&vault.join("deleted"))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .count()
}

/// Whether the service has a full backup: a full job that succeeded, or a
/// differential that succeeded, which the service takes only on a full
/// in the vault (the killed job's, when the kill came after its commit).
fn has_full(jobs: &[serde_json::Value]) -> bool {
    jobs.iter()
        .any(|j| j["result"] == "succeeded" && (j["kind"] == "full" || j["kind"] == "diff"))
}

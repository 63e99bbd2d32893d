//! `pg wal-push`: PostgreSQL archives under load (rows inserted and a WAL
//! switch every few tens of milliseconds, 1 MiB segments) while the
//! `strata pg wal-push` processes its archiver starts are killed at
//! seeded moments of their lives.
//!
//! Run 0 kills nothing: it measures how long a push lives. In the later
//! runs a seeded share of the pushes is killed after a seeded fraction
//! (0 to 1.25) of that lifetime. PostgreSQL retries a failed
//! `archive_command`, which is the re-run of the killed push. After each
//! run the archiver must drain its backlog (`last_archived_wal` reaches
//! the switched segment, no `.ready` file left; `failed_count` may rise),
//! every killed segment must have been acknowledged by a later push, and
//! every acknowledged segment must come back identical from the vault.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::pg_env::ARCHIVE_WAIT;
use super::process;
use super::vault;
use super::{Case, Shared};

/// Load steps per run (an insert and a WAL switch each), at CI and at
/// large scale.
const SWITCHES: [usize; 2] = [20, 40];

/// Runs the case.
pub(crate) fn run(case: &mut Case, shared: &mut Shared) {
    let env = shared.pg();
    if let Err(e) = env.drain_archive(ARCHIVE_WAIT) {
        case.failed(
            None,
            format!("the archiver is stuck before the first run: {e}"),
        );
        return;
    }
    // Segments other cases had acknowledged: checked here too.
    let earlier = env.check_acknowledged(case, None);
    case.count("acknowledged segments fetched back", earlier);
    let config = env.config.display().to_string();
    let mut lifetime = Duration::from_millis(50);
    let switches = SWITCHES[usize::from(case.large)];
    for run in 0..case.runs {
        let share = if run == 0 { 0.0 } else { 0.6 };
        let (last_before, failed_before) = archiver(&env.cluster);
        let batch = env.next_batch();
        let step = format!(
            "INSERT INTO chaos_rows SELECT {batch}, g, md5(g::text) FROM generate_series(1, 200) g; \
             SELECT pg_switch_wal()"
        );
        let mut killer = Killer {
            rng: StdRng::seed_from_u64(case.rng.random()),
            config: config.clone(),
            share,
            lifetime,
            pushes: 0,
            seen: BTreeMap::new(),
            pending: Vec::new(),
            killed: BTreeSet::new(),
            kills: 0,
            lifetimes: Vec::new(),
        };
        let started = Instant::now();
        std::thread::scope(|scope| {
            let load = scope.spawn(|| {
                for _ in 0..switches {
                    env.cluster.psql(&step);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            while !load.is_finished() {
                killer.tick();
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Err(panic) = load.join() {
                std::panic::resume_unwind(panic);
            }
        });
        let faults = killer.kills;
        case.run_made(faults);
        case.count("wal-push processes killed", faults);
        let load_took = started.elapsed();
        let drained = env.drain_archive(ARCHIVE_WAIT);
        let drain_took = started.elapsed() - load_took;
        let (last_after, failed_after) = archiver(&env.cluster);
        case.say(
            run,
            format!(
                "{} pushes seen, {faults} killed (load {load_took:?}, drain {drain_took:?}); archived {last_before} .. {last_after}, failed_count +{}",
                killer.pushes,
                failed_after.saturating_sub(failed_before)
            ),
        );
        case.count(
            "archive failures PostgreSQL retried",
            failed_after.saturating_sub(failed_before) as usize,
        );
        match drained {
            Err(e) => case.failed(Some(run), format!("a segment is stuck: {e}")),
            Ok(_) if last_after <= last_before => case.failed(
                Some(run),
                format!(
                    "the archiver made no progress: last archived {last_before}, then {last_after}"
                ),
            ),
            Ok(_) => {}
        }
        // Each killed push was redone until it succeeded.
        for segment in &killer.killed {
            if !env.ack_dir.join(segment).exists() {
                case.failed(
                    Some(run),
                    format!("the push of {segment} was killed and never succeeded afterwards"),
                );
            }
        }
        let acknowledged = env.check_acknowledged(case, Some(run));
        case.count("acknowledged segments fetched back", acknowledged);
        if run == 0 {
            killer.lifetimes.sort();
            if let Some(typical) = killer.lifetimes.get(killer.lifetimes.len() * 3 / 4) {
                lifetime = (*typical).max(Duration::from_millis(5));
            }
            case.say(run, format!("a push lives about {lifetime:?}"));
        }
    }
    let removed = vault::gc_checked(case, &env.cli);
    case.count("leftovers gc removed", removed);
}

/// `last_archived_wal` and `failed_count` of `pg_stat_archiver`.
fn archiver(cluster: &crate::pg::PgCluster) -> (String, u64) {
    let row = cluster.psql(
        "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count FROM pg_stat_archiver",
    );
    let (last, failed) = row.rsplit_once(' ').unwrap_or(("", "0"));
    (last.trim().to_owned(), failed.trim().parse().unwrap_or(0))
}

/// Finds the `wal-push` processes of one configuration and kills a seeded
/// share of them at seeded moments.
struct Killer {
    rng: StdRng,
    config: String,
    share: f64,
    lifetime: Duration,
    /// Pushes seen.
    pushes: usize,
    /// The pushes running: pid to (first seen, last seen, segment).
    seen: BTreeMap<u32, (Instant, Instant, String)>,
    /// Kills due: when, pid, segment.
    pending: Vec<(Instant, u32, String)>,
    /// Segments whose push was killed.
    killed: BTreeSet<String>,
    /// Kills made (a segment's retry may be killed again).
    kills: usize,
    /// How long the pushes that ended by themselves lived (as seen).
    lifetimes: Vec<Duration>,
}

impl Killer {
    fn tick(&mut self) {
        let now = Instant::now();
        let running: BTreeMap<u32, String> = process::processes_with(&["wal-push", &self.config])
            .into_iter()
            .filter(|(_, args)| args.first().is_some_and(|a| a.ends_with("/strata")))
            .filter_map(|(pid, args)| {
                let at = args.iter().position(|a| a == "wal-push")?;
                let path = args.get(at + 1)?;
                let segment = path.rsplit('/').next().unwrap_or(path).to_owned();
                Some((pid, segment))
            })
            .collect();
        for (pid, segment) in &running {
            match self.seen.get_mut(pid) {
                Some(entry) => entry.1 = now,
                None => {
                    self.pushes += 1;
                    self.seen.insert(*pid, (now, now, segment.clone()));
                    if self.rng.random_bool(self.share) {
                        let delay = self.lifetime.mul_f64(self.rng.random_range(0.0..1.25));
                        self.pending.push((now + delay, *pid, segment.clone()));
                    }
                }
            }
        }
        // The pushes that ended since the last look: how long they lived.
        let ended: Vec<u32> = self
            .seen
            .keys()
            .filter(|pid| !running.contains_key(pid))
            .copied()
            .collect();
        for pid in ended {
            if let Some((first, last, _)) = self.seen.remove(&pid) {
                self.lifetimes.push(last - first);
            }
        }
        let due: Vec<(Instant, u32, String)> = self
            .pending
            .iter()
            .filter(|(at, _, _)| *at <= now)
            .cloned()
            .collect();
        self.pending.retain(|(at, _, _)| *at > now);
        for (_, pid, segment) in due {
            // Still the same push (a pid may be reused)?
            let same = process::cmdline(pid).is_some_and(|args| {
                args.iter().any(|a| a.ends_with(&segment)) && args.iter().any(|a| a == "wal-push")
            });
            if same && process::kill_pid(pid) {
                self.kills += 1;
                self.killed.insert(segment);
            }
        }
    }
}

//! The `kill` campaign: `kill -9` of Strata's commands at seeded random
//! moments, then the checks of what a user relies on.
//!
//! | case | what is killed | when |
//! |---|---|---|
//! | `backup stream` | `strata backup stream` of deterministic data (a file or a pipe) | a random delay up to 1.25x a measured uninterrupted run: before, during and after the upload and the commit |
//! | `backup pg` | `strata backup pg --kind full` and `--kind diff` of one long-lived cluster, rows added between runs | the same, from a measured full (then the shortest uninterrupted run of each kind) |
//! | `pg wal-push` | the `strata pg wal-push` processes PostgreSQL's archiver starts, while a load switches WAL segments | a random delay into each process's life, up to its measured lifetime |
//! | `hdbbackint` | `hdbbackint -f backup` (two pipes) and `-f restore`, HANA played by [`crate::hana`] | a random delay up to 1.25x measured runs |
//! | `restore pg` | `strata restore pg --start` into an alternate data directory | a random delay up to 1.25x a measured restore, or (half the runs) up to 1.25x the time its files took |
//! | `vault gc` | `strata vault gc` over killed backups' leftovers and soft-deleted backups | a random delay up to 1.25x a measured gc |
//! | `serve` | the service: `strata serve` (daemon) during its first job, then `strata serve --once --now T` passes in compressed time | a random delay, or the moment its retention starts deleting |
//!
//! After each kill, and again at the end of each case:
//! - every backup `strata list --json` shows restores: streams and Backint
//!   objects bit-exact against the data the run fed, PostgreSQL backups to
//!   a cluster that starts, holds the rows recorded when the backup ran and
//!   passes `pg_amcheck`. Each new backup is restored once, not every
//!   backup after every run, to stay within the budget;
//! - a command that exited 0 before the kill reported a backup that is
//!   listed; a killed run's backup is either listed (the kill came after
//!   the commit) or absent, never half there;
//! - every WAL segment a `wal-push` acknowledged (exit 0: PostgreSQL's
//!   `archive_command` copies the segment aside only then) is fetched back
//!   identical, every killed push is redone by PostgreSQL's retry, and the
//!   archiver drains its backlog;
//! - `strata verify` passes;
//! - `strata vault gc --dry-run` names exactly what the killed runs left
//!   (segments no manifest names, staging files of unfinished uploads, as
//!   an independent walk of the `file://` vault finds them; Backint name
//!   markers without a manifest), `vault gc` removes it, and removes
//!   nothing a listed backup needs (the listing is unchanged and `verify`
//!   passes again).
//!
//! Anything acknowledged that does not come back, or comes back wrong, is
//! a loss (a listed backup that does not restore as taken, a segment
//! `wal-push` acknowledged that is not fetched back identical, a killed
//! restore that PostgreSQL starts with other rows); every other broken
//! promise (a re-run that fails, a stuck archiver, leftovers gc misses) is
//! a failure. Each case prints its counts (runs, killed before the commit,
//! completed, leftovers gc removed) and its time.
//!
//! The vaults are `file://` directories under the work directory. The same
//! seed gives the same schedule: every delay is a seeded fraction of a
//! duration measured in the same campaign, so only timing noise differs.

mod backint;
mod gc;
mod pg_backup;
mod pg_env;
mod pg_restore;
mod process;
mod service;
mod stream;
mod vault;
mod wal_push;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::{Options, Summary, SummaryBuilder, WorkDir, panic_message};

/// One case of the campaign: its name (what `--only` matches), its runs
/// at CI and at large scale, and the function that makes them.
struct CaseSpec {
    name: &'static str,
    ci: usize,
    large: usize,
    needs_postgres: bool,
    run: fn(&mut Case, &mut Shared),
}

/// The cases, in the order they run.
const CASES: [CaseSpec; 7] = [
    CaseSpec {
        name: "backup stream",
        ci: 3,
        large: 60,
        needs_postgres: false,
        run: stream::run,
    },
    CaseSpec {
        name: "backup pg",
        ci: 2,
        large: 40,
        needs_postgres: true,
        run: pg_backup::run,
    },
    CaseSpec {
        name: "pg wal-push",
        ci: 2,
        large: 25,
        needs_postgres: true,
        run: wal_push::run,
    },
    CaseSpec {
        name: "hdbbackint",
        ci: 3,
        large: 40,
        needs_postgres: false,
        run: backint::run,
    },
    CaseSpec {
        name: "restore pg",
        ci: 2,
        large: 20,
        needs_postgres: true,
        run: pg_restore::run,
    },
    CaseSpec {
        name: "vault gc",
        ci: 2,
        large: 20,
        needs_postgres: false,
        run: gc::run,
    },
    CaseSpec {
        name: "serve",
        ci: 2,
        large: 15,
        needs_postgres: true,
        run: service::run,
    },
];

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    let mut summary = Summary::start("kill", options.seed);
    let selected: Vec<&CaseSpec> = CASES.iter().filter(|c| options.selects(c.name)).collect();
    if selected.is_empty() {
        return summary.finish();
    }
    let postgres = crate::pg::postgres_installed();
    let work = match WorkDir::new(options, "kill") {
        Ok(work) => work,
        Err(why) => {
            summary.failed(why);
            return summary.finish();
        }
    };
    eprintln!(
        "kill: seed {}, work directory {}",
        options.seed,
        work.root.display()
    );
    let plan = runs_per_case(options, &selected);
    let mut shared = Shared {
        root: work.root.clone(),
        pg: None,
    };
    for (index, (spec, runs)) in selected.iter().zip(plan).enumerate() {
        if spec.needs_postgres && !postgres {
            crate::skip::skipped(
                &format!("chaos kill: {}", spec.name),
                "PostgreSQL is not installed (scripts/setup.sh installs it, or set STRATA_PG_BIN)",
            );
            continue;
        }
        let dir = work.root.join(spec.name.replace(' ', "-"));
        std::fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut case = Case {
            name: spec.name,
            runs,
            large: options.scale == super::Scale::Large,
            rng: options.rng(0x6B69_6C6C_0000 + index as u64),
            dir,
            verbose: options.verbose,
            seed: options.seed,
            summary: &mut summary,
            made: 0,
            counts: Vec::new(),
        };
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (spec.run)(&mut case, &mut shared)
        }));
        if let Err(panic) = outcome {
            case.failed(
                None,
                format!("the case stopped early: {}", panic_message(&*panic)),
            );
        }
        let line = format!("{} ({:.0} s)", case.line(), started.elapsed().as_secs_f64());
        summary.case(spec.name, line);
    }
    // Clusters stop before the work directory goes.
    drop(shared);
    let summary = summary.finish();
    if summary.runs == 0 {
        let mut again = Summary::start("kill", options.seed);
        again.failed("no run was made: the campaign tested nothing");
        let mut failed = again.finish();
        failed.cases = summary.cases;
        failed.elapsed = summary.elapsed;
        work.finish(false);
        return failed;
    }
    work.finish(summary.is_clean());
    summary
}

/// How many runs each selected case makes: its own default at the
/// scale, or `--runs` shared out in proportion to the large scale's
/// numbers (each case at least one).
fn runs_per_case(options: &Options, selected: &[&CaseSpec]) -> Vec<usize> {
    let Some(total) = options.runs else {
        return selected
            .iter()
            .map(|c| options.runs_or(c.ci, c.large))
            .collect();
    };
    let weight: usize = selected.iter().map(|c| c.large).sum();
    let mut plan: Vec<usize> = selected
        .iter()
        .map(|c| (total * c.large / weight).max(1))
        .collect();
    // Largest weights first take what rounding left over.
    let mut order: Vec<usize> = (0..selected.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(selected[i].large));
    let mut i = 0;
    while plan.iter().sum::<usize>() < total {
        plan[order[i % order.len()]] += 1;
        i += 1;
    }
    plan
}

/// What the cases share: the work directory and the PostgreSQL cluster
/// that `backup pg`, `pg wal-push` and `restore pg` take turns on
/// (created by the first of them that runs).
pub(crate) struct Shared {
    root: PathBuf,
    pg: Option<pg_env::PgEnv>,
}

impl Shared {
    /// The shared cluster, created on first use.
    fn pg(&mut self) -> &mut pg_env::PgEnv {
        let root = self.root.join("pg");
        self.pg.get_or_insert_with(|| pg_env::PgEnv::shared(&root))
    }
}

/// One case while it runs: its runs, its random numbers, its findings and
/// its counts.
pub(crate) struct Case<'a> {
    /// The case's name.
    pub name: &'static str,
    /// Runs to make.
    pub runs: usize,
    /// Whether this is a large campaign (more work per run).
    pub large: bool,
    /// The case's random numbers (seeded).
    pub rng: StdRng,
    /// The case's own directory (vaults, logs).
    pub dir: PathBuf,
    verbose: bool,
    seed: u64,
    summary: &'a mut SummaryBuilder,
    made: usize,
    counts: Vec<(&'static str, usize)>,
}

impl Case<'_> {
    /// Counts one run that injected `faults` kills.
    pub fn run_made(&mut self, faults: usize) {
        self.made += 1;
        self.summary.run(faults);
    }

    /// Adds `n` to the count `what` of the case's line.
    pub fn count(&mut self, what: &'static str, n: usize) {
        match self.counts.iter_mut().find(|(name, _)| *name == what) {
            Some((_, count)) => *count += n,
            None => self.counts.push((what, n)),
        }
    }

    /// Records a loss in run `run` (or in the case's checks).
    pub fn lost(&mut self, run: Option<usize>, what: impl AsRef<str>) {
        let line = self.finding(run, what.as_ref());
        eprintln!("kill: LOST: {line}");
        self.summary.lost(line);
    }

    /// Records a broken promise that lost nothing.
    pub fn failed(&mut self, run: Option<usize>, what: impl AsRef<str>) {
        let line = self.finding(run, what.as_ref());
        eprintln!("kill: FAILED: {line}");
        self.summary.failed(line);
    }

    fn finding(&self, run: Option<usize>, what: &str) -> String {
        match run {
            Some(run) => format!("{} run {run} (seed {}): {what}", self.name, self.seed),
            None => format!("{} (seed {}): {what}", self.name, self.seed),
        }
    }

    /// Prints a line about run `run` with `--verbose`.
    pub fn say(&self, run: usize, what: impl AsRef<str>) {
        if self.verbose {
            eprintln!("kill: {} run {run}: {}", self.name, what.as_ref());
        }
    }

    /// A seeded delay between nothing and 1.25 times `measured`: kills
    /// land before, during and after the work (a quarter of them after
    /// an uninterrupted run would have ended).
    pub fn delay(&mut self, measured: Duration) -> Duration {
        measured.mul_f64(self.rng.random_range(0.0..1.25))
    }

    /// The log files of run `run` of `what`: `<dir>/logs/<what>-<run>`.
    pub fn log(&self, what: &str, run: usize) -> PathBuf {
        self.dir.join("logs").join(format!("{what}-{run}"))
    }

    /// `name` inside the case's directory.
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    fn line(&self) -> String {
        let mut line = format!("{} runs", self.made);
        for (what, n) in &self.counts {
            line.push_str(&format!(", {n} {what}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::Scale;

    fn options(runs: Option<usize>, only: Option<&str>) -> Options {
        Options {
            scale: Scale::Large,
            runs,
            seed: 1,
            only: only.map(str::to_owned),
            work_dir: None,
            verbose: false,
        }
    }

    #[test]
    fn runs_are_shared_out_by_weight_and_add_up() {
        let all: Vec<&CaseSpec> = CASES.iter().collect();
        let plan = runs_per_case(&options(Some(40), None), &all);
        assert_eq!(plan.iter().sum::<usize>(), 40, "{plan:?}");
        assert!(plan.iter().all(|&n| n >= 1), "{plan:?}");
        let large = runs_per_case(&options(None, None), &all);
        assert!(large.iter().sum::<usize>() >= 200, "{large:?}");
        let one: Vec<&CaseSpec> = CASES.iter().filter(|c| c.name == "serve").collect();
        assert_eq!(runs_per_case(&options(Some(7), None), &one), [7]);
    }
}

//! Reliability campaigns: many runs of Strata's commands with faults
//! injected at seeded random moments, each checked for what a user would
//! lose. Each campaign ends with one summary line,
//! `<campaign>: N runs, N faults injected, N lost (seed S, T s)`, and
//! lists every finding; any loss is a failure.
//!
//! | campaign | module | what it injects |
//! |---|---|---|
//! | `kill` | [`kill`] | `kill -9` of a running command (backups, WAL archiving, Backint, restores, gc, the service) |
//! | `outage` | [`outage`] | an object store that goes away, answers 500/503 or slows down, behind [`proxy`] |
//! | `damage` | [`damage`] | bit flips, truncation, deletion and replacement of every kind of stored object |
//! | `disk` | [`disk`] | a full or read-only disk under a restore target or a local vault |
//!
//! They run at two scales: [`Scale::Ci`], a few runs each within the test
//! suite's budget (the `chaos_*` tests), and [`Scale::Large`], by hand with
//! the `strata-chaos` binary (`scripts/chaos.sh`). `docs/reliability.md`
//! describes each campaign and keeps the last figures.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub mod damage;
pub mod disk;
pub mod interrupt;
pub mod kill;
pub mod outage;
pub mod proxy;

/// How many runs a campaign makes when `--runs` is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// A few runs of each case, for the test suite (the whole campaign set
    /// within a few minutes on two cores).
    Ci,
    /// The figures of a real campaign, by hand.
    Large,
}

impl Scale {
    /// Parses `ci` or `large`.
    pub fn parse(text: &str) -> Option<Scale> {
        match text {
            "ci" => Some(Scale::Ci),
            "large" => Some(Scale::Large),
            _ => None,
        }
    }
}

/// What a campaign is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scale, which sets the default number of runs.
    pub scale: Scale,
    /// Runs to make; `None`: the campaign's default for [`Options::scale`].
    pub runs: Option<usize>,
    /// The seed of every random choice; printed in the summary so that a
    /// failing campaign can be replayed with `--seed`.
    pub seed: u64,
    /// Only the cases whose name contains this text (`--only`).
    pub only: Option<String>,
    /// Where to keep clusters, vaults and logs; `None`: a temporary
    /// directory that is deleted when the campaign passes and kept (its
    /// path printed) when it fails.
    pub work_dir: Option<PathBuf>,
    /// Print a line per run.
    pub verbose: bool,
}

impl Options {
    /// The options of a campaign run by the test suite: CI scale, the seed
    /// from `STRATA_CHAOS_SEED` or a fresh random one.
    pub fn ci() -> Options {
        Options {
            scale: Scale::Ci,
            runs: None,
            seed: seed_from_env(),
            only: None,
            work_dir: None,
            verbose: std::env::var_os("STRATA_CHAOS_VERBOSE").is_some(),
        }
    }

    /// The number of runs: `runs` when given, else the default for the scale.
    pub fn runs_or(&self, ci: usize, large: usize) -> usize {
        self.runs.unwrap_or(match self.scale {
            Scale::Ci => ci,
            Scale::Large => large,
        })
    }

    /// A random number generator seeded with [`Options::seed`], mixed with
    /// `stream` so that two parts of a campaign draw independent numbers.
    pub fn rng(&self, stream: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Whether a case runs under `--only`.
    pub fn selects(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|only| case.contains(only))
    }
}

/// `STRATA_CHAOS_SEED` when set (decimal), otherwise a random seed.
pub fn seed_from_env() -> u64 {
    std::env::var("STRATA_CHAOS_SEED")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// What a campaign found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The campaign's name (`kill`, `outage`, `damage`, `disk`).
    pub campaign: &'static str,
    /// Runs made.
    pub runs: usize,
    /// Faults injected (a run may inject none, or several).
    pub faults: usize,
    /// Acknowledged data that was lost or restored wrong: a listed backup
    /// that does not restore bit-exact, an archived segment that does not
    /// come back, damage that went undetected. Must be 0.
    pub lost: usize,
    /// Other failures of a promise that are not losses: an unclear error,
    /// leftovers gc did not remove, a re-run that did not succeed. Must be 0.
    pub failures: usize,
    /// One line per loss or failure, naming the run, the seed and what happened.
    pub findings: Vec<String>,
    /// Counts per case, for the report (`backup pg: 40 runs, 38 killed`).
    pub cases: Vec<(String, String)>,
    /// The seed the campaign ran with.
    pub seed: u64,
    /// Wall-clock time of the campaign.
    pub elapsed: Duration,
}

impl Summary {
    /// An empty summary of `campaign`, started now.
    pub fn start(campaign: &'static str, seed: u64) -> SummaryBuilder {
        SummaryBuilder {
            summary: Summary {
                campaign,
                runs: 0,
                faults: 0,
                lost: 0,
                failures: 0,
                findings: Vec::new(),
                cases: Vec::new(),
                seed,
                elapsed: Duration::ZERO,
            },
            started: Instant::now(),
        }
    }

    /// No loss and no failure.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.failures == 0
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}: {} runs, {} faults injected, {} lost",
            self.campaign, self.runs, self.faults, self.lost
        );
        if self.failures > 0 {
            line.push_str(&format!(", {} other failures", self.failures));
        }
        line.push_str(&format!(
            " (seed {}, {:.0} s)",
            self.seed,
            self.elapsed.as_secs_f64()
        ));
        line
    }

    /// Panics with every finding unless the campaign is clean: what the
    /// `chaos_*` tests call.
    pub fn assert_clean(&self) {
        println!("{self}");
        assert!(self.is_clean(), "{self}");
    }
}

impl fmt::Display for Summary {
    /// The summary line, the cases, then every finding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line())?;
        for (case, counts) in &self.cases {
            writeln!(f, "  {case}: {counts}")?;
        }
        for finding in &self.findings {
            writeln!(f, "  FINDING: {finding}")?;
        }
        Ok(())
    }
}

/// Builds a [`Summary`] while a campaign runs.
#[derive(Debug)]
pub struct SummaryBuilder {
    summary: Summary,
    started: Instant,
}

impl SummaryBuilder {
    /// Counts one run that injected `faults` faults.
    pub fn run(&mut self, faults: usize) {
        self.summary.runs += 1;
        self.summary.faults += faults;
    }

    /// Records a loss: acknowledged data lost or restored wrong.
    pub fn lost(&mut self, what: impl Into<String>) {
        self.summary.lost += 1;
        self.summary.findings.push(format!("LOST: {}", what.into()));
    }

    /// Records a failure of a promise that lost nothing.
    pub fn failed(&mut self, what: impl Into<String>) {
        self.summary.failures += 1;
        self.summary.findings.push(what.into());
    }

    /// Adds a per-case line to the report.
    pub fn case(&mut self, case: impl Into<String>, counts: impl Into<String>) {
        self.summary.cases.push((case.into(), counts.into()));
    }

    /// The summary, with the elapsed time.
    pub fn finish(mut self) -> Summary {
        self.summary.elapsed = self.started.elapsed();
        self.summary
    }
}

/// The text of a caught panic, for a finding.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Where a campaign keeps its vaults, clusters and logs. With
/// `--work-dir DIR`, a new directory `DIR/<campaign>-<seed>-<random>`,
/// kept (vaults of an earlier run with the same seed would refuse `vault
/// init`, and `all` runs every campaign under one `DIR`); otherwise a
/// temporary directory, deleted after a clean campaign and kept (its path
/// printed) after a failed one. Open to all users: PostgreSQL runs as its
/// own user when the campaign runs as root, and must reach its
/// directories below this one.
#[derive(Debug)]
pub struct WorkDir {
    /// The directory.
    pub root: PathBuf,
    campaign: &'static str,
    temporary: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// Creates the work directory of `campaign`; the error names the
    /// directory and why it could not be created.
    pub fn new(options: &Options, campaign: &'static str) -> Result<WorkDir, String> {
        let (root, temporary) = match &options.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let kept = tempfile::Builder::new()
                    .prefix(&format!("{campaign}-{}-", options.seed))
                    .tempdir_in(dir)
                    .map_err(|e| format!("cannot create a directory in {}: {e}", dir.display()))?
                    .keep();
                (kept, None)
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("strata-chaos-{campaign}-"))
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", root.display()))?;
        interrupt::register(&root, temporary.is_some());
        Ok(WorkDir {
            root,
            campaign,
            temporary,
        })
    }

    /// Deletes a temporary work directory after a clean campaign; keeps it
    /// (and says where) after a failed one, or with `STRATA_KEEP_TEST_DIRS`.
    /// A `--work-dir` one is always kept.
    pub fn finish(mut self, clean: bool) {
        if interrupt::interrupted() {
            // The signal thread deletes or keeps the directory, and says so.
            std::mem::forget(self.temporary.take());
            return;
        }
        interrupt::unregister(&self.root);
        match self.temporary.take() {
            Some(dir) if clean && std::env::var_os("STRATA_KEEP_TEST_DIRS").is_none() => drop(dir),
            Some(dir) => {
                let kept = dir.keep();
                eprintln!(
                    "{}: work directory kept at {}",
                    self.campaign,
                    kept.display()
                );
            }
            None => eprintln!("{}: work directory {}", self.campaign, self.root.display()),
        }
    }
}

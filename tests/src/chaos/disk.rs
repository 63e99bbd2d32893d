//! The `disk` campaign: full and read-only file systems under what Strata
//! writes locally.
//!
//! Each run mounts a small tmpfs (root only) under one place Strata writes,
//! sized at a seeded random fraction of what the work needs, so that the
//! disk fills at a random point of it, or remounts it read-only:
//!
//! | case | what fills up or turns read-only |
//! |---|---|
//! | `stream backup, vault full` / `read-only` | a `file://` vault under `backup stream` (and `list`, `verify`, `restore`, `delete`, `vault gc` on it) |
//! | `stream delete, vault full` | the vault under `strata delete`; `vault gc` on the full disk |
//! | `stream restore, target full` / `read-only` | the file `restore stream --output` writes |
//! | `index full` / `read-only` | the catalog index (`[catalog] path`) |
//! | `pg backup, vault full` | the vault under `backup pg` |
//! | `pg wal-push, vault full` / `pg vault read-only` | the vault under PostgreSQL's `archive_command` |
//! | `pg restore, target full` / `read-only` | the data directory `restore pg` lays down |
//! | `pg restore, replay full` | the same, during WAL replay (`restore pg --start`) |
//! | `pg wal-fetch, pg_wal full` / `read-only` | the file `restore_command` writes |
//! | `hdbbackint backup, vault full` / `vault read-only` | the vault under a Backint backup |
//! | `hdbbackint restore, file target full` / `read-only` | a `#FILE` object restored to a regular file |
//!
//! Every faulted run checks what an operator relies on:
//!
//! - **a clear error**: the documented exit code, the operating system's
//!   words (`No space left on device`, `Read-only file system`), the path
//!   on the small file system, and a hint that says what to do (free space
//!   there, remount it read-write); no panic, no backtrace;
//! - **nothing half-committed**: `list` shows the same backups as before
//!   (a backup that failed has no manifest), the vault holds no data of an
//!   uncommitted backup and no staging file, `verify` passes, a restore
//!   target holds no file that looks complete (no output file, no
//!   `global/pg_control`);
//! - **the next run works** once space is back (the tmpfs grown, or
//!   remounted read-write), and what it stores or restores is exact (bytes,
//!   rows). Acknowledged data that is gone or wrong counts as lost.
//!
//! Without root (or where mounting is not allowed) the campaign records a
//! skip and makes no run.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;

use super::{Options, Summary, SummaryBuilder, WorkDir, panic_message};

mod checks;
mod hana;
mod pg;
mod stream;
mod tmpfs;

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    let mut summary = Summary::start("disk", options.seed);
    if !crate::pg::running_as_root() {
        crate::skip::skipped(
            "chaos_disk",
            "mounting small file systems (tmpfs) for the disk campaign needs root",
        );
        summary.case("all cases", "skipped: not root");
        return summary.finish();
    }
    let work = match WorkDir::new(options, "disk") {
        Ok(work) => work,
        Err(why) => {
            summary.failed(why);
            return summary.finish();
        }
    };
    if let Err(why) = tmpfs::SmallDisk::probe(&work.root.join("probe")) {
        crate::skip::skipped("chaos_disk", &format!("cannot mount a tmpfs here: {why}"));
        summary.case(
            "all cases",
            format!("skipped: cannot mount a tmpfs ({why})"),
        );
        return summary.finish();
    }
    let mut campaign = Campaign {
        options,
        summary,
        work: work.root.clone(),
        runs: 0,
        selected: 0,
    };
    stream::run(&mut campaign);
    hana::run(&mut campaign);
    pg::run(&mut campaign);
    let Campaign {
        mut summary,
        runs,
        selected,
        ..
    } = campaign;
    if runs == 0 && selected > 0 {
        summary.failed("no run was made: the campaign tested nothing");
    }
    let summary = summary.finish();
    work.finish(summary.is_clean());
    summary
}

/// The campaign's state shared by its cases.
pub(super) struct Campaign<'a> {
    options: &'a Options,
    summary: SummaryBuilder,
    /// The campaign's work directory (mode 0755, so that the PostgreSQL OS
    /// user can reach what is under it).
    work: PathBuf,
    runs: usize,
    selected: usize,
}

impl Campaign<'_> {
    /// Whether any of `cases` runs under `--only`.
    fn selects_any(&self, cases: &[&str]) -> bool {
        cases.iter().any(|case| self.options.selects(case))
    }

    /// A new directory `name` in the work directory.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Runs `case` `ci` times at CI scale, `large` times at large scale (or
    /// `--runs` times), unless `--only` leaves it out. `body` makes one run
    /// and reports through its [`Tally`]; a panic in it is a failure of
    /// that run, and the campaign goes on.
    fn case(
        &mut self,
        case: &'static str,
        (ci, large): (usize, usize),
        mut body: impl FnMut(&mut Tally, &mut StdRng),
    ) {
        if !self.options.selects(case) {
            return;
        }
        self.selected += 1;
        let runs = self.options.runs_or(ci, large);
        let mut rng = self.options.rng(stream_of(case));
        let mut tally = Tally::new(case, self.options.seed);
        let started = std::time::Instant::now();
        for run in 0..runs {
            tally.run = run;
            let faults_before = tally.faults;
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(&mut tally, &mut rng)));
            if let Err(panic) = outcome {
                tally.failed(format!("the run panicked: {}", panic_message(&*panic)));
            }
            tally.runs += 1;
            self.runs += 1;
            self.summary.run(tally.faults - faults_before);
            if self.options.verbose {
                println!(
                    "disk: {case} run {run}: {} fault(s), {} finding(s) so far",
                    tally.faults - faults_before,
                    tally.lost.len() + tally.failed.len()
                );
            }
        }
        tally.report(&mut self.summary, started.elapsed());
    }

    /// Records that `case` could not run at all (its setup failed).
    fn setup_failed(&mut self, cases: &[&str], why: &str) {
        for case in cases.iter().filter(|c| self.options.selects(c)) {
            self.selected += 1;
            self.summary
                .failed(format!("{case}: the setup failed, no run was made: {why}"));
        }
    }
}

/// What the runs of one case did and found.
pub(super) struct Tally {
    case: &'static str,
    seed: u64,
    /// The run being made (0-based).
    run: usize,
    runs: usize,
    faults: usize,
    /// Faulted runs whose error met every clarity check.
    clear: usize,
    /// Faulted runs whose re-run (with space back) worked.
    reruns: usize,
    lost: Vec<String>,
    failed: Vec<String>,
    /// Every distinct error message seen (the first line and the hints,
    /// with run-specific names replaced), and how often.
    messages: BTreeMap<String, usize>,
}

impl Tally {
    fn new(case: &'static str, seed: u64) -> Tally {
        Tally {
            case,
            seed,
            run: 0,
            runs: 0,
            faults: 0,
            clear: 0,
            reruns: 0,
            lost: Vec::new(),
            failed: Vec::new(),
            messages: BTreeMap::new(),
        }
    }

    /// Counts a fault injected in this run.
    fn fault(&mut self) {
        self.faults += 1;
    }

    /// Records a failure of a promise in this run.
    fn failed(&mut self, what: impl std::fmt::Display) {
        let line = format!(
            "{} (run {}, seed {}): {what}",
            self.case, self.run, self.seed
        );
        self.failed.push(line);
    }

    /// Records acknowledged data lost or restored wrong in this run.
    fn lost(&mut self, what: impl std::fmt::Display) {
        let line = format!(
            "{} (run {}, seed {}): {what}",
            self.case, self.run, self.seed
        );
        self.lost.push(line);
    }

    /// Records `result` as a failure when it is one; `true` when it is not.
    fn check(&mut self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(what) => {
                self.failed(what);
                false
            }
        }
    }

    /// Checks that `said` is a clear error (see [`checks::clear_error`]),
    /// counts it, and keeps its text for the report.
    fn clear_error(
        &mut self,
        said: &str,
        code: Option<i32>,
        expected: i32,
        fault: checks::Fault,
        place: &Path,
    ) -> bool {
        self.seen(said, place);
        let clear = self.check(checks::clear_error(said, code, expected, fault, place));
        if clear {
            self.clear += 1;
        }
        clear
    }

    /// Counts a re-run that worked.
    fn rerun_ok(&mut self) {
        self.reruns += 1;
    }

    /// Keeps the text of an error: its `error:` or Backint comment line and
    /// its `hint:` lines, with the small file system's path and backup ids
    /// replaced so that runs compare.
    fn seen(&mut self, said: &str, place: &Path) {
        let text = checks::error_lines(said);
        if text.is_empty() {
            return;
        }
        let text = checks::normalise(&text, place);
        *self.messages.entry(text).or_default() += 1;
    }

    /// Adds the case's counts, its error messages and its findings to `summary`.
    fn report(self, summary: &mut SummaryBuilder, elapsed: std::time::Duration) {
        summary.case(
            self.case,
            format!(
                "{} runs, {} faults, {} clear errors, {} re-runs worked, {} lost, {} failed ({:.1} s)",
                self.runs,
                self.faults,
                self.clear,
                self.reruns,
                self.lost.len(),
                self.failed.len(),
                elapsed.as_secs_f64()
            ),
        );
        for (message, count) in &self.messages {
            summary.case(format!("  {} said ({count}x)", self.case), message.clone());
        }
        for what in self.lost {
            summary.lost(what);
        }
        for what in self.failed {
            summary.failed(what);
        }
    }
}

/// A number that names a case's random stream.
fn stream_of(case: &str) -> u64 {
    case.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

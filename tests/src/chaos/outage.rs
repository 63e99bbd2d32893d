//! The `outage` campaign: the object store goes away, answers 500 or 503,
//! or slows down, at seeded random moments and for random durations, while
//! Strata's commands run against it through [`super::proxy`].
//!
//! | case | command under the outage | store |
//! |---|---|---|
//! | `backup stream` | `strata backup stream` of deterministic data (single puts and multipart uploads) | moto or Azurite, drawn per run |
//! | `restore stream` | `strata restore stream --output` of a committed backup | the same |
//! | `vault gc` | `strata vault gc` over the leftovers of failed backups | the same |
//! | `hdbbackint` | `hdbbackint -f backup` of two pipes, HANA played by [`crate::hana`] | Azurite or moto, drawn per run |
//! | `pg wal-push` | the `strata pg wal-push` processes PostgreSQL's archiver runs while `pgbench` writes | moto |
//! | `backup pg` | `strata backup pg` (its WAL archived through the same proxy) | moto |
//! | `restore pg` | `strata restore pg --latest --start` (its `restore_command` through the proxy too) | moto |
//! | `backup stream, default retries` | `strata backup stream` with Strata's default retry settings (large scale only) | moto |
//!
//! Each run draws an outage ([`Outage`]): a kind (refused connections,
//! resets, 500, 503, slow answers, a throttled link, an upload cut
//! midway, an answer cut or lost), a scope (every request, a random
//! fraction, or one kind of request: manifest puts, multipart commits,
//! archive objects, data reads), the request it starts with (a random one
//! among those a clean run of the same command makes, measured first; an
//! aimed outage starts with the first or second request it aims at) and a
//! length:
//!
//! - **short**: shorter than the least time the configured retries take
//!   (`max_retries` backoffs of at least 100 ms each: object_store's
//!   `RetryConfig`, with Strata's `max_retries` and `retry_timeout`). A
//!   command must ride it out: a failure is a finding.
//! - **medium**: up to the most the retries can take; either outcome is
//!   fine, and the command's answer must be right.
//! - **long**: until the command ends (the archiver: several seconds). A
//!   command that fails must say so clearly.
//!
//! The configurations the cases write say `max_retries = "3"` (each
//! request gives up after 0.3 to 2.1 s of outage), so that long outages
//! fail fast; the large scale adds the `default retries` case, which keeps
//! Strata's defaults (10 retries: a request rides out at least 1 s of
//! outage, typically about 35 s, at most about 100 s).
//!
//! After each run, with the store back:
//! - **no committed-but-broken backup**: every backup `strata list` shows
//!   restores bit-exact (streams, Backint objects, found with `inquire`),
//!   or to a cluster that starts with the rows recorded when the backup ran
//!   (PostgreSQL); every backup a command acknowledged is listed; a restore
//!   that reports success wrote exactly the backup's bytes, and one that
//!   failed left no output file behind; `strata verify` passes.
//! - **no acknowledged-but-lost segment**: `archive_command` copies each
//!   segment aside once `wal-push` exited 0; every copy is fetched back
//!   identical.
//! - **retries where they make sense**: a short outage fails nothing
//!   (`wal-push` included: no failed archive attempt). The report counts
//!   the commands that succeeded through a fault.
//! - **clear errors where they do not**: a failed command exits with its
//!   documented code (4 for a storage failure; `restore pg` 5 when the
//!   restored server's recovery stopped; `hdbbackint` 1, with one `#ERROR`
//!   or `#SAVED` per object and one line on stderr), names the store and
//!   the problem (`error: ...`, or the JSON error of `--json`) and what to
//!   do (`hint: ...`), with no panic, backtrace or stutter (`error:
//!   error`). Every distinct message is listed in the report, numbers and
//!   names masked.
//! - **archiving drains its backlog**: after the outage, a WAL switch is
//!   archived within [`DRAIN_LIMIT`].
//! - `vault gc` over the failed backups' leftovers, with an outage of its
//!   own, removes nothing a listed backup needs, and a re-run once the store
//!   is back removes every leftover.
//!
//! The emulators come from `scripts/emulators.sh` (`STRATA_TEST_S3_URL`,
//! `AWS_ENDPOINT`, `STRATA_TEST_AZURE_URL`, `AZURITE_BLOB_STORAGE_URL`).
//! Without them the campaign is skipped ([`crate::skip::skipped`]), unless
//! `STRATA_REQUIRE_EMULATORS=1`, which makes a missing one a failure.

mod backint;
mod pg;
mod streams;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use super::proxy::{Fault, FaultKind, Matcher, StoreKind, StoreProxy, Window};
use super::{Options, Summary, SummaryBuilder, WorkDir, panic_message};
use crate::backends::emulators_required;
use crate::cli::RunOutput;

/// How long the archiver may take to archive a WAL switch once the store
/// is back.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// One case: its name (what `--only` matches), runs at each scale, and
/// the function that makes them.
struct CaseSpec {
    name: &'static str,
    ci: usize,
    large: usize,
    run: fn(&mut Campaign, &CaseSpec),
}

/// The cases, in the order they run.
const CASES: [CaseSpec; 8] = [
    CaseSpec {
        name: "backup stream",
        ci: 3,
        large: 30,
        run: streams::backup,
    },
    CaseSpec {
        name: "restore stream",
        ci: 2,
        large: 15,
        run: streams::restore,
    },
    CaseSpec {
        name: "vault gc",
        ci: 1,
        large: 10,
        run: streams::gc,
    },
    CaseSpec {
        name: "hdbbackint",
        ci: 2,
        large: 15,
        run: backint::run,
    },
    CaseSpec {
        name: "pg wal-push",
        ci: 1,
        large: 12,
        run: pg::wal_push,
    },
    CaseSpec {
        name: "backup pg",
        ci: 1,
        large: 12,
        run: pg::backup,
    },
    CaseSpec {
        name: "restore pg",
        ci: 1,
        large: 8,
        run: pg::restore,
    },
    CaseSpec {
        name: "backup stream, default retries",
        ci: 0,
        large: 10,
        run: streams::backup_default_retries,
    },
];

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    let mut summary = Summary::start("outage", options.seed);
    let selected: Vec<&CaseSpec> = CASES
        .iter()
        .filter(|case| options.selects(case.name))
        .collect();
    if selected.is_empty() {
        return summary.finish();
    }
    let (s3, azure) = (emulator(StoreKind::S3), emulator(StoreKind::Azure));
    if s3.is_none() || azure.is_none() {
        let missing: Vec<&str> = [(StoreKind::S3, &s3), (StoreKind::Azure, &azure)]
            .iter()
            .filter(|(_, found)| found.is_none())
            .map(|(store, _)| store.name())
            .collect();
        let why = format!(
            "the {} not configured (run `scripts/emulators.sh start` and \
             `source .work/emulators.env`)",
            match missing.as_slice() {
                [one] => format!("{one} emulator is"),
                _ => format!("{} emulators are", missing.join(" and ")),
            }
        );
        if emulators_required() {
            summary.failed(format!("{why}, and STRATA_REQUIRE_EMULATORS=1"));
            return summary.finish();
        }
        if s3.is_none() && azure.is_none() {
            crate::skip::skipped("chaos outage", &why);
            return summary.finish();
        }
        eprintln!("outage: {why}; every case uses the other store");
    }
    let work = match WorkDir::new(options, "outage") {
        Ok(work) => work,
        Err(why) => {
            summary.failed(why);
            return summary.finish();
        }
    };
    let mut campaign = Campaign {
        options,
        summary,
        work: work.root.clone(),
        s3,
        azure,
        messages: BTreeMap::new(),
        retries: Retries::tight(),
        cleanups: Vec::new(),
        runs: 0,
        pg: None,
    };
    for case in selected {
        let runs = options.runs_or(case.ci, case.large);
        if runs == 0 {
            continue;
        }
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (case.run)(&mut campaign, case)
        }));
        if let Err(panic) = outcome {
            campaign.summary.failed(format!(
                "{}: the case stopped: {}",
                case.name,
                panic_message(&*panic)
            ));
        }
        if options.verbose {
            eprintln!(
                "outage: {} took {:.0} s",
                case.name,
                started.elapsed().as_secs_f64()
            );
        }
    }
    campaign.report_messages();
    // The cluster stops while its directory is still there.
    drop(campaign.pg.take());
    campaign.clean_up_stores();
    if campaign.runs == 0 {
        campaign
            .summary
            .failed("the campaign made 0 runs: it tested nothing");
    }
    let summary = campaign.summary.finish();
    work.finish(summary.is_clean());
    summary
}

/// The emulator of `store` with a proxy in front of it, when configured.
fn emulator(store: StoreKind) -> Option<Emulator> {
    let base = std::env::var(store.backend().url_variable()?).ok()?;
    if base.trim().is_empty() {
        return None;
    }
    let proxy = StoreProxy::in_front_of(store)?;
    Some(Emulator {
        base: base.trim().trim_end_matches('/').to_owned(),
        proxy,
    })
}

/// An emulator and the proxy in front of it.
pub(crate) struct Emulator {
    /// The base vault URL (`s3://strata-test`, `az://strata-test`).
    pub base: String,
    /// The proxy Strata's commands go through.
    pub proxy: StoreProxy,
}

/// How the configuration makes Strata retry, and what that means for an
/// outage: object_store backs off at least 100 ms before each retry (the
/// first backoff is exactly 100 ms, each later one drawn between 100 ms
/// and four times the one before, at most 15 s: Strata's backoff), so
/// `max_retries` retries ride out at least `max_retries` x 100 ms of
/// outage, and at most the sum of the quadrupled backoffs.
#[derive(Debug, Clone)]
pub(crate) struct Retries {
    /// `tight` or `default`.
    pub name: &'static str,
    /// The `[vault.options]` lines (empty: Strata's defaults).
    pub options: Vec<(&'static str, &'static str)>,
    /// The least outage every request rides out.
    pub least: Duration,
    /// The most outage a request can ride out.
    pub most: Duration,
}

impl Retries {
    /// Three retries: a request gives up after 0.3 to 2.1 s of outage.
    pub fn tight() -> Retries {
        Retries {
            name: "tight",
            options: vec![("max_retries", "3"), ("retry_timeout", "30s")],
            least: Duration::from_millis(300),
            most: Duration::from_millis(2100),
        }
    }

    /// Strata's defaults (`max_retries` 10, `retry_timeout` 5 minutes).
    pub fn defaults() -> Retries {
        Retries {
            name: "default",
            options: Vec::new(),
            least: Duration::from_millis(1000),
            most: Duration::from_secs_f64(98.5),
        }
    }

    /// The `[vault.options]` table for a Strata configuration.
    pub fn toml(&self) -> String {
        let mut text = String::from("[vault.options]\n");
        for (key, value) in &self.options {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
        text
    }

    /// The `vault.<option> = value` lines of a Backint parameter file.
    pub fn backint_lines(&self) -> String {
        self.options
            .iter()
            .map(|(key, value)| format!("vault.{key} = {value}\n"))
            .collect()
    }
}

/// How long an outage lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Length {
    /// Shorter than the least the retries ride out.
    Short(Duration),
    /// Between that and the most they can ride out.
    Medium(Duration),
    /// Until the command ends (or the campaign says so).
    Long,
}

/// One outage: what, on which requests, from which request, how long.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    /// What the requests get.
    pub kind: FaultKind,
    /// Which requests: `None` every one.
    pub scope: Option<(&'static str, Matcher)>,
    /// The probability each selected request gets it.
    pub probability: f64,
    /// The request (counted from 1 when the outage is armed) it starts with.
    pub from_request: u64,
    /// How long.
    pub length: Length,
    /// The seed of the proxy's draws.
    pub seed: u64,
}

impl Outage {
    /// Draws an outage for a command that makes about `requests` requests
    /// when nothing fails; `scopes` are the kinds of requests of this
    /// command worth aiming at.
    pub fn draw(
        rng: &mut StdRng,
        requests: u64,
        retries: &Retries,
        scopes: &[(&'static str, Matcher)],
    ) -> Outage {
        let kind = match rng.random_range(0..100) {
            0..15 => FaultKind::Refuse,
            15..30 => FaultKind::Reset,
            30..48 => FaultKind::Status(503),
            48..63 => FaultKind::Status(500),
            63..70 => FaultKind::Delay(Duration::from_millis(rng.random_range(100..800))),
            70..77 => FaultKind::Throttle {
                bytes_per_second: rng.random_range(256 << 10..4 << 20),
            },
            77..85 => FaultKind::CutRequest {
                after_bytes: rng.random_range(0..64 << 10),
            },
            85..92 => FaultKind::CutResponse {
                after_bytes: rng.random_range(0..4096),
            },
            _ => FaultKind::LoseResponse,
        };
        let (scope, probability) = match rng.random_range(0..100) {
            0..65 => (None, 1.0),
            65..82 => (None, rng.random_range(0.2..0.8)),
            _ if !scopes.is_empty() && kind != FaultKind::Refuse => {
                (Some(scopes[rng.random_range(0..scopes.len())].clone()), 1.0)
            }
            _ => (None, 1.0),
        };
        let least = retries.least.as_secs_f64();
        let most = retries.most.as_secs_f64();
        let length = match rng.random_range(0..100) {
            // Short: at most 60% of the least the retries ride out, a
            // margin for timers late on a busy machine.
            0..40 => Length::Short(Duration::from_secs_f64(rng.random_range(0.05..0.6) * least)),
            40..70 => Length::Medium(Duration::from_secs_f64(
                rng.random_range(least..(most * 1.5).max(least + 0.5)),
            )),
            _ => Length::Long,
        };
        // An aimed outage starts with one of the first requests it aims at.
        let from_request = match scope {
            Some(_) => rng.random_range(1..=2),
            None => rng.random_range(1..=requests.max(1)),
        };
        Outage {
            kind,
            scope,
            probability,
            from_request,
            length,
            seed: rng.random(),
        }
    }

    /// The proxy's fault.
    pub fn fault(&self) -> Fault {
        let mut fault = Fault::new(self.kind)
            .probability(self.probability)
            .seed(self.seed);
        fault = match &self.scope {
            Some((_, matcher)) => fault
                .matching(matcher.clone())
                .after_matching(self.from_request),
            None => fault.after_requests(self.from_request),
        };
        match self.length {
            Length::Short(d) | Length::Medium(d) => fault.lasting(d),
            Length::Long => fault,
        }
    }

    /// Whether a command must ride this outage out: a short one of a kind
    /// a retry cures. An answer cut or lost after the store did the work is
    /// left out: retrying a non-idempotent request (completing a multipart
    /// upload) may rightly fail.
    pub fn must_be_ridden_out(&self) -> bool {
        matches!(self.length, Length::Short(_))
            && !matches!(
                self.kind,
                FaultKind::CutResponse { .. } | FaultKind::LoseResponse
            )
    }

    /// Whether the outage only slows requests down.
    pub fn only_slows(&self) -> bool {
        matches!(self.kind, FaultKind::Delay(_) | FaultKind::Throttle { .. })
    }

    /// For reports: `503 on every request from request 7, 0.21 s`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            FaultKind::Delay(d) => format!("delay {} ms", d.as_millis()),
            FaultKind::Throttle { bytes_per_second } => {
                format!("throttle {} KiB/s", bytes_per_second >> 10)
            }
            FaultKind::CutRequest { after_bytes } => format!("upload cut after {after_bytes} B"),
            FaultKind::CutResponse { after_bytes } => format!("answer cut after {after_bytes} B"),
            other => other.name().to_owned(),
        };
        let (scope, counted) = match (&self.scope, self.probability < 1.0) {
            (Some((name, _)), _) => (format!("on {name}"), "of those"),
            (None, true) => (
                format!("on {:.0}% of the requests", self.probability * 100.0),
                "",
            ),
            (None, false) => ("on every request".to_owned(), ""),
        };
        let length = match self.length {
            Length::Short(d) => format!("short, {:.2} s", d.as_secs_f64()),
            Length::Medium(d) => format!("medium, {:.2} s", d.as_secs_f64()),
            Length::Long => "long, until the command ends".to_owned(),
        };
        format!(
            "{kind} {scope} from request {}{}, {length}",
            self.from_request,
            if counted.is_empty() {
                String::new()
            } else {
                format!(" {counted}")
            }
        )
    }
}

/// Per-case counts for the report.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Runs made.
    pub runs: usize,
    /// Runs whose outage hit the command (its window began while it ran).
    pub hit: usize,
    /// Requests that got a fault.
    pub faulted_requests: u64,
    /// Commands that succeeded although the outage hit them.
    pub through: usize,
    /// Commands that failed, each with a clear error.
    pub failed: usize,
    /// Short outages that hit, and how many of them were ridden out.
    pub short: usize,
    /// Short outages ridden out.
    pub short_ridden: usize,
    /// Backups (or segments) checked after the runs.
    pub checked: usize,
    /// Free-form extra counts, for the case line.
    pub extra: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// The case line.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} runs, {} hit by the outage ({} requests faulted): {} succeeded through it, {} failed \
             with a clear error; short outages ridden out {}/{}; {} checked",
            self.runs,
            self.hit,
            self.faulted_requests,
            self.through,
            self.failed,
            self.short_ridden,
            self.short,
            self.checked
        );
        for (name, count) in &self.extra {
            line.push_str(&format!(", {name} {count}"));
        }
        line
    }
}

/// The campaign's state, shared by the cases.
pub(crate) struct Campaign<'a> {
    /// The options.
    pub options: &'a Options,
    summary: SummaryBuilder,
    /// The work directory.
    pub work: PathBuf,
    s3: Option<Emulator>,
    azure: Option<Emulator>,
    /// Each distinct error message (masked): how often, and a run that said it.
    messages: BTreeMap<String, (usize, String)>,
    /// The retry settings of the configurations the cases write.
    pub retries: Retries,
    /// Vault URLs to empty at the end.
    cleanups: Vec<String>,
    /// Runs made.
    runs: usize,
    /// The PostgreSQL cases' cluster, once made.
    pg: Option<pg::PgVault>,
}

impl Campaign<'_> {
    /// The emulator of `store`, or the other one when it is not configured.
    pub fn emulator(&self, store: StoreKind) -> &Emulator {
        let (wanted, other) = match store {
            StoreKind::S3 => (&self.s3, &self.azure),
            StoreKind::Azure => (&self.azure, &self.s3),
        };
        wanted
            .as_ref()
            .or(other.as_ref())
            .expect("the campaign runs with at least one emulator")
    }

    /// A new vault URL on `store`'s emulator, unique to this campaign run,
    /// emptied when the campaign ends.
    pub fn vault_url(&mut self, store: StoreKind, label: &str) -> String {
        let base = &self.emulator(store).base;
        let url = format!(
            "{base}/chaos-outage-{label}-{}-{:08x}",
            self.options.seed,
            rand::random::<u32>()
        );
        self.cleanups.push(url.clone());
        url
    }

    /// A seeded random number generator for `case`.
    pub fn rng(&self, case: &str) -> StdRng {
        let stream = case.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.options.rng(stream)
    }

    /// A new directory under the work directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }

    /// Prints a line when `--verbose`.
    pub fn say(&self, line: impl AsRef<str>) {
        if self.options.verbose {
            eprintln!("outage: {}", line.as_ref());
        }
    }

    /// Records a loss.
    pub fn lost(&mut self, case: &str, what: impl AsRef<str>) {
        let line = format!("{case}: {}", what.as_ref());
        self.say(format!("LOST {line}"));
        self.summary.lost(line);
    }

    /// Records a failure of a promise.
    pub fn failed(&mut self, case: &str, what: impl AsRef<str>) {
        let line = format!("{case}: {}", what.as_ref());
        self.say(format!("FAILED {line}"));
        self.summary.failed(line);
    }

    /// Counts a run; `faults` is 1 when its outage hit.
    pub fn count_run(&mut self, faults: usize) {
        self.runs += 1;
        self.summary.run(faults);
    }

    /// Adds the case's line to the report.
    pub fn case_line(&mut self, case: &str, tally: &Tally) {
        self.summary.case(case, tally.line());
    }

    /// Judges how a command did under `outage`: counts the run, and when it
    /// failed checks that its error is clear (see [`clear_error`]) and
    /// records its message; a short outage must not fail it. `window` is
    /// the proxy's, read right after the command ended. Returns whether
    /// the command succeeded.
    pub fn judge(
        &mut self,
        case: &str,
        run: usize,
        tally: &mut Tally,
        outage: &Outage,
        window: Option<Window>,
        out: &CommandOutcome,
    ) -> bool {
        let hit =
            window.is_some_and(|w| w.began.is_some() && (w.injected > 0 || outage.only_slows()));
        let injected = window.map_or(0, |w| w.injected);
        tally.runs += 1;
        tally.faulted_requests += injected;
        if hit {
            tally.hit += 1;
        }
        self.count_run(usize::from(hit));
        let label = format!("run {run} ({})", outage.describe());
        let ok = out.success;
        if ok {
            if hit {
                tally.through += 1;
            }
        } else {
            tally.failed += 1;
            match (out.clear)(out) {
                Ok(message) => self.record_message(&message, &format!("{case} {label}")),
                Err(why) => self.failed(case, format!("{label}: {why}\n{}", out.describe())),
            }
        }
        if hit && outage.must_be_ridden_out() {
            tally.short += 1;
            if ok {
                tally.short_ridden += 1;
            } else {
                self.failed(
                    case,
                    format!(
                        "{label}: an outage shorter than the retries ride out ({} ms) failed the command\n{}",
                        self.retries.least.as_millis(),
                        out.describe()
                    ),
                );
            }
        }
        self.say(format!(
            "{case} {label}: {} ({injected} requests faulted)",
            if ok { "succeeded" } else { "failed" }
        ));
        ok
    }

    /// Remembers a distinct error message.
    pub fn record_message(&mut self, message: &str, at: &str) {
        let masked = mask(message);
        let entry = self
            .messages
            .entry(masked)
            .or_insert_with(|| (0, at.to_owned()));
        entry.0 += 1;
    }

    fn report_messages(&mut self) {
        let messages = std::mem::take(&mut self.messages);
        for (index, (message, (count, at))) in messages.iter().enumerate() {
            self.summary.case(
                format!("error message {}", index + 1),
                format!("{count}x, first in {at}: {message}"),
            );
        }
    }

    fn clean_up_stores(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        for url in std::mem::take(&mut self.cleanups) {
            let config = strata_core::vault::VaultConfig::from_url(&url);
            runtime.block_on(async {
                use futures::StreamExt;
                use object_store::ObjectStore;
                let Ok((store, root)) = strata_core::vault::build_store(&config) else {
                    return;
                };
                let locations = store
                    .list(Some(&root))
                    .filter_map(|meta| async move { meta.ok().map(|m| Ok(m.location)) })
                    .boxed();
                let mut deleted = store.delete_stream(locations);
                while deleted.next().await.is_some() {}
            });
        }
    }
}

/// How a command ended, with the rule its error must follow.
pub(crate) struct CommandOutcome {
    /// The command line, for findings.
    pub command: String,
    /// Whether it succeeded.
    pub success: bool,
    /// Its exit code.
    pub code: Option<i32>,
    /// What it wrote on standard error.
    pub stderr: String,
    /// More of what it said (an output file), for findings.
    pub more: String,
    /// Checks a failure's error; returns the message to record.
    pub clear: fn(&CommandOutcome) -> Result<String, String>,
}

impl CommandOutcome {
    /// A `strata` command's outcome.
    pub fn strata(out: &RunOutput) -> CommandOutcome {
        CommandOutcome {
            command: out.command.clone(),
            success: out.status.success(),
            code: out.code(),
            stderr: out.stderr_text(),
            more: String::new(),
            clear: clear_error,
        }
    }

    /// Everything it said, for findings.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stderr ---\n{}{}",
            self.command,
            self.code,
            tail(&self.stderr, 30),
            if self.more.is_empty() {
                String::new()
            } else {
                format!("\n--- more ---\n{}", tail(&self.more, 30))
            }
        )
    }
}

/// Text that must never reach an operator.
pub(crate) const NEVER_SAID: [&str; 4] = [
    "panicked at",
    "stack backtrace",
    "RUST_BACKTRACE",
    "called `Result::unwrap()`",
];

/// The rule for a failed `strata` command under an outage: exit code 4
/// (storage), no panic or backtrace, an error naming the store and the
/// problem, with a hint saying what to do; no stutter (`error: error`).
/// The error is read as the CLI prints it (`error: ...` then `hint: ...`
/// lines) or, with `--json`, as the JSON object on stderr. Returns the
/// message.
pub(crate) fn clear_error(out: &CommandOutcome) -> Result<String, String> {
    clear_error_with(out, &[4])
}

/// [`clear_error`] with other documented exit codes.
pub(crate) fn clear_error_with(out: &CommandOutcome, codes: &[i32]) -> Result<String, String> {
    if let Some(bad) = NEVER_SAID.iter().find(|bad| out.stderr.contains(**bad)) {
        return Err(format!("its error output contains `{bad}`"));
    }
    if !out.code.is_some_and(|code| codes.contains(&code)) {
        return Err(format!(
            "it exited with {:?}, not with {codes:?} (a storage failure)",
            out.code
        ));
    }
    let (message, hint) = error_and_hint(&out.stderr)?;
    // Strata's own prefix twice, a message that is only a prefix, or a
    // cause that says nothing ("HTTP error: error sending request").
    if message.starts_with("error") || message.contains("error: error") || message.trim().is_empty()
    {
        return Err(format!("its error stutters: {message}"));
    }
    if hint.trim().is_empty() {
        return Err("its error has no hint saying what to do".to_owned());
    }
    if !names_the_store(&message) {
        return Err(format!(
            "its error does not say the object store or the vault failed: {message}"
        ));
    }
    Ok(message)
}

/// The error message and the hints a failed command printed.
fn error_and_hint(stderr: &str) -> Result<(String, String), String> {
    for line in stderr.lines() {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(error) = value.get("error")
        {
            let text = |key: &str| error[key].as_str().unwrap_or_default().to_owned();
            return Ok((text("message"), text("hint")));
        }
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let error = lines
        .iter()
        .position(|line| line.starts_with("error: "))
        .ok_or("it printed no `error:` line")?;
    // The message runs on to the first hint (a store's error body may
    // span lines).
    let end = lines[error..]
        .iter()
        .position(|line| line.starts_with("hint: "))
        .map(|at| error + at)
        .ok_or("it printed no `hint:` line saying what to do")?;
    let message = lines[error..end].join(" ");
    let message = message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned();
    let hints = lines[end..]
        .iter()
        .filter_map(|line| line.strip_prefix("hint: "))
        .collect::<Vec<_>>()
        .join("; ");
    Ok((message, hints))
}

/// Whether a message says that the object store (or the vault on it) is
/// what failed.
pub(crate) fn names_the_store(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "object storage",
        "object store",
        "vault",
        "s3 error",
        "azure error",
        "store",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// A message with what differs between runs masked: numbers, hex ids,
/// URLs, paths and quoted names become `#`, `<url>`, `<path>`; a store's
/// error body is cut to its code.
pub(crate) fn mask(message: &str) -> String {
    let mut out = Vec::new();
    for word in message.split_whitespace() {
        let trimmed = word.trim_matches(|c: char| ",;:()[]`'\"".contains(c));
        let masked = if trimmed.contains("://") {
            "<url>".to_owned()
        } else if trimmed.starts_with('/') && trimmed.len() > 1 {
            "<path>".to_owned()
        } else if trimmed.starts_with("<?xml") || trimmed.starts_with("\u{feff}<?xml") {
            "<xml>".to_owned()
        } else if let Some(code) = trimmed
            .strip_prefix("<Error><Code>")
            .and_then(|rest| rest.split('<').next())
        {
            format!("<Error {code}>")
        } else if trimmed.chars().any(|c| c.is_ascii_digit()) {
            word.replace(trimmed, "#")
        } else {
            word.to_owned()
        };
        if masked.starts_with("<Message>")
            || masked.starts_with("<RequestId>")
            || out
                .last()
                .is_some_and(|last: &String| last.starts_with("<Error "))
        {
            continue;
        }
        out.push(masked);
    }
    let mut text = out.join(" ");
    if text.len() > 400 {
        let mut end = 400;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" ...");
    }
    text
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` with the proxy armed with `outage`, and disarms it when
/// the command ends. Returns what the command returned and the outage's
/// window as it was when the command ended.
pub(crate) fn under_outage<T>(
    proxy: &StoreProxy,
    outage: &Outage,
    command: impl FnOnce() -> T,
) -> (T, Option<Window>) {
    proxy.inject(outage.fault());
    let result = command();
    let window = proxy.window();
    proxy.pass();
    (result, window)
}

/// The requests a command made through `proxy`.
pub(crate) fn requests_of<T>(proxy: &StoreProxy, command: impl FnOnce() -> T) -> (T, u64) {
    let before = proxy.stats().requests;
    let result = command();
    (result, proxy.stats().requests - before)
}

/// Which store a case uses for a run: mostly `usual`, sometimes the other.
pub(crate) fn draw_store(rng: &mut StdRng, usual: StoreKind) -> StoreKind {
    if rng.random_bool(0.7) {
        usual
    } else {
        match usual {
            StoreKind::S3 => StoreKind::Azure,
            StoreKind::Azure => StoreKind::S3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_words_and_drops_what_varies() {
        let message = "error: full backup of stream `s-3` failed; nothing was committed: backup \
            20261201T225359.170Z-5ec13eff, stream `data`: object storage request failed: Generic S3 \
            error: Error performing PUT http://127.0.0.1:45195/strata-test/x in 2.08s, after 3 \
            retries - Server returned non-2xx status code: 503 Service Unavailable: <?xml \
            version=\"1.0\" encoding=\"UTF-8\"?> <Error><Code>SlowDown</Code><Message>Please \
            reduce your request rate.</Message></Error>";
        let masked = mask(message);
        assert!(masked.contains("object storage request failed"), "{masked}");
        assert!(masked.contains("PUT <url>"), "{masked}");
        assert!(masked.contains("<Error SlowDown>"), "{masked}");
        assert!(!masked.contains("45195"), "{masked}");
        assert!(!masked.contains("reduce your"), "{masked}");
        assert_eq!(mask(message), masked, "the same message masks the same");
    }

    #[test]
    fn a_clear_error_names_the_store_and_what_to_do() {
        let outcome = |code, stderr: &str| CommandOutcome {
            command: "strata x".into(),
            success: false,
            code: Some(code),
            stderr: stderr.into(),
            more: String::new(),
            clear: clear_error,
        };
        let good = outcome(
            4,
            "WARN something\nerror: object storage request failed: 503\nhint: check that the vault is reachable\n",
        );
        assert!(clear_error(&good).is_ok());
        assert!(
            clear_error(&outcome(
                1,
                "error: object storage request failed\nhint: x\n"
            ))
            .is_err()
        );
        assert!(clear_error(&outcome(4, "error: it failed\nhint: x\n")).is_err());
        assert!(clear_error(&outcome(4, "error: vault gone\n")).is_err());
        assert!(
            clear_error(&outcome(
                4,
                "error: object storage request failed: HTTP error: error sending request\nhint: x\n"
            ))
            .is_err(),
            "a cause that says nothing"
        );
        let json = r#"{"error":{"message":"the vault s3://b/v could not be reached","hint":"check the network"}}"#;
        assert_eq!(
            clear_error(&outcome(4, json)).unwrap(),
            "the vault s3://b/v could not be reached"
        );
        assert!(
            clear_error(&outcome(
                4,
                "thread 'main' panicked at x.rs\nerror: vault\nhint: y\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn short_outages_are_shorter_than_the_least_the_retries_ride_out() {
        let mut rng = rand::SeedableRng::seed_from_u64(3);
        for retries in [Retries::tight(), Retries::defaults()] {
            for _ in 0..500 {
                let outage = Outage::draw(&mut rng, 20, &retries, &[]);
                assert!((1..=20).contains(&outage.from_request));
                if let Length::Short(d) = outage.length {
                    assert!(d < retries.least, "{outage:?}");
                }
            }
        }
    }
}

//! `strata-chaos`: runs Strata's reliability campaigns (kill -9, storage
//! outages, damage at rest, full and read-only disks) and prints one
//! summary line each. `scripts/chaos.sh` builds the binaries, starts the
//! object-store emulators and runs this; `docs/reliability.md` describes
//! the campaigns.
//!
//! ```text
//! strata-chaos <kill|outage|damage|disk|all> [--scale ci|large] [--runs N]
//!              [--seed N] [--only TEXT] [--work-dir DIR] [--verbose]
//! ```
//!
//! - `--scale`: `ci` (a few runs, what the test suite runs) or `large`
//!   (the default: the figures of a real campaign).
//! - `--runs`: instead of the scale's counts: `kill` makes N runs in all,
//!   shared out over its cases; `damage` N in all, rounded up to whole
//!   rounds of its cells; `outage` and `disk` N runs of each case.
//! - `--seed`: replays a campaign (the summary prints the seed it used);
//!   default `STRATA_CHAOS_SEED`, else random.
//! - `--only`: only the cases whose name contains TEXT (`--only wal-push`).
//! - `--work-dir`: keep clusters, vaults and logs in a new directory
//!   `DIR/<campaign>-<seed>-<random>` per campaign.
//!
//! Exit status: 0 when every campaign lost nothing and kept every promise,
//! 1 when one did not (its findings are printed), 2 on wrong arguments
//! (and when `--only` selects no case, so that a typo tests nothing).

use std::path::PathBuf;
use std::process::ExitCode;

use strata_e2e::chaos::{self, Options, Scale, Summary};

const USAGE: &str = "usage: strata-chaos <kill|outage|damage|disk|all> [--scale ci|large] [--runs N] [--seed N] [--only TEXT] [--work-dir DIR] [--verbose]";

const HELP: &str = "\
Runs Strata's reliability campaigns and prints one summary line each:
  kill     kill -9 at random moments of backups, WAL archiving, restores, gc, the service
  outage   the object store refuses, resets, answers 500/503, is slow or cuts requests
  damage   stored objects get bit flips, truncation, deletion, replacement
  disk     full and read-only disks under a local vault and restore targets (root)
  all      the four, one after another

  --scale ci|large   a few runs (what the test suite runs) or the figures of
                     a real campaign (default: large)
  --runs N           instead of the scale's counts (at least 1): kill makes
                     N runs in all, shared out over its cases (one each at
                     least); damage N in all, rounded up to whole rounds of
                     its cells; outage and disk N runs of each case
  --seed N           replays a campaign: its summary prints the seed it used
                     (default: STRATA_CHAOS_SEED, else random)
  --only TEXT        only the cases whose name contains TEXT (--only wal-push)
  --work-dir DIR     keep clusters, vaults and logs in DIR/<campaign>-<seed>-*
  --verbose          one line per run

Exit status: 0 when nothing was lost and every promise kept, 1 otherwise
(the findings are printed), 2 on wrong arguments. docs/reliability.md
describes each campaign and its cases.";

/// What the command line asks for.
enum Request {
    Run(Vec<&'static str>, Options),
    Help,
}

type Campaign = (&'static str, fn(&Options) -> Summary);

const CAMPAIGNS: [Campaign; 4] = [
    ("kill", chaos::kill::run),
    ("outage", chaos::outage::run),
    ("damage", chaos::damage::run),
    ("disk", chaos::disk::run),
];

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(Request::Run(names, options)) => {
            chaos::interrupt::stop_on_signal();
            run(&names, &options)
        }
        Ok(Request::Help) => {
            println!("{USAGE}\n\n{HELP}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("strata-chaos: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(names: &[&'static str], options: &Options) -> ExitCode {
    let mut summaries = Vec::new();
    for (name, campaign) in CAMPAIGNS {
        if names.contains(&name) {
            let summary = campaign(options);
            chaos::interrupt::hold_if_interrupted();
            println!("{summary}");
            summaries.push(summary);
        }
    }
    if let Some(only) = &options.only
        && summaries.iter().all(|s| s.runs == 0 && s.is_clean())
    {
        eprintln!(
            "strata-chaos: --only `{only}` selects no case of {}: the case names are in docs/reliability.md (or in the summary of a run without --only)",
            names.join(", ")
        );
        return ExitCode::from(2);
    }
    if summaries.len() > 1 {
        println!("all campaigns:");
        for summary in &summaries {
            println!("  {}", summary.line());
        }
    }
    if summaries.iter().all(Summary::is_clean) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse(args: Vec<String>) -> Result<Request, String> {
    let mut args = args.into_iter();
    let which = args.next().ok_or("name a campaign")?;
    let names: Vec<&'static str> = match which.as_str() {
        "all" => CAMPAIGNS.iter().map(|(name, _)| *name).collect(),
        "-h" | "--help" => return Ok(Request::Help),
        other => vec![
            CAMPAIGNS
                .iter()
                .map(|(name, _)| *name)
                .find(|name| *name == other)
                .ok_or_else(|| format!("unknown campaign `{other}`"))?,
        ],
    };
    let mut options = Options {
        scale: Scale::Large,
        runs: None,
        seed: chaos::seed_from_env(),
        only: None,
        work_dir: None,
        verbose: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--scale" => {
                let text = value()?;
                options.scale =
                    Scale::parse(&text).ok_or_else(|| format!("--scale {text}: ci or large"))?;
            }
            "--runs" => {
                let text = value()?;
                options.runs = match text.parse() {
                    Ok(0) | Err(_) => return Err(format!("--runs {text}: a number of at least 1")),
                    Ok(runs) => Some(runs),
                };
            }
            "--seed" => {
                let text = value()?;
                options.seed = text
                    .parse()
                    .map_err(|_| format!("--seed {text}: a decimal number"))?;
            }
            "--only" => options.only = Some(value()?),
            "--work-dir" => options.work_dir = Some(PathBuf::from(value()?)),
            "--verbose" | "-v" => options.verbose = true,
            "-h" | "--help" => return Ok(Request::Help),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if let Some(dir) = &options.work_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--work-dir {}: cannot create it: {e}", dir.display()))?;
    }
    Ok(Request::Run(names, options))
}

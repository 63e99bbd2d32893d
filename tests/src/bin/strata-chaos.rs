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
//! - `--runs`: runs per campaign instead of the scale's default.
//! - `--seed`: replays a campaign (the summary prints the seed it used);
//!   default `STRATA_CHAOS_SEED`, else random.
//! - `--only`: only the cases whose name contains TEXT (`--only wal-push`).
//! - `--work-dir`: keep clusters, vaults and logs there.
//!
//! Exit status: 0 when every campaign lost nothing and kept every promise,
//! 1 when one did not (its findings are printed), 2 on wrong arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use strata_e2e::chaos::{self, Options, Scale, Summary};

const USAGE: &str = "usage: strata-chaos <kill|outage|damage|disk|all> [--scale ci|large] [--runs N] [--seed N] [--only TEXT] [--work-dir DIR] [--verbose]";

type Campaign = (&'static str, fn(&Options) -> Summary);

const CAMPAIGNS: [Campaign; 4] = [
    ("kill", chaos::kill::run),
    ("outage", chaos::outage::run),
    ("damage", chaos::damage::run),
    ("disk", chaos::disk::run),
];

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok((names, options)) => run(&names, &options),
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
            println!("{summary}");
            summaries.push(summary);
        }
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

fn parse(args: Vec<String>) -> Result<(Vec<&'static str>, Options), String> {
    let mut args = args.into_iter();
    let which = args.next().ok_or("name a campaign")?;
    let names: Vec<&'static str> = match which.as_str() {
        "all" => CAMPAIGNS.iter().map(|(name, _)| *name).collect(),
        "-h" | "--help" => return Err("campaigns and options:".into()),
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
                options.runs = Some(
                    text.parse()
                        .map_err(|_| format!("--runs {text}: a number"))?,
                );
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
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok((names, options))
}

//! The agent's configuration (`Config::parse`, as every `strata` command
//! and the service read it): a refusal is a configuration error whose line
//! is in the text, and what is accepted the service can run with: every
//! schedule, retry pause and log interval it computes from it is a date.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use strata_agent::config::Config;
use strata_agent::service::run::retry_pause;
use strata_agent::service::schedule::{KindRuns, LastRuns, due, next_runs};
use strata_core::ErrorKind;
use strata_fuzz::text;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    let config = match Config::parse(text, "fuzz.toml") {
        Ok(config) => config,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            let message = err.to_string();
            if let Some(at) = message.split(" at line ").nth(1) {
                let line: usize = at
                    .split(',')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no line number in {message}"));
                // The end of the text is the line after its last newline.
                assert!(line >= 1 && line <= text.lines().count() + 1, "{message}");
            }
            return;
        }
    };
    let _ = config.catalog_path();
    let _ = config.writer.writer_config();
    let now: DateTime<Utc> = "2026-12-01T02:30:00Z".parse().expect("a date");
    let pause = retry_pause(&config.service);
    // Every kind ran and then failed just now: the scheduler adds the
    // retry pause and the log interval to these times.
    let runs = KindRuns {
        slot: Some(now),
        ran: Some(now),
        failed_at: Some(now),
    };
    let last = LastRuns {
        full: runs,
        diff: runs,
        incr: runs,
        log: runs,
        has_full: true,
        takes_logs: true,
    };
    // Every schedule slot is taken, the last backup ran a year ago and
    // none failed since: log backups are due by their interval.
    let year_ago = now - chrono::Duration::days(365);
    let quiet = KindRuns {
        slot: Some(now),
        ran: Some(year_ago),
        failed_at: None,
    };
    let idle = LastRuns {
        full: quiet,
        diff: quiet,
        incr: quiet,
        log: quiet,
        has_full: true,
        takes_logs: true,
    };
    for policy in config.policy.values() {
        let _ = next_runs(policy, now);
        for last in [&last, &idle, &LastRuns::default()] {
            let _ = due(policy, last, now, pause);
        }
        let _ = policy.rpo_target();
    }
});

//! PostgreSQL timeline history files (`TimelineHistory::parse`): every
//! parent line is read, and the history written back as PostgreSQL writes
//! it parses to the same history.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::text;
use strata_postgres::chain::TimelineHistory;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    let timeline = 0x10;
    let Ok(history) = TimelineHistory::parse(timeline, text) else {
        return;
    };
    assert_eq!(history.timeline, timeline);
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(history.parents.len(), lines);
    let written: String = history
        .parents
        .iter()
        .map(|(tli, lsn)| format!("{tli}\t{lsn}\tno recovery target specified\n\n"))
        .collect();
    let again = TimelineHistory::parse(timeline, &written).expect("a written history parses");
    assert_eq!(again, history);
});

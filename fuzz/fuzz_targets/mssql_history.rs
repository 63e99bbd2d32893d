//! SQL Server backup history exports (`history::parse_history`): every
//! accepted backup set can be placed in UTC (with its own offset, or an
//! assumed one), and the sets written back as JSON parse to the same sets.
#![no_main]

use chrono::FixedOffset;
use libfuzzer_sys::fuzz_target;
use strata_core::ErrorKind;
use strata_fuzz::text;
use strata_sqlserver::history::parse_history;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    let sets = match parse_history(text, "fuzz.json") {
        Ok(sets) => sets,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            return;
        }
    };
    let offsets = [
        FixedOffset::east_opt(0),
        FixedOffset::east_opt(14 * 3600),
        FixedOffset::west_opt(12 * 3600),
    ];
    for set in &sets {
        assert!(set.last_lsn >= set.first_lsn);
        assert!(set.backup_finish_date >= set.backup_start_date);
        let _ = set.describe();
        for assumed in offsets {
            if let (Ok(start), Ok(finish)) = (set.start_utc(assumed), set.finish_utc(assumed)) {
                assert!(finish >= start);
                let _ = set.to_server_local(start, assumed);
            }
        }
    }
    let json = serde_json::to_string(&sets).expect("sets serialise");
    let again = parse_history(&json, "again.json")
        .unwrap_or_else(|e| panic!("written back, the history does not parse: {e}\n{json}"));
    assert_eq!(again, sets);
});

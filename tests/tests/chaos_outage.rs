//! The `outage` campaign at CI scale (see `strata_e2e::chaos::outage`):
//! the object store goes away, answers 500/503 or slows down, behind a
//! fault-injecting proxy, while backups, WAL archiving, Backint, restores
//! and gc run; nothing acknowledged may be lost, short outages must be
//! ridden out and long ones must fail with a clear error.
//!
//! Needs the emulators (`scripts/emulators.sh`); without them it is
//! skipped, unless STRATA_REQUIRE_EMULATORS=1. `STRATA_CHAOS_SEED` replays
//! a seed, `STRATA_CHAOS_VERBOSE=1` prints a line per run.

use strata_e2e::chaos::{Options, outage};

#[test]
fn chaos_outage() {
    outage::run(&Options::ci()).assert_clean();
}

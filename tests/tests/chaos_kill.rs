//! The `kill` campaign at CI scale: a few `kill -9` runs of each case
//! (backup stream, backup pg, pg wal-push, hdbbackint, restore pg, vault
//! gc, serve), with every check of `strata_e2e::chaos::kill`. The seed is
//! `STRATA_CHAOS_SEED` when set (to replay a failure), else random; the
//! summary line prints it.

use strata_e2e::chaos::{self, Options};

#[test]
fn kill_campaign_at_ci_scale_loses_nothing() {
    let summary = chaos::kill::run(&Options::ci());
    summary.assert_clean();
}

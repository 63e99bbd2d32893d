//! Being written: the `outage` campaign.

use super::{Options, Summary};

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    Summary::start("outage", options.seed).finish()
}

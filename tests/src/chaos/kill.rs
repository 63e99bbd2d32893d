//! Being written: the `kill` campaign.

use super::{Options, Summary};

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    Summary::start("kill", options.seed).finish()
}

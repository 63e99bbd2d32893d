//! Being written: the `disk` campaign.

use super::{Options, Summary};

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    Summary::start("disk", options.seed).finish()
}

//! Being written: the `damage` campaign.

use super::{Options, Summary};

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    Summary::start("damage", options.seed).finish()
}

//! The `disk` campaign at CI scale: full and read-only file systems under
//! restore targets, a local vault, `restore_command`'s output and the
//! catalog index (see `strata_e2e::chaos::disk`). Needs root to mount its
//! small file systems; records a skip otherwise.

use strata_e2e::chaos::{self, Options};

#[test]
fn disk_full_and_read_only_lose_nothing_and_fail_clearly() {
    chaos::disk::run(&Options::ci()).assert_clean();
}

//! The `damage` campaign at CI scale: every kind of stored object gets a
//! bit flip, a truncation, a deletion and a replacement by another
//! backup's object; `verify` and the restore that needs it must notice
//! each, name the object, and never restore wrong data.

use strata_e2e::chaos::{Options, damage};

#[test]
fn damage_at_rest_is_always_detected_and_never_restored_wrong() {
    damage::run(&Options::ci()).assert_clean();
}

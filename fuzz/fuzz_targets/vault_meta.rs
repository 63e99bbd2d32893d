//! Vault metadata (`VaultMeta::from_json`): accepted metadata has a format
//! this build reads and periods the vault can date (a deletion's purge
//! time, an object's lock end), and written back it parses the same.
#![no_main]

use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use strata_core::vault::{MAX_DAYS, VAULT_FORMAT, VaultMeta};

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = VaultMeta::from_json(data, "memory://fuzz") else {
        return;
    };
    assert!(meta.format <= VAULT_FORMAT);
    assert!(
        meta.soft_delete_days <= MAX_DAYS,
        "soft delete {} days",
        meta.soft_delete_days
    );
    let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().expect("a date");
    // What deletion computes: the purge time of a backup deleted now.
    let _purge_after = now + Duration::days(i64::from(meta.soft_delete_days));
    if let Some(lock) = &meta.immutability {
        assert!(lock.days <= MAX_DAYS, "a lock of {} days", lock.days);
        let _locked_until = lock.locked_until(now);
    }
    let json = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
    let again = VaultMeta::from_json(&json, "memory://fuzz").expect("written metadata parses");
    assert_eq!(again, meta);
});

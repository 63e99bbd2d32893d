//! One multi-GiB object through hdbbackint and back, as a large service
//! volume would stream: memory stays bounded (the agent's peak RSS is
//! checked against the writer's budget, not against the object size).
//!
//! The size is 3 GiB by default; `STRATA_BACKINT_LARGE_GIB` changes it (a
//! whole number of GiB, at least 1). To leave the test out, filter it out:
//! `cargo test -p strata-e2e -- --skip a_multi_gib_object_round_trips`.

use std::time::Duration;

use strata_e2e::hana::{BackintCall, HanaHost, TestVault, drain_pipe, feed_pipe, mkfifo};

const OPEN: Duration = Duration::from_secs(120);

/// A multi-GiB data volume backs up and restores with the same length and
/// BLAKE3 digest, and the agent's peak RSS stays far below the object's size.
#[test]
fn a_multi_gib_object_round_trips_with_bounded_memory() {
    let gib = object_gib();
    let len = gib << 30;
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.param_file(
        "HDB",
        "data.utl",
        &format!(
            "vault = {}\npart_size = 8MiB\ncompression_level = 1\n",
            vault.url()
        ),
    );
    let pipe = dir.join("COMPLETE_DATA_BACKUP_databackup_3_1");
    mkfifo(&pipe);
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .level("COMPLETE")
        .pipe(&pipe)
        .spawn(&host);
    let pid = agent.pid();
    let feeder = feed_pipe(&pipe, len, 42, OPEN);
    let sampler = std::thread::spawn(move || peak_rss_kib_while_running(pid));
    let result = agent.finish(Duration::from_secs(600));
    let sent = feeder.join().unwrap().unwrap();
    let peak_backup = sampler.join().unwrap();
    result.assert_exit(0);
    let (ebid, size) = result.saved(&pipe);
    assert_eq!(size, len);

    std::fs::remove_file(&pipe).unwrap();
    mkfifo(&pipe);
    let agent = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid(&ebid, &pipe)
        .spawn(&host);
    let pid = agent.pid();
    let sampler = std::thread::spawn(move || peak_rss_kib_while_running(pid));
    let got = drain_pipe(&pipe, OPEN).unwrap();
    let result = agent.finish(Duration::from_secs(600));
    let peak_restore = sampler.join().unwrap();
    result.assert_exit(0);
    // Same length and BLAKE3 digest as the bytes HANA wrote.
    assert_eq!(got, sent);
    // The writer's budget is (parts in flight + workers) x part size plus
    // upload chunks: a few tens of MiB at 8 MiB parts, whatever the size.
    eprintln!("peak RSS: backup {peak_backup} KiB, restore {peak_restore} KiB for {gib} GiB");
    assert!(peak_backup < 512 << 10, "backup peak RSS {peak_backup} KiB");
    assert!(
        peak_restore < 512 << 10,
        "restore peak RSS {peak_restore} KiB"
    );
}

/// The object's size in GiB: `STRATA_BACKINT_LARGE_GIB`, 3 when unset.
///
/// # Panics
/// When the variable is not a whole number of at least 1: a size that
/// would test nothing must not pass as a success.
fn object_gib() -> u64 {
    const VARIABLE: &str = "STRATA_BACKINT_LARGE_GIB";
    let Ok(text) = std::env::var(VARIABLE) else {
        return 3;
    };
    match text.trim().parse::<u64>() {
        Ok(gib) if gib >= 1 => gib,
        _ => panic!(
            "{VARIABLE}={text:?}: give a whole number of GiB, at least 1; to leave this test \
             out, filter it: `cargo test -p strata-e2e -- --skip a_multi_gib_object_round_trips`"
        ),
    }
}

/// Samples `VmHWM` (peak resident set) of a running process until it exits.
fn peak_rss_kib_while_running(pid: u32) -> u64 {
    let mut peak = 0;
    let path = format!("/proc/{pid}/status");
    while let Ok(text) = std::fs::read_to_string(&path) {
        if let Some(kib) = text
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if text.contains("State:\tZ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

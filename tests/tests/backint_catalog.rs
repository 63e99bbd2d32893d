//! The recovery side of Backint as HANA drives it: the catalog backed up
//! many times under one name, inquire (`#NULL`, `#NULL "<name>"`, `#EBID`),
//! 50 log backups restored strictly one after the other, and delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, Pattern, TestVault, drain, feed_pipe, mkfifo,
    open_for_reading, q, receives_data_within,
};

const OPEN: Duration = Duration::from_secs(60);

/// Backs up one object per call (as HANA's log and catalog backups come),
/// returning its EBID.
fn backup_once(host: &HanaHost, par: &Path, path: &Path, len: u64, seed: u64, api: &str) -> String {
    if !path.exists() {
        mkfifo(path);
    }
    let agent = BackintCall::new("backup", "HDB")
        .api(Some(api))
        .params(par)
        .backup_id(&seed.to_string())
        .count(1)
        .level("LOG")
        .pipe(path)
        .spawn(host);
    let sent = feed_pipe(path, len, seed, OPEN);
    let result = agent.finish(AGENT_TIMEOUT);
    sent.join().unwrap().unwrap();
    result.assert_exit(0);
    result.saved(path).0
}

fn is_timestamp(text: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.mmmZ, exactly three fractional digits.
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[test]
fn catalog_versions_inquire_restore_newest_and_delete() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "catalog.utl", vault.url(), "");
    let catalog = dir.join("log_backup_0_0_0_0");
    // A name that is a prefix of the catalog's: must never be mixed up with it.
    let lookalike = dir.join("log_backup_0_0_0_01");
    let mut ebids = Vec::new();
    for round in 0..3u64 {
        ebids.push(backup_once(
            &host,
            &par,
            &catalog,
            10_000 + round,
            100 + round,
            "1.50",
        ));
        std::thread::sleep(Duration::from_millis(5));
    }
    let lookalike_ebid = backup_once(&host, &par, &lookalike, 5, 200, "1.04");

    // #NULL "<name>": every version, newest first, with 1.50 timestamps.
    let result = BackintCall::new("inquire", "HDB")
        .params(&par)
        .null(&catalog)
        .run(&host);
    result.assert_exit(0);
    let backups = result.with("#BACKUP");
    let listed: Vec<&str> = backups.iter().map(|f| f[0].as_str()).collect();
    let newest_first: Vec<&str> = ebids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first, "{}", result.describe());
    for f in &backups {
        assert_eq!(f[1], catalog.display().to_string());
        assert!(is_timestamp(&f[2]), "timestamp {:?}", f[2]);
    }
    assert!(backups.windows(2).all(|w| w[0][2] >= w[1][2]));

    // Backint 1.04: no timestamps.
    let result = BackintCall::new("inquire", "HDB")
        .api(Some("1.04"))
        .params(&par)
        .null(&catalog)
        .run(&host);
    result.assert_exit(0);
    assert!(
        result.with("#BACKUP").iter().all(|f| f.len() == 2),
        "{}",
        result.describe()
    );
    assert!(
        result.text.starts_with("#SOFTWAREID \"backint 1.04\""),
        "{}",
        result.text
    );

    // #EBID forms, an unknown EBID, extra tokens, and #NULL for everything.
    let unknown = "20200101T000000.000Z-00000000";
    let result = BackintCall::new("inquire", "HDB")
        .params(&par)
        .line(format!(
            "#EBID {} {} extra tokens",
            q(&ebids[1]),
            q(&catalog.display().to_string())
        ))
        .line(format!("#EBID {}", q(&lookalike_ebid)))
        .line(format!(
            "#EBID {} {}",
            q(unknown),
            q(&catalog.display().to_string())
        ))
        .line(format!(
            "#EBID {} {}",
            q(&ebids[0]),
            q(&lookalike.display().to_string())
        ))
        .line("#NULL")
        .run(&host);
    result.assert_exit(0);
    let backups = result.with("#BACKUP");
    assert_eq!(
        backups[0][..2],
        [ebids[1].clone(), catalog.display().to_string()]
    );
    assert_eq!(
        backups[1][..2],
        [lookalike_ebid.clone(), lookalike.display().to_string()]
    );
    let notfound = result.with("#NOTFOUND");
    assert_eq!(
        notfound,
        vec![
            vec![unknown.to_owned(), catalog.display().to_string()],
            vec![ebids[0].clone(), lookalike.display().to_string()],
        ],
        "{}",
        result.describe()
    );
    // #NULL lists all four versions after the two answers above.
    assert_eq!(backups.len(), 2 + 4, "{}", result.describe());

    // Restore by #NULL gives the newest version, by #EBID an older one.
    let fresh = host.backint_dir("HDB", "DB_HDB").join("catalog_restore");
    mkfifo(&fresh);
    let old = host
        .backint_dir("HDB", "DB_HDB")
        .join("catalog_restore_old");
    mkfifo(&old);
    let agent = BackintCall::new("restore", "HDB")
        .params(&par)
        .line(format!(
            "#NULL {} {}",
            q(&catalog.display().to_string()),
            q(&fresh.display().to_string())
        ))
        .line(format!(
            "#EBID {} {} {}",
            q(&ebids[0]),
            q(&catalog.display().to_string()),
            q(&old.display().to_string())
        ))
        .spawn(&host);
    let mut r = open_for_reading(&fresh, OPEN).unwrap();
    assert_eq!(drain(&mut r).unwrap().blake3, Pattern::digest(10_002, 102));
    let mut r = open_for_reading(&old, OPEN).unwrap();
    assert_eq!(drain(&mut r).unwrap().blake3, Pattern::digest(10_000, 100));
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let restored = result.with("#RESTORED");
    assert_eq!(
        restored[0],
        [ebids[2].clone(), catalog.display().to_string()]
    );
    assert_eq!(
        restored[1],
        [ebids[0].clone(), catalog.display().to_string()]
    );

    // Delete: #DELETED, then #NOTFOUND; the other versions stay.
    let delete = BackintCall::new("delete", "HDB")
        .params(&par)
        .ebid(&ebids[2], &catalog);
    let result = delete.run(&host);
    result.assert_exit(0);
    assert_eq!(
        result.with("#DELETED"),
        vec![vec![ebids[2].clone(), catalog.display().to_string()]]
    );
    let result = delete.run(&host);
    result.assert_exit(0);
    assert_eq!(
        result.with("#NOTFOUND"),
        vec![vec![ebids[2].clone(), catalog.display().to_string()]]
    );
    let result = BackintCall::new("inquire", "HDB")
        .params(&par)
        .null(&catalog)
        .run(&host);
    let listed: Vec<String> = result
        .with("#BACKUP")
        .into_iter()
        .map(|f| f[0].clone())
        .collect();
    assert_eq!(listed, vec![ebids[1].clone(), ebids[0].clone()]);
    // A restore of the deleted version is #NOTFOUND.
    let result = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid_to(&ebids[2], &catalog, &fresh)
        .run(&host);
    assert_eq!(
        result.with("#NOTFOUND"),
        vec![vec![catalog.display().to_string()]]
    );
    assert!(result.with("#RESTORED").is_empty());
    // Deleting every version leaves nothing to list.
    let result = BackintCall::new("delete", "HDB")
        .params(&par)
        .ebid(&ebids[0], &catalog)
        .ebid(&ebids[1], &catalog)
        .ebid(&lookalike_ebid, &lookalike)
        .run(&host);
    result.assert_exit(0);
    assert_eq!(result.with("#DELETED").len(), 3);
    let result = BackintCall::new("inquire", "HDB")
        .params(&par)
        .line("#NULL")
        .run(&host);
    assert_eq!(
        result.with("#NOTFOUND"),
        vec![Vec::<String>::new()],
        "{}",
        result.describe()
    );
    assert!(vault.manifests().is_empty());
}

#[test]
fn fifty_log_backups_restore_strictly_in_input_order() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "log.utl", vault.url(), "");
    // 50 log backups in one call (as if HANA had queued them), written at once.
    let logs: Vec<(PathBuf, u64, u64)> = (0..50u64)
        .map(|i| {
            let path = dir.join(format!("log_backup_2_0_{}_{}", i * 1000, (i + 1) * 1000));
            mkfifo(&path);
            // The first logs are larger than a pipe's buffer, so that the
            // agent is still writing them while the harness holds them.
            let len = if i < 5 { 300_000 + i } else { 1000 + i * 37 };
            (path, len, 500 + i)
        })
        .collect();
    let mut call = BackintCall::new("backup", "HDB")
        .params(&par)
        .backup_id("1763771900000")
        .count(50)
        .level("LOG");
    for (path, _, _) in &logs {
        call = call.pipe(path);
    }
    let agent = call.spawn(&host);
    let feeders: Vec<_> = logs
        .iter()
        .map(|(p, len, seed)| feed_pipe(p, *len, *seed, OPEN))
        .collect();
    let result = agent.finish(AGENT_TIMEOUT);
    for f in feeders {
        f.join().unwrap().unwrap();
    }
    result.assert_exit(0);

    let mut call = BackintCall::new("restore", "HDB").params(&par);
    for (path, _, _) in &logs {
        let (ebid, _) = result.saved(path);
        std::fs::remove_file(path).unwrap();
        mkfifo(path);
        call = call.ebid(&ebid, path);
    }
    let agent = call.spawn(&host);
    for (i, (path, len, seed)) in logs.iter().enumerate() {
        let mut reader = open_for_reading(path, OPEN).unwrap();
        // While HANA holds a large log i open without reading it, the agent
        // (still writing it) must not start on log i+1, even when a reader
        // is there.
        if let Some((next, _, _)) = logs.get(i + 1).filter(|_| i < 5) {
            assert!(
                !receives_data_within(next, Duration::from_millis(600)),
                "log {} was served before log {i} was consumed",
                i + 1
            );
        }
        let got = drain(&mut reader).unwrap();
        assert_eq!(got.bytes, *len);
        assert_eq!(got.blake3, Pattern::digest(*len, *seed), "log {i}");
    }
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let restored: Vec<String> = result
        .with("#RESTORED")
        .into_iter()
        .map(|f| f[1].clone())
        .collect();
    let expected: Vec<String> = logs
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    assert_eq!(restored, expected, "results in input order");
}

/// The whole sequence of a HANA recovery with `USING CATALOG BACKINT`:
/// data backup, catalog, log backups, catalog again; then catalog discovery
/// (inquire), catalog restore, availability check of every piece, data
/// restore (one process per service, concurrently) and the serial log restore.
#[test]
fn full_chain_backup_then_recovery_as_hana_sequences_it() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let data_par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let log_par = host.standard_params("HDB", "log.utl", vault.url(), "");
    let catalog = dir.join("log_backup_0_0_0_0");

    // Data backup of two services at once.
    let services: Vec<(PathBuf, u64, u64)> = [(2u64, 150_000u64), (3, 330_000)]
        .iter()
        .map(|(volume, len)| {
            let path = dir.join(format!("COMPLETE_DATA_BACKUP_databackup_{volume}_1"));
            mkfifo(&path);
            (path, *len, 900 + volume)
        })
        .collect();
    let agents: Vec<_> = services
        .iter()
        .map(|(path, _, _)| {
            BackintCall::new("backup", "HDB")
                .params(&data_par)
                .backup_id("1763773000000")
                .count(services.len())
                .level("COMPLETE")
                .pipe(path)
                .spawn(&host)
        })
        .collect();
    let feeders: Vec<_> = services
        .iter()
        .map(|(p, len, seed)| feed_pipe(p, *len, *seed, OPEN))
        .collect();
    let mut data_ebids = Vec::new();
    for ((agent, feeder), (path, _, _)) in agents.into_iter().zip(feeders).zip(&services) {
        let result = agent.finish(AGENT_TIMEOUT);
        feeder.join().unwrap().unwrap();
        result.assert_exit(0);
        data_ebids.push(result.saved(path).0);
    }
    let catalog_v1 = backup_once(&host, &log_par, &catalog, 8_000, 950, "1.50");
    let logs: Vec<(PathBuf, u64, u64)> = (0..3u64)
        .map(|i| {
            (
                dir.join(format!("log_backup_2_0_{}_{}", i * 10, i * 10 + 10)),
                90_000 + i,
                960 + i,
            )
        })
        .collect();
    let log_ebids: Vec<String> = logs
        .iter()
        .map(|(p, len, seed)| backup_once(&host, &log_par, p, *len, *seed, "1.50"))
        .collect();
    let catalog_v2 = backup_once(&host, &log_par, &catalog, 8_100, 951, "1.50");

    // 1. Catalog discovery: the newest catalog comes first.
    let found = BackintCall::new("inquire", "HDB")
        .params(&log_par)
        .null(&catalog)
        .run(&host);
    found.assert_exit(0);
    let versions: Vec<String> = found
        .with("#BACKUP")
        .into_iter()
        .map(|f| f[0].clone())
        .collect();
    assert_eq!(versions, vec![catalog_v2.clone(), catalog_v1]);

    // 2. Catalog restore into a pipe of HANA's choosing.
    let catalog_pipe = dir.join("catalog_for_recovery");
    mkfifo(&catalog_pipe);
    let agent = BackintCall::new("restore", "HDB")
        .params(&log_par)
        .ebid_to(&catalog_v2, &catalog, &catalog_pipe)
        .spawn(&host);
    let got = strata_e2e::hana::drain_pipe(&catalog_pipe, OPEN).unwrap();
    agent.finish(AGENT_TIMEOUT).assert_exit(0);
    assert_eq!(got.blake3, Pattern::digest(8_100, 951));

    // 3. CHECK ACCESS: every planned piece exists.
    let mut check = BackintCall::new("inquire", "HDB").params(&data_par);
    for (ebid, (path, _, _)) in data_ebids.iter().zip(&services) {
        check = check.ebid(ebid, path);
    }
    for (ebid, (path, _, _)) in log_ebids.iter().zip(&logs) {
        check = check.ebid(ebid, path);
    }
    let checked = check.run(&host);
    checked.assert_exit(0);
    assert_eq!(
        checked.with("#BACKUP").len(),
        services.len() + logs.len(),
        "{}",
        checked.describe()
    );

    // 4. Data restore: one process per service, at the same time.
    let agents: Vec<_> = data_ebids
        .iter()
        .zip(&services)
        .map(|(ebid, (path, _, _))| {
            std::fs::remove_file(path).unwrap();
            mkfifo(path);
            BackintCall::new("restore", "HDB")
                .params(&data_par)
                .ebid(ebid, path)
                .spawn(&host)
        })
        .collect();
    let readers: Vec<_> = services
        .iter()
        .map(|(path, _, _)| {
            let path = path.clone();
            std::thread::spawn(move || strata_e2e::hana::drain_pipe(&path, OPEN).unwrap())
        })
        .collect();
    for ((agent, reader), (_, len, seed)) in agents.into_iter().zip(readers).zip(&services) {
        agent.finish(AGENT_TIMEOUT).assert_exit(0);
        assert_eq!(reader.join().unwrap().blake3, Pattern::digest(*len, *seed));
    }

    // 5. Log restore: one call, consumed one after the other.
    let mut call = BackintCall::new("restore", "HDB").params(&log_par);
    for (ebid, (path, _, _)) in log_ebids.iter().zip(&logs) {
        std::fs::remove_file(path).unwrap();
        mkfifo(path);
        call = call.ebid(ebid, path);
    }
    let agent = call.spawn(&host);
    for (path, len, seed) in &logs {
        let got = strata_e2e::hana::drain_pipe(path, OPEN).unwrap();
        assert_eq!(
            got.blake3,
            Pattern::digest(*len, *seed),
            "{}",
            path.display()
        );
    }
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    assert_eq!(result.with("#RESTORED").len(), logs.len());
}

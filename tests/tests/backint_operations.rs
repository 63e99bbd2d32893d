//! What an operator does with the HANA backups hdbbackint stored, through
//! `strata`: `backup hana --dry-run` (the statement, nothing written),
//! `restore hana` for the SYSTEMDB (the recoverSys.py command), `verify`
//! (good data passes, a damaged object is named), and a second host that
//! starts from an empty catalog index: `catalog rebuild` recovers it from
//! the vault, and the objects restore there byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::catalog::index::{CatalogIndex, ListFilter};
use strata_core::vault::{Vault, VaultConfig};
use strata_e2e::cli::Strata;
use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, PART_SIZE, Piece, TestVault, back_up, drain_pipe, mkfifo,
    q,
};

const OPEN: Duration = Duration::from_secs(60);

/// `strata` with `--vault` and `--catalog`.
fn strata(vault: &TestVault, catalog: &Path) -> Strata {
    Strata::new()
        .arg("--vault")
        .arg(vault.url())
        .arg("--catalog")
        .arg(catalog)
}

/// Every file under `dir` with its bytes' digest.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.insert(path, strata_e2e::data::blake3_hex(&bytes));
        }
    }
    out
}

/// `backup hana --dry-run` prints the one `BACKUP DATA ... USING BACKINT`
/// statement for the kind and database asked, needs no HANA connection, and
/// writes nothing: the vault's files and the catalog index stay as they were.
#[test]
fn backup_hana_dry_run_prints_the_statement_and_writes_nothing() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let catalog = host.root().join("catalog.db");
    let before = snapshot(&vault.path());
    for (kind, database, expected) in [
        (
            "full",
            "hdb",
            "BACKUP DATA FOR HDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/STRATA_COMPLETE_DATA_BACKUP_",
        ),
        (
            "diff",
            "HDB",
            "BACKUP DATA DIFFERENTIAL FOR HDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/STRATA_DIFF_DATA_BACKUP_",
        ),
        (
            "incr",
            "SYSTEMDB",
            "BACKUP DATA INCREMENTAL FOR SYSTEMDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/STRATA_INCR_DATA_BACKUP_",
        ),
    ] {
        let out = strata(&vault, &catalog)
            .env_remove("STRATA_HANA_URL")
            .args(["backup", "hana", "--sid", "HDB", "--database", database])
            .args(["--kind", kind, "--dry-run"])
            .run()
            .success();
        let text = out.stdout_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "one statement: {text}");
        let time = lines[0]
            .strip_prefix(expected)
            .and_then(|rest| rest.strip_suffix("');"))
            .unwrap_or_else(|| panic!("`{}` is not `{expected}<time>');`", lines[0]));
        // The prefix's time: %Y_%m_%d_%H_%M_%S.
        assert!(
            chrono::NaiveDateTime::parse_from_str(time, "%Y_%m_%d_%H_%M_%S").is_ok(),
            "`{time}` in {}",
            lines[0]
        );
    }
    assert_eq!(
        snapshot(&vault.path()),
        before,
        "the dry run wrote to the vault"
    );
    assert!(!catalog.exists(), "the dry run created the catalog index");
}

/// `restore hana --database SYSTEMDB` prints the recoverSys.py command
/// (the SYSTEMDB cannot recover itself over SQL) with the point in time in
/// UTC, and `--execute` is refused (exit 3) saying what to run instead.
#[test]
fn restore_hana_of_the_systemdb_prints_the_recoversys_command() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let catalog = host.root().join("catalog.db");
    let sysdb = host.backint_dir("HDB", "SYSTEMDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let volume = Piece::fifo(&sysdb, "COMPLETE_DATA_BACKUP_databackup_0_1", 70_001, 71);
    back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .user("SYSTEMDB@HDB")
            .params(&par)
            .backup_id("1763776000000")
            .count(1)
            .level("COMPLETE"),
        &[&volume],
    );
    let out = strata(&vault, &catalog)
        .args(["restore", "hana", "--sid", "hdb", "--database", "systemdb"])
        .args(["--until", "2999-01-01 05:30:00+05:30"])
        .run()
        .success();
    assert_eq!(
        out.stdout_text(),
        "# run as hdbadm on the HDB host\n\
         # stop the system first: sapcontrol -nr <instance> -function StopSystem HDB\n\
         # hdbbackint and its parameter file must be installed on the target (docs/hana.md)\n\
         # recover the tenants afterwards (strata restore hana --database <TENANT>)\n\
         HDBSettings.sh recoverSys.py --command=\"RECOVER DATABASE UNTIL TIMESTAMP '2999-01-01 00:00:00' \
         CLEAR LOG USING CATALOG BACKINT USING LOG PATH ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB') \
         USING DATA PATH ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/') CHECK ACCESS USING BACKINT\" \
         --wait --timeout=3600\n"
    );
    let plan = strata(&vault, &catalog)
        .args([
            "--json",
            "restore",
            "hana",
            "--sid",
            "HDB",
            "--database",
            "SYSTEMDB",
        ])
        .args(["--until", "2999-01-01T00:00:00Z"])
        .run()
        .success()
        .json();
    assert_eq!(plan["kind"], "command", "{plan:#}");
    assert!(
        plan["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("HDBSettings.sh recoverSys.py --command=\"RECOVER DATABASE UNTIL TIMESTAMP '2999-01-01 00:00:00'")),
        "{plan:#}"
    );
    strata(&vault, &catalog)
        .args(["restore", "hana", "--sid", "HDB", "--database", "SYSTEMDB"])
        .args(["--until", "2999-01-01T00:00:00Z", "--execute"])
        .run()
        .failure(3)
        .stderr_contains("the SYSTEMDB cannot be recovered over SQL")
        .stderr_contains("run the printed recoverSys.py command as <sid>adm");
}

/// `strata verify` reads every HANA object back: all pass on good data
/// (parts and bytes as written); after one byte of one object's segment is
/// changed, that EBID alone is DAMAGED (exit 6), its problem naming the part
/// and the vault object, and the others still pass.
#[test]
fn verify_passes_good_hana_objects_and_names_a_damaged_one() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let catalog = host.root().join("catalog.db");
    let tenant = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let p = PART_SIZE as u64;
    let pieces = [
        Piece::fifo(
            &tenant,
            "COMPLETE_DATA_BACKUP_databackup_3_1",
            3 * p + 1,
            81,
        ),
        Piece::fifo(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_2", 2 * p, 82),
    ];
    let saved = back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .params(&par)
            .backup_id("1763777000000")
            .count(2)
            .level("COMPLETE"),
        &[&pieces[0], &pieces[1]],
    );
    let ebids: Vec<String> = pieces.iter().map(|x| saved.saved(&x.path).0).collect();

    let report = strata(&vault, &catalog)
        .args(["--json", "verify"])
        .run()
        .success()
        .json();
    let mut verified = verified_fields(&report);
    verified.sort();
    let mut expected = vec![
        (ebids[0].clone(), true, 4, 3 * p + 1),
        (ebids[1].clone(), true, 2, 2 * p),
    ];
    expected.sort();
    assert_eq!(verified, expected, "{report:#}");

    // Change one byte in the middle of the first object's only segment.
    let manifest = vault
        .manifests()
        .into_iter()
        .find(|m| m.id.as_str() == ebids[0])
        .unwrap();
    let key = manifest.streams[0].segments[0].key.clone();
    let object = vault.path().join(&key);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();

    let out = strata(&vault, &catalog)
        .args(["--json", "verify"])
        .run()
        .failure(6);
    let report = out.json();
    // The damaged object: every part looked at, not OK; the other as before.
    let mut verified: Vec<_> = verified_fields(&report)
        .into_iter()
        .map(|(id, ok, parts, _)| (id, ok, parts))
        .collect();
    verified.sort();
    let mut expected = vec![(ebids[0].clone(), false, 4), (ebids[1].clone(), true, 2)];
    expected.sort();
    assert_eq!(verified, expected, "{report:#}");
    let damaged = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == ebids[0].as_str())
        .unwrap();
    let problems = damaged["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{damaged:#}");
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.starts_with(&format!(
            "backup {}, stream `{}`: part ",
            ebids[0], manifest.streams[0].name
        )) && problem.contains(&format!(" in object {key}: ")),
        "{problem}"
    );
    assert!(
        out.stderr_text()
            .contains("1 backup(s) failed verification"),
        "{}",
        out.stderr_text()
    );
}

/// (id, ok, parts, raw bytes) of each entry of `strata --json verify`.
fn verified_fields(report: &serde_json::Value) -> Vec<(String, bool, u64, u64)> {
    report
        .as_array()
        .unwrap_or_else(|| panic!("`verify --json` prints an array: {report:#}"))
        .iter()
        .map(|r| {
            assert_eq!(r["engine"], "hana", "{r:#}");
            assert_eq!(r["instance"], "HDB", "{r:#}");
            (
                r["id"].as_str().unwrap().to_owned(),
                r["ok"].as_bool().unwrap(),
                r["parts"].as_u64().unwrap(),
                r["raw_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A second host starts with an empty catalog index: before any rebuild,
/// `restore hana` plans the recovery from the vault alone and hdbbackint
/// restores the newest catalog (`#NULL`) byte for byte; `catalog rebuild`
/// then fills the index from the vault (every HANA object under its EBID),
/// `list` and `restore hana` work from it, and hdbbackint on that host
/// restores every object into its pipes byte for byte.
#[test]
fn a_second_host_rebuilds_its_catalog_and_restores_every_object() {
    let first = HanaHost::new();
    let vault = TestVault::new();
    let tenant = first.backint_dir("HDB", "DB_HDB");
    let par = first.standard_params(
        "HDB",
        "data.utl",
        vault.url(),
        &format!("catalog = {}", first.root().join("catalog.db").display()),
    );
    let data = Piece::fifo(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_1", 200_003, 91);
    let data_ebid = back_up(
        &first,
        BackintCall::new("backup", "HDB")
            .user("HDB@HDB")
            .params(&par)
            .backup_id("1763778000000")
            .count(1)
            .level("COMPLETE"),
        &[&data],
    )
    .saved(&data.path)
    .0;
    let log = Piece::fifo(&tenant, "log_backup_3_0_100_200", 30_007, 92);
    let log_ebid = back_up(
        &first,
        BackintCall::new("backup", "HDB").params(&par).level("LOG"),
        &[&log],
    )
    .saved(&log.path)
    .0;
    let catalog_old = Piece::fifo(&tenant, "log_backup_0_0_0_0", 9_001, 93);
    let catalog_new = Piece {
        len: 9_101,
        seed: 94,
        ..catalog_old.clone()
    };
    let mut catalog_ebids = Vec::new();
    for version in [&catalog_old, &catalog_new] {
        let call = BackintCall::new("backup", "HDB").params(&par).level("LOG");
        catalog_ebids.push(back_up(&first, call, &[version]).saved(&version.path).0);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(first);

    // The second host: a new root, an index file that exists but is empty.
    let second = HanaHost::new();
    let index_path = second.root().join("catalog.db");
    std::fs::write(&index_path, "").unwrap();
    let second_par = second.standard_params(
        "HDB",
        "data.utl",
        vault.url(),
        &format!("catalog = {}", index_path.display()),
    );
    let restore_dir = second.backint_dir("HDB", "DB_HDB");
    let dest = |n: &str| {
        let path = restore_dir.join(n);
        mkfifo(&path);
        path
    };

    // Before any rebuild, the recovery is planned from the vault alone ...
    let expected_plan = "-- on the SYSTEMDB of HDB:\n\
         ALTER SYSTEM STOP DATABASE HDB;\n\
         RECOVER DATABASE FOR HDB UNTIL TIMESTAMP '2999-01-01 00:00:00' CLEAR LOG USING CATALOG \
         BACKINT USING LOG PATH ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB') USING DATA PATH \
         ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/') CHECK ACCESS USING BACKINT;\n";
    let plan = strata(&vault, &index_path)
        .args(["restore", "hana", "--sid", "HDB", "--database", "HDB"])
        .args(["--until", "2999-01-01 00:00:00+00"])
        .run()
        .success()
        .stdout_text();
    assert_eq!(plan, expected_plan);
    // ... and hdbbackint finds the newest catalog version there and
    // restores it byte for byte.
    let early_to = dest("catalog_before_rebuild");
    let agent = BackintCall::new("restore", "HDB")
        .user("HDB@HDB")
        .params(&second_par)
        .line(format!(
            "#NULL {} {}",
            q(&catalog_old.path.display().to_string()),
            q(&early_to.display().to_string())
        ))
        .spawn(&second);
    let got = drain_pipe(&early_to, OPEN).unwrap();
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    assert_eq!(got.bytes, catalog_new.len, "{}", result.describe());
    assert_eq!(got.blake3, catalog_new.digest(), "{}", result.describe());
    assert_eq!(
        result.with("#RESTORED"),
        vec![vec![
            catalog_ebids[1].clone(),
            catalog_old.path.display().to_string()
        ]],
        "{}",
        result.describe()
    );

    // `catalog rebuild` then fills the index: nothing above recorded a thing.
    let rebuilt = strata(&vault, &index_path)
        .args(["--json", "catalog", "rebuild"])
        .run()
        .success()
        .json();
    assert_eq!(rebuilt["manifests"], 4, "{rebuilt:#}");
    assert_eq!(rebuilt["added"], 4, "{rebuilt:#}");
    assert_eq!(rebuilt["removed"], 0, "{rebuilt:#}");
    // The index itself now holds every object, under its EBID.
    let mut expected_ids = vec![
        data_ebid.clone(),
        log_ebid.clone(),
        catalog_ebids[0].clone(),
        catalog_ebids[1].clone(),
    ];
    expected_ids.sort();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault_id = runtime
        .block_on(Vault::open(&VaultConfig::from_url(vault.url())))
        .unwrap()
        .meta()
        .vault_id
        .clone();
    let indexed: Vec<String> = CatalogIndex::open(&index_path)
        .unwrap()
        .list(
            &vault_id,
            &ListFilter {
                engine: Some("hana".to_owned()),
                ..ListFilter::default()
            },
        )
        .unwrap()
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(indexed, expected_ids);

    let listed = strata(&vault, &index_path)
        .args(["--json", "list", "hana", "HDB"])
        .run()
        .success()
        .json();
    let listed_ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, expected_ids, "{listed:#}");
    let plan = strata(&vault, &index_path)
        .args(["restore", "hana", "--sid", "HDB", "--database", "HDB"])
        .args(["--until", "2999-01-01 00:00:00+00"])
        .run()
        .success()
        .stdout_text();
    assert_eq!(plan, expected_plan);

    // hdbbackint on the second host, with that index, restores every object.
    let (data_to, log_to, catalog_to) = (dest("data"), dest("log"), dest("catalog"));
    let agent = BackintCall::new("restore", "HDB")
        .user("HDB@HDB")
        .params(&second_par)
        .line(format!(
            "#NULL {} {}",
            q(&catalog_old.path.display().to_string()),
            q(&catalog_to.display().to_string())
        ))
        .ebid_to(&data_ebid, &data.path, &data_to)
        .ebid_to(&log_ebid, &log.path, &log_to)
        .spawn(&second);
    for (to, piece) in [
        (&catalog_to, &catalog_new),
        (&data_to, &data),
        (&log_to, &log),
    ] {
        let got = drain_pipe(to, OPEN).unwrap();
        assert_eq!(got.bytes, piece.len, "{}", to.display());
        assert_eq!(got.blake3, piece.digest(), "{}", to.display());
    }
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let mut restored = result.with("#RESTORED");
    restored.sort();
    let mut expected = vec![
        vec![
            catalog_ebids[1].clone(),
            catalog_old.path.display().to_string(),
        ],
        vec![data_ebid, data.path.display().to_string()],
        vec![log_ebid, log.path.display().to_string()],
    ];
    expected.sort();
    assert_eq!(restored, expected, "{}", result.describe());
}

/// The vault key of the first segment of the backup whose EBID is `ebid`,
/// read from its manifest in the `file://` vault at `root`.
fn first_segment_key(root: &Path, ebid: &str) -> String {
    let manifest = snapshot(&root.join("manifests"))
        .into_keys()
        .find(|p| p.file_name().is_some_and(|n| *n == *format!("{ebid}.json")))
        .unwrap_or_else(|| panic!("no manifest of {ebid} under {}", root.display()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    manifest["streams"][0]["segments"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `restore hana` checks that every object the recovery will read is in
/// the vault before it prints (or runs) the recovery: HANA would otherwise
/// fail half way, after the operator stopped the system. A log backup whose
/// segment is gone, and each piece of the data backup whose segment is
/// gone, is named (exit 8) and the recovery works again once it is back;
/// a data backup with fewer pieces than HANA sent (`-c`) is named
/// with its HANA backup ID, and `--backup-id` of the complete older one
/// still recovers.
#[test]
fn restore_hana_refuses_when_an_object_the_recovery_reads_is_gone() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let root = PathBuf::from(vault.url().strip_prefix("file://").unwrap());
    let catalog = host.root().join("catalog.db");
    let tenant = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    // Backs up one data backup; its pieces' EBIDs.
    let data = |id: &str, count: usize, pieces: &[&Piece]| -> Vec<String> {
        let saved = back_up(
            &host,
            BackintCall::new("backup", "HDB")
                .user("HDB@HDB")
                .params(&par)
                .backup_id(id)
                .count(count)
                .level("COMPLETE"),
            pieces,
        );
        pieces.iter().map(|p| saved.saved(&p.path).0).collect()
    };
    let volume = |n: u32, seed: u64| {
        // The same names each time, as HANA's backup prefix gives them.
        let _ = std::fs::remove_file(tenant.join(format!("COMPLETE_DATA_BACKUP_databackup_{n}_1")));
        Piece::fifo(
            &tenant,
            &format!("COMPLETE_DATA_BACKUP_databackup_{n}_1"),
            40_001,
            seed,
        )
    };
    let volumes = [volume(2, 81), volume(3, 82)];
    let volume_ebids = data("1763777000000", 2, &[&volumes[0], &volumes[1]]);
    let log = Piece::fifo(&tenant, "log_backup_3_0_100_200", 30_007, 83);
    let log_ebid = back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .user("HDB@HDB")
            .params(&par)
            .level("LOG"),
        &[&log],
    )
    .saved(&log.path)
    .0;
    let restore = |extra: &[&str]| {
        strata(&vault, &catalog)
            .args(["restore", "hana", "--sid", "HDB", "--database", "HDB"])
            .args(["--until", "2999-01-01T00:00:00Z"])
            .args(extra)
            .run()
    };
    restore(&[]).success();

    let key = first_segment_key(&root, &log_ebid);
    let aside = root.join("aside");
    std::fs::rename(root.join(&key), &aside).unwrap();
    let out = restore(&[]).failure(8);
    assert!(
        out.stderr_text().contains(&format!(
            "backup {log_ebid}, stream `log_backup_3_0_100_200`: object {key} is missing from the vault"
        )),
        "{}",
        out.stderr_text()
    );
    assert!(out.stdout_text().is_empty(), "{}", out.stdout_text());
    std::fs::rename(&aside, root.join(&key)).unwrap();
    restore(&[]).success();

    // Each piece of the data backup the recovery starts from, in turn.
    for (volume, ebid) in volumes.iter().zip(&volume_ebids) {
        let key = first_segment_key(&root, ebid);
        std::fs::rename(root.join(&key), &aside).unwrap();
        let out = restore(&[]).failure(8);
        let stream = volume.path.file_name().unwrap().to_str().unwrap();
        assert!(
            out.stderr_text().contains(&format!(
                "backup {ebid}, stream `{stream}`: object {key} is missing from the vault"
            )),
            "{}",
            out.stderr_text()
        );
        assert!(out.stdout_text().is_empty(), "{}", out.stdout_text());
        std::fs::rename(&aside, root.join(&key)).unwrap();
        restore(&[]).success();
    }

    // A newer data backup of three pieces of which the vault has two.
    data("1763778000000", 3, &[&volume(2, 84), &volume(3, 85)]);
    restore(&[])
        .failure(8)
        .stderr_contains("data backup 1763778000000 of HDB@HDB has 2 of its 3 pieces in the vault");
    let plan = restore(&["--backup-id", "1763777000000"])
        .success()
        .stdout_text();
    assert!(plan.contains("USING BACKUP_ID 1763777000000"), "{plan}");
}

//! What an operator sees of HANA backups taken through hdbbackint:
//! `strata list hana` shows each object with SID, database and kind (the
//! catalog index recorded by the agent included), `strata restore hana`
//! prints the recovery only when the vault can serve it, and
//! `strata hana check` names what global.ini lacks.

use std::time::Duration;

use strata_e2e::cli::Strata;
use strata_e2e::hana::{AGENT_TIMEOUT, BackintCall, HanaHost, TestVault, feed_pipe, mkfifo};

#[test]
fn list_and_restore_plan_from_what_hdbbackint_stored() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let catalog_db = host.root().join("catalog.db");
    let dir = host.backint_dir("QAS", "DB_SRC");
    let par = host.standard_params(
        "QAS",
        "data.utl",
        vault.url(),
        &format!("catalog = {}", catalog_db.display()),
    );
    let data = dir.join("COMPLETE_DATA_BACKUP_databackup_3_1");
    let log = dir.join("log_backup_3_0_100_200");
    mkfifo(&data);
    mkfifo(&log);
    let agent = BackintCall::new("backup", "QAS")
        .user("SRC@QAS")
        .params(&par)
        .backup_id("1763772000000")
        .count(1)
        .level("COMPLETE")
        .pipe(&data)
        .spawn(&host);
    let f = feed_pipe(&data, 70_000, 1, Duration::from_secs(60));
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let (data_ebid, _) = result.saved(&data);
    f.join().unwrap().unwrap();
    let agent = BackintCall::new("backup", "QAS")
        .params(&par)
        .level("LOG")
        .pipe(&log)
        .spawn(&host);
    let f = feed_pipe(&log, 5_000, 2, Duration::from_secs(60));
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let (log_ebid, _) = result.saved(&log);
    f.join().unwrap().unwrap();
    assert!(
        catalog_db.is_file(),
        "the agent records its backups in the configured index"
    );

    let listed = Strata::new()
        .arg("--vault")
        .arg(vault.url())
        .arg("--catalog")
        .arg(&catalog_db)
        .args(["--json", "list", "hana", "QAS"])
        .run()
        .success()
        .json();
    // One entry per object, under its EBID, with SID, tenant, kind and size.
    assert_eq!(
        listed_fields(&listed),
        vec![
            (
                data_ebid,
                "QAS".to_owned(),
                "SRC".to_owned(),
                "full".to_owned(),
                70_000
            ),
            (
                log_ebid,
                "QAS".to_owned(),
                "SRC".to_owned(),
                "log".to_owned(),
                5_000
            ),
        ],
        "{listed:#}"
    );

    let plan = Strata::new()
        .arg("--vault")
        .arg(vault.url())
        .arg("--catalog")
        .arg(&catalog_db)
        .args([
            "restore",
            "hana",
            "--sid",
            "QAS",
            "--database",
            "SRC",
            "--target-sid",
            "HDB",
            "--target-database",
            "TGT",
            "--until",
            "2999-01-01 00:00:00+00",
        ])
        .run()
        .success()
        .stdout_text();
    assert!(plan.contains("ALTER SYSTEM STOP DATABASE TGT;"), "{plan}");
    assert!(
        plan.contains("RECOVER DATABASE FOR TGT UNTIL TIMESTAMP '2999-01-01 00:00:00' CLEAR LOG USING SOURCE 'SRC@QAS' USING CATALOG BACKINT"),
        "{plan}"
    );

    // Before the first data backup there is nothing to recover from.
    Strata::new()
        .arg("--vault")
        .arg(vault.url())
        .arg("--catalog")
        .arg(&catalog_db)
        .args([
            "restore",
            "hana",
            "--sid",
            "QAS",
            "--database",
            "SRC",
            "--until",
            "2000-01-01T00:00:00Z",
        ])
        .run()
        .failure(8)
        .stderr_contains("no data backup of SRC@QAS");

    // A time without its zone is refused, never taken for UTC.
    Strata::new()
        .arg("--vault")
        .arg(vault.url())
        .arg("--catalog")
        .arg(&catalog_db)
        .args([
            "restore",
            "hana",
            "--sid",
            "QAS",
            "--database",
            "SRC",
            "--until",
            "2999-01-01 00:00:00",
        ])
        .run()
        .failure(3)
        .stderr_contains("`2999-01-01 00:00:00` has no time zone")
        .stderr_contains("write '2999-01-01 00:00:00+00' for UTC");
}

#[test]
fn hana_check_names_what_global_ini_lacks() {
    let host = HanaHost::new();
    let ini = host.root().join("global.ini");
    std::fs::write(
        &ini,
        "[backup]\nlog_backup_using_backint = true\n[persistence]\nlog_backup_timeout_s = 3600\n",
    )
    .unwrap();
    let out = Strata::new()
        .args(["hana", "check", "--sid", "HDB", "--global-ini"])
        .arg(&ini)
        .run()
        .failure(3)
        .stderr_contains("setting(s) keep Backint");
    let text = out.stdout_text();
    assert!(
        text.contains("MISSING persistence.log_backup_timeout_s = 3600"),
        "{text}"
    );
    assert!(
        text.contains("SET ('backup', 'catalog_backup_using_backint') = 'true' WITH RECONFIGURE;"),
        "{text}"
    );
    assert!(
        text.contains("ok      backup.log_backup_using_backint"),
        "{text}"
    );
}

#[test]
fn hdbbackint_and_strata_share_one_configuration_file() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let catalog_db = host.root().join("catalog.db");
    // The file `strata` reads, engine section included: hdbbackint takes
    // its [vault], [writer] and [catalog] and leaves [postgres.main] alone.
    let config = host.root().join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"{}\"\n[catalog]\npath = \"{}\"\n[writer]\npart_size = \"64KiB\"\nparts_in_flight = 2\n\
             [postgres.main]\nconnection = \"host=/tmp port=5432\"\ndata_directory = \"/srv/pg\"\n",
            vault.url(),
            catalog_db.display()
        ),
    )
    .unwrap();
    // An existing parameter file that still says parallel_parts keeps working.
    let log_file = host.root().join("strata-backint.log");
    let par = host.param_file(
        "HDB",
        "data.utl",
        &format!(
            "config = {}\nparallel_parts = 3\nlog_file = {}\n",
            config.display(),
            log_file.display()
        ),
    );
    let dir = host.backint_dir("HDB", "DB_HDB");
    let data = dir.join("COMPLETE_DATA_BACKUP_databackup_0_1");
    mkfifo(&data);
    let agent = BackintCall::new("backup", "HDB")
        .user("HDB@HDB")
        .params(&par)
        .backup_id("1763772000000")
        .count(1)
        .level("COMPLETE")
        .pipe(&data)
        .spawn(&host);
    let f = feed_pipe(&data, 300_000, 7, Duration::from_secs(60));
    agent.finish(AGENT_TIMEOUT).assert_exit(0);
    f.join().unwrap().unwrap();

    let log = std::fs::read_to_string(&log_file).unwrap();
    let notes: Vec<&str> = log.lines().filter(|l| l.contains("deprecated")).collect();
    assert_eq!(notes.len(), 1, "{log}");
    assert!(
        notes[0].ends_with(&format!(
            "{} line 2: `parallel_parts` is deprecated; write `parts_in_flight = 3` (the same setting, named as in the Strata configuration's [writer])",
            par.display()
        )),
        "{log}"
    );
    // 300,000 bytes in parts of the configured 64 KiB: five, not one of 16 MiB.
    let manifests = vault.manifests();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].raw_size(), 300_000);
    assert_eq!(manifests[0].streams[0].part_count(), 5);

    // strata reads the same file, with the index hdbbackint recorded in.
    let listed = Strata::new()
        .arg("--config")
        .arg(&config)
        .args(["--json", "list", "hana", "HDB"])
        .run()
        .success()
        .json();
    assert_eq!(
        listed_fields(&listed),
        vec![(
            manifests[0].id.to_string(),
            "HDB".to_owned(),
            "HDB".to_owned(),
            "full".to_owned(),
            300_000
        )],
        "{listed:#}"
    );
    assert!(catalog_db.is_file(), "hdbbackint records in [catalog] path");
}

/// `strata --json list` entries as (id, instance, database, kind, raw
/// bytes), in the order listed.
fn listed_fields(listed: &serde_json::Value) -> Vec<(String, String, String, String, u64)> {
    listed
        .as_array()
        .unwrap_or_else(|| panic!("`list --json` prints an array: {listed:#}"))
        .iter()
        .map(|b| {
            let text = |field: &str| {
                b[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("`{field}` is text in {b:#}"))
                    .to_owned()
            };
            assert_eq!(b["engine"], "hana", "{b:#}");
            (
                text("id"),
                text("instance"),
                text("database"),
                text("kind"),
                b["raw_bytes"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("`raw_bytes` is a number in {b:#}")),
            )
        })
        .collect()
}

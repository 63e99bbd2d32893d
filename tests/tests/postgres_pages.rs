//! Page checksum verification during full backups of a real PostgreSQL
//! cluster (data checksums on, as the test clusters are made): every page is
//! checked against PostgreSQL's own checksums, and a page damaged on disk is
//! reported by file and block while the backup is still committed.

use std::os::unix::fs::FileExt;

use strata_e2e::pg::PgStrata;

fn backup_json(env: &PgStrata) -> (serde_json::Value, String) {
    let out = env
        .strata(&["--json", "backup", "pg", "main", "--kind", "full"])
        .success();
    (out.json(), out.stderr_text())
}

#[test]
fn backups_verify_page_checksums_and_name_a_damaged_page() {
    let env = PgStrata::new("pg_pages");
    let pg = &env.cluster;
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    // Nothing but the backup reads the table from here on.
    pg.psql("ALTER TABLE pgbench_accounts SET (autovacuum_enabled = off)");
    pg.psql("CHECKPOINT");
    let table_pages: u64 = pg
        .psql("SELECT pg_relation_size('pgbench_accounts') / 8192")
        .parse()
        .unwrap();
    let file = pg.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    assert!(table_pages > 100, "{table_pages} pages");

    // A sound cluster: every page of the table (and of the catalogs) is
    // checked with PostgreSQL's algorithm, and none fails.
    let (clean, stderr) = backup_json(&env);
    let verified = clean["page_check"]["verified"].as_u64().expect("verified");
    assert!(
        verified > table_pages,
        "{verified} pages verified, the table alone has {table_pages}: {clean}"
    );
    assert!(clean["page_check"].get("damaged").is_none(), "{clean}");
    assert_eq!(clean["page_check"]["damaged_pages"], 0, "{clean}");
    assert!(!stderr.contains("warning"), "{stderr}");

    // One byte of block 1's tuple data flipped on disk, as a bad disk would.
    pg.stop();
    let path = pg.data.join(&file);
    let on_disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = 8192 + 8000;
    let mut byte = [0u8; 1];
    on_disk.read_exact_at(&mut byte, at).unwrap();
    on_disk.write_all_at(&[byte[0] ^ 0xFF], at).unwrap();
    on_disk.sync_all().unwrap();
    drop(on_disk);
    pg.start();

    let (damaged, stderr) = backup_json(&env);
    assert_eq!(
        damaged["page_check"]["damaged"],
        serde_json::json!([{ "path": file, "blocks": [1] }]),
        "{damaged}"
    );
    assert_eq!(damaged["page_check"]["damaged_pages"], 1, "{damaged}");
    // The rest of the table is still checked.
    let verified_now = damaged["page_check"]["verified"].as_u64().unwrap();
    assert!(verified_now > table_pages - 1, "{damaged}");
    assert!(
        stderr.contains(&format!(
            "warning: 1 page(s) of the cluster failed their checksum: {file} (block 1)"
        )) && stderr.contains("pg_amcheck"),
        "{stderr}"
    );
    // The backup was committed and is a sound copy of what is on disk.
    let listed = env
        .strata(&["--json", "list", "pg", "main"])
        .success()
        .json();
    let ids: Vec<&serde_json::Value> = listed["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("backups: {listed}"))
        .iter()
        .map(|b| &b["id"])
        .collect();
    assert_eq!(ids, [&clean["id"], &damaged["id"]], "{listed}");
    let verified_backups = env.strata(&["verify", "--json"]).success().json();
    let verdicts: Vec<(&serde_json::Value, &serde_json::Value)> = verified_backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (&b["id"], &b["ok"]))
        .collect();
    let ok = serde_json::Value::Bool(true);
    assert_eq!(
        verdicts,
        [(&clean["id"], &ok), (&damaged["id"], &ok)],
        "{verified_backups}"
    );
}

//! PostgreSQL with an encrypted vault: `archive_command` seals every WAL
//! segment, backups seal every part, and `wal-fetch`, point-in-time
//! restores and `strata verify` open them with the vault key. Without the
//! key, or with another vault's, nothing is restored and nothing is
//! written. A second host that shares only the vault and the key (its
//! catalog index empty) restores the same rows and rebuilds its catalog
//! from the vault.

use std::path::Path;
use std::time::Duration;

use strata_core::catalog::index::{CatalogIndex, ListFilter};
use strata_e2e::pg::{PgCluster, PgStrata, give_to_postgres};

const ARCHIVE_WAIT: Duration = Duration::from_secs(90);

/// Inserts marker `i` and returns the time it was inserted (just before its commit).
fn marker(pg: &PgCluster, i: u32) -> chrono::DateTime<chrono::Utc> {
    let at = pg.psql(&format!(
        "INSERT INTO markers VALUES ({i}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ));
    at.parse()
        .unwrap_or_else(|e| panic!("marker time `{at}`: {e}"))
}

fn markers(pg: &PgCluster) -> String {
    pg.psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM markers")
}

/// What `bulk` holds, as the server computes it: row count and a digest of the rows in order.
fn bulk_digest(pg: &PgCluster) -> String {
    pg.psql("SELECT count(*) || ':' || md5(string_agg(g || '=' || h, ',' ORDER BY g)) FROM bulk")
}

/// The header (second line, JSON) of an archive object in the vault.
fn archive_header(object: &Path) -> serde_json::Value {
    let bytes = std::fs::read(object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
    let mut lines = bytes.splitn(3, |b| *b == b'\n');
    assert_eq!(
        lines.next(),
        Some(&b"STRATA-WAL1"[..]),
        "{}",
        object.display()
    );
    serde_json::from_slice(lines.next().expect("a header line")).expect("a JSON header")
}

/// `restore pg main --latest` into `dir` with `config` and extra global
/// arguments (`--key-file`) before the command.
fn restore_latest(
    env: &PgStrata,
    config: &Path,
    global: &[&str],
    dir: &Path,
) -> strata_e2e::cli::RunOutput {
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    env.strata_with(config, &args)
}

/// A full backup and the WAL after it, archived into an encrypted vault,
/// restore to a time between two commits with the bulk table's rows
/// intact; the WAL objects and the manifest say they are sealed, and
/// `wal-fetch` gives back the segment PostgreSQL wrote. A missing key
/// file (exit 7, naming the file) or another vault's key (exit 7) stops a
/// restore before it writes anything, and makes `wal-fetch` exit 126 so
/// that recovery stops. A second host with an empty catalog index
/// restores the latest rows, rebuilds its index from the vault, and
/// `verify` there names the object of a damaged part.
#[test]
fn an_encrypted_vault_restores_a_time_with_its_key_and_nothing_without_it() {
    let env = PgStrata::encrypted("pg_encrypted");
    let pg = &env.cluster;
    let key_file = env.key_file.clone().expect("an encrypted vault");
    let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.psql("CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g");
    let full = env
        .strata(&["--json", "backup", "pg", "main"])
        .success()
        .json();
    let id = full["id"].as_str().expect("a backup id").to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.vault_dir
                .join(format!("manifests/postgres/main/{id}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["encryption"]["algorithm"], "chacha20poly1305",
        "the backup's parts are sealed: {manifest}"
    );

    pg.psql("UPDATE bulk SET h = 'after the backup' WHERE g % 100 = 0");
    marker(pg, 1);
    std::thread::sleep(Duration::from_millis(600));
    let second = marker(pg, 2);
    let expected_bulk = bulk_digest(pg);
    std::thread::sleep(Duration::from_millis(600));
    marker(pg, 3);
    pg.psql("UPDATE bulk SET h = 'too late' WHERE g % 10 = 0");
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_and_wait_archived(ARCHIVE_WAIT);
    let latest_bulk = bulk_digest(pg);

    // The segment in the vault is sealed, and comes back as PostgreSQL wrote it.
    let object = env.vault_dir.join(format!(
        "engines/postgres/main/wal/{system_id}/00000001/{segment}"
    ));
    let header = archive_header(&object);
    assert_eq!(
        header["encryption"]["algorithm"], "chacha20poly1305",
        "{header}"
    );
    let scratch = env.dir.mkdir("scratch");
    give_to_postgres(&scratch);
    let dest = scratch.join("RECOVERYXLOG");
    let fetch = |global: &[&str]| {
        let mut args: Vec<&str> = global.to_vec();
        args.extend([
            "pg",
            "wal-fetch",
            segment.as_str(),
            dest.to_str().unwrap(),
            "--cluster",
            "main",
        ]);
        env.strata_as_postgres(&scratch, &args)
    };
    fetch(&[]).success();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(pg.data.join("pg_wal").join(&segment))
            .expect("the segment is still in pg_wal"),
        "wal-fetch opens the sealed segment"
    );
    std::fs::remove_file(&dest).unwrap();

    // Between markers 2 and 3: the backup, then WAL opened with the key.
    let target = second + chrono::Duration::milliseconds(300);
    let (report, copy) = env.restore_to_time("pitr", target, &[]);
    assert_eq!(report["backup"], id.as_str(), "{report}");
    assert_eq!(markers(&copy), "1,2");
    assert_eq!(bulk_digest(&copy), expected_bulk);
    copy.amcheck();
    drop(copy);

    // Without the key file: refused before anything is written, naming it.
    let moved_key = env.dir.path("vault.key.away");
    std::fs::rename(&key_file, &moved_key).unwrap();
    let (dir, _) = env.restore_target("no_key");
    let out = restore_latest(&env, &env.config, &[], &dir);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(7), "a missing key is a key error: {err}");
    assert!(
        err.contains(&format!("cannot read key file {}", key_file.display())),
        "{err}"
    );
    assert!(!dir.exists(), "nothing was written");
    let out = fetch(&[]);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "recovery must stop: {err}");
    assert!(
        err.contains(&format!("error: wal-fetch {segment}: "))
            && err.contains(&format!("cannot read key file {}", key_file.display())),
        "{err}"
    );
    assert!(!dest.exists(), "wal-fetch wrote nothing");
    std::fs::rename(&moved_key, &key_file).unwrap();

    // Another vault's key: refused the same way.
    let other_key = env.dir.path("other.key");
    std::fs::write(
        &other_key,
        format!(
            "{:032x}{:032x}\n",
            rand::random::<u128>(),
            rand::random::<u128>()
        ),
    )
    .unwrap();
    // Owner-only, as a key file must be (a looser one is refused first).
    std::fs::set_permissions(
        &other_key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    give_to_postgres(&other_key);
    let other = ["--key-file", other_key.to_str().unwrap()];
    let (dir, _) = env.restore_target("other_key");
    let out = restore_latest(&env, &env.config, &other, &dir);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(7), "a wrong key is a key error: {err}");
    assert!(
        err.contains(&format!(
            "the key does not belong to the vault at {}",
            env.vault_url
        )),
        "{err}"
    );
    assert!(!dir.exists(), "nothing was written");
    let out = fetch(&other);
    let err = out.stderr_text();
    assert_eq!(out.code(), Some(126), "recovery must stop: {err}");
    assert!(
        err.contains(&format!("error: wal-fetch {segment}: "))
            && err.contains("the key does not belong to the vault at"),
        "{err}"
    );
    assert!(!dest.exists(), "wal-fetch wrote nothing");

    // A second host: the same vault and key, its own (empty) catalog index,
    // no cluster of its own yet.
    let (absent, port) = env.restore_target("host2-pgdata");
    let host2 = env.host_config(
        "host2",
        &PgCluster::adopt(absent, port, pg.socket_dir.clone()),
    );
    let host2_index = env.dir.path("host2-catalog.db");
    assert!(!host2_index.exists());
    let (dir, port) = env.restore_target("on_host2");
    let report = env
        .strata_with(
            &host2,
            &[
                "--json",
                "restore",
                "pg",
                "main",
                "--latest",
                "--target-dir",
                dir.to_str().unwrap(),
                "--port",
                &port.to_string(),
                "--start",
            ],
        )
        .success()
        .json();
    assert_eq!(report["backup"], id.as_str(), "{report}");
    assert_eq!(report["started"], true, "{report}");
    let copy = PgCluster::adopt(dir, port, pg.socket_dir.clone());
    assert_eq!(markers(&copy), "1,2,3");
    assert_eq!(bulk_digest(&copy), latest_bulk);
    drop(copy);

    // Its index is rebuilt from the vault alone and lists the backup.
    let _ = std::fs::remove_file(&host2_index);
    let rebuilt = env
        .strata_with(&host2, &["--json", "catalog", "rebuild"])
        .success()
        .json();
    assert_eq!(rebuilt["manifests"], 1, "{rebuilt}");
    assert_eq!(rebuilt["added"], 1, "{rebuilt}");
    assert_eq!(rebuilt["removed"], 0, "{rebuilt}");
    assert!(host2_index.is_file(), "the index was written");
    // The rows are in the index file itself, not only in the counts.
    let info = env
        .strata_with(&host2, &["--json", "vault", "info"])
        .success()
        .json();
    let vault_id = info["meta"]["vault_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a vault id: {info}"));
    let indexed: Vec<String> = CatalogIndex::open(&host2_index)
        .unwrap_or_else(|e| panic!("{}: {e}", host2_index.display()))
        .list(vault_id, &ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(indexed, [id.as_str()], "the rebuilt index holds the backup");
    let listed = env
        .strata_with(&host2, &["--json", "list"])
        .success()
        .json();
    let ids: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap_or_else(|| panic!("a list: {listed}"))
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["engine"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, [(id.as_str(), "postgres")], "{listed}");

    // `verify` opens every sealed part there; a flipped byte is named by its object.
    let verified = env
        .strata_with(&host2, &["--json", "verify"])
        .success()
        .json();
    assert_eq!(verified[0]["id"], id.as_str(), "{verified}");
    assert_eq!(verified[0]["ok"], true, "{verified}");
    assert_eq!(verified[0]["problems"], serde_json::json!([]), "{verified}");
    let segment_key = manifest["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "data.0")
        .and_then(|s| s["segments"][0]["key"].as_str())
        .unwrap_or_else(|| panic!("a data.0 segment: {manifest}"))
        .to_owned();
    let damaged = env.vault_dir.join(&segment_key);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = env.strata_with(&host2, &["--json", "verify"]);
    assert_eq!(
        out.code(),
        Some(6),
        "damage is an integrity failure: {}",
        out.stderr_text()
    );
    let verified: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(verified[0]["ok"], false, "{verified}");
    let problems: Vec<&str> = verified[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        !problems.is_empty() && problems.iter().all(|p| p.contains(&segment_key)),
        "every problem names {segment_key}: {problems:?}"
    );
}

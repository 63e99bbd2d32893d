//! The local catalog index: recording, filtering, rebuilding from a vault,
//! damaged files and several processes sharing one file.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use strata_core::ErrorKind;
use strata_core::catalog::index::{CatalogIndex, ListFilter, RebuildReport};
use strata_core::catalog::manifest::{
    BackupId, BackupKind, Compression, MANIFEST_FORMAT, Manifest, PartRecord, Position,
    SegmentRecord, StreamRecord,
};
use strata_core::vault::{Vault, VaultConfig};

fn at(minutes: i64) -> DateTime<Utc> {
    "2026-11-22T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

/// A realistic manifest: one stream of two parts in one segment.
fn manifest(
    minutes: i64,
    engine: &str,
    instance: &str,
    database: Option<&str>,
    kind: BackupKind,
) -> Manifest {
    let started_at = at(minutes);
    let id = BackupId::generate(started_at);
    let parts = vec![
        PartRecord {
            raw: 16 << 20,
            stored: 4_000_000,
            crc32c: 0x1234_5678,
        },
        PartRecord {
            raw: 1000,
            stored: 400,
            crc32c: 0x9abc_def0,
        },
    ];
    Manifest {
        format: MANIFEST_FORMAT,
        engine: engine.to_owned(),
        instance: instance.to_owned(),
        database: database.map(str::to_owned),
        kind,
        started_at,
        ended_at: started_at + Duration::minutes(3),
        consistent_at: Some(started_at + Duration::minutes(3)),
        fork: "1".to_owned(),
        start: Some(Position(minutes as u128 * 1000)),
        end: Some(Position(minutes as u128 * 1000 + 500)),
        base: None,
        compression: Compression {
            algorithm: "zstd".to_owned(),
            level: 3,
        },
        encryption: None,
        streams: vec![StreamRecord {
            name: "data".to_owned(),
            raw_size: (16 << 20) + 1000,
            stored_size: 4_000_400,
            blake3: Some("ab".repeat(32)),
            segments: vec![SegmentRecord {
                key: format!("data/{engine}/{instance}/{id}/data.0.zst"),
                stored_size: 4_000_400,
                parts,
            }],
        }],
        labels: BTreeMap::from([("host".to_owned(), "db1".to_owned())]),
        engine_meta: serde_json::json!({"system_identifier": "7301234567890123456"}),
        id,
    }
}

fn ids(manifests: &[Manifest]) -> Vec<String> {
    manifests.iter().map(|m| m.id.to_string()).collect()
}

#[test]
fn record_list_filter_get_forget() {
    let index = CatalogIndex::open_in_memory().unwrap();
    let pg_full = manifest(0, "postgres", "main", None, BackupKind::Full);
    let pg_log = manifest(5, "postgres", "main", None, BackupKind::Log);
    let sql_full = manifest(
        1,
        "sqlserver",
        "MSSQLSERVER",
        Some("sales"),
        BackupKind::Full,
    );
    let sql_diff = manifest(
        7,
        "sqlserver",
        "MSSQLSERVER",
        Some("sales"),
        BackupKind::Diff,
    );
    let sql_other = manifest(3, "sqlserver", "MSSQLSERVER", Some("hr"), BackupKind::Full);
    // Recorded out of order: listing sorts by id (start time).
    for m in [&sql_diff, &pg_log, &sql_other, &pg_full, &sql_full] {
        index.record("vault-a", m).unwrap();
    }
    let other_vault = manifest(2, "postgres", "main", None, BackupKind::Full);
    index.record("vault-b", &other_vault).unwrap();

    let all = index.list("vault-a", &ListFilter::default()).unwrap();
    assert_eq!(
        all,
        vec![
            pg_full.clone(),
            sql_full.clone(),
            sql_other.clone(),
            pg_log.clone(),
            sql_diff.clone()
        ],
        "every field survives the round trip and rows come in id order"
    );

    let sales = index
        .list(
            "vault-a",
            &ListFilter {
                engine: Some("sqlserver".into()),
                database: Some("sales".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ids(&sales), ids(&[sql_full.clone(), sql_diff.clone()]));

    let fulls = index
        .list(
            "vault-a",
            &ListFilter {
                kind: Some(BackupKind::Full),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        ids(&fulls),
        ids(&[pg_full.clone(), sql_full.clone(), sql_other.clone()])
    );

    let pg = index
        .list(
            "vault-a",
            &ListFilter {
                engine: Some("postgres".into()),
                instance: Some("main".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ids(&pg), ids(&[pg_full.clone(), pg_log.clone()]));
    assert_eq!(
        index.list("vault-b", &ListFilter::default()).unwrap(),
        vec![other_vault.clone()]
    );

    assert_eq!(
        index.get("vault-a", &sql_diff.id).unwrap(),
        Some(sql_diff.clone())
    );
    assert_eq!(index.get("vault-b", &sql_diff.id).unwrap(), None);

    // Recording again replaces the row (an upsert), it does not duplicate it.
    let mut relabelled = sql_diff.clone();
    relabelled
        .labels
        .insert("tag".to_owned(), "before-upgrade".to_owned());
    index.record("vault-a", &relabelled).unwrap();
    assert_eq!(
        index.get("vault-a", &sql_diff.id).unwrap(),
        Some(relabelled)
    );
    assert_eq!(
        index.list("vault-a", &ListFilter::default()).unwrap().len(),
        5
    );

    index.forget("vault-a", &pg_log.id).unwrap();
    index.forget("vault-a", &pg_log.id).unwrap();
    assert_eq!(index.get("vault-a", &pg_log.id).unwrap(), None);
    assert_eq!(
        ids(&index.list("vault-a", &ListFilter::default()).unwrap()),
        ids(&[pg_full, sql_full, sql_other, sql_diff])
    );
    assert!(!index.is_synced("vault-a").unwrap());
}

#[tokio::test]
async fn rebuild_reproduces_the_vault_and_drops_deleted_backups() {
    let vault = Vault::init(&VaultConfig::from_url("memory://index-rebuild"), None)
        .await
        .unwrap();
    let vault_id = vault.meta().vault_id.clone();
    let committed = vec![
        manifest(0, "postgres", "main", None, BackupKind::Full),
        manifest(10, "postgres", "main", None, BackupKind::Log),
        manifest(20, "hana", "HDB", Some("SYSTEMDB"), BackupKind::Full),
    ];
    for m in &committed {
        vault.put_manifest(m).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("catalog.sqlite");
    let index = CatalogIndex::open(&path).unwrap();
    // A row for a backup that is not (or no longer) in the vault, one that
    // is, and a row of another vault that a rebuild must not touch.
    let stale = manifest(5, "postgres", "main", None, BackupKind::Diff);
    index.record(&vault_id, &stale).unwrap();
    index.record(&vault_id, &committed[0]).unwrap();
    let foreign = manifest(1, "postgres", "main", None, BackupKind::Full);
    index.record("another-vault", &foreign).unwrap();
    assert!(!index.is_synced(&vault_id).unwrap());

    let report = index.rebuild(&vault).await.unwrap();
    assert_eq!(
        report,
        RebuildReport {
            manifests: 3,
            added: 2,
            removed: 1
        }
    );
    assert!(index.is_synced(&vault_id).unwrap());
    assert_eq!(
        index.list(&vault_id, &ListFilter::default()).unwrap(),
        committed,
        "the index holds exactly what the vault holds"
    );
    assert_eq!(
        index.list("another-vault", &ListFilter::default()).unwrap(),
        vec![foreign]
    );

    // Deleting a backup from the vault and rebuilding drops its row.
    vault.delete_backup(&committed[1], "test").await.unwrap();
    drop(index);
    let index = CatalogIndex::open(&path).unwrap();
    let report = index.rebuild(&vault).await.unwrap();
    assert_eq!(
        report,
        RebuildReport {
            manifests: 2,
            added: 0,
            removed: 1
        }
    );
    assert_eq!(
        index.list(&vault_id, &ListFilter::default()).unwrap(),
        vec![committed[0].clone(), committed[2].clone()]
    );
}

#[test]
fn a_garbage_index_file_says_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    std::fs::write(
        &path,
        b"this is not a database, just bytes that got here ".repeat(100),
    )
    .unwrap();
    let err = CatalogIndex::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Catalog);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert!(
        err.hint_text().unwrap().contains("strata catalog rebuild"),
        "{err:?}"
    );
}

#[test]
fn an_index_from_a_newer_strata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    drop(CatalogIndex::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = CatalogIndex::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Catalog);
    assert!(err.to_string().contains("schema version 99"), "{err}");
    assert!(
        err.hint_text().unwrap().contains("upgrade Strata"),
        "{err:?}"
    );
}

#[test]
fn reopening_keeps_rows_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let m = manifest(0, "postgres", "main", None, BackupKind::Full);
    CatalogIndex::open(&path).unwrap().record("v", &m).unwrap();
    let index = CatalogIndex::open(&path).unwrap();
    assert_eq!(index.get("v", &m.id).unwrap(), Some(m));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Set in a child process of [`two_processes_write_the_same_index_without_lock_failures`]:
/// the writer number; the index path and start file follow.
const WRITER_ROLE: &str = "STRATA_TEST_INDEX_WRITER";
const WRITER_INDEX: &str = "STRATA_TEST_INDEX_PATH";
const WRITER_START: &str = "STRATA_TEST_INDEX_START";
const PER_WRITER: i64 = 150;

/// The body of one writer process (a no-op unless run as a child of
/// [`two_processes_write_the_same_index_without_lock_failures`]): opens its
/// own connection, as the service and `strata pg wal-push` do (either may
/// create the file), waits for the start signal, then records, forgets and
/// lists, and prints the ids it left recorded.
#[test]
fn index_writer_process() {
    let Ok(writer) = std::env::var(WRITER_ROLE) else {
        return;
    };
    let writer: i64 = writer.parse().unwrap();
    let path = std::path::PathBuf::from(std::env::var(WRITER_INDEX).unwrap());
    let start = std::path::PathBuf::from(std::env::var(WRITER_START).unwrap());
    let index = CatalogIndex::open(&path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !start.exists() {
        assert!(std::time::Instant::now() < deadline, "never told to start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut written = Vec::new();
    for i in 0..PER_WRITER {
        let m = manifest(
            writer * 10_000 + i,
            "postgres",
            &format!("writer{writer}"),
            None,
            BackupKind::Log,
        );
        index.record("shared-vault", &m).unwrap();
        if i % 10 == 9 {
            // Interleave deletes and reads with the other writer.
            index.forget("shared-vault", &m.id).unwrap();
            index.list("shared-vault", &ListFilter::default()).unwrap();
        } else {
            written.push(m.id.to_string());
        }
    }
    // On a line of its own: the harness has printed the test name.
    println!("\nrecorded {}", written.join(","));
}

/// Two processes (SQLite's locks are POSIX record locks, held per process:
/// two threads of one process would not contend for them) record, forget
/// and list in one index file at the same time: neither sees a lock error,
/// and the file holds exactly the rows both left.
#[test]
fn two_processes_write_the_same_index_without_lock_failures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared").join("catalog.sqlite");
    let start = dir.path().join("start");
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "index_writer_process", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(WRITER_ROLE, writer.to_string())
                .env(WRITER_INDEX, &path)
                .env(WRITER_START, &start)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a writer process")
        })
        .collect();
    // Both have started (and may be opening the file) before either writes.
    std::fs::write(&start, b"").unwrap();
    let mut expected: Vec<String> = Vec::new();
    let mut pids = Vec::new();
    for writer in writers {
        pids.push(writer.id());
        let out = writer.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "a writer process failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let recorded = stdout
            .lines()
            .find_map(|l| l.strip_prefix("recorded "))
            .unwrap_or_else(|| panic!("the writer ran no writes: {stdout}"));
        expected.extend(recorded.split(',').map(str::to_owned));
    }
    assert_ne!(pids[0], pids[1], "two processes");
    assert_eq!(expected.len(), 2 * PER_WRITER as usize * 9 / 10);
    expected.sort();
    let index = CatalogIndex::open(&path).unwrap();
    let listed = ids(&index.list("shared-vault", &ListFilter::default()).unwrap());
    assert_eq!(listed, expected);
}

#[cfg(unix)]
#[test]
fn a_new_index_is_shared_with_the_group_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let index = CatalogIndex::open(&path).unwrap();
    index
        .record(
            "v",
            &manifest(0, "postgres", "main", None, BackupKind::Full),
        )
        .unwrap();
    for file in [path.clone(), dir.path().join("catalog.sqlite-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{} has mode {mode:o}", file.display());
    }
}

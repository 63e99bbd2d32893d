//! The PostgreSQL path (WAL archiving, full backup, point-in-time restore)
//! against the object-store emulators: Azurite (az://) and moto (s3://).
//! Skipped with a notice when `scripts/emulators.sh` has not set their URLs,
//! unless STRATA_REQUIRE_EMULATORS=1.

use std::time::Duration;

use strata_e2e::backends::{Backend, TestVault};
use strata_e2e::pg::{PgCluster, PgStrata};

fn full_wal_and_point_in_time_restore(backend: Backend) {
    let test = format!("pg_{}", backend.name());
    let Some(location) = TestVault::new(backend, &test) else {
        return;
    };
    let env = PgStrata::with_vault(&test, Some(location.url()));
    let pg = &env.cluster;
    pg.psql("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)");
    pg.psql("CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g");
    env.strata(&["backup", "pg", "main"]).success();
    let mut times = Vec::new();
    for i in 1..=4 {
        std::thread::sleep(Duration::from_millis(800));
        let at = pg.psql(&format!(
            "INSERT INTO markers VALUES ({i}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        ));
        times.push(at.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    }
    pg.switch_and_wait_archived(Duration::from_secs(90));

    let target = times[1] + chrono::Duration::milliseconds(400);
    let (dir, port) = env.restore_target("copy");
    let report = env
        .strata(&[
            "--json",
            "restore",
            "pg",
            "main",
            "--to-time",
            &target.to_rfc3339(),
            "--target-dir",
            dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--start",
        ])
        .success()
        .json();
    assert_eq!(report["started"], true, "{report}");
    let copy = PgCluster::adopt(dir, port, pg.socket_dir.clone());
    assert_eq!(
        copy.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers"),
        "1,2"
    );
    assert_eq!(
        copy.psql("SELECT count(*), sum(g) FROM bulk"),
        "20000|200010000"
    );
    drop(copy);
    drop(env);
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(location.cleanup());
}

#[test]
fn postgres_on_azurite() {
    full_wal_and_point_in_time_restore(Backend::Azure);
}

#[test]
fn postgres_on_moto() {
    full_wal_and_point_in_time_restore(Backend::S3);
}

#[test]
fn postgres_on_fake_gcs() {
    full_wal_and_point_in_time_restore(Backend::Gcs);
}

//! The service protecting SQL Server databases: `strata serve` takes the
//! initial full of each protected database, then log backups every
//! `log_interval`, and turns a log backup whose chain another tool broke
//! into a full, recorded in the job history with the reason.
//!
//! The service passes once a minute and `log_interval` is at least a
//! minute, so after the first pass (the real service, over its control
//! socket) the test runs single passes in compressed time, as
//! `tests/tests/service.rs` does: `strata serve --once --now T` evaluates
//! the schedule as if it were `T`, while the backups themselves are real.
//!
//! Runs against the emulator, or a real SQL Server when
//! `STRATA_TEST_SQLSERVER` names one (see `docker/`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use strata_e2e::cli::strata_bin;
use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlServerFixture};

/// A policy time zone in which the nightly full's 03:00 is about twelve
/// hours away, so that no pass of the test (all within minutes of now)
/// reaches a scheduled full: `Etc/GMT-N` is UTC+N.
fn zone_far_from_three_am(now: DateTime<Utc>) -> String {
    let mut offset = (15 - now.hour() as i32).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    match offset {
        0 => "UTC".to_owned(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
    }
}

/// `base` with the random suffix of the fixture's directory: a database
/// name of this run only.
fn database_name(fx: &SqlServerFixture, base: &str) -> String {
    let dir = fx.dir.root().file_name().unwrap().to_string_lossy();
    format!("{base}_{}", dir.rsplit('-').next().unwrap())
}

/// `strata serve` in the foreground, as systemd runs it.
struct Service {
    child: Child,
}

impl Service {
    fn start(fx: &SqlServerFixture) -> Service {
        let child = Command::new(strata_bin())
            .arg("--config")
            .arg(&fx.config)
            .args(["-v", "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(fx.dir.path("serve.log")).unwrap())
            .spawn()
            .expect("start strata serve");
        Service { child }
    }

    /// Sends SIGTERM and waits for the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "serve did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `strata --json jobs`: the job history, newest first.
fn jobs(fx: &SqlServerFixture) -> Vec<serde_json::Value> {
    fx.strata(["--json", "jobs", "--limit", "100"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// One pass of the service at the simulated time `now`.
fn pass(fx: &SqlServerFixture, now: DateTime<Utc>) -> serde_json::Value {
    fx.strata(["--json", "serve", "--once", "--now", &now.to_rfc3339()])
        .success()
        .json()
}

/// The backup jobs of a pass report (retention passes left out).
fn backup_jobs(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {report}"))
        .iter()
        .filter(|j| j["kind"] != "expire")
        .cloned()
        .collect()
}

/// `[[protect]] databases = ["sales"]`: the initial full runs for `sales`
/// only; log backups follow every `log_interval`; a log backup taken by
/// another tool breaks the chain, and the next due log job runs as a full,
/// shown in `strata jobs` as kind `full`, trigger `chain-broken`, with the
/// reason in its hint; the log job after it is a log again.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_takes_the_initial_full_then_logs_and_heals_a_broken_chain() {
    let fx = SqlServerFixture::start("sqlserver-service", FixtureOptions::default(), |_| {}).await;
    // Names of this run only: a real server keeps other runs' databases.
    let (sales, hr) = (database_name(&fx, "sales"), database_name(&fx, "hr"));
    let mut sql = fx.client().await;
    for db in [&sales, &hr] {
        sql.exec(&format!("CREATE DATABASE [{db}]")).await;
        sql.exec(&format!(
            "CREATE TABLE [{db}].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)"
        ))
        .await;
        sql.exec(&format!(
            "INSERT INTO [{db}].[dbo].[t] (id, note) VALUES (1, N'first')"
        ))
        .await;
    }
    let socket = fx.dir.path("strata.sock");
    let mut config = std::fs::read_to_string(&fx.config).unwrap();
    config.push_str(&format!(
        r#"
[service]
socket = "{}"
shutdown_grace = "0s"

[policy.p]
time_zone = "{}"
full = "0 3 * * *"
log_interval = "1m"

[[protect]]
engine = "sqlserver"
instance = "main"
databases = ["{sales}"]
policy = "p"
"#,
        socket.display(),
        zone_far_from_three_am(Utc::now()),
    ));
    std::fs::write(&fx.config, config).unwrap();
    let checked = fx.strata(["--json", "config", "check"]).success().json();
    let item = &checked["protected"][0];
    assert_eq!(item["engine"], "sqlserver", "{checked:#}");
    assert_eq!(item["databases"], serde_json::json!([sales]), "{checked:#}");
    assert!(item["log_interval"].is_string(), "{checked:#}");

    // The service's first pass takes the initial full of sales; `strata
    // jobs`, answered by the service over its socket, shows it.
    let service = Service::start(&fx);
    let deadline = Instant::now() + Duration::from_secs(120);
    let full = loop {
        if socket.exists() {
            let history = jobs(&fx);
            if let Some(done) = history
                .iter()
                .find(|j| j["result"] != "running" && j["kind"] != "expire")
            {
                break done.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no job ended within 2 minutes:\n{}",
            std::fs::read_to_string(fx.dir.path("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(full["result"], "succeeded", "{full}");
    assert_eq!(full["engine"], "sqlserver", "{full}");
    assert_eq!(full["database"], sales.as_str(), "{full}");
    assert_eq!(full["kind"], "full", "{full}");
    assert_eq!(full["trigger"], "initial", "{full}");
    let answered = fx.strata(["-v", "--json", "jobs"]).success();
    assert!(
        answered.stderr_text().contains("answered by the service"),
        "{}",
        answered.stderr_text()
    );
    assert_eq!(
        answered.json().as_array().unwrap()[0]["backup_id"],
        full["backup_id"]
    );
    assert_eq!(
        service.terminate().await,
        Some(0),
        "a stop on SIGTERM is clean"
    );
    let history = jobs(&fx);
    assert!(
        history.iter().all(|j| j["database"] == sales.as_str()),
        "only {sales} is protected, not {hr}: {history:#?}"
    );
    let listed = fx.strata(["--json", "list"]).success().json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["id"], full["backup_id"]);
    assert_eq!(listed[0]["database"], sales.as_str(), "{listed:#?}");

    // Two minutes later a log backup is due (log_interval 1m).
    let start = Utc::now();
    sql.exec(&format!(
        "INSERT INTO [{sales}].[dbo].[t] (id, note) VALUES (2, N'in the first log')"
    ))
    .await;
    let report = pass(&fx, start + chrono::Duration::minutes(2));
    let ran = backup_jobs(&report);
    assert_eq!(ran.len(), 1, "{report:#}");
    assert_eq!(
        (&ran[0]["kind"], &ran[0]["trigger"], &ran[0]["result"]),
        (&"log".into(), &"schedule".into(), &"succeeded".into()),
        "{report:#}"
    );

    // Another tool takes a log backup: the vault's chain no longer reaches
    // the log SQL Server would write next.
    sql.exec(&format!(
        "INSERT INTO [{sales}].[dbo].[t] (id, note) VALUES (3, N'in the other tool''s log')"
    ))
    .await;
    sql.exec(&format!(
        "BACKUP LOG [{sales}] TO DISK = N'/var/opt/mssql/data/{sales}-other-tool.trn'"
    ))
    .await;
    let report = pass(&fx, start + chrono::Duration::minutes(4));
    let ran = backup_jobs(&report);
    assert_eq!(ran.len(), 1, "{report:#}");
    let healed = &ran[0];
    assert_eq!(healed["kind"], "full", "{healed}");
    assert_eq!(healed["trigger"], "chain-broken", "{healed}");
    assert_eq!(healed["result"], "succeeded", "{healed}");
    let hint = healed["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("a log backup was due and a full ran"),
        "{healed}"
    );
    assert!(
        hint.contains("the log chain is broken") && hint.contains("by another tool"),
        "{healed}"
    );
    // The history says the same.
    let history = jobs(&fx);
    let recorded = history
        .iter()
        .find(|j| j["backup_id"] == healed["backup_id"])
        .unwrap_or_else(|| panic!("{history:#?}"));
    assert_eq!(
        (&recorded["kind"], &recorded["trigger"], &recorded["hint"]),
        (&healed["kind"], &healed["trigger"], &healed["hint"])
    );
    // And the backup is a full in the vault.
    let listed = fx
        .strata(["--json", "list", "sqlserver", "main"])
        .success()
        .json();
    let entry = listed
        .as_array()
        .or(listed["backups"].as_array())
        .unwrap()
        .iter()
        .find(|b| b["id"] == healed["backup_id"])
        .cloned()
        .unwrap_or_else(|| panic!("{listed:#}"));
    assert_eq!(entry["kind"], "full", "{entry}");

    // The chain starts again from that full: the next due log is a log.
    sql.exec(&format!(
        "INSERT INTO [{sales}].[dbo].[t] (id, note) VALUES (4, N'after the heal')"
    ))
    .await;
    let report = pass(&fx, start + chrono::Duration::minutes(6));
    let ran = backup_jobs(&report);
    assert_eq!(ran.len(), 1, "{report:#}");
    assert_eq!(
        (&ran[0]["kind"], &ran[0]["trigger"]),
        (&"log".into(), &"schedule".into()),
        "{report:#}"
    );
    // Nothing else is due a minute later than the log's own run.
    let quiet = pass(
        &fx,
        start + chrono::Duration::minutes(6) + chrono::Duration::seconds(30),
    );
    assert!(backup_jobs(&quiet).is_empty(), "{quiet:#}");
}

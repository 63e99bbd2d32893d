//! The service against a real PostgreSQL cluster and a `file://` vault, in
//! compressed time: `strata serve --once --now T` is one pass of the
//! service at the simulated time `T` (the injectable clock), while the
//! backups, the WAL and the restores are real.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_e2e::pg::{PgCluster, PgStrata};

const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

const POLICY: &str = r#"
[policy.week]
time_zone = "UTC"
full = "0 2 * * SUN"
diff = "0 2 * * MON-SAT"
rpo = "15m"

[policy.week.retention]
daily = 3
weekly = 1
log_days = 2

[[protect]]
engine = "postgres"
instance = "main"
policy = "week"
"#;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn now_utc(pg: &PgCluster) -> DateTime<Utc> {
    let at = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    at.parse().unwrap_or_else(|e| panic!("time `{at}`: {e}"))
}

fn pass(env: &PgStrata, now: DateTime<Utc>) -> serde_json::Value {
    let out = env.strata(&["--json", "serve", "--once", "--now", &now.to_rfc3339()]);
    assert_eq!(
        out.code(),
        Some(0),
        "the pass at {now} failed:\n{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out.json()
}

fn wal_files(vault: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let root = vault.join("engines/postgres/main/wal");
    for system in std::fs::read_dir(&root).unwrap().flatten() {
        for timeline in std::fs::read_dir(system.path()).unwrap().flatten() {
            for file in std::fs::read_dir(timeline.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(name);
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_simulated_week_runs_the_schedule_and_retention_keeps_every_chain_restorable() {
    // Retention's arithmetic, without soft delete: expired backups and
    // their WAL go at once (what soft delete keeps is tested in
    // plugin_contract.rs and vault_cli_backends.rs).
    let env = PgStrata::with_vault_init("service-week", &["--soft-delete-days", "0"]);
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "\n[service]\nsocket = \"{}\"\n{POLICY}",
        env.dir.path("strata.sock").display()
    ));
    std::fs::write(&env.config, config).unwrap();
    env.cluster
        .psql("CREATE TABLE steps (step int, at timestamptz DEFAULT clock_timestamp())");

    // `strata config check` validates and shows the next runs.
    let check = env.strata(&["config", "check"]);
    assert_eq!(check.code(), Some(0), "{}", check.stderr_text());
    assert!(
        check.stdout_text().contains("full  \"0 2 * * SUN\""),
        "{}",
        check.stdout_text()
    );

    // Passes at 03:00 and 15:00 from Sunday Nov 22 to Tuesday Dec 1, with
    // the service down from Wednesday 15:00 to Friday 15:00.
    let mut passes = Vec::new();
    let mut at = t("2026-11-22T03:00:00Z");
    while at <= t("2026-12-01T03:00:00Z") {
        let down = at > t("2026-11-25T03:00:00Z") && at < t("2026-11-27T15:00:00Z");
        if !down {
            passes.push(at);
        }
        at += chrono::Duration::hours(12);
    }
    // Rows after each pass, and the real time before the next pass's rows.
    let mut rows_at: BTreeMap<DateTime<Utc>, (i64, DateTime<Utc>)> = BTreeMap::new();
    let mut deleted_wal = 0;
    for (step, now) in passes.iter().enumerate() {
        env.cluster.psql(&format!(
            "INSERT INTO steps (step) SELECT {step} FROM generate_series(1, 100)"
        ));
        let report = pass(&env, *now);
        for expiry in report["expiries"].as_array().unwrap() {
            deleted_wal += expiry["deleted_log"].as_u64().unwrap();
        }
        let rows: i64 = env
            .cluster
            .psql("SELECT count(*) FROM steps")
            .parse()
            .unwrap();
        rows_at.insert(*now, (rows, now_utc(&env.cluster)));
    }

    // The jobs that ran: the initial full at once, then one backup per
    // schedule slot, and one catch-up differential (Friday's slot) for the
    // two days down.
    let jobs = env.strata(&["--json", "jobs", "--limit", "1000"]);
    assert_eq!(jobs.code(), Some(0), "{}", jobs.stderr_text());
    let jobs = jobs.json();
    let mut backups: Vec<(String, String, String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] != "expire")
        .map(|j| {
            assert_eq!(j["result"], "succeeded", "{j}");
            (
                j["scheduled_for"].as_str().unwrap()[..16].to_owned(),
                j["kind"].as_str().unwrap().to_owned(),
                j["trigger"].as_str().unwrap().to_owned(),
                j["backup_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    backups.sort();
    let ran: Vec<(&str, &str, &str)> = backups
        .iter()
        .map(|(slot, kind, trigger, _)| (slot.as_str(), kind.as_str(), trigger.as_str()))
        .collect();
    assert_eq!(
        ran,
        [
            ("2026-11-22T03:00", "full", "initial"),
            ("2026-11-23T02:00", "diff", "schedule"),
            ("2026-11-24T02:00", "diff", "schedule"),
            ("2026-11-25T02:00", "diff", "schedule"),
            ("2026-11-27T02:00", "diff", "schedule"),
            ("2026-11-28T02:00", "diff", "schedule"),
            ("2026-11-29T02:00", "full", "schedule"),
            ("2026-11-30T02:00", "diff", "schedule"),
            ("2026-12-01T02:00", "diff", "schedule"),
        ]
    );
    let id_of = |slot: &str| {
        backups
            .iter()
            .find(|b| b.0.starts_with(slot))
            .map(|b| b.3.clone())
            .unwrap()
    };

    // Retention (daily 3, weekly 1, two days of point in time) kept
    // Sunday's full and the two differentials after it; everything older
    // is gone from the vault, the backups and the WAL before the full.
    let list = env.strata(&["--json", "list", "pg", "main"]);
    assert_eq!(list.code(), Some(0), "{}", list.stderr_text());
    let list = list.json();
    let mut kept: Vec<String> = list["backups"]
        .as_array()
        .or(list.as_array())
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    kept.sort();
    let mut expected = vec![
        id_of("2026-11-29"),
        id_of("2026-11-30"),
        id_of("2026-12-01"),
    ];
    expected.sort();
    assert_eq!(kept, expected, "{list}");
    // In the vault itself (no soft delete here): the kept backups' manifests
    // and segment folders, and nothing of the others.
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(env.vault_dir.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|n| n.trim_end_matches(".json").to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names("manifests/postgres/main"), expected);
    assert_eq!(names("data/postgres/main"), expected);
    let full = env.strata(&["--json", "list", "pg", "main"]).json();
    let sunday = full["backups"]
        .as_array()
        .or(full.as_array())
        .unwrap()
        .iter()
        .find(|b| b["id"] == id_of("2026-11-29").as_str())
        .cloned()
        .unwrap();
    let start = sunday["start_lsn"].as_str().expect("list shows start LSNs");
    let wal = wal_files(&env.vault_dir);
    let (high, low) = start.split_once('/').unwrap();
    let lsn =
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap();
    // 16 MiB segments: the segment number is the LSN's top 40 bits.
    let first = format!("00000001{:08X}{:08X}", lsn >> 32, (lsn >> 24) & 0xFF);
    assert!(
        wal.iter().all(|w| *w >= first),
        "WAL before the oldest kept backup's start ({first}) is still there: {wal:?}"
    );
    assert!(wal.contains(&first), "{first} is gone: {wal:?}");
    assert!(deleted_wal > 0, "no WAL was ever expired");

    // The oldest retained point (Sunday's full) and the newest restore with
    // the rows they had.
    let (sunday_rows, after_sunday) = rows_at[&t("2026-11-29T03:00:00Z")];
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let (_, oldest) = env.restore_to_time("oldest", after_sunday, &[]);
    assert_eq!(
        oldest.psql("SELECT count(*) FROM steps"),
        sunday_rows.to_string()
    );
    let newest_rows: i64 = env
        .cluster
        .psql("SELECT count(*) FROM steps")
        .parse()
        .unwrap();
    let now = now_utc(&env.cluster);
    // A commit after the target, so that the archive reaches past it.
    env.cluster.psql("INSERT INTO steps (step) VALUES (-1)");
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let (_, newest) = env.restore_to_time("newest", now, &[]);
    assert_eq!(
        newest.psql("SELECT count(*) FROM steps"),
        newest_rows.to_string()
    );
    oldest.amcheck();
    newest.amcheck();

    // A pass with nothing due runs no backup; retention has nothing left,
    // and a retention pass that deleted nothing is not a job in history.
    let expire_jobs = || {
        let history = env.strata(&["--json", "jobs", "--limit", "1000"]).json();
        let count = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "expire")
            .count();
        (count, history)
    };
    let (expiries_before, _) = expire_jobs();
    let quiet = pass(&env, t("2026-12-01T09:00:00Z"));
    assert_eq!(quiet["jobs"].as_array().map(Vec::len), Some(0), "{quiet}");
    assert_eq!(quiet["expiries"][0]["deleted_backups"], 0);
    assert_eq!(quiet["expiries"][0]["deleted_log"], 0);
    // The expiries that did delete are in the history; the quiet one is not.
    let (expiries, history) = expire_jobs();
    assert!(expiries > 0, "{history}");
    assert_eq!(expiries, expiries_before, "{history}");

    // `status` at the real time: the newest point is minutes old, within
    // the 15-minute target.
    let status = env.strata(&["--json", "status"]);
    assert_eq!(status.code(), Some(0), "{}", status.stderr_text());
    let status = status.json();
    assert_eq!(status[0]["database"], "postgres/main");
    assert_eq!(status[0]["health"], "ok", "{status}");
    assert!(
        status[0]["rpo_seconds"].as_i64().unwrap() < 15 * 60,
        "{status}"
    );
}

/// `strata serve` in the foreground, as systemd runs it.
struct Service {
    child: std::process::Child,
}

impl Service {
    fn start(env: &PgStrata) -> Service {
        let child = std::process::Command::new(strata_e2e::cli::strata_bin())
            .arg("--config")
            .arg(&env.config)
            .args(["-v", "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.dir.path("serve.log")).unwrap())
            .spawn()
            .expect("start strata serve");
        Service { child }
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jobs(env: &PgStrata) -> Vec<serde_json::Value> {
    let out = env.strata(&["--json", "jobs"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
    out.json().as_array().unwrap().clone()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn sigterm_cancels_a_running_backup_cleanly_and_metrics_show_the_rpo() {
    let env = PgStrata::new("service-daemon");
    let port = strata_e2e::net::free_port();
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "\n[service]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:{port}\"\nshutdown_grace = \"0s\"\n{POLICY}",
        env.dir.path("strata.sock").display()
    ));
    std::fs::write(&env.config, config).unwrap();
    // Enough data that the first full takes a while.
    env.cluster.pgbench(&["-i", "-s", "20", "-q"]);

    // SIGTERM while the initial full runs: the job is cancelled at once
    // (no grace), the backup deletes what it wrote, and nothing is listed.
    let service = Service::start(&env);
    wait_for("the initial full to start", Duration::from_secs(60), || {
        jobs(&env).iter().any(|j| j["result"] == "running")
    });
    let data = env.vault_dir.join("data");
    wait_for("the full's first objects", Duration::from_secs(60), || {
        !walk(&data).is_empty()
    });
    assert_eq!(service.terminate(), Some(0), "a stop on SIGTERM is clean");
    let history = jobs(&env);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["result"], "cancelled", "{history:?}");
    assert_eq!(history[0]["trigger"], "initial");
    let list = env.strata(&["--json", "list"]);
    assert_eq!(list.code(), Some(0), "{}", list.stderr_text());
    assert_eq!(
        list.json().as_array().map(Vec::len),
        Some(0),
        "{}",
        list.stdout_text()
    );
    let leftovers: Vec<_> = walk(&data);
    assert!(
        leftovers.is_empty(),
        "the cancelled backup left {leftovers:?}"
    );

    // Started again, it takes the initial full; metrics show its success
    // and an RPO within the 15-minute target.
    let restarted = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let service = Service::start(&env);
    let mut text = String::new();
    wait_for("the full's metrics", Duration::from_secs(120), || {
        text = metrics(port).unwrap_or_default();
        text.contains("strata_rpo_seconds")
    });
    let labels = "engine=\"postgres\",instance=\"main\"";
    let last = metric(
        &text,
        "strata_backup_last_success_timestamp_seconds",
        labels,
    )
    .expect("last success");
    assert!(
        restarted <= last && last <= chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        "the last success ({last}) is the full after the restart ({restarted}):\n{text}"
    );
    let rpo = metric(&text, "strata_rpo_seconds", labels).expect("rpo");
    assert!(rpo < 900.0, "RPO {rpo} s:\n{text}");
    assert_eq!(
        metric(&text, "strata_rpo_target_seconds", labels),
        Some(900.0)
    );
    assert_eq!(
        metric(&text, "strata_jobs_running", ""),
        Some(0.0),
        "{text}"
    );
    // A second service (a cron `serve --once` overlapping it) is refused.
    let second = env.strata(&["serve", "--once"]);
    assert_eq!(second.code(), Some(9), "{}", second.stderr_text());
    assert!(
        second
            .stderr_text()
            .contains("another `strata serve` is running with this catalog index"),
        "{}",
        second.stderr_text()
    );
    assert_eq!(service.terminate(), Some(0));
    let backups: Vec<(String, String)> = jobs(&env)
        .iter()
        .filter(|j| j["kind"] != "expire")
        .map(|j| {
            (
                j["kind"].as_str().unwrap().to_owned(),
                j["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        backups,
        [
            ("full".to_owned(), "succeeded".to_owned()),
            ("full".to_owned(), "cancelled".to_owned())
        ]
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn wal_pushed_through_the_service_is_the_wal_pushed_without_it() {
    let env = PgStrata::new("service-walpush");
    let socket = env.dir.path("strata.sock");
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    // PostgreSQL's archive_command runs as `postgres`: the socket's group.
    config.push_str(&format!(
        "\n[service]\nsocket = \"{}\"\nsocket_group = \"postgres\"\n{POLICY}",
        socket.display()
    ));
    std::fs::write(&env.config, config).unwrap();
    let done = || -> Vec<String> {
        std::fs::read_dir(env.cluster.data.join("pg_wal/archive_status"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".done")
                    .filter(|n| n.len() == 24)
                    .map(str::to_owned)
            })
            .collect()
    };
    // Keep the archived segments in pg_wal: they are pushed again below.
    env.cluster.psql("ALTER SYSTEM SET wal_keep_size = '1GB'");
    env.cluster.psql("SELECT pg_reload_conf()");
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let before = done();
    let service = Service::start(&env);
    wait_for("the control socket", Duration::from_secs(30), || {
        socket.exists()
    });
    // The socket is the service's door: mode 0660.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "{mode:o}");
    // `status` and `jobs` are answered by the service (`-v` says so).
    let status = env.strata(&["-v", "--json", "status"]);
    assert_eq!(status.code(), Some(0), "{}", status.stderr_text());
    assert_eq!(status.json()[0]["database"], "postgres/main");
    assert!(
        status.stderr_text().contains("answered by the service"),
        "{}",
        status.stderr_text()
    );
    let jobs_now = env.strata(&["-v", "--json", "jobs"]);
    assert_eq!(jobs_now.code(), Some(0), "{}", jobs_now.stderr_text());
    assert!(jobs_now.json().is_array(), "{}", jobs_now.stdout_text());
    assert!(
        jobs_now.stderr_text().contains("answered by the service"),
        "{}",
        jobs_now.stderr_text()
    );
    // A user outside the socket's group is refused by the operating system,
    // and told which group to join.
    if strata_e2e::pg::running_as_root() {
        let out = strata_e2e::cli::Strata::program("runuser")
            .args(["-u", "nobody", "--"])
            .arg(strata_e2e::cli::strata_bin())
            .arg("--config")
            .arg(&env.config)
            .arg("status")
            .run();
        assert_eq!(out.code(), Some(10), "{}", out.stderr_text());
        let err = out.stderr_text();
        assert!(
            err.contains("cannot connect to the service at") && err.contains("Permission denied"),
            "{err}"
        );
        assert!(err.contains("socket_group"), "{err}");
    }

    env.cluster.pgbench(&["-i", "-s", "3", "-q"]);
    env.cluster.switch_and_wait_archived(ARCHIVE_WAIT);
    let archived: Vec<String> = done().into_iter().filter(|s| !before.contains(s)).collect();
    assert!(archived.len() >= 3, "{archived:?}");

    // `backup --now` runs as a job of the service; `jobs --follow` shows its
    // end (and its start, when the follower polled while it ran).
    let mut follow = std::process::Command::new(strata_e2e::cli::strata_bin())
        .arg("--config")
        .arg(&env.config)
        .args(["--json", "jobs", "--follow", "--limit", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let now = env.strata(&["--json", "backup", "pg", "main", "--kind", "diff", "--now"]);
    assert_eq!(now.code(), Some(0), "{}", now.stderr_text());
    let jobs = now.json();
    assert_eq!(jobs[0]["trigger"], "manual", "{jobs}");
    assert_eq!(jobs[0]["kind"], "diff");
    assert_eq!(jobs[0]["result"], "succeeded");
    let id = jobs[0]["backup_id"].as_str().unwrap().to_owned();
    let listed = env.strata(&["--json", "list"]).success().json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} is not listed: {listed}"));
    assert_eq!(entry["kind"], "diff", "{entry}");
    // (A watchdog ends the follower if it never prints the job's end.)
    let pid = follow.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    });
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut events = Vec::new();
    while events.last().map(String::as_str) != Some("succeeded") {
        let line = lines
            .next()
            .expect("jobs --follow never showed the job's end")
            .unwrap();
        let job: serde_json::Value = serde_json::from_str(&line).unwrap();
        if job["trigger"] == "manual" {
            events.push(job["result"].as_str().unwrap().to_owned());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // Its start too, when the follower polled while it ran (it polls each second).
    assert!(
        events == ["succeeded"] || events == ["running", "succeeded"],
        "{events:?}"
    );
    // The same files pushed by a configuration with another vault (and
    // index) but the same socket: the running service leaves them to the
    // caller, which archives them into its own vault. Every segment reads
    // back the same from both vaults, and equals the file.
    let other = env.dir.path("vault-direct");
    let direct_config = env.dir.path("direct.toml");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            &env.vault_dir.display().to_string(),
            &other.display().to_string(),
        )
        .replace("catalog.db", "catalog-direct.db");
    std::fs::write(&direct_config, text).unwrap();
    let direct = |args: &[&str]| {
        strata_e2e::cli::Strata::new()
            .arg("--config")
            .arg(&direct_config)
            .args(args)
            .run()
    };
    assert_eq!(direct(&["vault", "init"]).code(), Some(0));
    for segment in &archived {
        let path = env.cluster.data.join("pg_wal").join(segment);
        let out = direct(&[
            "pg",
            "wal-push",
            path.to_str().unwrap(),
            "--cluster",
            "main",
        ]);
        assert_eq!(out.code(), Some(0), "{}", out.stderr_text());
        let original = std::fs::read(&path).unwrap();
        for (name, config) in [("service", &env.config), ("direct", &direct_config)] {
            let dest = env.dir.path(format!("{segment}.{name}"));
            let out = strata_e2e::cli::Strata::new()
                .arg("--config")
                .arg(config)
                .args([
                    "pg",
                    "wal-fetch",
                    segment,
                    dest.to_str().unwrap(),
                    "--cluster",
                    "main",
                ])
                .run();
            assert_eq!(out.code(), Some(0), "{name}: {}", out.stderr_text());
            assert!(
                std::fs::read(&dest).unwrap() == original,
                "{segment} from {name} differs"
            );
        }
    }
    let keys = |root: &Path| -> Vec<String> {
        let base = root.join("engines/postgres/main/wal");
        let mut keys: Vec<String> = walk(&base)
            .iter()
            .map(|p| p.strip_prefix(&base).unwrap().display().to_string())
            .filter(|k| archived.iter().any(|s| k.ends_with(s.as_str())))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&env.vault_dir).len(), archived.len(), "{archived:?}");
    assert_eq!(keys(&env.vault_dir), keys(&other));
    // Without a service, --now says so.
    assert_eq!(service.terminate(), Some(0));
    let alone = env.strata(&["backup", "pg", "main", "--now"]);
    assert_eq!(alone.code(), Some(8), "{}", alone.stderr_text());
    assert!(
        alone.stderr_text().contains("no service runs at"),
        "{}",
        alone.stderr_text()
    );
    let log = std::fs::read_to_string(env.dir.path("serve.log")).unwrap();
    for segment in &archived {
        let through_socket = format!("pg_wal/{segment}");
        assert!(
            log.lines()
                .any(|l| l.contains("archived through the control socket")
                    && l.contains(&through_socket)),
            "{segment} was not archived through the service:\n{log}"
        );
    }
}

//! The PostgreSQL cases, on one cluster kept for the campaign (1 MiB WAL
//! segments, `pgbench` data, a vault on moto): `pg wal-push` as the
//! archiver runs it under `pgbench`, `strata backup pg` and `strata
//! restore pg --latest --start`, each under an outage; WAL archiving goes
//! through the same proxy all along.
//!
//! `archive_command` is a small script: `wal-push` through the proxy, and
//! once it exits 0 the segment is copied aside (`... pg wal-push %p && cp
//! %p <acknowledged>/%f`); a failed attempt's output and exit code are
//! appended to a log, so that each one's message is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;

use super::{
    Campaign, CaseSpec, CommandOutcome, DRAIN_LIMIT, Length, Outage, Tally, clear_error,
    clear_error_with, requests_of, tail,
};
use crate::chaos::proxy::{Matcher, StoreKind};
use crate::cli::{RunOutput, Strata, strata_bin};
use crate::net::free_port;
use crate::pg::{PgCluster, give_to_postgres};

/// The cluster, its configuration and what the cases learnt about it.
pub(crate) struct PgVault {
    dir: PathBuf,
    cluster: PgCluster,
    config: PathBuf,
    ack: PathBuf,
    failures_log: PathBuf,
    /// Failed archive attempts already looked at.
    failures_seen: usize,
    proxy_env: (&'static str, String),
    batches: u64,
    /// Each `backup pg` run: when it started and ended, and the state the
    /// cluster had meanwhile.
    runs: Vec<(DateTime<Utc>, DateTime<Utc>, String)>,
    /// Backups restored and compared once.
    checked: BTreeSet<String>,
    /// Requests of the last `backup pg` and `restore pg` an outage did not
    /// hit: where the next outage may start.
    backup_requests: Option<u64>,
    restore_requests: Option<u64>,
}

impl PgVault {
    fn new(c: &mut Campaign) -> PgVault {
        let url = c.vault_url(StoreKind::S3, "pg");
        let dir = c.dir("pg");
        let ack = dir.join("acknowledged");
        std::fs::create_dir_all(&ack).expect("the acknowledged segments' directory");
        std::fs::create_dir_all(dir.join("restores")).expect("the restores' directory");
        let config = dir.join("strata.toml");
        let failures_log = dir.join("archive-failures.log");
        let proxy_env = c.emulator(StoreKind::S3).proxy.env();
        let script = dir.join("archive.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 # archive_command of the outage campaign: wal-push through the store proxy;\n\
                 # the segment is copied aside only once wal-push exited 0.\n\
                 out=$({var}={value} '{strata}' --config '{config}' pg wal-push \"$1\" --cluster main 2>&1)\n\
                 rc=$?\n\
                 if [ \"$rc\" -eq 0 ]; then\n\
                 \x20   cp \"$1\" '{ack}'/\"$2\".part && mv '{ack}'/\"$2\".part '{ack}'/\"$2\" || exit 1\n\
                 else\n\
                 \x20   printf '%s\\n--- exit %s for %s\\n' \"$out\" \"$rc\" \"$2\" >> '{log}'\n\
                 fi\n\
                 exit \"$rc\"\n",
                var = proxy_env.0,
                value = proxy_env.1,
                strata = strata_bin().display(),
                config = config.display(),
                ack = ack.display(),
                log = failures_log.display(),
            ),
        )
        .expect("the archive script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        give_to_postgres(&dir);
        let cluster = PgCluster::init_with(
            dir.join("pgdata"),
            dir.join("sock"),
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_timeout = 60\n\
                 archive_command = '{} \"%p\" \"%f\"'",
                script.display()
            ),
            &["--wal-segsize=1"],
        );
        std::fs::write(
            &config,
            format!(
                "[vault]\nurl = \"{url}\"\n\n{}\n[catalog]\npath = \"{}\"\n\n\
                 [writer]\npart_size = \"1MiB\"\ncompression_level = 1\n\n\
                 [postgres.main]\nconnection = \"{}\"\ndata_directory = \"{}\"\nbin_dir = \"{}\"\nparallel = 2\n\
                 # A backup whose WAL an outage keeps out fails after this.\n\
                 archive_wait = \"30s\"\n",
                c.retries.toml(),
                dir.join("wal-catalog.db").display(),
                cluster.connection(),
                cluster.data.display(),
                cluster.bin.display()
            ),
        )
        .expect("the Strata configuration");
        let vault = PgVault {
            dir: dir.clone(),
            cluster,
            config,
            ack,
            failures_log,
            failures_seen: 0,
            proxy_env,
            batches: 0,
            runs: Vec::new(),
            checked: BTreeSet::new(),
            backup_requests: None,
            restore_requests: None,
        };
        vault.direct(&["vault", "init"]).success();
        give_to_postgres(&dir);
        vault.cluster.start();
        vault
            .cluster
            .psql("CREATE TABLE outage_rows (batch bigint, i int, pad text); CREATE TABLE noise (at timestamptz)");
        vault.cluster.pgbench(&["-i", "-s", "1", "-q"]);
        if let Err(e) = vault.drain(DRAIN_LIMIT) {
            panic!("the new cluster does not archive: {e}");
        }
        vault
    }

    /// `strata --config <config> args` as root through the proxy, with a
    /// catalog index of its own.
    fn proxied(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .env(self.proxy_env.0, &self.proxy_env.1)
            .arg("--config")
            .arg(&self.config)
            .arg("--catalog")
            .arg(self.dir.join("root-catalog.db"))
            .args(args)
            .timeout(Duration::from_secs(900))
            .run()
    }

    /// `strata --config <config> args` as root, straight to the store.
    fn direct(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .arg("--config")
            .arg(&self.config)
            .arg("--catalog")
            .arg(self.dir.join("check-catalog.db"))
            .args(args)
            .timeout(Duration::from_secs(900))
            .run()
    }

    /// Adds a batch of rows and changes some balances.
    fn change(&mut self) {
        self.batches += 1;
        let batch = self.batches;
        self.cluster.psql(&format!(
            "INSERT INTO outage_rows SELECT {batch}, g, md5(g::text) FROM generate_series(1, 200) g; \
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 97 = {}",
            batch % 97
        ));
    }

    /// What a restored copy must hold.
    fn state(&self) -> String {
        state_of(&self.cluster)
    }

    /// Switches WAL (after a write, so the switch is real) and waits until
    /// the archiver has archived it, with no `.ready` left. How long it took.
    fn drain(&self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        self.cluster.psql("INSERT INTO noise VALUES (now())");
        let segment = self.cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
        loop {
            let last = self
                .cluster
                .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            let ready = std::fs::read_dir(self.cluster.data.join("pg_wal/archive_status"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                })
                .unwrap_or(false);
            if last.as_str() >= segment.as_str() && !ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "segment {segment} is not archived after {limit:?}: last archived {last}, \
                     archiver (failed count, last failed) {}",
                    self.cluster.psql(
                        "SELECT failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver"
                    )
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The archive attempts that failed since the last call: each one's
    /// output and exit code.
    fn new_failures(&mut self) -> Vec<(Option<i32>, String, String)> {
        let text = std::fs::read_to_string(&self.failures_log).unwrap_or_default();
        let mut entries = Vec::new();
        let mut output = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("--- exit ") {
                let (code, file) = rest.split_once(" for ").unwrap_or((rest, ""));
                entries.push((code.trim().parse().ok(), file.to_owned(), output.join("\n")));
                output.clear();
            } else {
                output.push(line);
            }
        }
        let new = entries.split_off(self.failures_seen.min(entries.len()));
        self.failures_seen += new.len();
        new
    }

    /// Fetches every acknowledged segment back (straight from the store)
    /// and compares it with the copy taken when `wal-push` exited 0; the
    /// checked copies are removed. How many were checked.
    fn check_acknowledged(&self, c: &mut Campaign, case: &str) -> u64 {
        let mut names: Vec<String> = std::fs::read_dir(&self.ack)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".part"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let fetched = self.dir.join("fetched-segment");
        for name in &names {
            let acknowledged = self.ack.join(name);
            let Ok(expected) = std::fs::read(&acknowledged) else {
                continue;
            };
            let _ = std::fs::remove_file(&fetched);
            let out = self.direct(&[
                "pg",
                "wal-fetch",
                name,
                &fetched.display().to_string(),
                "--cluster",
                "main",
            ]);
            if !out.status.success() {
                c.lost(
                    case,
                    format!(
                        "segment {name}, acknowledged by wal-push, is not fetched back ({}): {}",
                        out.status,
                        out.stderr_text()
                    ),
                );
            } else if std::fs::read(&fetched).ok().as_deref() != Some(&expected[..]) {
                c.lost(
                    case,
                    format!(
                        "segment {name}, acknowledged by wal-push, comes back with other bytes"
                    ),
                );
            }
            let _ = std::fs::remove_file(&acknowledged);
        }
        let _ = std::fs::remove_file(&fetched);
        names.len() as u64
    }

    /// Restores to `target` (`--latest` or `--to-time`) into a new
    /// directory, with `args` before it; returns the command's output and
    /// the copy (running when the restore started it).
    fn restore(&self, name: &str, target: &[String], proxied: bool) -> (RunOutput, PgCluster) {
        let dir = self.dir.join("restores").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let mut args: Vec<String> = vec!["restore".into(), "pg".into(), "main".into()];
        args.extend(target.iter().cloned());
        args.extend([
            "--target-dir".into(),
            dir.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--start".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if proxied {
            self.proxied(&args)
        } else {
            self.direct(&args)
        };
        let copy = PgCluster::adopt(dir, port, self.cluster.socket_dir.clone());
        (out, copy)
    }

    /// Restores each listed backup not restored yet to the time it ended
    /// and compares the copy with the state recorded while it ran.
    fn check_listed(
        &mut self,
        c: &mut Campaign,
        case: &str,
        acknowledged: &BTreeMap<String, String>,
        tally: &mut Tally,
    ) {
        let out = self.direct(&["list", "postgres", "--json"]);
        let listed = out
            .status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten();
        let Some(serde_json::Value::Array(listed)) = listed else {
            c.failed(
                case,
                format!("`list` fails once the store is back: {}", out.stderr_text()),
            );
            return;
        };
        for id in acknowledged.keys() {
            if !listed.iter().any(|b| b["id"].as_str() == Some(id)) {
                c.lost(case, format!("backup {id}, acknowledged, is not listed"));
            }
        }
        for backup in &listed {
            let (Some(id), Some(started), Some(ended)) = (
                backup["id"].as_str(),
                backup["started_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
                backup["ended_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
            ) else {
                continue;
            };
            if !self.checked.insert(id.to_owned()) {
                continue;
            }
            let expected = acknowledged.get(id).cloned().or_else(|| {
                self.runs
                    .iter()
                    .find(|(from, to, _)| *from <= started && started <= *to)
                    .map(|(_, _, state)| state.clone())
            });
            let Some(expected) = expected else {
                c.failed(case, format!("listed backup {id} was made by no run"));
                continue;
            };
            tally.checked += 1;
            let target = [
                "--to-time".to_owned(),
                ended.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ];
            let (out, copy) =
                self.restore(&format!("check-{}", self.checked.len()), &target, false);
            if !out.status.success() {
                c.lost(
                    case,
                    format!(
                        "listed backup {id} does not restore: {}\n{}",
                        out.stderr_text(),
                        tail(
                            &std::fs::read_to_string(copy.data.join("strata-restore.log"))
                                .unwrap_or_default(),
                            15
                        )
                    ),
                );
            } else {
                match copy.try_psql("SELECT 1").map(|_| state_of(&copy)) {
                    Ok(got) if got == expected => {}
                    Ok(got) => c.lost(
                        case,
                        format!(
                            "listed backup {id} restores with {got}; it was taken with {expected}"
                        ),
                    ),
                    Err(e) => c.lost(
                        case,
                        format!("the copy of listed backup {id} does not answer: {e}"),
                    ),
                }
            }
            let data = copy.data.clone();
            drop(copy);
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}

/// The rows and balances a copy holds.
fn state_of(cluster: &PgCluster) -> String {
    cluster.psql(
        "SELECT (SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::int8), 0) FROM outage_rows t) \
         || ' rows, balance ' || (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)",
    )
}

/// The campaign's cluster, made by the first PostgreSQL case.
fn vault(c: &mut Campaign) -> PgVault {
    match c.pg.take() {
        Some(vault) => vault,
        None => PgVault::new(c),
    }
}

/// Keeps the archiver busy while a command runs: a row and a WAL switch
/// every `every`, so a new segment wakes it after a failed attempt, as
/// any write load does.
fn with_switches<T>(cluster: &PgCluster, every: Duration, command: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    cluster.try_psql("INSERT INTO noise VALUES (now()); SELECT pg_switch_wal()");
                let until = Instant::now() + every;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let result = command();
        stop.store(true, Ordering::Relaxed);
        result
    })
}

/// Checks the message of every archive attempt in `failures` (the
/// outage of another command can fail them too).
fn check_archive_failures(
    c: &mut Campaign,
    case: &str,
    run: usize,
    failures: &[(Option<i32>, String, String)],
) {
    for (code, file, output) in failures {
        let outcome = CommandOutcome {
            command: format!("strata pg wal-push {file}"),
            success: false,
            code: *code,
            stderr: output.clone(),
            more: String::new(),
            clear: clear_error,
        };
        match clear_error(&outcome) {
            Ok(message) => c.record_message(&message, &format!("{case} run {run}, wal-push")),
            Err(why) => c.failed(
                case,
                format!("run {run}, wal-push: {why}\n{}", outcome.describe()),
            ),
        }
    }
}

/// Judges the failed archive attempts of a run: the first one stands for
/// the run in [`Campaign::judge`], every other one's message is checked too.
fn archive_outcome(
    c: &mut Campaign,
    case: &str,
    run: usize,
    failures: &[(Option<i32>, String, String)],
) -> CommandOutcome {
    check_archive_failures(c, case, run, failures.get(1..).unwrap_or_default());
    match failures.first() {
        Some((code, file, output)) => CommandOutcome {
            command: format!("strata pg wal-push {file}"),
            success: false,
            code: *code,
            stderr: output.clone(),
            more: String::new(),
            clear: clear_error,
        },
        None => CommandOutcome {
            command: "strata pg wal-push".into(),
            success: true,
            code: Some(0),
            stderr: String::new(),
            more: String::new(),
            clear: clear_error,
        },
    }
}

/// `pg wal-push`, as PostgreSQL's archiver runs it while `pgbench` writes,
/// under an outage; then the backlog drains and every acknowledged
/// segment comes back.
pub(super) fn wal_push(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let mut pg = vault(c);
    let mut tally = Tally::default();
    let retries = c.retries.clone();
    let scopes = vec![
        (
            "archive object puts",
            Matcher::any().method("PUT").path_contains("/engines/"),
        ),
        (
            "vault metadata reads",
            Matcher::any().path_contains("strata-vault.json"),
        ),
    ];
    let mut longest_drain = Duration::ZERO;
    pg.new_failures();
    for run in 0..runs {
        let load = Duration::from_secs(rng.random_range(3..=5));
        // Requests over the load: about six a second (segments switched
        // every 300 ms, a few requests each); the outage starts within
        // the first two thirds.
        let mut outage = Outage::draw(&mut rng, (load.as_secs() * 4).max(2), &retries, &scopes);
        // The archiver never ends: a long outage outlasts what any request
        // rides out, then the store comes back.
        if outage.length == Length::Long {
            let most = retries.most.as_secs_f64();
            outage.length = Length::Medium(Duration::from_secs_f64(
                rng.random_range(most + 0.5..most + 4.0),
            ));
        }
        let proxy = &c.emulator(StoreKind::S3).proxy;
        proxy.inject(outage.fault());
        let mut bench = pg.cluster.program("pgbench");
        bench
            .args([
                "-U",
                "postgres",
                "-n",
                "-c",
                "2",
                "-T",
                &load.as_secs().to_string(),
                "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let bench = bench.spawn().expect("pgbench starts");
        with_switches(&pg.cluster, Duration::from_millis(300), || {
            let _ = bench.wait_with_output();
        });
        // The outage's own length, if it is not over yet.
        if let Some(window) = proxy.window()
            && let (Some(began), Length::Short(d) | Length::Medium(d)) =
                (window.began, outage.length)
        {
            let end = began + d;
            let now = Instant::now();
            if end > now {
                std::thread::sleep(end - now);
            }
        }
        let window = proxy.window();
        proxy.pass();
        match pg.drain(DRAIN_LIMIT) {
            Ok(took) => longest_drain = longest_drain.max(took),
            Err(e) => c.failed(
                case,
                format!("run {run}: the archiver does not drain its backlog once the store is back ({}): {e}", outage.describe()),
            ),
        }
        let failures = pg.new_failures();
        *tally.extra.entry("archive attempts failed").or_default() += failures.len() as u64;
        let outcome = archive_outcome(c, case, run, &failures);
        c.judge(case, run, &mut tally, &outage, window, &outcome);
        tally.checked += pg.check_acknowledged(c, case) as usize;
    }
    tally
        .extra
        .insert("longest drain (ms)", longest_drain.as_millis() as u64);
    c.case_line(&format!("{case} (segments checked)"), &tally);
    c.pg = Some(pg);
}

/// `strata backup pg` under an outage (WAL keeps being archived through the
/// same proxy, a switch every 700 ms); every listed backup restores to
/// the time it ended with the rows it was taken with.
pub(super) fn backup(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let mut pg = vault(c);
    let mut tally = Tally::default();
    let retries = c.retries.clone();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    // Small files in 1 MiB parts: no multipart upload to aim at.
    let scopes = vec![
        (
            "manifest puts",
            Matcher::any().method("PUT").path_contains("/manifests/"),
        ),
        (
            "segment uploads",
            Matcher::any().method("PUT").path_contains("/data/"),
        ),
        (
            "archive object puts",
            Matcher::any().method("PUT").path_contains("/engines/"),
        ),
        (
            "archive object reads",
            Matcher::any().method("GET").path_contains("/engines/"),
        ),
        (
            "vault metadata reads",
            Matcher::any().path_contains("strata-vault.json"),
        ),
    ];
    let backup_id = |out: &RunOutput| {
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
    };
    for run in 0..runs {
        pg.change();
        // Most of the requests of the last run the outage did not hit (a
        // clean backup of this cluster makes 20 to 30, archiving included).
        let requests = pg.backup_requests.unwrap_or(20) * 4 / 5;
        let state = pg.state();
        let outage = Outage::draw(&mut rng, requests, &retries, &scopes);
        let started = Utc::now();
        let proxy = &c.emulator(StoreKind::S3).proxy;
        proxy.inject(outage.fault());
        let (out, made) = requests_of(proxy, || {
            with_switches(&pg.cluster, Duration::from_millis(700), || {
                pg.proxied(&["--json", "backup", "pg", "main"])
            })
        });
        let window = proxy.window();
        proxy.pass();
        if window.is_some_and(|w| w.began.is_none()) {
            pg.backup_requests = Some(made);
        }
        pg.runs.push((started, Utc::now(), state.clone()));
        let mut outcome = CommandOutcome::strata(&out);
        outcome.clear = clear_backup;
        if c.judge(case, run, &mut tally, &outage, window, &outcome) {
            match backup_id(&out) {
                Some(id) => {
                    acknowledged.insert(id, state);
                }
                None => c.failed(
                    case,
                    format!("run {run}: `backup pg` exited 0 without its id"),
                ),
            }
        }
        // Commits after the backup, archived, so that a restore to the
        // time it ended finds its target.
        pg.change();
        if let Err(e) = pg.drain(DRAIN_LIMIT) {
            c.failed(
                case,
                format!("run {run}: the archiver does not drain once the store is back: {e}"),
            );
        }
        pg.check_listed(c, case, &acknowledged, &mut tally);
        let failures = pg.new_failures();
        check_archive_failures(c, case, run, &failures);
        pg.check_acknowledged(c, case);
    }
    c.case_line(case, &tally);
    c.pg = Some(pg);
}

/// `strata restore pg --latest --start` under an outage (the copy's
/// `restore_command` goes through the proxy too): success means a copy
/// with the rows the cluster had; a failure is clear, and the same
/// restore once the store is back works.
pub(super) fn restore(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let mut pg = vault(c);
    let mut tally = Tally::default();
    let retries = c.retries.clone();
    let scopes = vec![
        (
            "segment reads",
            Matcher::any().method("GET").path_contains("/data/"),
        ),
        (
            "archive object reads",
            Matcher::any().method("GET").path_contains("/engines/"),
        ),
        (
            "manifest reads",
            Matcher::any().method("GET").path_contains("/manifests/"),
        ),
    ];
    // A full backup to restore from (the outages of `backup pg` may have
    // failed every one).
    let listed = pg.direct(&["list", "postgres", "--json"]).success().json();
    if listed.as_array().is_none_or(|backups| backups.is_empty()) {
        pg.change();
        pg.direct(&["backup", "pg", "main"]).success();
    }
    let latest = ["--latest".to_owned()];
    for run in 0..runs {
        pg.change();
        if let Err(e) = pg.drain(DRAIN_LIMIT) {
            c.failed(case, format!("run {run}: the archiver does not drain: {e}"));
        }
        let state = pg.state();
        // Most of the requests of the last run the outage did not hit (a
        // clean restore of this cluster makes about 60, its WAL fetches
        // included).
        let requests = pg.restore_requests.unwrap_or(60) * 4 / 5;
        let outage = Outage::draw(&mut rng, requests, &retries, &scopes);
        let proxy = &c.emulator(StoreKind::S3).proxy;
        proxy.inject(outage.fault());
        let ((out, copy), made) =
            requests_of(proxy, || pg.restore(&format!("run-{run}"), &latest, true));
        let window = proxy.window();
        proxy.pass();
        if window.is_some_and(|w| w.began.is_none()) {
            pg.restore_requests = Some(made);
        }
        let mut outcome = CommandOutcome::strata(&out);
        outcome.clear = clear_restore;
        outcome.more = tail(
            &std::fs::read_to_string(copy.data.join("strata-restore.log")).unwrap_or_default(),
            20,
        );
        let ok = c.judge(case, run, &mut tally, &outage, window, &outcome);
        if ok {
            tally.checked += 1;
            match copy.try_psql("SELECT 1").map(|_| state_of(&copy)) {
                Ok(got) if got == state => {}
                Ok(got) => c.lost(
                    case,
                    format!("run {run}: the restore exited 0 with a copy holding {got}; the cluster held {state} ({})", outage.describe()),
                ),
                Err(e) => c.lost(
                    case,
                    format!("run {run}: the restore exited 0 and its copy does not answer: {e}"),
                ),
            }
        }
        let data = copy.data.clone();
        drop(copy);
        let _ = std::fs::remove_dir_all(&data);
        let failures = pg.new_failures();
        check_archive_failures(c, case, run, &failures);
        if !ok {
            // The same restore, with the store back, works.
            let (again, copy) = pg.restore(&format!("run-{run}-again"), &latest, false);
            let good = again.status.success()
                && copy
                    .try_psql("SELECT 1")
                    .map(|_| state_of(&copy))
                    .ok()
                    .as_deref()
                    == Some(state.as_str());
            if !good {
                c.failed(
                    case,
                    format!(
                        "run {run}: restoring again once the store is back does not give the cluster's rows: {}",
                        again.stderr_text()
                    ),
                );
            }
            tally.checked += 1;
            *tally.extra.entry("re-runs after a failure").or_default() += 1;
            let data = copy.data.clone();
            drop(copy);
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    let out = pg.direct(&["verify"]);
    if !out.status.success() {
        c.lost(
            case,
            format!("`verify` fails: {}{}", out.stdout_text(), out.stderr_text()),
        );
    }
    c.case_line(case, &tally);
    c.pg = Some(pg);
}

/// A failed `backup pg` under an outage: exit 4 when the store failed the
/// backup's own requests; 5 when they went through but PostgreSQL's
/// `archive_command` could not put the backup's WAL into the vault within
/// `archive_wait` (the archiver is the engine's), which must still say
/// that the WAL is missing from the vault. Found at large scale (seed
/// 20261203, 503 on every archive object put).
fn clear_backup(out: &CommandOutcome) -> Result<String, String> {
    let message = clear_error_with(out, &[4, 5])?;
    if out.code == Some(5) && !message.contains("is not in the vault") {
        return Err(format!(
            "it exited 5 without saying the backup's WAL is missing from the vault: {message}"
        ));
    }
    Ok(message)
}

/// A failed `restore pg` under an outage: exit 4 when the store failed the
/// restore itself; 5 when the restored server stopped because its
/// `restore_command` could not fetch WAL (PostgreSQL's recovery is the
/// engine), which must still say that the vault was the cause.
fn clear_restore(out: &CommandOutcome) -> Result<String, String> {
    clear_error_with(out, &[4, 5])
}

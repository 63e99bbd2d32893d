//! A PostgreSQL cluster that archives into a `file://` vault, kept for a
//! whole campaign (one `initdb` per campaign, not per run), and the checks
//! of what it backed up and archived.
//!
//! Its `archive_command` copies each segment aside once `wal-push` has
//! acknowledged it (exit 0): `strata ... pg wal-push %p ... && cp %p
//! <ack>/%f || exit 1`. Every file in that directory must later be
//! fetched back from the vault identical, whatever was killed meanwhile.
//! (`|| exit 1`: a push killed by a signal then fails the command like
//! any failure, and the archiver retries it a second later; a command
//! that dies of a signal is FATAL to PostgreSQL's archiver, which the
//! postmaster starts again at most every 10 seconds.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Case;
use super::vault::Cli;
use crate::cli::strata_bin;
use crate::net::free_port;
use crate::pg::{PgCluster, give_to_postgres};

/// How long the archiver gets to drain its backlog after a run.
pub(crate) const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

/// A cluster, its Strata configuration (cluster `main`) and its vault.
pub(crate) struct PgEnv {
    /// The environment's directory (owned by the PostgreSQL user).
    pub dir: PathBuf,
    /// The cluster, started.
    pub cluster: PgCluster,
    /// The Strata configuration.
    pub config: PathBuf,
    /// `strata --config <config>`.
    pub cli: Cli,
    /// Where `archive_command` copies each acknowledged segment.
    pub ack_dir: PathBuf,
    /// Rows added so far (each change adds a batch with a new number).
    changes: u64,
}

/// Where to restore a backup to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The end of the archived WAL (`--latest`).
    Latest,
    /// A time (`--to-time`).
    Time(DateTime<Utc>),
}

impl PgEnv {
    /// The cluster `backup pg`, `pg wal-push` and `restore pg` share:
    /// 1 MiB WAL segments (many segments, small ones), a vault with the
    /// default soft delete, some `pgbench` data.
    pub fn shared(dir: &Path) -> PgEnv {
        PgEnv::create(dir, &["--wal-segsize=1"], &[], "", 2)
    }

    /// A cluster in `dir` (created) with `initdb_args`, a vault made with
    /// `vault_init_args`, `extra` appended to the Strata configuration,
    /// and `pgbench -i -s <scale>` data plus the `chaos_rows` table.
    pub fn create(
        dir: &Path,
        initdb_args: &[&str],
        vault_init_args: &[&str],
        extra: &str,
        scale: u32,
    ) -> PgEnv {
        std::fs::create_dir_all(dir).expect("the environment's directory");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let ack_dir = dir.join("acknowledged");
        std::fs::create_dir_all(&ack_dir).expect("the acknowledged segments' directory");
        std::fs::create_dir_all(dir.join("restores")).expect("the restores' directory");
        give_to_postgres(dir);
        let config = dir.join("strata.toml");
        let vault_dir = dir.join("vault");
        let archive_command = format!(
            "{} --config {} pg wal-push %p --cluster main && cp %p {ack}/%f.part && mv {ack}/%f.part {ack}/%f || exit 1",
            strata_bin().display(),
            config.display(),
            ack = ack_dir.display()
        );
        let cluster = PgCluster::init_with(
            dir.join("pgdata"),
            dir.join("sock"),
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_timeout = 60\narchive_command = '{archive_command}'"
            ),
            initdb_args,
        );
        std::fs::write(
            &config,
            format!(
                "[vault]\nurl = \"file://{}\"\n\n[catalog]\npath = \"{}\"\n\n[writer]\npart_size = \"1MiB\"\ncompression_level = 1\n\n\
                 [postgres.main]\nconnection = \"{}\"\ndata_directory = \"{}\"\nbin_dir = \"{}\"\nparallel = 2\n{extra}\n",
                vault_dir.display(),
                dir.join("catalog.db").display(),
                cluster.connection(),
                cluster.data.display(),
                cluster.bin.display()
            ),
        )
        .expect("the Strata configuration");
        let cli = Cli::config(&config, &vault_dir);
        let mut init = vec!["vault", "init"];
        init.extend_from_slice(vault_init_args);
        cli.run(&init).success();
        give_to_postgres(dir);
        cluster.start();
        cluster.psql("CREATE TABLE chaos_rows (batch bigint, i int, pad text)");
        cluster.psql("CREATE TABLE chaos_marks (at timestamptz DEFAULT clock_timestamp())");
        cluster.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
        let env = PgEnv {
            dir: dir.to_path_buf(),
            cluster,
            config,
            cli,
            ack_dir,
            changes: 0,
        };
        if let Err(e) = env.drain_archive(ARCHIVE_WAIT) {
            panic!("the new cluster does not archive: {e}");
        }
        env
    }

    /// A new batch number for rows added to `chaos_rows`.
    pub fn next_batch(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }

    /// Adds a batch of rows and updates some accounts: what changes
    /// between runs (pages a differential must carry).
    pub fn change(&mut self) {
        let batch = self.next_batch();
        self.cluster.psql(&format!(
            "INSERT INTO chaos_rows SELECT {batch}, g, md5(g::text) FROM generate_series(1, 300) g; \
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 101 = {}",
            batch % 101
        ));
    }

    /// Commits a row outside what [`state`](Self::state) digests and
    /// archives it: the archive then shows that nothing else happened
    /// until this moment, so a backup's end becomes a restorable time.
    pub fn mark(&self) -> Result<String, String> {
        self.cluster.psql("INSERT INTO chaos_marks DEFAULT VALUES");
        self.drain_archive(ARCHIVE_WAIT)
    }

    /// What the cluster holds now, as restored copies are compared: the
    /// row count and an order-independent digest of `chaos_rows`, and the
    /// sum of the accounts' balances.
    pub fn state(&self) -> String {
        state_of(&self.cluster)
    }

    /// Switches WAL and waits until the archiver has archived everything
    /// up to that segment (no `.ready` left); the last archived segment,
    /// or what the archiver says when it does not get there in `timeout`.
    pub fn drain_archive(&self, timeout: Duration) -> Result<String, String> {
        let segment = self.cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + timeout;
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
                return Ok(last);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "segment {segment} is not archived after {timeout:?}: last archived {last}, archiver (failed count, last failed) {}",
                    self.cluster
                        .psql("SELECT failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fetches every acknowledged segment back with `wal-fetch` and
    /// compares it with the copy taken when `wal-push` exited 0; a
    /// difference or a segment that does not come back is a loss. The
    /// checked copies are removed. Returns how many were checked.
    pub fn check_acknowledged(&self, case: &mut Case, run: Option<usize>) -> usize {
        self.check_acknowledged_from(case, run, None)
    }

    /// Like [`check_acknowledged`](Self::check_acknowledged), where
    /// retention may have expired the segments before `kept_from` (the
    /// first segment a listed backup needs): those may be gone, but
    /// never come back different.
    pub fn check_acknowledged_from(
        &self,
        case: &mut Case,
        run: Option<usize>,
        kept_from: Option<&str>,
    ) -> usize {
        let mut names: Vec<String> = std::fs::read_dir(&self.ack_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".part"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        // A few fetches at once: each is a process of its own.
        let workers = 4;
        let outcomes: Vec<(String, Result<bool, String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|worker| {
                    let names = &names;
                    let scratch = case.path(format!("fetched-segment-{worker}"));
                    scope.spawn(move || {
                        names
                            .iter()
                            .skip(worker)
                            .step_by(workers)
                            .filter_map(|name| {
                                let outcome = self.fetch_compare(name, &scratch)?;
                                Some((name.clone(), outcome))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a fetching thread"))
                .collect()
        });
        for (name, outcome) in outcomes {
            let expirable = kept_from.is_some_and(|first| name.as_str() < first);
            match outcome {
                Ok(true) => {}
                Ok(false) => case.lost(
                    run,
                    format!(
                        "segment {name}, acknowledged by wal-push, comes back with other bytes"
                    ),
                ),
                Err(e) if expirable && e.starts_with("exit status: 1") => {
                    case.count("acknowledged segments expired by retention", 1)
                }
                Err(e) => case.lost(
                    run,
                    format!("segment {name}, acknowledged by wal-push, is not fetched back ({e})"),
                ),
            }
            let _ = std::fs::remove_file(self.ack_dir.join(&name));
        }
        names.len()
    }

    /// Fetches acknowledged segment `name` into `scratch` and compares it
    /// with its copy: `None` when the copy is gone, else whether it came
    /// back identical, or why it did not come back (`wal-fetch`'s status
    /// first).
    fn fetch_compare(&self, name: &str, scratch: &Path) -> Option<Result<bool, String>> {
        let expected = std::fs::read(self.ack_dir.join(name)).ok()?;
        let _ = std::fs::remove_file(scratch);
        let out = self.cli.run(&[
            "pg",
            "wal-fetch",
            name,
            &scratch.display().to_string(),
            "--cluster",
            "main",
        ]);
        let outcome = if out.status.success() {
            Ok(std::fs::read(scratch).ok().as_deref() == Some(&expected[..]))
        } else {
            Err(format!("{}: {}", out.status, out.stderr_text()))
        };
        let _ = std::fs::remove_file(scratch);
        Some(outcome)
    }

    /// Restores to `target` into `<dir>/restores/<name>` with `--start`,
    /// compares the copy's rows with `expected`, runs `pg_amcheck`, stops
    /// it and removes it. A failure is a loss (a listed backup that does
    /// not restore as it was taken). Whether all went well.
    pub fn restore_checked(
        &self,
        case: &mut Case,
        name: &str,
        target: Target,
        expected: &str,
        run: Option<usize>,
    ) -> bool {
        let dir = self.dir.join("restores").join(name);
        let port = free_port();
        let args = restore_args(target, &dir, port);
        let out = self.cli.run(&args);
        let copy = PgCluster::adopt(dir.clone(), port, self.cluster.socket_dir.clone());
        let ok = if !out.status.success() {
            case.lost(
                run,
                format!(
                    "restore to {target:?} ({name}) failed ({}): {}\nserver log:\n{}",
                    out.status,
                    out.stderr_text(),
                    tail(
                        &std::fs::read_to_string(dir.join("strata-restore.log"))
                            .unwrap_or_default()
                    )
                ),
            );
            false
        } else {
            check_copy(case, &copy, name, expected, run)
        };
        drop(copy);
        let _ = std::fs::remove_dir_all(&dir);
        ok
    }
}

/// The first WAL segment (timeline 1) that the oldest listed backup of
/// `main` needs: retention keeps everything from there on.
pub(crate) fn first_needed_segment(env: &PgEnv, segment_mib: u64) -> Option<String> {
    let out = env.cli.run(&["--json", "list", "pg", "main"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let lsn = list["backups"]
        .as_array()?
        .iter()
        .filter_map(|b| {
            let (high, low) = b["start_lsn"].as_str()?.split_once('/')?;
            Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
        })
        .min()?;
    let segment = lsn / (segment_mib << 20);
    let per_id = (1u64 << 32) / (segment_mib << 20);
    Some(format!(
        "00000001{:08X}{:08X}",
        segment / per_id,
        segment % per_id
    ))
}

/// `restore pg main <target> --target-dir <dir> --port <port> --start`.
pub(crate) fn restore_args(target: Target, dir: &Path, port: u16) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--json".into(),
        "restore".into(),
        "pg".into(),
        "main".into(),
    ];
    match target {
        Target::Latest => args.push("--latest".into()),
        Target::Time(t) => {
            args.push("--to-time".into());
            args.push(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        }
    }
    args.extend([
        "--target-dir".into(),
        dir.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--start".into(),
    ]);
    args
}

/// Checks a started copy: its rows are `expected` and `pg_amcheck` finds
/// nothing. Losses are recorded; whether it passed.
pub(crate) fn check_copy(
    case: &mut Case,
    copy: &PgCluster,
    name: &str,
    expected: &str,
    run: Option<usize>,
) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state_of(copy))) {
        Ok(got) if got == expected => {}
        Ok(got) => {
            case.lost(
                run,
                format!("the copy restored as {name} holds {got}, the source held {expected}"),
            );
            return false;
        }
        Err(_) => {
            case.lost(
                run,
                format!("the copy restored as {name} cannot be queried"),
            );
            return false;
        }
    }
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| copy.amcheck())).is_err() {
        case.lost(
            run,
            format!("pg_amcheck finds damage in the copy restored as {name}"),
        );
        return false;
    }
    true
}

/// See [`PgEnv::state`].
pub(crate) fn state_of(cluster: &PgCluster) -> String {
    cluster.psql(
        "SELECT (SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::int8), 0) FROM chaos_rows t) \
         || ' rows, balance ' || (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)",
    )
}

/// The last lines of a log, for messages.
pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

//! PostgreSQL on full and read-only file systems: the vault under `backup
//! pg` and `archive_command` (`pg wal-push`), the data directory `restore
//! pg` lays down and replays WAL into, and the file `restore_command`
//! (`pg wal-fetch`) writes.
//!
//! One cluster (1 MiB WAL segments, so that segments come often) archives
//! into a vault on its own tmpfs for the whole campaign; a table `chaos`
//! gets rows in every run, and every restore that starts its copy checks
//! that it has every row committed before the restore's target, including
//! those whose WAL was archived only once the vault had room again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use super::checks::{Fault, leftovers};
use super::stream::expect_success;
use super::tmpfs::SmallDisk;
use super::{Campaign, Tally};
use crate::cli::RunOutput;
use crate::net::free_port;
use crate::pg::{PgCluster, PgStrata, give_to_postgres};

const BACKUP_FULL: &str = "pg backup, vault full";
const WAL_PUSH_FULL: &str = "pg wal-push, vault full";
const VAULT_READ_ONLY: &str = "pg vault read-only";
const RESTORE_FULL: &str = "pg restore, target full";
const RESTORE_READ_ONLY: &str = "pg restore, target read-only";
const REPLAY_FULL: &str = "pg restore, replay full";
const FETCH_FULL: &str = "pg wal-fetch, pg_wal full";
const FETCH_READ_ONLY: &str = "pg wal-fetch, pg_wal read-only";

const CASES: [&str; 8] = [
    BACKUP_FULL,
    WAL_PUSH_FULL,
    VAULT_READ_ONLY,
    RESTORE_FULL,
    RESTORE_READ_ONLY,
    REPLAY_FULL,
    FETCH_FULL,
    FETCH_READ_ONLY,
];

/// The WAL segment size of the cluster (`initdb --wal-segsize=1`).
const SEGMENT: u64 = 1 << 20;

/// Room enough for anything before a fault.
const ROOMY: u64 = 1 << 30;

/// The server log `restore pg --start` writes in the data directory.
const RESTORE_LOG: &str = "strata-restore.log";

/// How long the archiver may take to catch up once the vault has room.
const ARCHIVE_WAIT: Duration = Duration::from_secs(90);

/// Runs the PostgreSQL cases.
pub(super) fn run(campaign: &mut Campaign) {
    if !campaign.selects_any(&CASES) {
        return;
    }
    let root = campaign.dir("pg");
    let setup = std::panic::catch_unwind(|| PgEnv::new(&root));
    let mut env = match setup {
        Ok(Ok(env)) => env,
        Ok(Err(why)) => return campaign.setup_failed(&CASES, &why),
        Err(panic) => return campaign.setup_failed(&CASES, &crate::chaos::panic_message(&*panic)),
    };
    // Faults on the vault first: the restores after them replay the WAL
    // archived once the vault had room again.
    campaign.case(BACKUP_FULL, (1, 10), |t, rng| {
        if let Err(why) = env.backup_into_full_vault(t, rng) {
            t.failed(why);
        }
    });
    campaign.case(WAL_PUSH_FULL, (1, 10), |t, rng| {
        if let Err(why) = env.archive_into_full_vault(t, rng) {
            t.failed(why);
        }
    });
    campaign.case(VAULT_READ_ONLY, (1, 5), |t, rng| {
        if let Err(why) = env.read_only_vault(t, rng) {
            t.failed(why);
        }
    });
    campaign.case(RESTORE_FULL, (2, 20), |t, rng| {
        if let Err(why) = env.restore_onto_small_disk(Fault::Full, t, rng) {
            t.failed(why);
        }
    });
    campaign.case(RESTORE_READ_ONLY, (1, 5), |t, rng| {
        if let Err(why) = env.restore_onto_small_disk(Fault::ReadOnly, t, rng) {
            t.failed(why);
        }
    });
    campaign.case(REPLAY_FULL, (1, 10), |t, rng| {
        if let Err(why) = env.replay_onto_full_disk(t, rng) {
            t.failed(why);
        }
    });
    campaign.case(FETCH_FULL, (2, 30), |t, rng| {
        if let Err(why) = env.fetch_onto_small_disk(Fault::Full, t, rng) {
            t.failed(why);
        }
    });
    campaign.case(FETCH_READ_ONLY, (1, 10), |t, rng| {
        if let Err(why) = env.fetch_onto_small_disk(Fault::ReadOnly, t, rng) {
            t.failed(why);
        }
    });
    // The cluster's directory goes with it; its log (archive_command's
    // errors among it) stays in the work directory, kept when a run failed.
    let _ = std::fs::write(root.join("server.log"), env.pg.cluster.log());
}

/// The cluster, its vault on a tmpfs, and what the runs rely on.
struct PgEnv {
    // Dropped first: the server stops before its vault's disk goes.
    pg: PgStrata,
    vault_disk: SmallDisk,
    root: PathBuf,
    /// Rows committed in `chaos`.
    rows: u64,
    /// Bytes one full backup takes in the vault.
    backup_bytes: u64,
    /// Bytes a restore lays down (before WAL replay).
    laydown_bytes: u64,
    /// An archived WAL segment and its bytes as `wal-fetch` gives them.
    segment: (String, Vec<u8>),
    /// Restores made, to name their directories.
    restores: usize,
}

impl PgEnv {
    fn new(root: &Path) -> Result<PgEnv, String> {
        let vault_disk = SmallDisk::mount(&root.join("vault-disk"), ROOMY)?;
        let url = format!("file://{}", vault_disk.join("vault").display());
        let pg = PgStrata::with_initdb("chaos-disk", Some(&url), &["--wal-segsize=1"]);
        // `archive_command` runs as the PostgreSQL user.
        give_to_postgres(vault_disk.path());
        let mut env = PgEnv {
            pg,
            vault_disk,
            root: root.to_path_buf(),
            rows: 0,
            backup_bytes: 0,
            laydown_bytes: 0,
            segment: (String::new(), Vec::new()),
            restores: 0,
        };
        env.pg
            .cluster
            .psql("CREATE TABLE chaos (run int, i int, note text)");
        env.add_rows(0, 60_000);
        env.archived()?;
        let before = env.vault_disk.used()?;
        expect_success(env.strata(&["backup", "pg", "main"]))?;
        env.backup_bytes = env.vault_disk.used()? - before;
        env.add_rows(0, 5_000);
        let segment = env.archived()?;
        let fetched = env.root.join("fetched");
        std::fs::create_dir_all(&fetched).map_err(|e| e.to_string())?;
        let dest = fetched.join(&segment);
        expect_success(env.fetch(&segment, &dest))?;
        let bytes = std::fs::read(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        env.segment = (segment, bytes);
        // What a restore lays down, on a disk with room.
        let disk = SmallDisk::mount(&root.join("measure"), ROOMY)?;
        let target = disk.join("copy");
        expect_success(env.restore(&target, false, None))?;
        env.laydown_bytes = disk.used()?;
        Ok(env)
    }

    /// `strata --config <config> args...` as root, with a deadline.
    fn strata(&self, args: &[&str]) -> RunOutput {
        crate::cli::Strata::new()
            .arg("--config")
            .arg(&self.pg.config)
            .args(args)
            .timeout(Duration::from_secs(240))
            .run()
    }

    /// `strata pg wal-fetch <segment> <dest>`.
    fn fetch(&self, segment: &str, dest: &Path) -> RunOutput {
        let dest = dest.display().to_string();
        self.strata(&["pg", "wal-fetch", segment, &dest, "--cluster", "main"])
    }

    /// `pg wal-fetch` as `restore_command` runs it: in the data directory
    /// `data_dir`, `%p` relative to it (`pg_wal/RECOVERYXLOG`).
    fn fetch_in(&self, segment: &str, data_dir: &Path) -> RunOutput {
        crate::cli::Strata::new()
            .arg("--config")
            .arg(&self.pg.config)
            .args([
                "pg",
                "wal-fetch",
                segment,
                "pg_wal/RECOVERYXLOG",
                "--cluster",
                "main",
            ])
            .current_dir(data_dir)
            .timeout(Duration::from_secs(240))
            .run()
    }

    /// `strata restore pg main --latest` into `target`, started on a new
    /// port when `start`.
    fn restore(&self, target: &Path, force: bool, start: Option<u16>) -> RunOutput {
        let target = target.display().to_string();
        let port = start.map(|p| p.to_string());
        let mut args = vec!["restore", "pg", "main", "--latest", "--target-dir", &target];
        if force {
            args.push("--force");
        }
        if let Some(port) = &port {
            args.extend(["--port", port, "--start", "--start-timeout", "180"]);
        }
        self.strata(&args)
    }

    /// Commits `count` rows of run `run`.
    fn add_rows(&mut self, run: usize, count: u64) {
        self.pg.cluster.psql(&format!(
            "INSERT INTO chaos SELECT {run}, g, md5(g::text) FROM generate_series(1, {count}) g"
        ));
        self.rows += count;
    }

    /// Switches to a new WAL segment and waits until everything before it
    /// is archived; returns the name of the last segment archived.
    fn archived(&self) -> Result<String, String> {
        let segment = self
            .pg
            .cluster
            .psql("SELECT pg_walfile_name(pg_switch_wal())");
        let cluster = &self.pg.cluster;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cluster.wait_archived(&segment, ARCHIVE_WAIT)
        }))
        .map_err(|panic| crate::chaos::panic_message(&*panic))?;
        Ok(segment)
    }

    /// The ids of the cluster's backups `list` shows.
    fn backup_ids(&self) -> Result<Vec<String>, String> {
        let out = expect_success(self.strata(&["--json", "list"]))?;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("`list --json` printed no JSON: {e}"))?;
        Ok(listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["engine"] == "postgres")
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// What the vault must hold after a failed write: the same backups,
    /// no data of an uncommitted one, no staging file (looked at twice, a
    /// moment apart, so that an archiver's upload in flight is not taken
    /// for one), and `verify` passing.
    fn vault_unharmed(&self, t: &mut Tally, before: &[String]) -> Result<(), String> {
        let after = self.backup_ids()?;
        if after != before {
            t.failed(format!(
                "`list` changed across a failed command: {before:?} before, {after:?} after"
            ));
        }
        let vault = self.vault_disk.join("vault");
        let first = leftovers(&vault);
        if !first.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
            let left: Vec<_> = leftovers(&vault)
                .into_iter()
                .filter(|f| first.contains(f))
                .collect();
            if !left.is_empty() {
                t.failed(format!("the failed command left in the vault: {left:?}"));
            }
        }
        if let Err(why) = expect_success(self.strata(&["verify"])) {
            t.failed(format!("verify after the fault: {why}"));
        }
        Ok(())
    }

    /// Checks the started copy at `target` (port `port`): every committed row.
    fn check_copy(&self, t: &mut Tally, target: &Path, port: u16) -> bool {
        let copy = PgCluster::adopt(
            target.to_path_buf(),
            port,
            self.pg.cluster.socket_dir.clone(),
        );
        match copy.try_psql("SELECT count(*) FROM chaos") {
            Ok(count) if count == self.rows.to_string() => true,
            Ok(count) => {
                t.lost(format!(
                    "the restored copy has {count} rows, {} were committed and archived",
                    self.rows
                ));
                false
            }
            Err(why) => {
                t.failed(format!("the restored copy does not answer: {why}"));
                false
            }
        }
    }

    /// A backup into a vault whose disk fills at a random point of the
    /// backup's data; WAL archiving fails with it until there is room again.
    fn backup_into_full_vault(&mut self, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
        let before = self.backup_ids()?;
        // Within the data streams: the WAL the backup waits for comes after
        // them, and waiting for WAL that cannot be archived takes minutes.
        let room = (self.backup_bytes as f64 * rng.random_range(0.0..0.8)) as u64;
        self.vault_disk.leave_free(room)?;
        let out = self.strata(&["backup", "pg", "main"]);
        self.add_rows(t.run, 2_000);
        if out.status.success() {
            t.failed(format!(
                "a backup of {} bytes was committed with {room} bytes free",
                self.backup_bytes
            ));
        } else {
            t.fault();
            t.clear_error(
                &out.stderr_text(),
                out.code(),
                4,
                Fault::Full,
                self.vault_disk.path(),
            );
            self.vault_unharmed(t, &before)?;
        }
        self.vault_disk.resize(ROOMY)?;
        self.archived()?;
        expect_success(self.strata(&["backup", "pg", "main"]))?;
        t.rerun_ok();
        Ok(())
    }

    /// PostgreSQL archives into a vault that fills at a random point:
    /// `archive_command` fails clearly (in the server log), PostgreSQL keeps
    /// the segments, and the archiver catches up once there is room.
    fn archive_into_full_vault(&mut self, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
        let log_before = self.pg.cluster.log().len();
        let failed_before = self.archiver_failures();
        self.vault_disk
            .leave_free(rng.random_range(0..3 * SEGMENT / 2))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.archiver_failures() == failed_before && Instant::now() < deadline {
            self.add_rows(t.run, 10_000);
            self.pg.cluster.psql("SELECT pg_switch_wal()");
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.archiver_failures() == failed_before {
            t.failed("the archiver never failed on a full vault");
        } else {
            t.fault();
            // What the operator reads: archive_command's output in the log.
            let log = self.pg.cluster.log();
            let said = log.get(log_before..).unwrap_or_default();
            let code = said
                .lines()
                .find_map(|l| l.split("failed with exit code ").nth(1))
                .and_then(|rest| rest.trim().parse().ok());
            t.clear_error(said, code, 4, Fault::Full, self.vault_disk.path());
        }
        self.vault_disk.resize(ROOMY)?;
        self.archived()?;
        t.rerun_ok();
        Ok(())
    }

    /// `failed_count` of `pg_stat_archiver`.
    fn archiver_failures(&self) -> u64 {
        self.pg
            .cluster
            .psql("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap_or(0)
    }

    /// The vault remounted read-only: the backup and archiving fail
    /// clearly; listing and restoring (reads) work; with the vault
    /// read-write again, archiving catches up and a backup works.
    fn read_only_vault(&mut self, t: &mut Tally, _rng: &mut StdRng) -> Result<(), String> {
        let before = self.backup_ids()?;
        read_only_when_idle(&self.vault_disk)?;
        let out = self.strata(&["backup", "pg", "main"]);
        if out.status.success() {
            t.failed("a backup was committed into a read-only vault");
        } else {
            t.fault();
            t.clear_error(
                &out.stderr_text(),
                out.code(),
                4,
                Fault::ReadOnly,
                self.vault_disk.path(),
            );
        }
        self.vault_unharmed(t, &before)?;
        // A restore only reads the vault.
        let disk = SmallDisk::mount(
            &self.root.join(format!("ro-vault-restore-{}", t.run)),
            ROOMY,
        )?;
        if let Err(why) = expect_success(self.restore(&disk.join("copy"), false, None)) {
            t.failed(format!("a restore from the read-only vault failed: {why}"));
        }
        drop(disk);
        self.add_rows(t.run, 2_000);
        self.vault_disk.read_write()?;
        self.archived()?;
        expect_success(self.strata(&["backup", "pg", "main"]))?;
        t.rerun_ok();
        Ok(())
    }

    /// `restore pg` onto a disk that fills at a random point of the data
    /// it lays down, or is read-only: a clear error, no `global/pg_control`
    /// (the copy cannot be started by mistake), then a re-run with room
    /// (`--force` over the partial restore, as the hint says) that starts
    /// and has every row.
    fn restore_onto_small_disk(
        &mut self,
        fault: Fault,
        t: &mut Tally,
        rng: &mut StdRng,
    ) -> Result<(), String> {
        self.add_rows(t.run, 1_000);
        self.archived()?;
        self.restores += 1;
        let disk = SmallDisk::mount(&self.root.join(format!("restore-{}", self.restores)), ROOMY)?;
        // The mount point itself (empty), or a directory to create in it.
        let target = if rng.random_bool(0.5) {
            disk.path().to_path_buf()
        } else {
            disk.join("copy")
        };
        match fault {
            // Every other run fills in the last pages: the small files a
            // restore writes after the data (pg_control, backup_label, the
            // recovery settings), measured by a restore with room first.
            Fault::Full if t.run % 2 == 1 => {
                expect_success(self.restore(&target, false, None))?;
                let needed = disk.used()?;
                empty_dir(&target)?;
                disk.resize(needed - rng.random_range(1..=3) * super::tmpfs::PAGE)?;
            }
            Fault::Full => {
                disk.resize((self.laydown_bytes as f64 * rng.random_range(0.0..0.97)) as u64)?
            }
            Fault::ReadOnly => disk.read_only()?,
        }
        let out = self.restore(&target, false, None);
        if out.status.success() {
            t.failed(format!(
                "a restore of {} bytes succeeded on a {} disk",
                self.laydown_bytes,
                if fault == Fault::Full {
                    "full"
                } else {
                    "read-only"
                }
            ));
            return Ok(());
        }
        t.fault();
        let said = out.stderr_text();
        t.clear_error(&said, out.code(), 10, fault, disk.path());
        let written = std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some());
        if written && !said.contains("partial restore") {
            t.failed(format!(
                "the failed restore left files in {} and does not say it holds a partial restore:\n{said}",
                target.display()
            ));
        }
        let control = target.join("global/pg_control");
        if control.exists() {
            t.failed(format!(
                "the failed restore left {}: the data directory looks complete and can be started",
                control.display()
            ));
        }

        match fault {
            Fault::Full => disk.resize(ROOMY)?,
            Fault::ReadOnly => disk.read_write()?,
        }
        let port = free_port();
        let out = self.restore(&target, written, Some(port));
        let started = expect_success(out).map(|_| self.check_copy(t, &target, port));
        PgCluster::adopt(target.clone(), port, self.pg.cluster.socket_dir.clone())
            .stop_mode("immediate");
        if started? {
            t.rerun_ok();
        }
        Ok(())
    }

    /// `restore pg --start` onto a disk with room for the data directory
    /// but at most part of the WAL replay writes (the segments
    /// `restore_command` fetches into `pg_wal`, those it fetches ahead):
    /// recovery stops, `restore` fails clearly, and a re-run with room
    /// starts with every row.
    fn replay_onto_full_disk(&mut self, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
        self.add_rows(t.run, 30_000);
        self.archived()?;
        self.restores += 1;
        let disk = SmallDisk::mount(&self.root.join(format!("replay-{}", self.restores)), ROOMY)?;
        let target = disk.join("copy");
        let room = self.laydown_bytes + rng.random_range(0..8 * SEGMENT);
        disk.resize(room)?;
        let port = free_port();
        let out = self.restore(&target, false, Some(port));
        let copy = PgCluster::adopt(target.clone(), port, self.pg.cluster.socket_dir.clone());
        if out.status.success() {
            // The replay fitted: then the copy must be right.
            self.check_copy(t, &target, port);
            copy.stop_mode("immediate");
            return Ok(());
        }
        t.fault();
        let said = out.stderr_text();
        let code = out.code();
        // Laid down in part (exit 10), or replay stopped: the restore says
        // why, and the server log holds restore_command's own error.
        let expected = if code == Some(10) { 10 } else { 5 };
        let log = std::fs::read_to_string(target.join(RESTORE_LOG)).unwrap_or_default();
        t.clear_error(
            &format!("{said}\n{log}"),
            code,
            expected,
            Fault::Full,
            disk.path(),
        );

        let complete = target.join("global/pg_control").is_file();
        if complete && !said.contains("pg_ctl -D") {
            t.failed(format!(
                "every file is in place, and the error does not say that starting the copy goes on with the recovery:\n{said}"
            ));
        }

        disk.resize(ROOMY)?;
        if complete && t.run.is_multiple_of(2) {
            // As the hint says: start it, and recovery goes on.
            // pg_ctl logs next to the data directory, as the PostgreSQL user.
            give_to_postgres(disk.path());
            let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                copy.start();
                copy.wait_promoted(Duration::from_secs(120))
            }));
            let ok = match resumed {
                Ok(Ok(())) => self.check_copy(t, &target, port),
                Ok(Err(why)) => {
                    t.failed(format!("the copy, started again with room, {why}"));
                    false
                }
                Err(panic) => {
                    t.failed(format!(
                        "the copy did not start again with room: {}",
                        crate::chaos::panic_message(&*panic)
                    ));
                    false
                }
            };
            copy.stop_mode("immediate");
            if ok {
                t.rerun_ok();
            }
            return Ok(());
        }
        let port = free_port();
        let out = self.restore(&target, true, Some(port));
        let started = expect_success(out).map(|_| self.check_copy(t, &target, port));
        PgCluster::adopt(target.clone(), port, self.pg.cluster.socket_dir.clone())
            .stop_mode("immediate");
        if started? {
            t.rerun_ok();
        }
        Ok(())
    }

    /// `pg wal-fetch` into a `pg_wal` whose disk fills at a random point of
    /// the segment, or is read-only: exit 126 (PostgreSQL stops recovery;
    /// exit 1 would end it as if the archive were over, without the
    /// segments it holds), no file left that PostgreSQL could take for the
    /// segment, and once there is room the segment exactly.
    fn fetch_onto_small_disk(
        &mut self,
        fault: Fault,
        t: &mut Tally,
        rng: &mut StdRng,
    ) -> Result<(), String> {
        let disk = SmallDisk::mount(&self.root.join(format!("fetch-{fault:?}-{}", t.run)), ROOMY)?;
        let pg_wal = disk.join("pg_wal");
        std::fs::create_dir_all(&pg_wal).map_err(|e| e.to_string())?;
        let dest = pg_wal.join("RECOVERYXLOG");
        let (segment, bytes) = self.segment.clone();
        match fault {
            Fault::Full => disk.leave_free(rng.random_range(0..bytes.len() as u64))?,
            Fault::ReadOnly => disk.read_only()?,
        }
        // Every other run as PostgreSQL calls it, the path relative.
        let out = if t.run.is_multiple_of(2) {
            self.fetch_in(&segment, disk.path())
        } else {
            self.fetch(&segment, &dest)
        };
        match out.code() {
            Some(0) => {
                t.failed(format!("wal-fetch of {} bytes succeeded on a {fault:?} disk", bytes.len()));
                return Ok(());
            }
            Some(1) => t.lost(format!(
                "wal-fetch answered exit 1 (\"no such file in the archive\") for {segment}, which the archive holds: recovery would end there, without it"
            )),
            _ => {}
        }
        t.fault();
        t.clear_error(&out.stderr_text(), out.code(), 126, fault, disk.path());
        let left: Vec<_> = crate::fixture::relative_files_below(&pg_wal)
            .into_iter()
            .collect();
        if !left.is_empty() {
            t.failed(format!("the failed wal-fetch left in pg_wal: {left:?}"));
        }

        match fault {
            Fault::Full => disk.resize(ROOMY)?,
            Fault::ReadOnly => disk.read_write()?,
        }
        expect_success(self.fetch(&segment, &dest))?;
        match std::fs::read(&dest) {
            Ok(back) if back == bytes => t.rerun_ok(),
            Ok(_) => t.lost(format!("wal-fetch of {segment} wrote other bytes")),
            Err(e) => t.failed(format!("the re-run wrote no {}: {e}", dest.display())),
        }
        Ok(())
    }
}

/// Waiting for a started copy to finish recovery.
trait Promoted {
    /// Waits until the server has left recovery (promoted), or says why not.
    fn wait_promoted(&self, timeout: Duration) -> Result<(), String>;
}

impl Promoted for PgCluster {
    fn wait_promoted(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_psql("SELECT pg_is_in_recovery()") {
                Ok(answer) if answer == "f" => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "did not finish recovery within {timeout:?}; its log:\n{}",
                        self.log()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Removes everything in `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Remounts `disk` read-only, retrying while a file on it is open for
/// writing (an archiver's upload): the kernel refuses until it is closed.
fn read_only_when_idle(disk: &SmallDisk) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match disk.read_only() {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() > deadline => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

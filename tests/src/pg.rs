//! Real PostgreSQL clusters for tests: `initdb` in a temporary directory, a
//! free port, a private socket directory, `pg_ctl start -w`, `psql` and
//! `pgbench`, and a teardown that always stops the server.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every
//! PostgreSQL program runs as the `postgres` OS user (`runuser -u postgres`)
//! and the test directory is handed to that user. `strata` itself, called by
//! `archive_command` and `restore_command`, then runs as `postgres` too, so
//! [`PgStrata`] puts the vault, the configuration and the catalog index in the
//! same directory.
//!
//! ```no_run
//! use strata_e2e::pg::PgStrata;
//! let env = PgStrata::new("example");           // cluster + file vault + config, archiving on
//! env.cluster.psql("create table t(i int); insert into t values (1)");
//! env.strata(&["backup", "pg", "main"]).success();
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cli::{RunOutput, Strata, strata_bin};
use crate::fixture::TestDir;
use crate::net::free_port;

/// The OS user PostgreSQL runs as when the tests run as root.
pub const PG_USER: &str = "postgres";

/// Whether PostgreSQL's programs are there, where [`pg_bin_dir`] looks for
/// them (`$STRATA_PG_BIN`, or a major version under `/usr/lib/postgresql`):
/// what tests that can run without PostgreSQL ask before they skip.
pub fn postgres_installed() -> bool {
    if let Some(dir) = std::env::var_os("STRATA_PG_BIN") {
        return Path::new(&dir).join("initdb").is_file();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .any(|e| e.path().join("bin/initdb").is_file())
        })
        .unwrap_or(false)
}

/// The directory of the PostgreSQL programs: `$STRATA_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
///
/// # Panics
/// When no PostgreSQL installation is found, with the command that installs one.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((major, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    majors.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("PostgreSQL 15+ is not installed: run scripts/setup.sh (apt-get install postgresql-15), or set STRATA_PG_BIN")
    })
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command that runs `program` as the PostgreSQL OS user.
pub fn as_postgres(program: impl AsRef<Path>) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.arg("-u").arg(PG_USER).arg("--").arg(program.as_ref());
        cmd
    } else {
        Command::new(program.as_ref())
    }
}

/// Gives `path` (recursively) to the PostgreSQL OS user, when running as root.
pub fn give_to_postgres(path: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_USER}:{PG_USER}"))
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown -R {PG_USER} {}", path.display());
    }
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
pub fn run_checked(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A PostgreSQL cluster in a test directory. Dropping it stops the server.
pub struct PgCluster {
    /// The data directory.
    pub data: PathBuf,
    /// The port.
    pub port: u16,
    /// The Unix socket directory.
    pub socket_dir: PathBuf,
    /// The PostgreSQL programs.
    pub bin: PathBuf,
}

impl PgCluster {
    /// Runs `initdb -k` (data checksums on) into `data` (inside a directory
    /// the postgres user owns), on a free port with its own socket directory,
    /// and appends `conf` to postgresql.conf. Not started.
    pub fn init(data: PathBuf, socket_dir: PathBuf, conf: &str) -> PgCluster {
        Self::init_with(data, socket_dir, conf, &[])
    }

    /// Like [`init`](Self::init), with more `initdb` arguments
    /// (`--wal-segsize=1`).
    pub fn init_with(
        data: PathBuf,
        socket_dir: PathBuf,
        conf: &str,
        initdb_args: &[&str],
    ) -> PgCluster {
        Self::init_checksums(data, socket_dir, conf, initdb_args, true)
    }

    /// Like [`init_with`](Self::init_with), with data checksums on or off
    /// (PostgreSQL 15's `initdb` default is off).
    pub fn init_checksums(
        data: PathBuf,
        socket_dir: PathBuf,
        conf: &str,
        initdb_args: &[&str],
        checksums: bool,
    ) -> PgCluster {
        let bin = pg_bin_dir();
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        give_to_postgres(&socket_dir);
        let mut cmd = as_postgres(bin.join("initdb"));
        cmd.arg("-D").arg(&data);
        if checksums {
            cmd.arg("-k");
        }
        cmd.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        cmd.args(initdb_args);
        run_checked(cmd, "initdb");
        let port = free_port();
        let cluster = PgCluster {
            data,
            port,
            socket_dir,
            bin,
        };
        cluster.append_conf(&format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             shared_buffers = 32MB\nmax_wal_size = 256MB\nfsync = on\nlogging_collector = off\n{conf}\n",
            cluster.socket_dir.display()
        ));
        cluster
    }

    /// A cluster whose data directory was made by someone else (a restore);
    /// dropping it stops the server if it runs.
    pub fn adopt(data: PathBuf, port: u16, socket_dir: PathBuf) -> PgCluster {
        PgCluster {
            data,
            port,
            socket_dir,
            bin: pg_bin_dir(),
        }
    }

    /// Appends lines to postgresql.conf.
    pub fn append_conf(&self, text: &str) {
        let path = self.data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&path).expect("postgresql.conf");
        conf.push('\n');
        conf.push_str(text);
        conf.push('\n');
        std::fs::write(&path, conf).expect("write postgresql.conf");
    }

    /// `pg_ctl start -w`, logging to `<data>/../<name>.log`.
    pub fn start(&self) {
        let mut cmd = as_postgres(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "start"]);
        let out = cmd.output().expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        let name = self
            .data
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.data.with_file_name(format!("{name}.log"))
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        pid.lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`).
    pub fn stop_mode(&self, mode: &str) {
        if !self.is_running() {
            return;
        }
        let mut cmd = as_postgres(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        let _ = cmd.output();
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// The libpq keyword/value connection string.
    pub fn connection(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output, or
    /// psql's error text.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = as_postgres(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql]);
        let out = cmd.output().expect("psql runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `pg_amcheck` over every database (installing `amcheck` where
    /// missing): heap and B-trees, every heap tuple looked up in each index,
    /// parent-child checks. Asserts it found nothing.
    pub fn amcheck(&self) {
        let mut cmd = self.program("pg_amcheck");
        cmd.args([
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--parent-check",
            "-U",
            "postgres",
        ]);
        let out = cmd.output().expect("pg_amcheck runs");
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "pg_amcheck found damage:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A path inside the data directory.
    pub fn cluster_path(&self, rel: &str) -> PathBuf {
        self.data.join(rel)
    }

    /// Runs a psql script (statements one by one, each in its own
    /// transaction, `\\c` allowed) on database `db`; returns its output.
    ///
    /// # Panics
    /// When a statement fails, with psql's error.
    pub fn script(&self, db: &str, script: &str) -> String {
        use std::io::Write;
        let mut cmd = as_postgres(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("psql runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("script written");
        let out = child.wait_with_output().expect("psql ends");
        assert!(
            out.status.success(),
            "psql script on {db} (port {}) failed: {}\n{script}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs SQL with psql and returns its output.
    ///
    /// # Panics
    /// When psql fails, with its error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql `{sql}` on port {} failed: {e}", self.port))
    }

    /// A PostgreSQL program (`pgbench`, `pg_amcheck`) against this server, as the postgres user.
    pub fn program(&self, name: &str) -> Command {
        let mut cmd = as_postgres(self.bin.join(name));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string());
        cmd
    }

    /// Runs `pgbench` with `args` and asserts it succeeded.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = self.program("pgbench");
        cmd.args(["-U", "postgres"]).args(args).arg("postgres");
        run_checked(cmd, "pgbench")
    }

    /// Promotes a standby (`pg_ctl promote -w`): it ends recovery and
    /// starts a new timeline.
    pub fn promote(&self) {
        let mut cmd = as_postgres(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        run_checked(cmd, "pg_ctl promote");
    }

    /// Waits until this standby has replayed the WAL up to `lsn`.
    pub fn wait_replayed(&self, lsn: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) != "t" {
            assert!(
                Instant::now() < deadline,
                "the standby did not replay up to {lsn} within {timeout:?}\nlog:\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Forces a WAL switch and waits until the archiver has archived
    /// everything up to it (no `.ready` file left).
    pub fn switch_and_wait_archived(&self, timeout: Duration) {
        let seg = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&seg, timeout);
    }

    /// Waits until `segment` (and every earlier one) has been archived.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            let ready = std::fs::read_dir(self.data.join("pg_wal/archive_status"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                })
                .unwrap_or(false);
            if last.as_str() >= segment && !ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "segment {segment} not archived after {timeout:?} (last archived: {last}); archiver: {}\nlog:\n{}",
                self.psql("SELECT failed_count, last_failed_wal FROM pg_stat_archiver"),
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_mode("immediate");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A cluster archiving into a `file://` vault through `strata`, with a
/// Strata configuration naming it `main`: what an operator sets up.
pub struct PgStrata {
    /// The cluster (started, archiving on).
    pub cluster: PgCluster,
    /// The Strata configuration file.
    pub config: PathBuf,
    /// The vault URL.
    pub vault_url: String,
    /// The vault directory.
    pub vault_dir: PathBuf,
    /// The vault key file, when the vault is encrypted.
    pub key_file: Option<PathBuf>,
    /// The test directory (owned by the postgres user).
    pub dir: TestDir,
}

impl PgStrata {
    /// A started cluster archiving with `archive_timeout = 60`, a file vault
    /// and a config in a new test directory.
    pub fn new(label: &str) -> PgStrata {
        Self::with_vault(label, None)
    }

    /// Like [`new`](Self::new), with the vault at `vault_url` (an emulator URL)
    /// instead of a directory.
    pub fn with_vault(label: &str, vault_url: Option<&str>) -> PgStrata {
        Self::with_initdb(label, vault_url, &[])
    }

    /// Like [`with_vault`](Self::with_vault), with more `initdb` arguments
    /// (`--wal-segsize=1` for 1 MiB WAL segments).
    pub fn with_initdb(label: &str, vault_url: Option<&str>, initdb_args: &[&str]) -> PgStrata {
        Self::build(label, vault_url, initdb_args, true, &[], false)
    }

    /// Like [`new`](Self::new), on a cluster without data checksums.
    pub fn without_checksums(label: &str) -> PgStrata {
        Self::build(label, None, &[], false, &[], false)
    }

    /// Like [`new`](Self::new), with extra `strata vault init` arguments
    /// (`--soft-delete-days 0`).
    pub fn with_vault_init(label: &str, init_args: &[&str]) -> PgStrata {
        Self::build(label, None, &[], true, init_args, false)
    }

    /// Like [`new`](Self::new), with an encrypted vault: `vault init
    /// --encrypt` writes a new key to `<dir>/vault.key`, which the
    /// configuration names (`[vault] key_file`), so `archive_command` and
    /// the `restore_command` a restore writes use it too.
    pub fn encrypted(label: &str) -> PgStrata {
        Self::build(label, None, &[], true, &[], true)
    }

    fn build(
        label: &str,
        vault_url: Option<&str>,
        initdb_args: &[&str],
        checksums: bool,
        vault_init_args: &[&str],
        encrypted: bool,
    ) -> PgStrata {
        let dir = TestDir::new(label);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.root(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let vault_dir = dir.path("vault");
        let vault_url = vault_url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("file://{}", vault_dir.display()));
        let config = dir.path("strata.toml");
        let key_file = encrypted.then(|| dir.path("vault.key"));
        let data = dir.path("pgdata");
        let socket_dir = dir.mkdir("sock");
        give_to_postgres(dir.root());
        let archive_command = format!(
            "{} --config {} pg wal-push %p --cluster main",
            strata_bin().display(),
            config.display()
        );
        let cluster = PgCluster::init_checksums(
            data.clone(),
            socket_dir,
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_timeout = 60\narchive_command = '{archive_command}'"
            ),
            initdb_args,
            checksums,
        );
        let env = PgStrata {
            cluster,
            config,
            vault_url,
            vault_dir,
            key_file,
            dir,
        };
        env.write_config(&env.config, &env.dir.path("catalog.db"), &env.cluster);
        let mut init = vec!["vault", "init", env.vault_url.as_str()];
        if env.key_file.is_some() {
            init.push("--encrypt");
        }
        init.extend_from_slice(vault_init_args);
        env.strata(&init).success();
        give_to_postgres(env.dir.root());
        env.cluster.start();
        env
    }

    /// `strata --config <config> args...`, run as the test user (root).
    pub fn strata(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .run()
    }

    /// `strata --config <config> args...` as the postgres OS user, from `cwd`
    /// (what `archive_command` does).
    pub fn strata_as_postgres(&self, cwd: &Path, args: &[&str]) -> RunOutput {
        let mut s = if running_as_root() {
            Strata::program("runuser")
                .args(["-u", PG_USER, "--"])
                .arg(strata_bin())
        } else {
            Strata::new()
        };
        s = s
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(cwd);
        s.run()
    }

    /// Restores `main` to `target` into the new directory `<dir>/<name>`
    /// (tablespaces moved per `map`: old location, new location), starts
    /// the copy and returns the `--json` report and the copy.
    ///
    /// # Panics
    /// When the restore fails, with its error and the copy's server log.
    pub fn restore_to_time(
        &self,
        name: &str,
        target: chrono::DateTime<chrono::Utc>,
        map: &[(&Path, &Path)],
    ) -> (serde_json::Value, PgCluster) {
        self.restore_to_time_with(name, target, map, &[])
    }

    /// Like [`restore_to_time`](Self::restore_to_time), with more arguments
    /// for `strata restore pg`.
    pub fn restore_to_time_with(
        &self,
        name: &str,
        target: chrono::DateTime<chrono::Utc>,
        map: &[(&Path, &Path)],
        extra: &[&str],
    ) -> (serde_json::Value, PgCluster) {
        let (dir, port) = self.restore_target(name);
        let mut args: Vec<String> = [
            "--json",
            "restore",
            "pg",
            "main",
            "--to-time",
            &target.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "--target-dir",
            dir.to_str().expect("a UTF-8 test path"),
            "--port",
            &port.to_string(),
            "--start",
        ]
        .map(str::to_owned)
        .into();
        for (old, new) in map {
            args.push("--tablespace-map".into());
            args.push(format!("{}={}", old.display(), new.display()));
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.strata(&args);
        let copy = PgCluster::adopt(dir, port, self.cluster.socket_dir.clone());
        assert_eq!(
            out.code(),
            Some(0),
            "restore to {target} failed:\n{}\nserver log:\n{}",
            out.stderr_text(),
            std::fs::read_to_string(copy.data.join("strata-restore.log")).unwrap_or_default()
        );
        (out.json(), copy)
    }

    /// Makes `copy` (a restored and promoted copy of the cluster) the
    /// cluster Strata calls `main`, as an operator does after a
    /// point-in-time recovery that replaces the original: the original is
    /// stopped, the configuration names the copy, and the copy archives
    /// into the vault (a restore leaves it with `archive_mode = off`).
    pub fn promote_copy_as_main(&self, copy: &PgCluster) {
        self.cluster.stop();
        self.write_config(&self.config, &self.dir.path("catalog.db"), copy);
        let archive_command = format!(
            "{} --config {} pg wal-push %p --cluster main",
            strata_bin().display(),
            self.config.display()
        );
        copy.psql("ALTER SYSTEM SET archive_mode = on");
        copy.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{archive_command}'"
        ));
        copy.stop();
        copy.start();
    }

    /// A free port and a new data directory path for a restore.
    pub fn restore_target(&self, name: &str) -> (PathBuf, u16) {
        (self.dir.path(name), free_port())
    }

    /// A streaming standby of the cluster in `<dir>/<name>`
    /// (`pg_basebackup -R`), started, on its own port. It archives into the
    /// same vault under the same cluster name `main` once promoted (what an
    /// operator configures on the standby's host: its own Strata
    /// configuration, naming its own data directory), with commit
    /// timestamps on like its primary.
    pub fn standby(&self, name: &str) -> PgCluster {
        let data = self.dir.path(name);
        let mut cmd = as_postgres(self.cluster.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&self.cluster.socket_dir)
            .arg("-p")
            .arg(self.cluster.port.to_string());
        run_checked(cmd, "pg_basebackup");
        let standby = PgCluster {
            data: data.clone(),
            port: free_port(),
            socket_dir: self.cluster.socket_dir.clone(),
            bin: self.cluster.bin.clone(),
        };
        let config = self.host_config(name, &standby);
        let archive_command = format!(
            "{} --config {} pg wal-push %p --cluster main",
            strata_bin().display(),
            config.display()
        );
        standby.append_conf(&format!(
            "port = {}\narchive_mode = on\narchive_command = '{archive_command}'\n",
            standby.port
        ));
        give_to_postgres(self.dir.root());
        standby.start();
        standby
    }
}

impl PgStrata {
    /// Another cluster (its own `initdb`, so another system identifier) in
    /// `<dir>/<name>`, started, archiving into this environment's vault
    /// under the same cluster name `main` through its own configuration
    /// (see [`host_config`](Self::host_config)), which is returned with it:
    /// a cluster re-created under a name the vault already holds.
    pub fn another_cluster(&self, name: &str) -> (PgCluster, PathBuf) {
        let config = self.dir.path(format!("{name}.toml"));
        let archive_command = format!(
            "{} --config {} pg wal-push %p --cluster main",
            strata_bin().display(),
            config.display()
        );
        let cluster = PgCluster::init(
            self.dir.path(name),
            self.cluster.socket_dir.clone(),
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_timeout = 60\narchive_command = '{archive_command}'"
            ),
        );
        assert_eq!(self.host_config(name, &cluster), config);
        give_to_postgres(self.dir.root());
        cluster.start();
        (cluster, config)
    }

    /// `strata --config <config> args...` with another configuration (of
    /// another host, see [`host_config`](Self::host_config)), run as the
    /// test user.
    pub fn strata_with(&self, config: &Path, args: &[&str]) -> RunOutput {
        Strata::new().arg("--config").arg(config).args(args).run()
    }

    /// Writes the configuration of another host at `<dir>/<name>.toml`:
    /// this environment's vault (and key file), a catalog index of its own,
    /// `<dir>/<name>-catalog.db` (absent until a command makes it), and
    /// `[postgres.main]` naming `cluster`. Returns its path.
    pub fn host_config(&self, name: &str, cluster: &PgCluster) -> PathBuf {
        let config = self.dir.path(format!("{name}.toml"));
        self.write_config(
            &config,
            &self.dir.path(format!("{name}-catalog.db")),
            cluster,
        );
        give_to_postgres(&config);
        config
    }

    /// Writes a Strata configuration naming `cluster` `main`, with this
    /// environment's vault and key file and the catalog index `catalog`.
    fn write_config(&self, path: &Path, catalog: &Path, cluster: &PgCluster) {
        let key = self
            .key_file
            .as_ref()
            .map(|k| format!("key_file = \"{}\"\n", k.display()))
            .unwrap_or_default();
        std::fs::write(
            path,
            format!(
                "[vault]\nurl = \"{}\"\n{key}\n[catalog]\npath = \"{}\"\n\n[writer]\npart_size = \"4MiB\"\ncompression_level = 1\n\n\
                 [postgres.main]\nconnection = \"{}\"\ndata_directory = \"{}\"\nbin_dir = \"{}\"\nparallel = 2\n",
                self.vault_url,
                catalog.display(),
                cluster.connection(),
                cluster.data.display(),
                cluster.bin.display()
            ),
        )
        .expect("write config");
    }
}

//! Security checks, end to end, on the built binaries:
//!
//! - **No secret leaks.** Every secret a run is given (the vault key, a
//!   PostgreSQL password in either connection form, a SQL Server password,
//!   an AWS secret key in the environment or in `[vault.options]`, the
//!   Azure account key and a SAS token, a HANA password) is looked for in
//!   everything the runs wrote: standard output and error at every
//!   verbosity (`-v`, `-vv`), as text, `--json` and JSON logs
//!   (`STRATA_LOG_FORMAT=json`); every object of the vault (and the
//!   plaintext of compressed parts); the catalog index with the service's
//!   job history; `status`, `jobs` and the metrics endpoint; a Backint log
//!   and output file; a restored data directory; and the errors of failed
//!   runs (a wrong password, an unreachable store, a vault URL that
//!   carries credentials). Each secret is also looked for by its first 12
//!   characters, in case a message cut it.
//! - **Loose key files are refused** (exit 7) with the `chmod` that fixes
//!   them, by `strata` and by `hdbbackint`.
//! - **Created files have the modes the README documents** (key file 0600,
//!   catalog index 0660, its new directories closed to other users), even
//!   under umask 000.
//! - **A wrong key fails at the vault's key check**: with every data object
//!   replaced by garbage (or gone), a wrong key still gets the key error
//!   (exit 7) from restore, verify, `pg wal-fetch` and `hdbbackint`, where
//!   the right key gets the integrity error of reading the garbage.
//!
//! The emulator-backed parts (moto, Azurite) skip with a notice when their
//! emulator is not set up, unless `STRATA_REQUIRE_EMULATORS=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use strata_e2e::backends::{Backend, TestVault};
use strata_e2e::cli::{RunOutput, Strata, strata_bin};
use strata_e2e::fixture::TestDir;
use strata_e2e::hana::{self, BackintCall, HanaHost, Piece};
use strata_e2e::net::free_port;
use strata_e2e::pg::{PgCluster, PgStrata, give_to_postgres};
use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlServerFixture};
use strata_e2e::sqlserver::steps::{backup, backup_run, create_with_rows, restore_run};

// Distinctive secrets: letters and digits only, so that JSON or URL
// encoding cannot change them and a plain substring search cannot miss
// them.
const PG_PASSWORD: &str = "PgPwLeak7Qz3Wv9Kx2";
const PG_WRONG_PASSWORD: &str = "PgWrongLeak4Ht8Mn1";
const MSSQL_PASSWORD: &str = "MsPwLeak2Df5Gh8Jk6";
const MSSQL_WRONG_PASSWORD: &str = "MsWrongLeak6Lk3Pq9";
const AWS_ENV_SECRET: &str = "AwsEnvLeak5Rt2Yu8Pq";
const AWS_OPTION_SECRET: &str = "AwsOptLeak3Gh6Jk1Zx";
const AZ_SAS_SIGNATURE: &str = "AzSasLeak9Bn4Cv7Xm2";
const URL_SECRET: &str = "UrlLeak1Wq5Er8Ty3";
const HANA_PASSWORD: &str = "HanaPwLeak8Zx1Cv4Bn";
/// Azurite's well-known account key (public, but a secret in production).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The magic number of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Looks for secrets in everything a run wrote, and reports every place
/// one was found. What the runs wrote is kept until the end, so that a
/// secret known only later (the key `vault init --encrypt` generates) is
/// looked for in what came before it too.
#[derive(Default)]
struct LeakScan {
    /// What each needle is, and the needle.
    needles: Vec<(String, String)>,
    /// What was written, as text, and where.
    sources: Vec<(String, String)>,
    bytes: u64,
    decompressed: usize,
}

impl LeakScan {
    /// A secret, looked for whole and by its first 12 characters.
    fn secret(&mut self, what: &str, value: &str) {
        self.needles.push((what.to_owned(), value.to_owned()));
        if value.len() > 16 {
            self.needles.push((
                format!("{what} (its first 12 characters)"),
                value[..12].to_owned(),
            ));
        }
    }

    /// The vault key in `key_file`: as hex in both cases and as base64.
    fn vault_key(&mut self, key_file: &Path) {
        let hex = std::fs::read_to_string(key_file)
            .unwrap_or_else(|e| panic!("{}: {e}", key_file.display()))
            .trim()
            .to_owned();
        assert_eq!(hex.len(), 64, "a key file holds 64 hex digits");
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        self.secret("the vault key (hex)", &hex);
        self.secret("the vault key (upper-case hex)", &hex.to_uppercase());
        self.secret(
            "the vault key (base64)",
            &base64::engine::general_purpose::STANDARD.encode(&bytes),
        );
    }

    /// Looks through `bytes`, which `source` names; a zstd-compressed
    /// object (a part of an unencrypted vault, an archived WAL segment)
    /// is looked through decompressed too.
    fn scan(&mut self, source: &str, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        self.sources.push((
            source.to_owned(),
            String::from_utf8_lossy(bytes).into_owned(),
        ));
        let head = &bytes[..bytes.len().min(4096)];
        if let Some(at) = head.windows(4).position(|w| w == ZSTD_MAGIC)
            && let Ok(plain) = zstd::decode_all(&bytes[at..])
        {
            self.decompressed += 1;
            self.scan(&format!("{source} (decompressed)"), &plain);
        }
    }

    /// Both outputs of a finished command.
    fn output(&mut self, out: &RunOutput) {
        self.scan(&format!("stdout of `{}`", out.command), &out.stdout);
        self.scan(&format!("stderr of `{}`", out.command), &out.stderr);
    }

    /// Runs `command` and looks through its outputs.
    fn run(&mut self, command: Strata) -> RunOutput {
        let out = command.run();
        self.output(&out);
        out
    }

    /// Every regular file under `root` except `skipped` files and
    /// directories: the inputs the test wrote (configuration and key files
    /// hold secrets by design), and bytes only an engine wrote.
    fn tree(&mut self, root: &Path, skipped: &[&Path]) {
        for file in walk(root) {
            if skipped.iter().any(|s| file.starts_with(s)) {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            self.scan(&file.display().to_string(), &bytes);
        }
    }

    /// Every object under a vault location on an object store.
    fn objects(&mut self, location: &TestVault) {
        use futures::StreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let objects: Vec<(String, Vec<u8>)> = runtime.block_on(async {
            let (store, root) = strata_core::vault::build_store(&location.config()).unwrap();
            let listed: Vec<_> = store
                .list(Some(&root))
                .map(|meta| meta.unwrap().location)
                .collect()
                .await;
            let mut objects = Vec::new();
            for path in listed {
                let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
                objects.push((format!("{}/{path}", location.url()), bytes.to_vec()));
            }
            objects
        });
        assert!(!objects.is_empty(), "{} holds objects", location.url());
        for (name, bytes) in objects {
            self.scan(&name, &bytes);
        }
    }

    /// Every secret found, and where.
    fn findings(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (source, text) in &self.sources {
            for (what, needle) in &self.needles {
                if text.contains(needle.as_str()) {
                    found.push(format!("{what} in {source}"));
                }
            }
        }
        found
    }

    /// Asserts that no secret was found anywhere, and that there was
    /// something to look through.
    fn assert_clean(&self, test: &str) {
        assert!(
            !self.needles.is_empty() && !self.sources.is_empty(),
            "nothing looked for"
        );
        let findings = self.findings();
        eprintln!(
            "{test}: {} sources ({} bytes, {} decompressed) searched for {} needles: {} leaks",
            self.sources.len(),
            self.bytes,
            self.decompressed,
            self.needles.len(),
            findings.len()
        );
        assert!(
            findings.is_empty(),
            "secrets leaked:\n{}",
            findings.join("\n")
        );
    }
}

/// Every regular file under `dir` (sockets and FIFOs left out).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(walk(&path));
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `strata --config CONFIG ARGS` with `env` set.
fn strata(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Strata {
    let mut command = Strata::new().arg("--config").arg(config).args(args);
    for (key, value) in env {
        command = command.env(key, value);
    }
    command
}

/// A failed command's output also at every verbosity, as `--json` and
/// with JSON logs: every form an operator's terminal or journal gets.
fn every_form(
    scan: &mut LeakScan,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    code: i32,
) -> RunOutput {
    let first = scan.run(strata(config, args, env)).failure(code);
    for extra in [&["-v"][..], &["-vv"], &["--json"], &["--json", "-vv"]] {
        let mut all = extra.to_vec();
        all.extend_from_slice(args);
        scan.run(strata(config, &all, env)).failure(code);
    }
    let mut all = vec!["-vv"];
    all.extend_from_slice(args);
    let mut with_json_logs = env.to_vec();
    with_json_logs.push(("STRATA_LOG_FORMAT", "json"));
    scan.run(strata(config, &all, &with_json_logs))
        .failure(code);
    first
}

/// The scan finds what it looks for: a check of the check.
#[test]
fn the_leak_scan_finds_a_secret_whole_cut_or_compressed() {
    let mut scan = LeakScan::default();
    scan.secret("the password", PG_PASSWORD);
    scan.scan("clean", b"connection host=h password=<redacted>");
    assert!(scan.findings().is_empty());
    scan.scan("whole", format!("password={PG_PASSWORD} user=u").as_bytes());
    scan.scan(
        "cut",
        format!("password={}...", &PG_PASSWORD[..12]).as_bytes(),
    );
    let compressed = zstd::encode_all(format!("x{PG_PASSWORD}x").as_bytes(), 1).unwrap();
    scan.scan("a part", &[b"header\n".as_slice(), &compressed].concat());
    assert_eq!(
        scan.findings()[..3],
        [
            "the password in whole",
            "the password (its first 12 characters) in whole",
            "the password (its first 12 characters) in cut",
        ]
    );
    // A small frame may keep the text as it is; what counts is that the
    // decompressed plaintext is searched too.
    assert!(
        scan.findings()
            .contains(&"the password in a part (decompressed)".to_owned()),
        "{:?}",
        scan.findings()
    );
}

// ---------------------------------------------------------------------------
// PostgreSQL: a password in the connection, an encrypted vault, the service.
// ---------------------------------------------------------------------------

/// The role Strata connects as, by password; `postgres` keeps the trust
/// the fixtures use.
const PG_ROLE: &str = "strata_backup";

/// A PostgreSQL cluster whose role `strata_backup` logs in by password
/// only (SCRAM over the Unix socket), with its password in the
/// configuration, once in the URI form and once in the keyword/value form;
/// an encrypted vault. Backups (full and differential), list, verify, a
/// restore started (its `restore_command` fetches WAL with the key, and
/// Strata logs in to the copy with the password), and the failures of a
/// wrong password (`pg check`, `backup pg`, the service's job, its history,
/// `status` and metrics) show neither the passwords nor the vault key
/// anywhere. With every data object replaced by garbage, `restore pg` and
/// `wal-fetch` with another vault's key fail at the key check (exit 7 and
/// 126) where the right key meets the garbage (exit 6).
#[test]
fn postgres_passwords_and_the_vault_key_never_leak() {
    let env = PgStrata::encrypted("security-pg");
    let pg = &env.cluster;
    let key_file = env.key_file.clone().expect("an encrypted vault");
    let mut scan = LeakScan::default();
    scan.vault_key(&key_file);
    scan.secret("the PostgreSQL password", PG_PASSWORD);
    scan.secret("a wrong PostgreSQL password", PG_WRONG_PASSWORD);

    pg.psql(&format!(
        "CREATE ROLE {PG_ROLE} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'"
    ));
    let hba = pg.data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all {PG_ROLE} scram-sha-256\n{rules}")).unwrap();
    pg.psql("SELECT pg_reload_conf()");
    pg.psql("CREATE TABLE rows AS SELECT g FROM generate_series(1, 1000) g");

    let socket = pg.socket_dir.display().to_string();
    let uri = |password: &str| {
        format!(
            "postgresql://{PG_ROLE}:{password}@/postgres?host={socket}&port={}",
            pg.port
        )
    };
    let keyword_values = |password: &str| {
        format!(
            "host={socket} port={} user={PG_ROLE} password={password} dbname=postgres",
            pg.port
        )
    };
    let original = std::fs::read_to_string(&env.config).unwrap();
    let with_connection = |name: &str, connection: &str, extra: &str| {
        let text = original.replace(&pg.connection(), connection);
        assert_ne!(text, original, "the connection is in the config");
        let path = env.dir.path(name);
        std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
        give_to_postgres(&path);
        path
    };
    let uri_config = with_connection("uri.toml", &uri(PG_PASSWORD), "");
    let kv_config = with_connection("kv.toml", &keyword_values(PG_PASSWORD), "");
    let configs_written = [env.config.clone(), uri_config.clone(), kv_config.clone()];

    // The password is what lets Strata in: `pg check` passes with it.
    for config in [&uri_config, &kv_config] {
        scan.run(strata(config, &["pg", "check", "main"], &[]))
            .success();
        scan.run(strata(
            config,
            &["--json", "-vv", "pg", "check", "main"],
            &[],
        ))
        .success();
    }
    scan.run(strata(&uri_config, &["-vv", "backup", "pg", "main"], &[]))
        .success();
    pg.psql("INSERT INTO rows SELECT g FROM generate_series(1001, 2000) g");
    scan.run(strata(
        &kv_config,
        &["--json", "-vv", "backup", "pg", "main", "--kind", "diff"],
        &[("STRATA_LOG_FORMAT", "json")],
    ))
    .success();
    pg.switch_and_wait_archived(Duration::from_secs(120));
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["list", "--timeline"],
        &["--json", "-v", "verify"],
        &["vault", "info"],
        &["--json", "vault", "info"],
        &["catalog", "rebuild"],
    ] {
        scan.run(strata(&uri_config, args, &[])).success();
    }
    let (copy_dir, copy_port) = env.restore_target("copy");
    give_to_postgres(env.dir.root());
    scan.run(strata(
        &uri_config,
        &[
            "--json",
            "-vv",
            "restore",
            "pg",
            "main",
            "--latest",
            "--target-dir",
            copy_dir.to_str().unwrap(),
            "--port",
            &copy_port.to_string(),
            "--start",
        ],
        &[],
    ))
    .success();
    let copy = PgCluster::adopt(copy_dir.clone(), copy_port, pg.socket_dir.clone());
    assert_eq!(copy.psql("SELECT count(*) FROM rows"), "2000");
    copy.stop();
    drop(copy);

    // A wrong password, in both forms: the server's refusal, the
    // connection shown with `<redacted>`, in every output form.
    for (name, connection) in [
        ("wrong-uri.toml", uri(PG_WRONG_PASSWORD)),
        ("wrong-kv.toml", keyword_values(PG_WRONG_PASSWORD)),
    ] {
        let config = with_connection(name, &connection, "");
        let out = every_form(&mut scan, &config, &["pg", "check", "main"], &[], 5);
        let said = out.stderr_text();
        // The server's own words (not the client's "db error"), and the
        // connection without its password.
        assert!(
            said.contains(&format!(
                "password authentication failed for user \"{PG_ROLE}\""
            )) && said.contains("<redacted>")
                && !said.contains("db error"),
            "{said}"
        );
        every_form(&mut scan, &config, &["backup", "pg", "main"], &[], 5);
    }

    // The service with the wrong password: the job fails, and its history
    // (in the index), `status`, `jobs` and the metrics say why without it.
    let metrics_port = free_port();
    // It protects `other`, the same cluster under a name the vault has no
    // backup of, so that its initial full is due at once.
    let service_config = with_connection(
        "service.toml",
        &uri(PG_WRONG_PASSWORD),
        &format!(
            "[postgres.other]\nconnection = \"{}\"\ndata_directory = \"{}\"\nbin_dir = \"{}\"\n\
             [service]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:{metrics_port}\"\nretries = 0\nshutdown_grace = \"0s\"\n\
             [policy.daily]\nfull = \"0 2 * * *\"\nrpo = \"15m\"\n\
             [[protect]]\nengine = \"postgres\"\ninstance = \"other\"\npolicy = \"daily\"\n",
            uri(PG_WRONG_PASSWORD),
            pg.data.display(),
            pg.bin.display(),
            env.dir.path("strata.sock").display()
        ),
    );
    let serve_log = env.dir.path("serve.log");
    let mut service = std::process::Command::new(strata_bin())
        .arg("--config")
        .arg(&service_config)
        .args(["-vv", "serve"])
        .env("STRATA_LOG_FORMAT", "json")
        .stdout(std::fs::File::create(env.dir.path("serve.out")).unwrap())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .expect("strata serve starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let jobs = strata(&service_config, &["--json", "jobs"], &[]).run();
        let failed = jobs.code() == Some(0)
            && jobs
                .json()
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|j| j["result"] == "failed"));
        if failed && let Some(text) = http_get(metrics_port, "/metrics") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the service's job did not fail in time: {}\n{}",
            jobs.stdout_text(),
            std::fs::read_to_string(&serve_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("strata_job_failures_total"), "{metrics}");
    scan.scan("the metrics endpoint", metrics.as_bytes());
    for args in [
        &["config", "check"][..],
        &["--json", "config", "check"],
        &["status"],
        &["--json", "status"],
        &["jobs"],
        &["--json", "jobs"],
        &["-vv", "--json", "jobs"],
    ] {
        scan.run(strata(&service_config, args, &[])).success();
    }
    let jobs = scan
        .run(strata(&service_config, &["--json", "jobs"], &[]))
        .success()
        .json();
    let error = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["result"] == "failed")
        .map(|j| j.to_string())
        .unwrap_or_default();
    assert!(error.contains("password authentication failed"), "{jobs}");
    std::process::Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let stopped = service.wait().unwrap();
    assert_eq!(stopped.code(), Some(0), "serve stops cleanly on SIGTERM");
    scan.run(strata(&service_config, &["--json", "jobs"], &[]))
        .success();

    // Another vault's key, with every data object garbage: the key check
    // refuses it first; the right key meets the garbage.
    let other_key = env.dir.path("other.key");
    scan.run(
        Strata::new()
            .arg("--key-file")
            .arg(&other_key)
            .args(["vault", "init", "--encrypt"])
            .arg(env.dir.file_url("other-vault")),
    )
    .success();
    give_to_postgres(&other_key);
    scan.secret(
        "another vault's key",
        std::fs::read_to_string(&other_key).unwrap().trim(),
    );
    let garbled = garble(&env.vault_dir.join("data"));
    assert!(garbled > 0, "the backups' data objects");
    let (target, _) = env.restore_target("with-wrong-key");
    let refused = scan
        .run(strata(
            &uri_config,
            &[
                "--key-file",
                other_key.to_str().unwrap(),
                "restore",
                "pg",
                "main",
                "--latest",
                "--target-dir",
                target.to_str().unwrap(),
            ],
            &[],
        ))
        .failure(7);
    assert_wrong_key(&refused, &env.vault_url);
    assert!(!target.exists(), "nothing written with a wrong key");
    let (target, _) = env.restore_target("with-right-key");
    let damaged = scan
        .run(strata(
            &uri_config,
            &[
                "restore",
                "pg",
                "main",
                "--latest",
                "--target-dir",
                target.to_str().unwrap(),
            ],
            &[],
        ))
        .failure(6);
    assert!(
        damaged.stderr_text().contains("data/postgres/main/"),
        "the integrity error names the object: {}",
        damaged.stderr_text()
    );
    let scratch = env.dir.mkdir("scratch");
    let fetched = scan
        .run(strata(
            &uri_config,
            &[
                "--key-file",
                other_key.to_str().unwrap(),
                "pg",
                "wal-fetch",
                "000000010000000000000001",
                scratch.join("RECOVERYXLOG").to_str().unwrap(),
                "--cluster",
                "main",
            ],
            &[],
        ))
        .failure(126);
    assert_wrong_key(&fetched, &env.vault_url);

    // The inputs, and what only PostgreSQL wrote: the cluster's own data
    // directory, and the relation files and WAL of the restored copies
    // (their bytes are the backup's, checked by the restore).
    let mut skipped: Vec<PathBuf> = ["wrong-uri.toml", "wrong-kv.toml", "service.toml"]
        .iter()
        .map(|n| env.dir.path(n))
        .chain(configs_written)
        .chain([key_file.clone(), other_key.clone(), pg.data.clone()])
        .collect();
    for restored in [copy_dir, target] {
        skipped.extend(["base", "global", "pg_wal"].map(|d| restored.join(d)));
    }
    let skipped: Vec<&Path> = skipped.iter().map(PathBuf::as_path).collect();
    scan.tree(env.dir.root(), &skipped);
    assert!(
        scan.sources.len() > 50,
        "the vault, the index and the copy were searched"
    );
    scan.assert_clean("postgres_passwords_and_the_vault_key_never_leak");
}

/// `GET path` on 127.0.0.1:`port`; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Replaces every file under `dir` with random bytes of the same size;
/// returns how many.
fn garble(dir: &Path) -> usize {
    let files = walk(dir);
    for file in &files {
        let len = std::fs::metadata(file).unwrap().len() as usize;
        let garbage: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        std::fs::write(file, garbage).unwrap();
    }
    files.len()
}

/// The key error of a vault opened with another vault's key: the message
/// and the hint, and nothing of reading data.
fn assert_wrong_key(out: &RunOutput, vault_url: &str) {
    let said = out.stderr_text();
    assert!(
        said.contains(&format!(
            "the key does not belong to the vault at {vault_url}"
        )),
        "{said}"
    );
    assert!(
        said.contains("use the key file written by `strata vault init --encrypt` for this vault"),
        "{said}"
    );
    for unexpected in ["authentication", "integrity", "part ", "not found"] {
        assert!(!said.contains(unexpected), "`{unexpected}` in: {said}");
    }
}

// ---------------------------------------------------------------------------
// Object stores: S3 (moto) and Azure Blob (Azurite).
// ---------------------------------------------------------------------------

/// The stream backups a store test runs through `config`: init, backup,
/// list, verify, info, restore, gc, rebuild, all with their outputs scanned.
fn stream_runs(scan: &mut LeakScan, config: &Path, env: &[(&str, &str)], init: &[&str]) {
    let data = strata_e2e::data::compressible_bytes(300_000, 11);
    let mut args = vec!["vault", "init"];
    args.extend_from_slice(init);
    scan.run(strata(config, &args, env)).success();
    scan.run(
        strata(
            config,
            &["-vv", "backup", "stream", "dump", "--part-size", "64KiB"],
            env,
        )
        .stdin(data.clone()),
    )
    .success();
    scan.run(strata(config, &["--json", "backup", "stream", "dump2"], env).stdin(data.clone()))
        .success();
    for args in [
        &["list"][..],
        &["--json", "-vv", "list"],
        &["verify"],
        &["--json", "verify"],
        &["vault", "info"],
        &["--json", "vault", "info"],
        &["vault", "gc", "--dry-run"],
        &["--json", "catalog", "rebuild"],
    ] {
        let mut with_logs = env.to_vec();
        with_logs.push(("STRATA_LOG_FORMAT", "json"));
        scan.run(strata(config, args, &with_logs)).success();
    }
    let restored = scan
        .run(strata(config, &["-vv", "restore", "stream", "dump"], env))
        .success();
    assert_eq!(restored.stdout, data, "restored bytes");
}

/// An S3 vault (moto) with the secret access key in the environment, then
/// in `[vault.options]`: backups, restores and every listing command, an
/// unreachable endpoint and a URL carrying a password show neither secret
/// in any output, object or the index.
#[test]
fn s3_secret_keys_never_leak() {
    let Some(location) = TestVault::new(Backend::S3, "security_s3") else {
        return;
    };
    let dir = TestDir::new("security-s3");
    let mut scan = LeakScan::default();
    scan.secret("AWS_SECRET_ACCESS_KEY", AWS_ENV_SECRET);
    scan.secret(
        "aws_secret_access_key in [vault.options]",
        AWS_OPTION_SECRET,
    );
    scan.secret("a password in a vault URL", URL_SECRET);
    let env = [("AWS_SECRET_ACCESS_KEY", AWS_ENV_SECRET)];
    let catalog = dir.path("catalog.db");
    let by_env = dir.write(
        "env.toml",
        format!(
            "[vault]\nurl = \"{}\"\n[catalog]\npath = \"{}\"\n",
            location.url(),
            catalog.display()
        ),
    );
    stream_runs(&mut scan, &by_env, &env, &[]);
    let by_option = dir.write(
        "option.toml",
        format!(
            "[vault]\nurl = \"{}/options\"\n[vault.options]\naws_secret_access_key = \"{AWS_OPTION_SECRET}\"\n[catalog]\npath = \"{}\"\n",
            location.url(),
            catalog.display()
        ),
    );
    stream_runs(&mut scan, &by_option, &[], &[]);
    let unreachable = dir.write(
        "unreachable.toml",
        format!(
            "[vault]\nurl = \"{}\"\n[vault.options]\naws_secret_access_key = \"{AWS_OPTION_SECRET}\"\naws_endpoint = \"http://127.0.0.1:{}\"\nmax_retries = \"0\"\n",
            location.url(),
            free_port()
        ),
    );
    every_form(&mut scan, &unreachable, &["list"], &env, 4);
    every_form(
        &mut scan,
        &unreachable,
        &["restore", "stream", "dump"],
        &env,
        4,
    );
    let in_url = dir.write(
        "in-url.toml",
        format!(
            "[vault]\nurl = \"s3://AKIAEXAMPLE:{URL_SECRET}@{}\"\n",
            location.url().trim_start_matches("s3://")
        ),
    );
    let refused = every_form(&mut scan, &in_url, &["list"], &env, 3);
    assert!(
        refused.stderr_text().contains("carries a password"),
        "{}",
        refused.stderr_text()
    );
    scan.objects(&location);
    let inputs = [
        by_env.as_path(),
        by_option.as_path(),
        unreachable.as_path(),
        in_url.as_path(),
    ];
    scan.tree(dir.root(), &inputs);
    assert!(
        scan.decompressed > 0,
        "the parts were searched decompressed"
    );
    scan.assert_clean("s3_secret_keys_never_leak");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(location.cleanup());
}

/// An encrypted Azure vault (Azurite) with the account key in
/// `[vault.options]`, then a SAS token Azurite refuses, and a URL with a
/// SAS in its query: neither the account key, the SAS signature nor the
/// vault key appears anywhere.
#[test]
fn azure_account_keys_and_sas_tokens_never_leak() {
    let Some(location) = TestVault::new(Backend::Azure, "security_azure") else {
        return;
    };
    let dir = TestDir::new("security-azure");
    let mut scan = LeakScan::default();
    scan.secret("the Azure account key", AZURITE_KEY);
    scan.secret("the SAS signature", AZ_SAS_SIGNATURE);
    scan.secret("a SAS in a vault URL", URL_SECRET);
    let key_file = dir.path("vault.key");
    let config = dir.write(
        "azure.toml",
        format!(
            "[vault]\nurl = \"{}\"\nkey_file = \"{}\"\n[vault.options]\nazure_storage_account_name = \"devstoreaccount1\"\nazure_storage_account_key = \"{AZURITE_KEY}\"\n[catalog]\npath = \"{}\"\n",
            location.url(),
            key_file.display(),
            dir.path("catalog.db").display()
        ),
    );
    stream_runs(&mut scan, &config, &[], &["--encrypt"]);
    scan.vault_key(&key_file);
    let sas = dir.write(
        "sas.toml",
        format!(
            "[vault]\nurl = \"{}\"\nkey_file = \"{}\"\n[vault.options]\nazure_storage_sas_key = \"sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&spr=https,http&sig={AZ_SAS_SIGNATURE}\"\nmax_retries = \"0\"\n",
            location.url(),
            key_file.display()
        ),
    );
    let refused = every_form(&mut scan, &sas, &["list"], &[], 4);
    assert!(
        refused.stderr_text().contains("denied") || refused.stderr_text().contains("403"),
        "Azurite refuses the SAS: {}",
        refused.stderr_text()
    );
    let in_url = dir.write(
        "in-url.toml",
        format!(
            "[vault]\nurl = \"{}?sv=2022-11-02&sig={URL_SECRET}\"\n",
            location.url()
        ),
    );
    let refused = every_form(&mut scan, &in_url, &["list"], &[], 3);
    assert!(
        refused.stderr_text().contains("carries a query string"),
        "{}",
        refused.stderr_text()
    );
    scan.objects(&location);
    let inputs = [
        config.as_path(),
        sas.as_path(),
        in_url.as_path(),
        key_file.as_path(),
    ];
    scan.tree(dir.root(), &inputs);
    scan.assert_clean("azure_account_keys_and_sas_tokens_never_leak");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(location.cleanup());
}

// ---------------------------------------------------------------------------
// SQL Server (the emulator) and SAP HANA.
// ---------------------------------------------------------------------------

/// SQL Server's password (the emulator's login): `check`, full and log
/// backups, list, verify and a restore, then a wrong password, show it
/// nowhere; a blob endpoint TLS key others can read stops a backup with
/// the chmod that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlserver_passwords_never_leak() {
    let fx = SqlServerFixture::start("security-sqlserver", FixtureOptions::default(), |c| {
        c.password = MSSQL_PASSWORD.to_owned();
    })
    .await;
    if !fx.emulated() {
        strata_e2e::skip::skipped(
            "sqlserver_passwords_never_leak",
            "the password is the emulator's",
        );
        return;
    }
    let mut scan = LeakScan::default();
    scan.secret("the SQL Server password", MSSQL_PASSWORD);
    scan.secret("a wrong SQL Server password", MSSQL_WRONG_PASSWORD);
    let mut sql = fx.client().await;
    create_with_rows(&mut sql, "sales", &[1, 2, 3]).await;
    for args in [
        &["sqlserver", "check", "main"][..],
        &["--json", "-vv", "sqlserver", "check", "main"],
    ] {
        let out = scan.run(fx.command(args));
        assert!(
            matches!(out.code(), Some(0 | 3)),
            "check logs in (exit 3 names only the blob host here): {}",
            out.stderr_text()
        );
        assert!(out.stdout_text().contains("sales"), "{}", out.stdout_text());
    }
    let full = backup(&fx, "sales", "full");
    scan.scan("the full's report", full.to_string().as_bytes());
    scan.run(fx.command([
        "-vv",
        "backup",
        "sqlserver",
        "main",
        "--database",
        "sales",
        "--kind",
        "log",
    ]))
    .success();
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["verify"],
        &["--json", "-vv", "verify"],
        &["config", "check"],
        &["--json", "config", "check"],
    ] {
        scan.run(fx.command(args)).success();
    }
    let restored = restore_run(&fx, "sales", &["--latest", "--as", "sales_copy"]);
    scan.output(&restored);
    let restored = restored.success();
    assert_eq!(
        sql.ids("sales_copy").await,
        vec![1, 2, 3],
        "{}",
        restored.stdout_text()
    );

    let text = std::fs::read_to_string(&fx.config).unwrap();
    let wrong = fx.dir.write(
        "wrong.toml",
        text.replace(
            &format!("password={MSSQL_PASSWORD}"),
            &format!("password={MSSQL_WRONG_PASSWORD}"),
        ),
    );
    let out = every_form(
        &mut scan,
        &wrong,
        &["backup", "sqlserver", "main", "--database", "sales"],
        &[],
        5,
    );
    assert!(
        out.stderr_text().contains("Login failed for user"),
        "{}",
        out.stderr_text()
    );
    let checked = scan.run(strata(&wrong, &["-vv", "sqlserver", "check", "main"], &[]));
    assert_ne!(checked.code(), Some(0), "{}", checked.stderr_text());

    // The endpoint's private key, readable by others: refused, exit 7.
    let key = fx.cert_dir.join("blob.key");
    assert_eq!(
        mode(&key),
        0o600,
        "`strata sqlserver setup` writes the key 0600"
    );
    chmod(&key, 0o644);
    let refused = scan.output_of(backup_run(&fx, "sales", "full")).failure(7);
    assert!(
        refused.stderr_text().contains(&format!(
            "the blob endpoint's TLS private key {} has mode 0644",
            key.display()
        )) && refused
            .stderr_text()
            .contains(&format!("chmod 0640 {}", key.display())),
        "{}",
        refused.stderr_text()
    );
    chmod(&key, 0o600);

    let inputs = [fx.config.as_path(), wrong.as_path()];
    scan.tree(fx.dir.root(), &inputs);
    assert!(
        scan.decompressed > 0,
        "the parts were searched decompressed"
    );
    scan.assert_clean("sqlserver_passwords_never_leak");
}

impl LeakScan {
    /// Looks through a command's outputs and hands it back.
    fn output_of(&mut self, out: RunOutput) -> RunOutput {
        self.output(&out);
        out
    }
}

/// SAP HANA: a password in the `hdbsql://` URL of `strata hana check` and
/// `backup hana` (HANA unreachable), the vault key of an encrypted vault
/// through `hdbbackint` (backup, restore, a wrong key), and, with moto, an
/// AWS secret key in the parameter file (`vault.aws_secret_access_key`)
/// for a backup, a restore and an unreachable store: in no output, log
/// file, Backint output file or vault object.
#[test]
fn hana_passwords_and_backint_secrets_never_leak() {
    let host = HanaHost::new();
    let mut scan = LeakScan::default();
    scan.secret("the HANA password", HANA_PASSWORD);
    scan.secret(
        "aws_secret_access_key in the parameter file",
        AWS_OPTION_SECRET,
    );
    let url = format!("hdbsql://SYSTEM:{HANA_PASSWORD}@127.0.0.1:{}", free_port());
    let vault = hana::TestVault::encrypted();
    scan.vault_key(&vault.key_file());
    let empty = host.root().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let key_path = vault.key_file();
    let connect = ["hana", "check", "--sid", "HDB", "--connect", url.as_str()];
    let mut with_vault = vec!["--vault", vault.url()];
    with_vault.extend(connect);
    let out = every_form(&mut scan, &empty, &with_vault, &[], 5);
    assert!(
        out.stderr_text().contains("connecting to HANA"),
        "{}",
        out.stderr_text()
    );
    every_form(
        &mut scan,
        &empty,
        &[
            "--vault",
            vault.url(),
            "--key-file",
            key_path.to_str().unwrap(),
            "backup",
            "hana",
            "--sid",
            "HDB",
            "--database",
            "HDB",
        ],
        &[("STRATA_HANA_URL", url.as_str())],
        5,
    );

    // hdbbackint on the encrypted vault: the key file in the parameter file.
    let dir = host.backint_dir("HDB", "DB_HDB");
    let key_line = format!("key_file = {}", vault.key_file().display());
    let params = host.standard_params("HDB", "data.utl", vault.url(), &key_line);
    let piece = Piece::fifo(&dir, "databackup_0_1", 200_000, 5);
    let saved = hana::back_up(
        &host,
        BackintCall::new("backup", "HDB").params(&params),
        &[&piece],
    );
    backint_output(&mut scan, &saved);
    let (ebid, _) = saved.saved(&piece.path);
    let (restored, got) = restore_into_pipe(&host, &params, &ebid, &piece.path);
    backint_output(&mut scan, &restored);
    restored.assert_exit(0);
    assert_eq!(got.unwrap().blake3, piece.digest());

    let mut inputs: Vec<PathBuf> = vec![empty.clone(), params.clone()];
    if let Some(location) = TestVault::new(Backend::S3, "security_hana_s3") {
        scan.secret("AWS_SECRET_ACCESS_KEY", AWS_ENV_SECRET);
        strata(&empty, &["vault", "init", location.url()], &[])
            .run()
            .success();
        let params = host.standard_params(
            "HDB",
            "s3.utl",
            location.url(),
            &format!("vault.aws_secret_access_key = {AWS_OPTION_SECRET}"),
        );
        let piece = Piece::fifo(&dir, "databackup_s3_0_1", 200_000, 6);
        let saved = hana::back_up(
            &host,
            BackintCall::new("backup", "HDB").params(&params),
            &[&piece],
        );
        backint_output(&mut scan, &saved);
        let (ebid, _) = saved.saved(&piece.path);
        let (restored, got) = restore_into_pipe(&host, &params, &ebid, &piece.path);
        backint_output(&mut scan, &restored);
        restored.assert_exit(0);
        assert_eq!(got.unwrap().blake3, piece.digest());
        let unreachable = host.standard_params(
            "HDB",
            "unreachable.utl",
            location.url(),
            &format!(
                "vault.aws_secret_access_key = {AWS_OPTION_SECRET}\nvault.aws_endpoint = http://127.0.0.1:{}\nvault.max_retries = 0\nopen_timeout = 5",
                free_port()
            ),
        );
        let failed = BackintCall::new("restore", "HDB")
            .params(&unreachable)
            .ebid(&ebid, &piece.path)
            .run(&host);
        backint_output(&mut scan, &failed);
        assert_eq!(failed.code, Some(1), "{}", failed.describe());
        scan.objects(&location);
        inputs.extend([params, unreachable]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(location.cleanup());
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    scan.tree(host.root(), &inputs);
    scan.tree(&vault.path(), &[]);
    scan.assert_clean("hana_passwords_and_backint_secrets_never_leak");
}

/// `hdbbackint -f restore` of `ebid` into the FIFO `pipe`, read as HANA
/// reads it: the run, and what came through the pipe.
fn restore_into_pipe(
    host: &HanaHost,
    params: &Path,
    ebid: &str,
    pipe: &Path,
) -> (hana::AgentResult, std::io::Result<hana::Transfer>) {
    let agent = BackintCall::new("restore", "HDB")
        .params(params)
        .ebid(ebid, pipe)
        .spawn(host);
    let got = hana::drain_pipe(pipe, Duration::from_secs(30));
    (agent.finish(Duration::from_secs(120)), got)
}

fn backint_output(scan: &mut LeakScan, result: &hana::AgentResult) {
    scan.scan("hdbbackint's output file", result.text.as_bytes());
    scan.scan("hdbbackint's stderr", result.stderr.as_bytes());
    scan.scan("hdbbackint's stdout", result.stdout.as_bytes());
}

/// Configurations a mistake makes invalid, each holding a secret next to
/// the mistake (a misspelt option, a string never closed, a connection
/// string that does not parse, a vault URL with a password): `strata`
/// (the command and `config check`) and `hdbbackint` (its parameter file)
/// name the file, line or key, and never the secret.
#[test]
fn bad_configurations_never_echo_their_secrets() {
    let dir = TestDir::new("security-bad-config");
    let vault = dir.mkdir("vault");
    let mut scan = LeakScan::default();
    Strata::new()
        .arg("vault")
        .arg("init")
        .arg(format!("file://{}", vault.display()))
        .run()
        .success();
    let secrets: Vec<String> = (1..=11).map(|n| format!("BadCfgLeak{n}Qw7Er4Ty")).collect();
    for (n, value) in secrets.iter().enumerate() {
        scan.secret(&format!("secret {}", n + 1), value);
    }
    let secret = |n: usize| secrets[n - 1].as_str();
    let cases = [
        (
            format!(
                "[vault]\nurl = \"s3://bucket/p\"\n[vault.options]\naws_secret_acess_key = \"{}\"\n",
                secret(1)
            ),
            &["list"][..],
            "unknown object store option `aws_secret_acess_key`",
        ),
        (
            format!(
                "[vault]\nurl = \"file://{}\"\n[postgres.main]\nconnection = \"host=/tmp password={}\ndata_directory = \"/srv\"\n",
                vault.display(),
                secret(2)
            ),
            &["list"],
            "line 4",
        ),
        (
            format!(
                "[vault]\nurl = \"file://{}\"\n[postgres.main]\nconnection = \"host=/tmp port=notaport password={}\"\ndata_directory = \"/srv\"\n",
                vault.display(),
                secret(3)
            ),
            &["pg", "check", "main"],
            "password=<redacted>",
        ),
        (
            format!(
                "[vault]\nurl = \"file://{}\"\n[sqlserver.main]\nconnection = \"server=tcp:127.0.0.1,notaport;user=u;password={}\"\nblob_host = \"blob.test\"\n",
                vault.display(),
                secret(4)
            ),
            &["sqlserver", "check", "main"],
            "[sqlserver.main] connection",
        ),
        (
            format!(
                "[vault]\nurl = \"s3://AKIAEXAMPLE:{}@bucket/p\"\n",
                secret(5)
            ),
            &["list"],
            "carries a password",
        ),
        // A secret key with a `/` in it makes the URL unparsable (a new
        // user's trial found it echoed whole in the parse error).
        (
            format!(
                "[vault]\nurl = \"s3://AKIAEXAMPLE:{}/Pw9@bucket/p\"\n",
                secret(9)
            ),
            &["list"],
            "is not a valid vault URL",
        ),
    ];
    let mut configs = Vec::new();
    for (i, (text, args, said)) in cases.iter().enumerate() {
        let config = dir.write(format!("bad-{i}.toml"), text);
        // `config check` is looked through too; it does not yet judge what
        // only the commands check (a `[postgres.*]` connection string, the
        // store options), so only its output counts here.
        for args in [*args, &["config", "check"]] {
            let out = scan.run(strata(&config, args, &[]));
            if args[0] != "config" {
                assert_ne!(out.code(), Some(0), "{}", out.stderr_text());
                assert!(out.stderr_text().contains(said), "{}", out.stderr_text());
            }
            let mut json = vec!["--json", "-vv"];
            json.extend_from_slice(args);
            scan.run(strata(&config, &json, &[]));
        }
        configs.push(config);
    }

    // The same unparsable URL given on the command line and in the
    // environment.
    let unparsable = format!("s3://AKIAEXAMPLE:{}/Pw9@my_bucket:99999/p", secret(10));
    for out in [
        scan.run(Strata::new().args(["--vault", &unparsable, "list"])),
        scan.run(
            Strata::new()
                .env("STRATA_VAULT", &unparsable)
                .args(["--json", "list"]),
        ),
    ] {
        assert_eq!(out.code(), Some(3), "{}", out.stderr_text());
        assert!(
            out.stderr_text()
                .contains("s3://<redacted>@my_bucket:99999/p"),
            "{}",
            out.stderr_text()
        );
    }

    // hdbbackint: a misspelt option, a value never closed, a URL with a password.
    let host = HanaHost::new();
    for (name, text) in [
        (
            "typo.utl",
            format!(
                "vault = s3://bucket/p\nvault.aws_secret_acess_key = {}\n",
                secret(6)
            ),
        ),
        (
            "unclosed.utl",
            format!(
                "vault = s3://bucket/p\nvault.aws_secret_access_key = \"{}\n",
                secret(7)
            ),
        ),
        (
            "url.utl",
            format!("vault = s3://AKIAEXAMPLE:{}@bucket/p\n", secret(8)),
        ),
        (
            "unparsable-url.utl",
            format!("vault = s3://AKIAEXAMPLE:{}/Pw9@bucket/p\n", secret(11)),
        ),
    ] {
        let params = host.param_file("HDB", name, &text);
        let result = BackintCall::new("inquire", "HDB")
            .params(&params)
            .line("#NULL \"/some/object\"")
            .run(&host);
        backint_output(&mut scan, &result);
        assert_eq!(result.code, Some(1), "{}", result.describe());
        configs.push(params);
    }
    let skipped: Vec<&Path> = configs.iter().map(PathBuf::as_path).collect();
    scan.tree(dir.root(), &skipped);
    scan.tree(host.root(), &skipped);
    scan.assert_clean("bad_configurations_never_echo_their_secrets");
}

// ---------------------------------------------------------------------------
// Key files, modes, wrong keys.
// ---------------------------------------------------------------------------

/// `strata --vault V --key-file K ARGS`.
fn with_key(vault: &str, key: &Path, args: &[&str]) -> Strata {
    Strata::new()
        .args(["--vault", vault, "--key-file"])
        .arg(key)
        .args(args)
}

/// A key file that other users may read or write, or its group may write,
/// is refused before anything else happens (exit 7), naming the file, its
/// mode and the `chmod` that fixes it, by every command and by
/// `hdbbackint`; 0640 works again. Nothing said shows the key.
#[test]
fn a_key_file_with_loose_permissions_is_refused_with_the_chmod_to_fix_it() {
    let dir = TestDir::new("security-key-mode");
    let vault = dir.file_url("vault");
    let key = dir.path("vault.key");
    let mut scan = LeakScan::default();
    scan.run(with_key(&vault, &key, &["vault", "init", "--encrypt"]))
        .success();
    assert_eq!(
        mode(&key),
        0o600,
        "vault init --encrypt writes the key 0600"
    );
    scan.vault_key(&key);
    let data = strata_e2e::data::compressible_bytes(100_000, 3);
    scan.run(with_key(&vault, &key, &["backup", "stream", "dump"]).stdin(data.clone()))
        .success();

    for (loose, who) in [
        (0o644, "other users can access it"),
        (0o604, "other users can access it"),
        (0o660, "its group can write it"),
        (0o666, "other users and its group can access it"),
    ] {
        chmod(&key, loose);
        let message = format!("the key file {} has mode {loose:04o}: {who}", key.display());
        let fix = format!("hint: run `chmod 0640 {}`", key.display());
        for args in [
            &["restore", "stream", "dump"][..],
            &["list"],
            &["verify"],
            &["backup", "stream", "again"],
            &["vault", "init", "--encrypt", &dir.file_url("second")],
        ] {
            let out = scan.run(with_key(&vault, &key, args)).failure(7);
            let said = out.stderr_text();
            assert!(
                said.contains(&message) && said.contains(&fix),
                "{args:?}: {said}"
            );
        }
        let json = scan
            .run(with_key(&vault, &key, &["--json", "list"]))
            .failure(7);
        let error: serde_json::Value =
            serde_json::from_str(json.stderr_text().lines().last().unwrap()).unwrap();
        assert_eq!(error["error"]["kind"], "crypto", "{error}");
        assert_eq!(
            error["error"]["context"]["path"],
            key.display().to_string(),
            "{error}"
        );
    }
    assert!(
        !dir.path("second").exists(),
        "no vault made with a loose key"
    );

    // hdbbackint: one line on stderr (HANA shows it), #ERROR per object.
    chmod(&key, 0o644);
    let host = HanaHost::new();
    let backint_dir = host.backint_dir("HDB", "DB_HDB");
    let params = host.standard_params(
        "HDB",
        "data.utl",
        &vault,
        &format!("key_file = {}", key.display()),
    );
    let pipe = backint_dir.join("databackup_0_1");
    hana::mkfifo(&pipe);
    let result = BackintCall::new("backup", "HDB")
        .params(&params)
        .pipe(&pipe)
        .run(&host);
    backint_output(&mut scan, &result);
    result.assert_exit(1);
    assert_eq!(
        result.with("#ERROR"),
        vec![vec![pipe.display().to_string()]]
    );
    assert!(
        result
            .stderr
            .contains(&format!("chmod 0640 {}", key.display())),
        "{}",
        result.describe()
    );

    chmod(&key, 0o640);
    let restored = scan
        .run(with_key(&vault, &key, &["restore", "stream", "dump"]))
        .success();
    assert_eq!(restored.stdout, data);
    scan.tree(dir.root(), &[key.as_path()]);
    scan.assert_clean("a_key_file_with_loose_permissions_is_refused_with_the_chmod_to_fix_it");
}

/// The files Strata creates have the modes the README documents, even
/// under umask 000: the key file of `vault init --encrypt` 0600, the
/// catalog index (and its `-wal` file) 0660, and directories it creates
/// for the index never open to other users (0770 less the umask).
#[test]
fn created_files_have_the_documented_modes() {
    let dir = TestDir::new("security-modes");
    let vault = dir.file_url("vault");
    let key = dir.path("keys/vault.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let catalog = dir.path("state/strata/catalog.db");
    let under_umask = |umask: &str, args: &[&str]| {
        Strata::program("/bin/sh")
            .args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .arg(strata_bin())
            .args(["--vault", &vault, "--catalog"])
            .arg(&catalog)
            .arg("--key-file")
            .arg(&key)
            .args(args)
            .run()
    };
    under_umask("000", &["vault", "init", "--encrypt"]).success();
    assert_eq!(mode(&key), 0o600, "the key file");
    under_umask("000", &["backup", "stream", "dump", "--allow-empty"]).success();
    assert_eq!(mode(&catalog), 0o660, "the catalog index");
    let wal = dir.path("state/strata/catalog.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o660, "the index's -wal file");
    }
    for made in [dir.path("state"), dir.path("state/strata")] {
        assert_eq!(mode(&made), 0o770, "{} under umask 000", made.display());
    }
    // Under the usual umask the new directories are 0750.
    let other = dir.path("other/catalog.db");
    Strata::new()
        .args(["--vault", &vault, "--catalog"])
        .arg(&other)
        .arg("--key-file")
        .arg(&key)
        .args(["list"])
        .run()
        .success();
    assert_eq!(mode(&other), 0o660);
    assert_eq!(
        mode(other.parent().unwrap()) & 0o007,
        0,
        "closed to other users"
    );
}

/// An encrypted vault opened with another vault's key fails at the key
/// check in the vault's metadata, before any backup data is read: with
/// every data object garbage, restore and verify with the wrong key exit 7
/// with the key error (what it means and which key file to use), where the
/// right key gets the integrity error of the garbage (exit 6, naming the
/// object); with the data objects gone, still exit 7, not "not found".
/// `hdbbackint` restore the same way.
#[test]
fn a_wrong_key_fails_at_the_key_check_before_any_data_is_read() {
    let dir = TestDir::new("security-wrong-key");
    let vault = dir.file_url("vault");
    let key = dir.path("vault.key");
    let other = dir.path("other.key");
    with_key(&vault, &key, &["vault", "init", "--encrypt"])
        .run()
        .success();
    with_key(
        &dir.file_url("other"),
        &other,
        &["vault", "init", "--encrypt"],
    )
    .run()
    .success();
    let data = strata_e2e::data::compressible_bytes(500_000, 9);
    with_key(
        &vault,
        &key,
        &["backup", "stream", "dump", "--part-size", "64KiB"],
    )
    .stdin(data.clone())
    .run()
    .success();
    assert!(garble(&dir.path("vault/data")) > 0);

    let output = dir.path("restored.sql");
    let out = output.to_str().unwrap();
    let right = with_key(
        &vault,
        &key,
        &["restore", "stream", "dump", "--output", out],
    )
    .run()
    .failure(6);
    assert!(
        right.stderr_text().contains("data/stream/dump/"),
        "the right key reads the garbage and names it: {}",
        right.stderr_text()
    );
    with_key(&vault, &key, &["verify"]).run().failure(6);
    let _ = std::fs::remove_file(&output);
    for args in [
        &["restore", "stream", "dump", "--output", out][..],
        &["verify"],
        &["list"],
    ] {
        let wrong = with_key(&vault, &other, args).run().failure(7);
        assert_wrong_key(&wrong, &vault);
    }
    assert!(!output.exists(), "nothing written with a wrong key");
    std::fs::remove_dir_all(dir.path("vault/data")).unwrap();
    let wrong = with_key(&vault, &other, &["restore", "stream", "dump"])
        .run()
        .failure(7);
    assert_wrong_key(&wrong, &vault);

    // hdbbackint restore: the key check first, the garbage only with the right key.
    let host = HanaHost::new();
    let hana_vault = hana::TestVault::encrypted();
    let backint_dir = host.backint_dir("HDB", "DB_HDB");
    let right_params = host.standard_params(
        "HDB",
        "right.utl",
        hana_vault.url(),
        &format!("key_file = {}", hana_vault.key_file().display()),
    );
    let wrong_params = host.standard_params(
        "HDB",
        "wrong.utl",
        hana_vault.url(),
        &format!("key_file = {}", other.display()),
    );
    let piece = Piece::fifo(&backint_dir, "databackup_0_1", 300_000, 4);
    let saved = hana::back_up(
        &host,
        BackintCall::new("backup", "HDB").params(&right_params),
        &[&piece],
    );
    let (ebid, _) = saved.saved(&piece.path);
    assert!(garble(&hana_vault.path().join("data")) > 0);
    // With the wrong key the agent never opens the pipe: the call fails
    // at once, one line on stderr, one #ERROR.
    let started = Instant::now();
    let wrong = BackintCall::new("restore", "HDB")
        .params(&wrong_params)
        .ebid(&ebid, &piece.path)
        .run(&host);
    assert_eq!(wrong.code, Some(1), "{}", wrong.describe());
    assert_eq!(
        wrong.with("#ERROR"),
        vec![vec![piece.path.display().to_string()]],
        "{}",
        wrong.describe()
    );
    assert!(
        wrong
            .stderr
            .contains("the key does not belong to the vault"),
        "{}",
        wrong.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{}",
        wrong.describe()
    );
    // The right key reads the garbage, and the Backint log names the part.
    let (right, _) = restore_into_pipe(&host, &right_params, &ebid, &piece.path);
    assert_eq!(right.code, Some(1), "{}", right.describe());
    let log = std::fs::read_to_string(host.root().join("usr/sap/HDB/strata-backint.log"))
        .unwrap_or_default();
    assert!(
        !right.stderr.contains("does not belong") && log.contains("data/"),
        "the right key gets past the key check to the data: {}\nlog:\n{log}",
        right.describe()
    );
}

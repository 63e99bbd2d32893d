//! One SQL Server instance for an end-to-end test, with Strata configured
//! for it: the emulator by default, or a real server when
//! `STRATA_TEST_SQLSERVER` holds a connection string (see `docker/`).
//!
//! The fixture does what an operator does: it writes a configuration with a
//! `[sqlserver.main]` section, runs `strata sqlserver setup main` (which
//! creates the blob endpoint's certificate), makes SQL Server trust that
//! certificate's CA and resolve the blob host name to the endpoint, and runs
//! `strata sqlserver setup main --apply` (which creates the credential).
//! Tests then act through the `strata` binary and through T-SQL sent with
//! tiberius, as a DBA would.
//!
//! With a real server, the blob host name, the listen address and the
//! certificate directory come from `STRATA_TEST_SQLSERVER_BLOB_HOST`
//! (default `strata-blob.local`), `STRATA_TEST_SQLSERVER_BLOB_LISTEN`
//! (default `127.0.0.1:443`) and `STRATA_TEST_SQLSERVER_CERT_DIR` (default
//! `docker/sqlserver-certs`), which the compose file mounts into the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use tiberius::{Client, Config, Row};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{Emulator, EmulatorConfig};
use crate::cli::{RunOutput, Strata};
use crate::fixture::TestDir;
use crate::net::free_port;

/// The environment variable naming a real SQL Server.
pub const REAL_SERVER_VARIABLE: &str = "STRATA_TEST_SQLSERVER";

/// A SQL Server (emulated or real) and a Strata configuration for it.
pub struct SqlServerFixture {
    /// The test's directory (vault, catalog, config, certificates).
    pub dir: TestDir,
    /// The emulator, when the test does not run against a real server.
    pub emulator: Option<Emulator>,
    /// The connection string the plugin uses.
    pub connection: String,
    /// The configuration file.
    pub config: PathBuf,
    /// The directory of the blob endpoint's certificate and key.
    pub cert_dir: PathBuf,
    /// The name the blob URLs use.
    pub blob_host: String,
    /// Where the blob endpoint listens.
    pub blob_listen: SocketAddr,
}

/// Settings of a fixture beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct FixtureOptions {
    /// Extra lines for the `[sqlserver.main]` section (`stripes = 4`).
    pub instance_lines: Vec<String>,
    /// The vault URL (default: a `file://` vault in the test directory).
    pub vault_url: Option<String>,
    /// Extra TOML after the instance section (`[vault]` options, policies).
    pub extra_toml: String,
}

impl SqlServerFixture {
    /// A fixture named `label` on the emulator (adjusted by `emulator`) or
    /// on the real server `STRATA_TEST_SQLSERVER` names.
    pub async fn start(
        label: &str,
        options: FixtureOptions,
        emulator: impl FnOnce(&mut EmulatorConfig),
    ) -> SqlServerFixture {
        let dir = TestDir::new(label);
        let real = std::env::var(REAL_SERVER_VARIABLE).ok();
        let (blob_host, blob_listen, cert_dir) = match &real {
            Some(_) => (
                std::env::var("STRATA_TEST_SQLSERVER_BLOB_HOST")
                    .unwrap_or_else(|_| "strata-blob.local".into()),
                std::env::var("STRATA_TEST_SQLSERVER_BLOB_LISTEN")
                    .unwrap_or_else(|_| "127.0.0.1:443".into())
                    .parse()
                    .expect("STRATA_TEST_SQLSERVER_BLOB_LISTEN is an address"),
                std::env::var("STRATA_TEST_SQLSERVER_CERT_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| {
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/sqlserver-certs")
                    }),
            ),
            None => (
                "strata-blob.test".to_owned(),
                SocketAddr::from(([127, 0, 0, 1], free_port())),
                dir.path("certs"),
            ),
        };
        let mut emulator_config = EmulatorConfig {
            port: free_port(),
            ..EmulatorConfig::default()
        };
        emulator(&mut emulator_config);
        let connection = match &real {
            Some(connection) => connection.clone(),
            None => format!(
                "server=tcp:127.0.0.1,{};user={};password={};encrypt=DANGER_PLAINTEXT",
                emulator_config.port, emulator_config.user, emulator_config.password
            ),
        };
        let encryption = if real.is_some() {
            "required"
        } else {
            "not-supported"
        };
        let vault_url = options
            .vault_url
            .clone()
            .unwrap_or_else(|| dir.file_url("vault"));
        let mut text = format!(
            "[vault]\nurl = \"{vault_url}\"\n\n[catalog]\npath = \"{}\"\n\n[sqlserver.main]\nconnection = \"{}\"\nencryption = \"{encryption}\"\nblob_host = \"{blob_host}\"\nblob_listen = \"{blob_listen}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.path("catalog.db").display(),
            connection.replace('\\', "\\\\").replace('"', "\\\""),
            cert_dir.join("blob.crt").display(),
            cert_dir.join("blob.key").display(),
        );
        if real.is_some() {
            text.push_str("trust_server_certificate = true\n");
        }
        for line in &options.instance_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&options.extra_toml);
        let config = dir.write("strata.toml", text);
        let mut fixture = SqlServerFixture {
            dir,
            emulator: None,
            connection,
            config,
            cert_dir,
            blob_host,
            blob_listen,
        };
        if vault_url.starts_with("file://") {
            fixture.strata(["vault", "init"]).success();
        }
        fixture.strata(["sqlserver", "setup", "main"]).success();
        if real.is_none() {
            let ca = std::fs::read(fixture.cert_dir.join("ca.crt"))
                .expect("`strata sqlserver setup` wrote ca.crt");
            emulator_config.trusted_ca_pem.push(ca);
            emulator_config
                .resolve
                .push((fixture.blob_host.clone(), fixture.blob_listen));
            fixture.emulator = Some(Emulator::start(emulator_config).await);
        }
        fixture
            .strata(["sqlserver", "setup", "main", "--apply"])
            .success();
        if real.is_some() {
            fixture.drop_user_databases().await;
        }
        fixture
    }

    /// On a real server: drops every user database, so that a test starts
    /// from the empty server the emulator gives (the tests create and
    /// restore databases of fixed names). `STRATA_TEST_SQLSERVER` must
    /// therefore name a throwaway test server, and the tests run one at a
    /// time against it (`--test-threads 1`); docker/README.md says so.
    async fn drop_user_databases(&self) {
        let mut sql = self.client().await;
        let names: Vec<String> = sql
            .rows("SELECT name, database_id FROM sys.databases ORDER BY name")
            .await
            .iter()
            .filter(|r| r.get::<i32, _>("database_id").is_some_and(|id| id > 4))
            .filter_map(|r| r.get::<&str, _>("name").map(str::to_owned))
            .collect();
        for name in names {
            sql.exec(&format!(
                "IF DATABASEPROPERTYEX(N'{1}', 'Status') = 'ONLINE' ALTER DATABASE [{0}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{0}]",
                name.replace(']', "]]"),
                name.replace('\'', "''")
            ))
            .await;
        }
    }

    /// Whether this fixture runs against the emulator.
    pub fn emulated(&self) -> bool {
        self.emulator.is_some()
    }

    /// The emulator; panics on a real server (a test that needs it skips
    /// itself there first).
    pub fn emulator(&self) -> &Emulator {
        self.emulator
            .as_ref()
            .expect("this step needs the emulator")
    }

    /// `strata --config <the fixture's config> ARGS`.
    pub fn strata<I, S>(&self, args: I) -> RunOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command(args).run()
    }

    /// The same, not yet run (to add an environment or a timeout).
    pub fn command<I, S>(&self, args: I) -> Strata
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Strata::new().arg("--config").arg(&self.config).args(args)
    }

    /// A T-SQL session on the server, as a DBA would open one.
    pub async fn client(&self) -> SqlClient {
        let mut config =
            Config::from_ado_string(&self.connection).expect("the connection string is valid");
        if !self.emulated() {
            config.trust_cert();
        }
        let tcp = TcpStream::connect(config.get_addr())
            .await
            .expect("the server accepts connections");
        tcp.set_nodelay(true).ok();
        let client = Client::connect(config, tcp.compat_write())
            .await
            .expect("login to the server");
        SqlClient { client }
    }
}

/// A tiberius session with the few helpers tests need.
pub struct SqlClient {
    client: Client<Compat<TcpStream>>,
}

impl SqlClient {
    /// Runs one batch; panics with the server's error.
    pub async fn exec(&mut self, sql: &str) {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs one batch and returns the rows of its first result.
    pub async fn rows(&mut self, sql: &str) -> Vec<Row> {
        self.client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_first_result()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one batch and returns the server's error, if any.
    pub async fn try_exec(&mut self, sql: &str) -> Result<(), tiberius::error::Error> {
        self.client
            .simple_query(sql)
            .await?
            .into_results()
            .await
            .map(|_| ())
    }

    /// The ids in `[db].[dbo].[t]`, in order.
    pub async fn ids(&mut self, database: &str) -> Vec<i32> {
        self.rows(&format!(
            "SELECT id, note FROM [{database}].[dbo].[t] ORDER BY id"
        ))
        .await
        .iter()
        .map(|r| r.get::<i32, _>(0).expect("id is not null"))
        .collect()
    }

    /// The server's clock, in UTC.
    pub async fn now(&mut self) -> chrono::NaiveDateTime {
        self.rows("SELECT SYSUTCDATETIME() AS now").await[0]
            .get::<chrono::NaiveDateTime, _>(0)
            .expect("a time")
    }
}

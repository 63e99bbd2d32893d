//! A SQL Server emulator for Strata's tests: what the SQL Server plugin
//! relies on, played faithfully at the interfaces it uses (TDS and T-SQL,
//! LSNs and `msdb` history, and SQL Server's own calls to an Azure Blob
//! endpoint during `BACKUP ... TO URL` and `RESTORE ... FROM URL`).
//!
//! ```no_run
//! use strata_e2e::sqlserver::{Emulator, EmulatorConfig};
//!
//! # async fn example() {
//! let emulator = Emulator::start(EmulatorConfig::default()).await;
//! // tiberius: Config::from_ado_string(&emulator.connection_string())
//! let replies = emulator.sql("CREATE DATABASE [sales]").await;
//! # }
//! ```

pub mod blob_client;
pub mod engine;
pub mod fixture;
pub mod media;
pub mod sql;
pub mod steps;
pub mod tds;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use blob_client::{BlobClient, BlobClientConfig, RecordedRequest};
use engine::{AgRole, Server, ServerSettings};
use tds::{BatchHandler, Login, Reply, ServeHandle};

/// How an [`Emulator`] presents itself and what its URL devices trust.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The TCP port on 127.0.0.1; 0 (the default) takes a free one.
    pub port: u16,
    /// The SQL login the server accepts (default `strata`).
    pub user: String,
    /// Its password.
    pub password: String,
    /// `SERVERPROPERTY('ServerName')` (default `SQLEMU`).
    pub server_name: String,
    /// `SERVERPROPERTY('ProductVersion')` (default `16.0.4135.4`, SQL Server 2022).
    pub product_version: String,
    /// `SERVERPROPERTY('Edition')` (default `Developer Edition (64-bit)`).
    pub edition: String,
    /// The server's offset from UTC in minutes: its local time, in which it
    /// records backup dates and reads `STOPAT` (default 0).
    pub utc_offset_minutes: i32,
    /// `SERVERPROPERTY('InstanceDefaultDataPath')` (default `/var/opt/mssql/data/`).
    pub data_path: String,
    /// Whether the login is in `sysadmin` (default true); when not, BACKUP
    /// (262) and RESTORE (3110) are refused.
    pub sysadmin: bool,
    /// The size in bytes of a new database's pages (default 4 MiB).
    pub database_size: u64,
    /// CA certificates (PEM) the server trusts for `https://` URL devices,
    /// besides none (SQL Server trusts its host's store; here, only these).
    pub trusted_ca_pem: Vec<Vec<u8>>,
    /// Host names of URL devices and the address each resolves to (SQL
    /// Server resolves the blob host through the host's name service).
    pub resolve: Vec<(String, SocketAddr)>,
    /// The Shared Access Signature the blob client appends to its requests
    /// (SQL Server sends its credential's secret).
    pub sas: String,
    /// Put Block requests in flight per device (SQL Server's buffers).
    pub blocks_in_flight: usize,
    /// Databases in an availability group and this replica's role for each.
    pub availability: Vec<(String, AgRole)>,
    /// The seed of every backup's pages (`None`, the default: one per
    /// backup set); fixed, two backups of a database carry the same pages.
    pub payload_seed: Option<u64>,
    /// Log each Put Block List with its wall-clock times on standard error
    /// (see `BlobClient::with_block_list_log`).
    pub log_block_lists: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            port: 0,
            user: "strata".into(),
            password: "Strata-Emulator-1".into(),
            server_name: "SQLEMU".into(),
            product_version: "16.0.4135.4".into(),
            edition: "Developer Edition (64-bit)".into(),
            utc_offset_minutes: 0,
            data_path: "/var/opt/mssql/data/".into(),
            sysadmin: true,
            database_size: 4 * 1024 * 1024,
            trusted_ca_pem: Vec::new(),
            resolve: Vec::new(),
            sas: "sv=2022-11-02&ss=b&srt=co&sp=rwdlac&sig=emulator".into(),
            blocks_in_flight: 4,
            availability: Vec::new(),
            payload_seed: None,
            log_block_lists: false,
        }
    }
}

/// A running emulated SQL Server: TDS on 127.0.0.1, stopped when dropped.
pub struct Emulator {
    addr: SocketAddr,
    user: String,
    password: String,
    server: Arc<Server>,
    _serve: ServeHandle,
}

impl Emulator {
    /// Starts a server with the system databases and no user database.
    ///
    /// # Panics
    /// When the port cannot be bound on 127.0.0.1 or a trusted CA is not PEM.
    pub async fn start(config: EmulatorConfig) -> Emulator {
        let blob = BlobClient::new(BlobClientConfig {
            trusted_ca_pem: config.trusted_ca_pem.clone(),
            resolve: config.resolve.clone(),
            sas: config.sas.clone(),
            blocks_in_flight: config.blocks_in_flight,
        })
        .unwrap_or_else(|e| panic!("the emulator's blob client: {}: {}", e.device, e.os_error))
        .with_block_list_log(config.log_block_lists);
        let server = Arc::new(Server::new(
            ServerSettings {
                server_name: config.server_name.clone(),
                product_version: config.product_version.clone(),
                edition: config.edition.clone(),
                utc_offset_minutes: config.utc_offset_minutes,
                data_path: config.data_path.clone(),
                sysadmin: config.sysadmin,
                default_database_size: config.database_size,
            },
            blob,
        ));
        server.set_payload_seed(config.payload_seed);
        for (database, role) in &config.availability {
            server.set_ag_role(database, Some(*role));
        }
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
            .await
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:{}: {e}", config.port));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the bound address: {e}"));
        let serve = tds::serve(
            listener,
            Login {
                user: config.user.clone(),
                password: config.password.clone(),
            },
            server.clone(),
        );
        Emulator {
            addr,
            user: config.user,
            password: config.password,
            server,
            _serve: serve,
        }
    }

    /// The TDS address (127.0.0.1 and the bound port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An ADO.NET connection string that tiberius's
    /// `Config::from_ado_string` reads: the address, the login, and
    /// `encrypt=DANGER_PLAINTEXT` (the emulator answers PRELOGIN with
    /// ENCRYPT_NOT_SUP; the connection is loopback only).
    pub fn connection_string(&self) -> String {
        format!(
            "server=tcp:{},{};user={};password={};encrypt=DANGER_PLAINTEXT",
            self.addr.ip(),
            self.addr.port(),
            ado_value(&self.user),
            ado_value(&self.password)
        )
    }

    /// The model behind the connection (for assertions and settings).
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Every request the server made to blob endpoints for URL devices.
    pub fn blob_requests(&self) -> Vec<RecordedRequest> {
        self.server.blob_requests()
    }

    /// Sets the size of a database's pages (what a full backup carries);
    /// `compressible`: table-like pages, or bytes that do not compress.
    ///
    /// # Panics
    /// When the database does not exist.
    pub fn set_database_size(&self, database: &str, bytes: u64, compressible: bool) {
        self.server
            .set_database_size(database, bytes, compressible)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Puts a database in an availability group with `role` (`None`: out of it).
    pub fn set_ag_role(&self, database: &str, role: Option<AgRole>) {
        self.server.set_ag_role(database, role);
    }

    /// Runs a batch as a connection of the configured login would, without TDS.
    pub async fn sql(&self, text: &str) -> Vec<Reply> {
        let session = engine::internal_session(&self.user);
        self.server.batch(&session, text).await
    }
}

/// A value of an ADO.NET connection string, quoted when it holds `;`, `=`,
/// quotes or surrounding spaces.
fn ado_value(value: &str) -> String {
    if value.contains([';', '=', '\'', '"']) || value.trim() != value {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiberius::numeric::Numeric;
    use tiberius::{Client, Config};
    use tokio::net::TcpStream;
    use tokio_util::compat::TokioAsyncWriteCompatExt;

    fn errors(replies: &[Reply]) -> Vec<tds::SqlError> {
        replies
            .iter()
            .filter_map(|r| match r {
                Reply::Error(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn tiberius_connects_with_the_connection_string_and_reads_the_history() {
        let emulator = Emulator::start(EmulatorConfig {
            utc_offset_minutes: 120,
            ..EmulatorConfig::default()
        })
        .await;
        let config = Config::from_ado_string(&emulator.connection_string()).unwrap();
        let tcp = TcpStream::connect(emulator.addr()).await.unwrap();
        let mut client = Client::connect(config, tcp.compat_write()).await.unwrap();
        for sql in [
            "CREATE DATABASE [sales]",
            "CREATE TABLE [sales].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)",
            "BACKUP DATABASE [sales] TO DISK = N'/b/sales.bak' WITH CHECKSUM, STATS = 10",
        ] {
            client
                .simple_query(sql)
                .await
                .unwrap()
                .into_results()
                .await
                .unwrap();
        }
        let row = client
            .simple_query(
                "SELECT last_log_backup_lsn, recovery_fork_guid FROM sys.database_recovery_status WHERE database_id = DB_ID(N'sales')",
            )
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        let lsn: Numeric = row.get("last_log_backup_lsn").unwrap();
        assert!(lsn.value() > 37_000_000_001_600_000, "{lsn:?}");
        assert!(row.get::<tiberius::Uuid, _>("recovery_fork_guid").is_some());

        let row = client
            .simple_query(
                "SELECT TOP (1) media_set_id FROM msdb.dbo.backupmediafamily WHERE physical_device_name = N'/b/sales.bak' ORDER BY media_set_id DESC",
            )
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        let media_set_id: i32 = row.get("media_set_id").unwrap();
        let row = client
            .simple_query(format!(
                "SELECT type, first_lsn, backup_start_date, time_zone FROM msdb.dbo.backupset WHERE media_set_id = {media_set_id}"
            ))
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<&str, _>("type"), Some("D"));
        assert_eq!(row.get::<i16, _>("time_zone"), Some(8));
        let start: chrono::NaiveDateTime = row.get("backup_start_date").unwrap();
        let local = chrono::Utc::now().naive_utc() + chrono::TimeDelta::minutes(120);
        assert!(
            (local - start).num_seconds().abs() < 60,
            "{start} vs {local}"
        );

        // The error comes with the first response or with the results.
        let err = match client.simple_query("SELECT name FROM sys.objects").await {
            Err(e) => e,
            Ok(stream) => stream.into_results().await.unwrap_err(),
        };
        assert_eq!(err.code(), Some(208), "{err}");
    }

    #[tokio::test]
    async fn a_url_device_whose_host_does_not_resolve_is_3201() {
        let emulator = Emulator::start(EmulatorConfig::default()).await;
        let url = "https://strata-blob.local/strata/tok/stripe-000.bak";
        for sql in [
            "CREATE DATABASE [db]",
            "CREATE CREDENTIAL [https://strata-blob.local/strata] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = N'sv=x'",
        ] {
            assert!(errors(&emulator.sql(sql).await).is_empty(), "{sql}");
        }
        let errors = errors(
            &emulator
                .sql(&format!("BACKUP DATABASE [db] TO URL = N'{url}'"))
                .await,
        );
        let numbers: Vec<u32> = errors.iter().map(|e| e.number).collect();
        assert_eq!(numbers, vec![3201, 3013]);
        assert!(
            errors[0].message.starts_with(&format!(
                "Cannot open backup device '{url}'. Operating system error 12007"
            )),
            "{}",
            errors[0].message
        );
        let history = emulator
            .sql("SELECT backup_set_id FROM msdb.dbo.backupset")
            .await;
        assert!(
            matches!(&history[..], [Reply::Rows { rows, .. }] if rows.is_empty()),
            "no history for a failed backup: {history:?}"
        );
    }
}

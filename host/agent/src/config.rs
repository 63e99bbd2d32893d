//! The TOML configuration (`/etc/strata/strata.toml` by default).
//!
//! ```toml
//! [vault]
//! url = "s3://backups/prod"            # or file:///var/lib/strata/vault, az://..., gs://...
//! key_file = "/etc/strata/vault.key"   # only for encrypted vaults
//! [vault.options]                      # object_store options, over the environment
//! aws_region = "eu-west-1"
//!
//! [catalog]
//! path = "/var/lib/strata/catalog.db"  # the local index; a cache of the vault
//!
//! [writer]
//! part_size = "16MiB"
//! compression_level = 3
//! workers = 0                          # 0 = every core
//! parts_in_flight = 4
//! segment_size = "4GiB"
//! ```
//!
//! The common sections, their types and the loader are strata-core's
//! ([`strata_core::config`]), shared with `hdbbackint`; this type adds the
//! engine sections and, unlike core's `CommonConfig`, refuses any top-level
//! key it does not know.

use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use strata_core::config::ByteSize;
use strata_core::config::{CatalogConfig, WriterSettings};
use strata_core::vault::VaultConfig;
use strata_core::{Result, config};

use crate::service::policy::{PolicyConfig, ProtectConfig, ServiceConfig};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = config::DEFAULT_PATH;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups go.
    #[serde(default)]
    pub vault: VaultConfig,
    /// The local catalog index.
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// Streaming writer settings.
    #[serde(default)]
    pub writer: WriterSettings,
    /// PostgreSQL clusters by name (`[postgres.<name>]`, see `strata_postgres::config`).
    #[serde(default)]
    pub postgres: std::collections::BTreeMap<String, strata_postgres::ClusterConfig>,
    /// SQL Server instances by name (`[sqlserver.<name>]`, see `strata_sqlserver::config`).
    #[serde(default)]
    pub sqlserver: std::collections::BTreeMap<String, strata_sqlserver::InstanceConfig>,
    /// The service (`strata serve`); see [`crate::service::policy`].
    #[serde(default)]
    pub service: ServiceConfig,
    /// Protection policies by name (`[policy.<name>]`).
    #[serde(default)]
    pub policy: std::collections::BTreeMap<String, PolicyConfig>,
    /// Protected items (`[[protect]]`).
    #[serde(default)]
    pub protect: Vec<ProtectConfig>,
}

impl Config {
    /// Reads a configuration file. A missing file is an error naming it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = config::read_file(path).map_err(|e| {
            e.hint("pass --config PATH, or --vault URL to work without a configuration file")
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors, with the line
    /// and column of a mistake.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = config::parse(text, origin)?;
        crate::service::policy::validate(&config, text, origin)?;
        Ok(config)
    }

    /// The catalog index path (configured, or the default for this user).
    pub fn catalog_path(&self) -> PathBuf {
        self.catalog.index_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("16MiB".parse::<ByteSize>().unwrap(), ByteSize(16 << 20));
        assert_eq!("4 GiB".parse::<ByteSize>().unwrap(), ByteSize(4 << 30));
        assert_eq!("512k".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn config_errors_name_the_line() {
        let text = "[vault]\nurl = \"file:///v\"\n[writer]\npart_size = \"big\"\n";
        let err = Config::parse(text, "strata.toml").unwrap_err();
        assert!(err.to_string().contains("strata.toml"), "{err}");
        assert_eq!(err.hint_text(), Some("fix line 4 of strata.toml"));
        let err = Config::parse("[vault]\nulr = \"x\"\n", "strata.toml").unwrap_err();
        assert!(err.to_string().contains("unknown field `ulr`"), "{err}");
        assert_eq!(
            err.hint_text(),
            Some("fix line 2 of strata.toml: correct the key's spelling or remove it")
        );
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
            [vault]
            url = "s3://bucket/prefix"
            key_file = "/etc/strata/vault.key"
            [vault.options]
            aws_region = "eu-west-1"
            [catalog]
            path = "/tmp/c.db"
            [writer]
            part_size = "8MiB"
            compression_level = 1
            segment_size = 1073741824
        "#;
        let config = Config::parse(text, "t").unwrap();
        assert_eq!(config.vault.url, "s3://bucket/prefix");
        assert_eq!(config.writer.part_size, Some(ByteSize(8 << 20)));
        assert_eq!(config.writer.segment_size, Some(ByteSize(1 << 30)));
        assert_eq!(config.catalog_path(), PathBuf::from("/tmp/c.db"));
    }

    /// A SQL Server section the plugin would refuse is refused when the file
    /// is read (so by `strata config check` too), naming section and key.
    #[test]
    fn a_sqlserver_section_is_checked_when_the_file_is_read() {
        let base = "[vault]\nurl = \"file:///v\"\n[sqlserver.main]\nconnection = \"server=tcp:127.0.0.1,1433;user=s;password=p\"\n";
        for (extra, said) in [
            ("blob_host = \"10.0.0.5\"\n", "[sqlserver.main] blob_host"),
            (
                "blob_host = \"b.local\"\nstripes = 65\n",
                "[sqlserver.main] stripes",
            ),
            (
                "blob_host = \"b.local\"\nreorder_window = 0\n",
                "[sqlserver.main] reorder_window",
            ),
        ] {
            let err = Config::parse(&format!("{base}{extra}"), "strata.toml").unwrap_err();
            assert_eq!(err.kind(), strata_core::ErrorKind::Config, "{err}");
            assert!(err.to_string().contains(said), "{extra}: {err}");
        }
        let good = format!("{base}blob_host = \"b.local\"\n");
        assert!(Config::parse(&good, "strata.toml").is_ok());
    }

    #[test]
    fn unknown_sections_and_keys_are_refused_with_their_line() {
        let text = "[vault]\nurl = \"file:///v\"\n\n[postgress.main]\nconnection = \"x\"\n";
        let err = Config::parse(text, "/etc/strata/strata.toml").unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Config);
        assert!(
            err.to_string().starts_with(
                "the configuration /etc/strata/strata.toml is invalid at line 4, column 2: unknown field `postgress`"
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`postgres`"), "{err}");
        assert!(
            err.hint_text()
                .unwrap()
                .starts_with("fix line 4 of /etc/strata/strata.toml"),
            "{err:?}"
        );
        let err = Config::parse("[writer]\nparallel_parts = 4\n", "s.toml").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 2, column 1: unknown field `parallel_parts`"),
            "{err}"
        );
    }

    #[test]
    fn service_mistakes_name_their_line() {
        let base = "[vault]\nurl = \"file:///v\"\n[postgres.main]\nconnection = \"host=/tmp\"\ndata_directory = \"/srv/pg\"\n";
        let cases = [
            (
                "[policy.p]\nfull = \"0 2 * * SUNDAY\"\n",
                7,
                "is not a cron expression",
            ),
            (
                "[policy.p]\ntime_zone = \"Europe/Berlim\"\n",
                7,
                "is not an IANA time zone",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\nlog_interval = \"30s\"\n",
                8,
                "shorter than the minimum of 1 minute",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[[protect]]\nengine = \"postgres\"\ninstance = \"main\"\npolicy = \"weekly\"\n",
                11,
                "there is no policy `weekly` (policies: p)",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[[protect]]\nengine = \"postgres\"\ninstance = \"other\"\npolicy = \"p\"\n",
                10,
                "there is no [postgres.other] section",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[[protect]]\nengine = \"mysql\"\ninstance = \"main\"\npolicy = \"p\"\n",
                9,
                "there is no engine `mysql`",
            ),
            (
                "[policy.p]\nretention = { daily = -1 }\n",
                7,
                "invalid value: integer `-1`",
            ),
            ("[policy.p]\nfull = \"0 2 31 2 *\"\n", 7, "never fires"),
            (
                "[policy.p]\nfull = \"0 0 2 * * SUN 2027\"\n",
                7,
                "has 7 fields",
            ),
            ("[policy.p]\nrpo = \"0s\"\n", 7, "an RPO of 0 cannot be met"),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[policy.p.retention]\n",
                8,
                "keeps nothing but the newest backup",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[[protect]]\nengine = \"pg\"\ninstance = \"main\"\ndatabases = [\"sales\"]\npolicy = \"p\"\n",
                11,
                "protected as a whole",
            ),
            (
                "[policy.p]\nfull = \"0 2 * * SUN\"\n[[protect]]\nengine = \"pg\"\ninstance = \"\"\npolicy = \"p\"\n",
                10,
                "the instance name is empty",
            ),
            ("[policy.p]\ndiff = \"0 2 * * *\"\n", 6, "no full"),
        ];
        for (extra, line, message) in cases {
            let err = Config::parse(&format!("{base}{extra}"), "s.toml").unwrap_err();
            assert_eq!(err.kind(), strata_core::ErrorKind::Config);
            assert!(
                err.to_string()
                    .contains(&format!("s.toml is invalid at line {line},")),
                "{extra}: {err}"
            );
            assert!(err.to_string().contains(message), "{extra}: {err}");
            assert_eq!(
                err.hint_text(),
                Some(format!("fix line {line} of s.toml").as_str())
            );
        }
        let err =
            Config::parse(&format!("{base}[service]\nconcurrency = 0\n"), "s.toml").unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::Config);
        assert!(err.to_string().contains("would never run a job"), "{err}");
    }

    #[test]
    fn a_missing_file_says_how_to_do_without() {
        let err = Config::load(Path::new("/nonexistent/strata.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/strata.toml"),
            "{err}"
        );
        assert!(err.hint_text().unwrap().contains("--vault URL"), "{err:?}");
    }

    #[test]
    fn hdbbackint_reads_the_same_file_the_same_way() {
        // What `config = /etc/strata/strata.toml` in a Backint parameter file
        // reads: the common sections through the same types, the engine
        // sections left to this binary.
        let text = r#"
            [vault]
            url = "s3://bucket/prefix"
            [vault.options]
            aws_region = "eu-west-1"
            [catalog]
            path = "/tmp/c.db"
            [writer]
            part_size = "8MiB"
            parts_in_flight = 2
            segment_size = "1TiB"
            [postgres.main]
            connection = "host=/tmp port=5432"
            data_directory = "/srv/pg"
        "#;
        let agent = Config::parse(text, "t").unwrap();
        let common = strata_core::config::CommonConfig::parse(text, "t").unwrap();
        assert_eq!(agent.vault.url, common.vault.url);
        assert_eq!(agent.vault.options, common.vault.options);
        assert_eq!(agent.catalog, common.catalog);
        assert_eq!(agent.writer, common.writer);
        assert_eq!(agent.writer.segment_size, Some(ByteSize(1 << 40)));
        assert_eq!(common.engine_sections, ["postgres"]);
        assert!(agent.postgres.contains_key("main"));
    }
}

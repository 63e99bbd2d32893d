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

use std::path::{Path, PathBuf};

use serde::Deserialize;
use strata_core::vault::VaultConfig;
use strata_core::{Error, Result};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/strata/strata.toml";

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
}

/// The `[catalog]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The SQLite index file; defaults to `/var/lib/strata/catalog.db` for
    /// root and `~/.local/state/strata/catalog.db` for other users.
    pub path: Option<PathBuf>,
}

/// The `[writer]` section; every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    /// Raw bytes per part (`"16MiB"`).
    pub part_size: Option<ByteSize>,
    /// zstd level (1-19).
    pub compression_level: Option<i32>,
    /// Compression threads; 0 = every core.
    pub workers: Option<usize>,
    /// Uploads in flight per stream.
    pub parts_in_flight: Option<usize>,
    /// Largest segment object (`"4GiB"`).
    pub segment_size: Option<ByteSize>,
}

/// A byte count written as an integer or with a unit (`"16MiB"`, `"4GiB"`, `"512k"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            Error::config(format!("`{text}` is not a size"))
                .hint("write sizes like 16MiB, 4GiB or 1048576")
        })?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(
                    Error::config(format!("unknown size unit `{other}` in `{text}`"))
                        .hint("use KiB, MiB, GiB or TiB"),
                );
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| Error::config(format!("size `{text}` is too large")))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t
                .parse()
                .map_err(|e: Error| serde::de::Error::custom(e.to_string())),
        }
    }
}

impl Config {
    /// Reads a configuration file. A missing file is an error naming it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
            .hint("pass --config PATH, or --vault URL to work without a configuration file")
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            Error::config(format!(
                "the configuration {origin} is invalid: {}",
                e.message().trim()
            ))
            .hint(match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("fix line {line} of {origin}")
                }
                None => format!("fix {origin}"),
            })
        })
    }

    /// The catalog index path (configured, or the default for this user).
    pub fn catalog_path(&self) -> PathBuf {
        if let Some(path) = &self.catalog.path {
            return path.clone();
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match home {
            Some(home) if !is_root() => home.join(".local/state/strata/catalog.db"),
            _ => PathBuf::from("/var/lib/strata/catalog.db"),
        }
    }
}

fn is_root() -> bool {
    // The effective user is root when /proc/self/status says Uid 0; avoids unsafe libc calls.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
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
        assert!(err.to_string().contains("ulr"), "{err}");
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
}

//! The parameter file HANA passes with `-p` (global.ini
//! `[backup] data_backup_parameter_file`, `log_backup_parameter_file`,
//! `catalog_backup_parameter_file`).
//!
//! `key = value` lines; `#` starts a comment; values may be quoted.
//!
//! ```text
//! # /usr/sap/HDB/SYS/global/hdb/opt/hdbconfig/strata.utl  (mode 0600, owner hdbadm)
//! vault = s3://backups/hana          # the vault URL, or:
//! # config = /etc/strata/strata.toml  # take [vault], [writer] and [catalog] from the Strata config
//! vault.aws_region = eu-west-1       # object store options (vault.<option> = value)
//! key_file = /usr/sap/HDB/home/.strata/vault.key
//! compression_level = 3
//! part_size = 16MiB
//! parallel_parts = 4                 # parts uploaded at once, per pipe
//! max_channels = 32                  # pipes served at once by one process
//! open_timeout = 60                  # seconds to wait for HANA to open a pipe
//! log_file = /usr/sap/HDB/HDB00/trace/strata-backint.log
//! catalog = /usr/sap/HDB/home/.local/state/strata/catalog.db
//! ```
//!
//! Unknown keys are errors, so that a typo never silently falls back to a
//! default. Keys given in the parameter file override the Strata config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::vault::VaultConfig;
use strata_core::vault::writer::WriterConfig;
use strata_core::{Error, Result};

/// Everything the parameter file configures.
#[derive(Debug, Clone)]
pub struct Params {
    /// The vault to write to and read from.
    pub vault: VaultConfig,
    /// zstd level for parts, when set.
    pub compression_level: Option<i32>,
    /// Raw bytes per part, when set.
    pub part_size: Option<u64>,
    /// Parts in flight per pipe, when set.
    pub parallel_parts: Option<usize>,
    /// Compression workers, when set (0 = every core).
    pub workers: Option<usize>,
    /// Largest segment object, when set.
    pub segment_size: Option<u64>,
    /// How many pipes one process serves at once.
    pub max_channels: usize,
    /// How long to wait for HANA to open a pipe.
    pub open_timeout: Duration,
    /// Where the detailed log goes.
    pub log_file: Option<PathBuf>,
    /// The local catalog index to record backups in (best effort).
    pub catalog: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            vault: VaultConfig::default(),
            compression_level: None,
            part_size: None,
            parallel_parts: None,
            workers: None,
            segment_size: None,
            max_channels: 32,
            open_timeout: Duration::from_secs(60),
            log_file: None,
            catalog: None,
        }
    }
}

impl Params {
    /// The writer settings: defaults, overridden by what is configured.
    pub fn writer_config(&self) -> WriterConfig {
        let mut config = WriterConfig::default();
        if let Some(level) = self.compression_level {
            config.compression_level = level;
        }
        if let Some(size) = self.part_size {
            config.part_size = size as usize;
        }
        if let Some(n) = self.parallel_parts {
            config.parts_in_flight = n;
        }
        if let Some(n) = self.workers {
            config.workers = n;
        }
        if let Some(size) = self.segment_size {
            config.segment_size = size;
        }
        config
    }

    /// Reads and checks a parameter file.
    pub fn load(path: &Path) -> Result<Params> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the parameter file {}: {e}",
                path.display()
            ))
            .hint("check the [backup] *_parameter_file settings in global.ini and that <sid>adm can read the file")
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses parameter-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Params> {
        let mut params = Params::default();
        let mut options = BTreeMap::new();
        let mut config_file: Option<PathBuf> = None;
        let mut seen = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: String| {
                Error::config(format!("{origin} line {line_no}: {what}")).hint(format!(
                    "fix line {line_no} of {origin}; lines read `key = value`"
                ))
            };
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(format!("`{line}` is not `key = value`")));
            };
            let key = key.trim().to_ascii_lowercase();
            let value = unquote(value.trim());
            if let Some(previous) = seen.insert(key.clone(), line_no) {
                return Err(bad(format!("`{key}` is already set on line {previous}")));
            }
            if let Some(option) = key.strip_prefix("vault.") {
                options.insert(option.to_owned(), value.to_owned());
                continue;
            }
            match key.as_str() {
                "vault" => params.vault.url = value.to_owned(),
                "config" => config_file = Some(PathBuf::from(value)),
                "key_file" => params.vault.key_file = Some(PathBuf::from(value)),
                "compression_level" => {
                    let level: i32 = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=22).contains(l))
                        .ok_or_else(|| {
                            bad(format!("compression_level `{value}` is not 1 to 22"))
                        })?;
                    params.compression_level = Some(level);
                }
                "part_size" => params.part_size = Some(parse_bytes(value).map_err(bad)?),
                "segment_size" => params.segment_size = Some(parse_bytes(value).map_err(bad)?),
                "parallel_parts" => {
                    params.parallel_parts = Some(parse_count(&key, value).map_err(bad)?)
                }
                "workers" => {
                    params.workers = Some(
                        value
                            .parse()
                            .map_err(|_| bad(format!("workers `{value}` is not a whole number")))?,
                    )
                }
                "max_channels" => params.max_channels = parse_count(&key, value).map_err(bad)?,
                "open_timeout" => {
                    let secs: u64 = value
                        .trim_end_matches('s')
                        .trim()
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| {
                            bad(format!("open_timeout `{value}` is not a number of seconds"))
                        })?;
                    params.open_timeout = Duration::from_secs(secs);
                }
                "log_file" => params.log_file = Some(PathBuf::from(value)),
                "catalog" => params.catalog = Some(PathBuf::from(value)),
                other => {
                    return Err(Error::config(format!(
                        "{origin} line {line_no}: unknown parameter `{other}`"
                    ))
                    .hint("known parameters: vault, vault.<option>, config, key_file, compression_level, part_size, segment_size, parallel_parts, workers, max_channels, open_timeout, log_file, catalog"));
                }
            }
        }
        if let Some(path) = config_file {
            params.merge_strata_config(&path)?;
        }
        for (key, value) in options {
            params.vault.options.insert(key, value);
        }
        if params.vault.url.trim().is_empty() {
            return Err(Error::config(format!("{origin} names no vault"))
                .hint("add `vault = s3://bucket/prefix` (or `config = /etc/strata/strata.toml`) to the parameter file"));
        }
        Ok(params)
    }

    /// Fills unset values from a Strata configuration file (TOML).
    fn merge_strata_config(&mut self, path: &Path) -> Result<()> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the Strata configuration {origin}: {e}"
            ))
            .hint("fix `config =` in the parameter file, or name the vault with `vault =`")
        })?;
        let doc: toml::Table = toml::from_str(&text).map_err(|e| {
            Error::config(format!(
                "the Strata configuration {origin} is invalid: {}",
                e.message().trim()
            ))
            .hint(format!("fix {origin}"))
        })?;
        let bad =
            |what: &str| Error::config(format!("{origin}: {what}")).hint(format!("fix {origin}"));
        if let Some(vault) = doc.get("vault") {
            let config: VaultConfig = vault.clone().try_into().map_err(|e: toml::de::Error| {
                bad(&format!("[vault] is invalid: {}", e.message()))
            })?;
            if self.vault.url.trim().is_empty() {
                self.vault.url = config.url;
            }
            if self.vault.key_file.is_none() {
                self.vault.key_file = config.key_file;
            }
            for (k, v) in config.options {
                self.vault.options.entry(k).or_insert(v);
            }
        }
        if let Some(writer) = doc.get("writer").and_then(|w| w.as_table()) {
            let size = |key: &str| -> Result<Option<u64>> {
                match writer.get(key) {
                    None => Ok(None),
                    Some(toml::Value::Integer(n)) if *n > 0 => Ok(Some(*n as u64)),
                    Some(toml::Value::String(s)) => parse_bytes(s).map(Some).map_err(|m| bad(&m)),
                    Some(other) => Err(bad(&format!("[writer] {key} = {other} is not a size"))),
                }
            };
            let int = |key: &str| writer.get(key).and_then(|v| v.as_integer());
            self.part_size = self.part_size.or(size("part_size")?);
            self.segment_size = self.segment_size.or(size("segment_size")?);
            self.compression_level = self
                .compression_level
                .or(int("compression_level").map(|n| n as i32));
            self.workers = self.workers.or(int("workers").map(|n| n.max(0) as usize));
            self.parallel_parts = self
                .parallel_parts
                .or(int("parts_in_flight").map(|n| n.max(1) as usize));
        }
        if self.catalog.is_none() {
            self.catalog = doc
                .get("catalog")
                .and_then(|c| c.get("path"))
                .and_then(|p| p.as_str())
                .map(PathBuf::from);
        }
        Ok(())
    }
}

fn strip_comment(line: &str) -> &str {
    // `#` starts a comment unless it is inside quotes.
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '#' if !in_quotes => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_count(key: &str, value: &str) -> std::result::Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| format!("{key} `{value}` is not a number from 1 to 1024"))
}

/// Parses `16MiB`, `4GiB`, `512k` or a plain byte count.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write 16MiB, 4GiB or 1048576)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("size `{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_parameter_file() {
        let text = r#"
            # Strata for HDB
            vault = "file:///var/lib/strata/vault"   # trailing comment
            vault.aws_region = eu-west-1
            key_file = /usr/sap/HDB/home/.strata/vault.key
            compression_level = 3
            part_size = 8MiB
            parallel_parts = 6
            max_channels = 4
            open_timeout = 30s
            log_file = "/tmp/with space/#not-a-comment.log"
        "#;
        let p = Params::parse(text, "strata.utl").unwrap();
        assert_eq!(p.vault.url, "file:///var/lib/strata/vault");
        assert_eq!(p.vault.options["aws_region"], "eu-west-1");
        assert_eq!(p.part_size, Some(8 << 20));
        assert_eq!(p.max_channels, 4);
        assert_eq!(p.open_timeout, Duration::from_secs(30));
        assert_eq!(
            p.log_file,
            Some(PathBuf::from("/tmp/with space/#not-a-comment.log"))
        );
        let w = p.writer_config();
        assert_eq!(w.part_size, 8 << 20);
        assert_eq!(w.parts_in_flight, 6);
        assert_eq!(w.compression_level, 3);
    }

    #[test]
    fn mistakes_name_the_line_and_the_fix() {
        let err = Params::parse("vault = memory://x\npart_sise = 1MiB\n", "p.utl").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("part_sise"), "{err}");
        assert!(err.hint_text().unwrap().contains("part_size"));
        let err = Params::parse("vault memory://x\n", "p.utl").unwrap_err();
        assert!(err.to_string().contains("not `key = value`"), "{err}");
        let err = Params::parse("compression_level = 3\n", "p.utl").unwrap_err();
        assert!(err.to_string().contains("names no vault"), "{err}");
        assert!(err.hint_text().unwrap().contains("vault ="));
        let err = Params::parse("vault = memory://x\nopen_timeout = soon\n", "p.utl").unwrap_err();
        assert!(err.to_string().contains("open_timeout"), "{err}");
        let err = Params::parse("vault = a\nvault = b\n", "p.utl").unwrap_err();
        assert!(err.to_string().contains("already set on line 1"), "{err}");
    }

    #[test]
    fn strata_config_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "[vault]\nurl = \"s3://b/p\"\n[vault.options]\naws_region = \"x\"\n[writer]\npart_size = \"4MiB\"\nworkers = 2\n[catalog]\npath = \"/tmp/c.db\"\n",
        )
        .unwrap();
        let text = format!("config = {}\ncompression_level = 9\n", path.display());
        let p = Params::parse(&text, "p.utl").unwrap();
        assert_eq!(p.vault.url, "s3://b/p");
        assert_eq!(p.vault.options["aws_region"], "x");
        assert_eq!(p.part_size, Some(4 << 20));
        assert_eq!(p.workers, Some(2));
        assert_eq!(p.compression_level, Some(9));
        assert_eq!(p.catalog, Some(PathBuf::from("/tmp/c.db")));
    }
}

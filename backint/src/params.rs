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
//! parts_in_flight = 4                # parts uploaded at once, per pipe
//! max_channels = 32                  # pipes served at once by one process
//! open_timeout = 60                  # seconds to wait for HANA to open a pipe
//! log_file = /usr/sap/HDB/HDB00/trace/strata-backint.log
//! catalog = /usr/sap/HDB/home/.local/state/strata/catalog.db
//! ```
//!
//! The writer keys (`compression_level`, `part_size`, `workers`,
//! `parts_in_flight`, `segment_size`) are the `[writer]` keys of the Strata
//! configuration, with the same meaning and the same types
//! ([`strata_core::config::WriterSettings`]); sizes are written as there
//! ([`ByteSize`]: `16MiB`, `4GiB`, `1048576`; every unit counts in powers of
//! 1024, so `16MB` is `16MiB`). `parallel_parts`, this file's older name for
//! `parts_in_flight`, is still accepted: the Backint log then notes once per
//! run that it is deprecated.
//!
//! `config = PATH` reads a Strata configuration file through the loader
//! `strata` uses ([`strata_core::config::CommonConfig`]): its `[vault]`,
//! `[catalog]` and `[writer]` sections fill what the parameter file leaves
//! unset, and engine sections (`[postgres.main]`) are left alone. A mistake
//! in it is an error naming its line and column, as `strata` reports it.
//!
//! Unknown keys are errors, so that a typo never silently falls back to a
//! default. Keys given in the parameter file override the Strata config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::config::{self, ByteSize, CommonConfig, WriterSettings};
use strata_core::vault::VaultConfig;
use strata_core::vault::writer::WriterConfig;
use strata_core::{Error, Result};

/// The deprecated name of `parts_in_flight`.
const PARALLEL_PARTS: &str = "parallel_parts";

/// Everything the parameter file configures.
#[derive(Debug, Clone)]
pub struct Params {
    /// The vault to write to and read from.
    pub vault: VaultConfig,
    /// The writer settings given (the Strata configuration's `[writer]`).
    pub writer: WriterSettings,
    /// How many pipes one process serves at once.
    pub max_channels: usize,
    /// How long to wait for HANA to open a pipe.
    pub open_timeout: Duration,
    /// Where the detailed log goes.
    pub log_file: Option<PathBuf>,
    /// The local catalog index to record backups in (best effort).
    pub catalog: Option<PathBuf>,
    /// One line per deprecated key the file used, for the Backint log.
    pub deprecations: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            vault: VaultConfig::default(),
            writer: WriterSettings::default(),
            max_channels: 32,
            open_timeout: Duration::from_secs(60),
            log_file: None,
            catalog: None,
            deprecations: Vec::new(),
        }
    }
}

impl Params {
    /// The writer settings: defaults, overridden by what is configured.
    pub fn writer_config(&self) -> WriterConfig {
        self.writer.writer_config()
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
        let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
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
            let written = key.trim().to_ascii_lowercase();
            let value = unquote(value.trim());
            // The deprecated name is the same setting: setting both is a repeat.
            let key = if written == PARALLEL_PARTS {
                params.deprecations.push(format!(
                    "{origin} line {line_no}: `{PARALLEL_PARTS}` is deprecated; write `parts_in_flight = {value}` (the same setting, named as in the Strata configuration's [writer])"
                ));
                "parts_in_flight".to_owned()
            } else {
                written.clone()
            };
            if let Some((previous, as_written)) =
                seen.insert(key.clone(), (line_no, written.clone()))
            {
                let alias = if as_written == written {
                    String::new()
                } else {
                    format!(" as `{as_written}`")
                };
                return Err(bad(format!(
                    "`{written}` is already set on line {previous}{alias}"
                )));
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
                    params.writer.compression_level = Some(level);
                }
                "part_size" => {
                    params.writer.part_size = Some(parse_size(&key, value).map_err(bad)?)
                }
                "segment_size" => {
                    params.writer.segment_size = Some(parse_size(&key, value).map_err(bad)?)
                }
                "parts_in_flight" => {
                    params.writer.parts_in_flight = Some(parse_count(&written, value).map_err(bad)?)
                }
                "workers" => {
                    params.writer.workers = Some(
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
                    .hint("known parameters: vault, vault.<option>, config, key_file, compression_level, part_size, segment_size, parts_in_flight, workers, max_channels, open_timeout, log_file, catalog"));
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

    /// Fills unset values from a Strata configuration file (TOML), read as
    /// `strata` reads it.
    fn merge_strata_config(&mut self, path: &Path) -> Result<()> {
        let text = config::read_file(path).map_err(|e| {
            e.hint("fix `config =` in the parameter file, or name the vault with `vault =`")
        })?;
        let common = CommonConfig::parse(&text, &path.display().to_string())?;
        if self.vault.url.trim().is_empty() {
            self.vault.url = common.vault.url;
        }
        if self.vault.key_file.is_none() {
            self.vault.key_file = common.vault.key_file;
        }
        for (k, v) in common.vault.options {
            self.vault.options.entry(k).or_insert(v);
        }
        self.writer = self.writer.or(&common.writer);
        if self.catalog.is_none() {
            self.catalog = common.catalog.path;
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

/// A size, as the Strata configuration writes it; zero is no size for a
/// part or a segment.
fn parse_size(key: &str, value: &str) -> std::result::Result<ByteSize, String> {
    match value.parse::<ByteSize>() {
        Ok(ByteSize(0)) => Err(format!("{key} `{value}` must be more than 0 bytes")),
        Ok(size) => Ok(size),
        Err(e) => Err(e.message().to_owned()),
    }
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
        assert_eq!(p.writer.part_size, Some(ByteSize(8 << 20)));
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
        assert_eq!(p.writer.part_size, Some(ByteSize(4 << 20)));
        assert_eq!(p.writer.workers, Some(2));
        assert_eq!(p.writer.compression_level, Some(9));
        assert_eq!(p.catalog, Some(PathBuf::from("/tmp/c.db")));
    }

    #[test]
    fn parallel_parts_is_a_deprecated_name_for_parts_in_flight() {
        let p = Params::parse("vault = memory://x\nparts_in_flight = 6\n", "p.utl").unwrap();
        assert_eq!(p.writer.parts_in_flight, Some(6));
        assert_eq!(p.writer_config().parts_in_flight, 6);
        assert!(p.deprecations.is_empty(), "{:?}", p.deprecations);

        let p = Params::parse("vault = memory://x\n\nParallel_Parts = 6\n", "p.utl").unwrap();
        assert_eq!(p.writer.parts_in_flight, Some(6));
        assert_eq!(p.writer_config().parts_in_flight, 6);
        assert_eq!(
            p.deprecations,
            [
                "p.utl line 3: `parallel_parts` is deprecated; write `parts_in_flight = 6` (the same setting, named as in the Strata configuration's [writer])"
            ]
        );

        let err = Params::parse(
            "vault = memory://x\nparts_in_flight = 4\nparallel_parts = 6\n",
            "p.utl",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.utl line 3: `parallel_parts` is already set on line 2 as `parts_in_flight`"
        );
        let err = Params::parse("vault = memory://x\nparallel_parts = 0\n", "p.utl").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.utl line 2: parallel_parts `0` is not a number from 1 to 1024"
        );
    }

    #[test]
    fn sizes_are_the_strata_configuration_sizes() {
        let p = Params::parse(
            "vault = memory://x\npart_size = 512k\nsegment_size = 1TiB\n",
            "p.utl",
        )
        .unwrap();
        assert_eq!(p.writer.part_size, Some(ByteSize(512 << 10)));
        assert_eq!(p.writer.segment_size, Some(ByteSize(1 << 40)));
        assert_eq!(p.writer_config().segment_size, 1 << 40);
        let p = Params::parse("vault = memory://x\npart_size = 16MB\n", "p.utl").unwrap();
        assert_eq!(p.writer_config().part_size, 16 << 20);

        for (value, message) in [
            ("0", "part_size `0` must be more than 0 bytes"),
            ("0MiB", "part_size `0MiB` must be more than 0 bytes"),
            ("1.5GiB", "1536MiB"),
            ("16 parsecs", "unknown size unit `parsecs`"),
            ("big", "`big` is not a size (write 16MiB, 4GiB or 1048576)"),
            ("99999999TiB", "too large"),
        ] {
            let err = Params::parse(
                &format!("vault = memory://x\npart_size = {value}\n"),
                "p.utl",
            )
            .unwrap_err();
            assert!(err.to_string().starts_with("p.utl line 2: "), "{err}");
            assert!(err.to_string().contains(message), "{value}: {err}");
            assert!(
                err.hint_text().unwrap().contains("line 2 of p.utl"),
                "{err:?}"
            );
        }
    }

    /// The file `strata` reads, with an engine section hdbbackint has no use for.
    const SHARED_CONFIG: &str = r#"
[vault]
url = "s3://b/p"
key_file = "/etc/strata/vault.key"
[vault.options]
aws_region = "x"
[catalog]
path = "/tmp/c.db"
[writer]
part_size = "4MiB"
parts_in_flight = 3
segment_size = "2GiB"
[postgres.main]
connection = "host=/var/run/postgresql"
data_directory = "/srv/pg"
"#;

    #[test]
    fn the_strata_configuration_is_read_with_the_agents_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, SHARED_CONFIG).unwrap();
        let common = CommonConfig::load(&path).unwrap();

        let p = Params::parse(&format!("config = {}\n", path.display()), "p.utl").unwrap();
        assert_eq!(p.writer, common.writer);
        assert_eq!(p.vault.url, "s3://b/p");
        assert_eq!(
            p.vault.key_file,
            Some(PathBuf::from("/etc/strata/vault.key"))
        );
        assert_eq!(p.catalog, common.catalog.path);
        let w = p.writer_config();
        assert_eq!(w.part_size, 4 << 20);
        assert_eq!(w.parts_in_flight, 3);
        assert_eq!(w.segment_size, 2 << 30);

        // The parameter file wins, key by key, whatever name it uses.
        let text = format!(
            "config = {}\nparallel_parts = 8\nvault.aws_region = y\n",
            path.display()
        );
        let p = Params::parse(&text, "p.utl").unwrap();
        assert_eq!(p.writer.parts_in_flight, Some(8));
        assert_eq!(p.writer.part_size, Some(ByteSize(4 << 20)));
        assert_eq!(p.vault.options["aws_region"], "y");
        assert_eq!(p.deprecations.len(), 1);
    }

    #[test]
    fn mistakes_in_the_strata_configuration_name_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        // parallel_parts is the parameter file's old name only; the TOML
        // [writer] section has always said parts_in_flight.
        std::fs::write(
            &path,
            "[vault]\nurl = \"s3://b/p\"\n[writer]\nparallel_parts = 4\n",
        )
        .unwrap();
        let err = Params::parse(&format!("config = {}\n", path.display()), "p.utl").unwrap_err();
        let origin = path.display().to_string();
        assert_eq!(err.kind(), strata_core::ErrorKind::Config);
        assert!(
            err.to_string().starts_with(&format!(
                "the configuration {origin} is invalid at line 4, column 1: unknown field `parallel_parts`"
            )),
            "{err}"
        );
        assert!(
            err.hint_text()
                .unwrap()
                .starts_with(&format!("fix line 4 of {origin}")),
            "{err:?}"
        );

        let err = Params::parse("config = /nonexistent/strata.toml\n", "p.utl").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read the configuration /nonexistent/strata.toml"),
            "{err}"
        );
        assert!(err.hint_text().unwrap().contains("`vault =`"), "{err:?}");
    }
}

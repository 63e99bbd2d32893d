//! The configuration every Strata program shares: the file format, its
//! common sections, and the one way sizes are written.
//!
//! `strata` and `hdbbackint` read the same `/etc/strata/strata.toml`
//! ([`DEFAULT_PATH`]) through [`load`] and [`parse`], with the same section
//! types:
//!
//! ```toml
//! [vault]                              # vault::VaultConfig
//! url = "s3://backups/prod"            # or file:///var/lib/strata/vault, az://..., gs://...
//! key_file = "/etc/strata/vault.key"   # only for encrypted vaults
//! [vault.options]                      # object_store options, over the environment
//! aws_region = "eu-west-1"
//!
//! [catalog]                            # CatalogConfig
//! path = "/var/lib/strata/catalog.db"  # the local index; a cache of the vault
//!
//! [writer]                             # WriterSettings
//! part_size = "16MiB"                  # a ByteSize
//! compression_level = 3
//! workers = 0                          # 0 = every core
//! parts_in_flight = 4
//! segment_size = "4GiB"
//!
//! [postgres.main]                      # engine sections: read by the programs that run the engine
//! connection = "host=/var/run/postgresql user=postgres"
//! ```
//!
//! Every key inside a section is checked: an unknown one is an error that
//! names the file, the line and the column, so a typo never silently falls
//! back to a default. [`CommonConfig`] reads the common sections and leaves
//! engine sections (any other top-level table) to the programs that know
//! them; `strata` composes the same section types with its engine sections
//! and rejects any other top-level key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::vault::VaultConfig;
use crate::vault::writer::WriterConfig;

/// The configuration file a Strata program reads when none is named.
pub const DEFAULT_PATH: &str = "/etc/strata/strata.toml";

/// What sizes look like, for error messages.
const SIZE_EXAMPLES: &str = "16MiB, 4GiB or 1048576";

/// A byte count: a whole number of bytes, or a whole number with a unit.
///
/// Units, in any letter case and with or without a space before them:
/// `B` (bytes), `k`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`,
/// `T`/`TB`/`TiB`. Every unit is **binary**: `KB` means the same as `KiB`
/// (1024 bytes), `GB` the same as `GiB` (2^30), as in PostgreSQL's and most
/// storage tools' settings; nothing here counts in powers of 1000. Fractions
/// (`1.5GiB`) and negative numbers are refused; so is a size above
/// `u64::MAX` bytes.
///
/// In TOML a size is either an integer (`segment_size = 1073741824`) or a
/// string (`part_size = "16MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// The units a size may carry, largest first, with their factors.
const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];

fn unit_shift(unit: &str) -> Option<u32> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let hint = "sizes are bytes, or a whole number with B, KiB, MiB, GiB or TiB \
                    (k/KB, M/MB, G/GB, T/TB mean the same: powers of 1024)";
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let unit = unit.trim();
        if digits.is_empty() {
            return Err(
                Error::config(format!("`{text}` is not a size (write {SIZE_EXAMPLES})")).hint(hint),
            );
        }
        if unit.starts_with(['.', ',']) {
            return Err(Error::config(format!(
                "`{text}` is not a whole number (write the size in a smaller unit, e.g. 1536MiB for 1.5GiB)"
            ))
            .hint(hint));
        }
        let Some(shift) = unit_shift(unit) else {
            return Err(Error::config(format!(
                "unknown size unit `{unit}` in `{text}` (write {SIZE_EXAMPLES})"
            ))
            .hint(hint));
        };
        let too_large = || {
            Error::config(format!(
                "size `{text}` is too large (at most {} bytes, about 16 EiB)",
                u64::MAX
            ))
            .hint(hint)
        };
        let number: u64 = digits.parse().map_err(|_| too_large())?;
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(too_large)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly (`16MiB`,
    /// `1536KiB`, `1000`), so the text parses back to the same size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, shift) in UNITS {
                if self.0.trailing_zeros() >= shift {
                    return write!(f, "{}{unit}", self.0 >> shift);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a size such as \"16MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(n).map(ByteSize).map_err(|_| {
                    E::custom(format!(
                        "a size cannot be negative ({n}); write {SIZE_EXAMPLES}"
                    ))
                })
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> std::result::Result<ByteSize, E> {
                Err(E::custom(format!(
                    "a size is a whole number of bytes, not {n}; write {SIZE_EXAMPLES}"
                )))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                text: &str,
            ) -> std::result::Result<ByteSize, E> {
                text.parse().map_err(|e: Error| E::custom(e.message()))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// The `[writer]` section: how backups are cut, compressed and uploaded.
/// Every field is optional; an unset one keeps [`WriterConfig`]'s default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    /// Raw bytes per independently compressed part (`"16MiB"`).
    pub part_size: Option<ByteSize>,
    /// zstd level of every part.
    pub compression_level: Option<i32>,
    /// Compression threads; 0 = every core.
    pub workers: Option<usize>,
    /// Uploads in flight per stream (hdbbackint's parameter file also
    /// accepts the older name `parallel_parts`).
    pub parts_in_flight: Option<usize>,
    /// Largest segment object a stream is split into (`"4GiB"`).
    pub segment_size: Option<ByteSize>,
}

impl WriterSettings {
    /// Overrides the fields of `config` that these settings set. The writer
    /// checks the ranges when a backup starts.
    pub fn apply_to(&self, config: &mut WriterConfig) {
        if let Some(size) = self.part_size {
            // A size beyond usize is out of the writer's range either way.
            config.part_size = usize::try_from(size.0).unwrap_or(usize::MAX);
        }
        if let Some(level) = self.compression_level {
            config.compression_level = level;
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(n) = self.parts_in_flight {
            config.parts_in_flight = n;
        }
        if let Some(size) = self.segment_size {
            config.segment_size = size.0;
        }
    }

    /// The writer's defaults with these settings applied.
    pub fn writer_config(&self) -> WriterConfig {
        let mut config = WriterConfig::default();
        self.apply_to(&mut config);
        config
    }

    /// These settings, with the fields they leave unset taken from `fallback`.
    pub fn or(&self, fallback: &WriterSettings) -> WriterSettings {
        WriterSettings {
            part_size: self.part_size.or(fallback.part_size),
            compression_level: self.compression_level.or(fallback.compression_level),
            workers: self.workers.or(fallback.workers),
            parts_in_flight: self.parts_in_flight.or(fallback.parts_in_flight),
            segment_size: self.segment_size.or(fallback.segment_size),
        }
    }
}

/// The `[catalog]` section: where the local catalog index lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The SQLite index file; see [`CatalogConfig::index_path`] for the default.
    pub path: Option<PathBuf>,
}

impl CatalogConfig {
    /// The index file: the configured path, or [`default_index_path`].
    pub fn index_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(default_index_path)
    }
}

/// Where the catalog index lives when none is configured:
/// `/var/lib/strata/catalog.db` for root (and for a user without `HOME`),
/// `~/.local/state/strata/catalog.db` for every other user, so that an
/// engine's OS user (`postgres`, `<sid>adm`) keeps an index it can write.
pub fn default_index_path() -> PathBuf {
    index_path_for(std::env::var_os("HOME").map(PathBuf::from), is_root())
}

/// The rule of [`default_index_path`] for a given `HOME` and user.
fn index_path_for(home: Option<PathBuf>, root: bool) -> PathBuf {
    match home {
        Some(home) if !root => home.join(".local/state/strata/catalog.db"),
        _ => PathBuf::from("/var/lib/strata/catalog.db"),
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

/// The sections of a configuration file that every Strata program reads.
///
/// Other top-level tables are engine sections (`[postgres.main]`): they are
/// left to the programs that run those engines, and their names are kept in
/// `engine_sections`. A top-level key that is not a table is no section at
/// all and is refused.
#[derive(Debug, Clone, Default)]
pub struct CommonConfig {
    /// `[vault]`: where backups go.
    pub vault: VaultConfig,
    /// `[catalog]`: the local index.
    pub catalog: CatalogConfig,
    /// `[writer]`: the streaming writer's settings.
    pub writer: WriterSettings,
    /// The top-level tables this type did not read, in file order.
    pub engine_sections: Vec<String>,
}

impl<'de> Deserialize<'de> for CommonConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct CommonVisitor;
        impl<'de> Visitor<'de> for CommonVisitor {
            type Value = CommonConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a Strata configuration")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<CommonConfig, A::Error> {
                let mut config = CommonConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "vault" => config.vault = map.next_value()?,
                        "catalog" => config.catalog = map.next_value()?,
                        "writer" => config.writer = map.next_value()?,
                        _ => {
                            let value: EngineSection = map.next_value()?;
                            if !value.0 {
                                return Err(serde::de::Error::custom(format!(
                                    "`{key}` is not a section; top-level keys are sections such as [vault], [catalog], [writer] or an engine's"
                                )));
                            }
                            config.engine_sections.push(key);
                        }
                    }
                }
                Ok(config)
            }
        }
        d.deserialize_map(CommonVisitor)
    }
}

/// Skips a value, remembering whether it was a table.
struct EngineSection(bool);

impl<'de> Deserialize<'de> for EngineSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct SectionVisitor;
        impl<'de> Visitor<'de> for SectionVisitor {
            type Value = EngineSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a section")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<EngineSection, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(EngineSection(true))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<EngineSection, E> {
                Ok(EngineSection(false))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<EngineSection, E> {
                Ok(EngineSection(false))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<EngineSection, E> {
                Ok(EngineSection(false))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<EngineSection, E> {
                Ok(EngineSection(false))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<EngineSection, E> {
                Ok(EngineSection(false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<EngineSection, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(EngineSection(false))
            }
        }
        d.deserialize_any(SectionVisitor)
    }
}

impl CommonConfig {
    /// Reads the common sections of a configuration file (see [`load`]).
    pub fn load(path: &Path) -> Result<CommonConfig> {
        load(path)
    }

    /// Parses the common sections of configuration text (see [`parse`]).
    pub fn parse(text: &str, origin: &str) -> Result<CommonConfig> {
        parse(text, origin)
    }
}

/// Reads a configuration file's text. A file that cannot be read is a
/// configuration error naming it; callers may replace the hint with the
/// way to name another file in their own setting.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "cannot read the configuration {}: {e}",
            path.display()
        ))
        .hint("check the path, and that this user may read the file")
    })
}

/// Reads and parses a configuration file into `T` ([`CommonConfig`], or a
/// program's own type built from the section types of this module).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    parse(&read_file(path)?, &path.display().to_string())
}

/// Parses configuration text into `T`; `origin` names the text in errors.
///
/// A mistake is a configuration error whose message names `origin`, the
/// line and the column and says what is wrong (`unknown field `ulr`,
/// expected one of `url`, `options`, `key_file``), with the hint
/// `fix line N of ORIGIN`.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => located(
                text,
                origin,
                span.start,
                &message,
                message
                    .starts_with("unknown field")
                    .then_some(": correct the key's spelling or remove it"),
            ),
            None => Error::config(format!("the configuration {origin} is invalid: {message}"))
                .hint(format!("fix {origin}")),
        }
    })
}

/// The configuration error for a mistake at byte `offset` of `text` (the
/// configuration `origin`): its message names the line and column, and the
/// hint says `fix line N of ORIGIN`. For checks made after parsing, with
/// the offset from a [`toml::Spanned`] value.
pub fn invalid_at(text: &str, origin: &str, offset: usize, message: &str) -> Error {
    located(text, origin, offset, message, None)
}

fn located(text: &str, origin: &str, offset: usize, message: &str, advice: Option<&str>) -> Error {
    let (line, column) = line_and_column(text, offset);
    Error::config(format!(
        "the configuration {origin} is invalid at line {line}, column {column}: {message}"
    ))
    .hint(format!(
        "fix line {line} of {origin}{}",
        advice.unwrap_or("")
    ))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(text: &str) -> u64 {
        text.parse::<ByteSize>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .0
    }

    fn size_error(text: &str) -> Error {
        text.parse::<ByteSize>()
            .expect_err(&format!("`{text}` should be refused"))
    }

    #[test]
    fn every_unit_is_binary() {
        assert_eq!(size("0"), 0);
        assert_eq!(size("1048576"), 1 << 20);
        for b in ["7B", "7b", "7 B"] {
            assert_eq!(size(b), 7, "{b}");
        }
        for k in ["3k", "3K", "3KB", "3kB", "3KiB", "3 kib"] {
            assert_eq!(size(k), 3 << 10, "{k}");
        }
        for m in ["16M", "16MB", "16MiB", "16 mib"] {
            assert_eq!(size(m), 16 << 20, "{m}");
        }
        for g in ["4G", "4GB", "4GiB", " 4 GiB "] {
            assert_eq!(size(g), 4 << 30, "{g}");
        }
        for t in ["2T", "2TB", "2TiB", "2tib"] {
            assert_eq!(size(t), 2 << 40, "{t}");
        }
    }

    #[test]
    fn sizes_too_large_are_refused() {
        assert_eq!(size("18446744073709551615"), u64::MAX);
        assert_eq!(size("16777215TiB"), 16_777_215 << 40);
        for text in [
            "18446744073709551616",
            "16777216TiB",
            "99999999999999999999999GiB",
        ] {
            let err = size_error(text);
            assert!(err.to_string().contains("too large"), "{text}: {err}");
            assert!(err.to_string().contains(&u64::MAX.to_string()), "{err}");
        }
    }

    #[test]
    fn bad_sizes_say_what_to_write() {
        let err = size_error("12 parsecs");
        assert_eq!(
            err.to_string(),
            "unknown size unit `parsecs` in `12 parsecs` (write 16MiB, 4GiB or 1048576)"
        );
        assert!(err.hint_text().unwrap().contains("powers of 1024"));
        for text in ["", "big", "MiB", "-1", "0x10"] {
            let err = size_error(text);
            assert!(err.to_string().contains("16MiB"), "{text}: {err}");
        }
        let err = size_error("1.5GiB");
        assert!(err.to_string().contains("1536MiB"), "{err}");
        let err = size_error("4PiB");
        assert!(err.to_string().contains("unknown size unit `PiB`"), "{err}");
    }

    #[test]
    fn sizes_display_in_a_unit_that_parses_back() {
        for (bytes, text) in [
            (0, "0"),
            (1000, "1000"),
            (1536 << 10, "1536KiB"),
            (16 << 20, "16MiB"),
            (4 << 30, "4GiB"),
            (3 << 40, "3TiB"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(size(text), bytes);
        }
    }

    #[test]
    fn sizes_in_toml_are_integers_or_strings() {
        let w: WriterSettings =
            parse("part_size = \"8MiB\"\nsegment_size = 1073741824\n", "t").unwrap();
        assert_eq!(w.part_size, Some(ByteSize(8 << 20)));
        assert_eq!(w.segment_size, Some(ByteSize(1 << 30)));
        let err = parse::<WriterSettings>("part_size = -5\n", "t").unwrap_err();
        assert!(err.to_string().contains("cannot be negative"), "{err}");
        let err = parse::<WriterSettings>("part_size = 1.5\n", "t").unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        let err = parse::<WriterSettings>("part_size = \"2 XB\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("unknown size unit `XB`"), "{err}");
    }

    #[test]
    fn writer_settings_apply_over_the_defaults() {
        let unset = WriterSettings::default();
        assert_eq!(unset.writer_config(), WriterConfig::default());
        let set = WriterSettings {
            part_size: Some(ByteSize(8 << 20)),
            compression_level: Some(9),
            workers: Some(2),
            parts_in_flight: Some(6),
            segment_size: Some(ByteSize(1 << 30)),
        };
        let config = set.writer_config();
        assert_eq!(config.part_size, 8 << 20);
        assert_eq!(config.compression_level, 9);
        assert_eq!(config.workers, 2);
        assert_eq!(config.parts_in_flight, 6);
        assert_eq!(config.segment_size, 1 << 30);
        let partial = WriterSettings {
            compression_level: Some(1),
            ..Default::default()
        };
        let merged = partial.or(&set);
        assert_eq!(merged.compression_level, Some(1));
        assert_eq!(merged.part_size, Some(ByteSize(8 << 20)));
        assert_eq!(merged.parts_in_flight, Some(6));
    }

    #[test]
    fn the_catalog_path_is_configured_or_per_user() {
        let configured = CatalogConfig {
            path: Some(PathBuf::from("/tmp/c.db")),
        };
        assert_eq!(configured.index_path(), PathBuf::from("/tmp/c.db"));
        let home = Some(PathBuf::from("/home/pg"));
        assert_eq!(
            index_path_for(home.clone(), false),
            PathBuf::from("/home/pg/.local/state/strata/catalog.db")
        );
        let system = PathBuf::from("/var/lib/strata/catalog.db");
        assert_eq!(index_path_for(home, true), system, "root");
        assert_eq!(index_path_for(None, false), system, "no HOME");
    }

    #[test]
    fn common_sections_are_read_and_engine_sections_left_alone() {
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
parts_in_flight = 3
[postgres.main]
connection = "host=/tmp"
data_directory = "/srv/pg"
[sqlserver]
anything = ["goes", 1]
"#;
        let config = CommonConfig::parse(text, "strata.toml").unwrap();
        assert_eq!(config.vault.url, "s3://bucket/prefix");
        assert_eq!(config.vault.options["aws_region"], "eu-west-1");
        assert_eq!(config.catalog.index_path(), PathBuf::from("/tmp/c.db"));
        assert_eq!(config.writer.part_size, Some(ByteSize(8 << 20)));
        assert_eq!(config.writer.writer_config().parts_in_flight, 3);
        assert_eq!(config.engine_sections, ["postgres", "sqlserver"]);
    }

    #[test]
    fn mistakes_name_the_file_line_and_column() {
        let text = "[vault]\nurl = \"file:///v\"\n[writer]\nparts_in_fligth = 4\n";
        let err = CommonConfig::parse(text, "/etc/strata/strata.toml").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(
            err.to_string().starts_with(
                "the configuration /etc/strata/strata.toml is invalid at line 4, column 1: unknown field `parts_in_fligth`, expected one of"
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`parts_in_flight`"), "{err}");
        assert!(
            err.hint_text()
                .unwrap()
                .starts_with("fix line 4 of /etc/strata/strata.toml: correct the key's spelling"),
            "{err:?}"
        );

        let text = "[writer]\npart_size = \"16 MB\"\nsegment_size = \"4 GiBs\"\n";
        let err = CommonConfig::parse(text, "s.toml").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 3, column 16: unknown size unit `GiBs`"),
            "{err}"
        );
        assert_eq!(err.hint_text(), Some("fix line 3 of s.toml"));

        let err = CommonConfig::parse("url = \"s3://b\"\n[vault]\n", "s.toml").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(err.to_string().contains("`url` is not a section"), "{err}");

        let err = CommonConfig::parse("[vault\n", "s.toml").unwrap_err();
        assert!(
            err.to_string().contains("s.toml is invalid at line 1"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = CommonConfig::load(Path::new("/nonexistent/strata.toml")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(
            err.to_string()
                .contains("cannot read the configuration /nonexistent/strata.toml"),
            "{err}"
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\nçd = 1\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 3), (2, 1));
        assert_eq!(line_and_column(text, 5), (2, 2));
        assert_eq!(line_and_column(text, 99), (3, 1));
    }
}

//! The Backint input and output file formats (Backint 1.04, 1.50, 1.50.2).
//!
//! Both files are UTF-8 text, one entry per line. A line that starts with a
//! keyword (`#PIPE`, `#EBID`, ...) is an entry; every other line, blank lines
//! included, is a comment. Parameters are separated by spaces; a parameter
//! containing a space is quoted with `"`, and inside a parameter `\"` stands
//! for a literal `"`. A backslash escapes a double quote only: any other
//! backslash is part of the value. [`tokenize`] and [`quote`] implement these
//! rules in both directions, so every name HANA sends comes back byte for byte.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

/// A Backint interface version such as `1.04`, `1.50` or `1.50.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// The major number (1).
    pub major: u32,
    /// The minor number (4 for 1.04, 50 for 1.50).
    pub minor: u32,
    /// The patch number (2 for 1.50.2), 0 when absent.
    pub patch: u32,
}

impl ApiVersion {
    /// Backint 1.04, the version HANA 2.0 speaks by default.
    pub const V1_04: ApiVersion = ApiVersion::new(1, 4, 0);
    /// Backint 1.50: creation timestamps in inquire output, `#PIPE` size hints.
    pub const V1_50: ApiVersion = ApiVersion::new(1, 50, 0);
    /// Backint 1.50.2: adds `#TOOLOPTION`.
    pub const V1_50_2: ApiVersion = ApiVersion::new(1, 50, 2);

    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        ApiVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `1.50`, `1.04`, `1.50.2`, optionally preceded by `backint `
    /// (any case). Minor numbers keep HANA's two-digit form: `1.5` is 1.50.
    pub fn parse(text: &str) -> Option<ApiVersion> {
        let text = text.trim();
        let text = match text.get(..8) {
            Some(head) if head.eq_ignore_ascii_case("backint ") => text[8..].trim(),
            _ => text,
        };
        let mut parts = text.split('.');
        let major: u32 = parts.next()?.trim().parse().ok()?;
        let minor_text = parts.next().unwrap_or("0").trim();
        let mut minor: u32 = minor_text.parse().ok()?;
        if minor_text.len() == 1 {
            minor *= 10;
        }
        let patch: u32 = match parts.next() {
            Some(p) => p.trim().parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ApiVersion::new(major, minor, patch))
    }

    /// The version this agent answers with when the caller announced `caller`:
    /// the caller's own version when this agent supports it, otherwise the
    /// highest supported version that is not above the caller's (1.04 at least).
    pub fn negotiate(caller: Option<ApiVersion>) -> ApiVersion {
        let supported = [Self::V1_04, Self::V1_50, Self::V1_50_2];
        match caller {
            None => Self::V1_04,
            Some(v) if supported.contains(&v) => v,
            Some(v) => supported
                .iter()
                .rev()
                .copied()
                .find(|s| *s <= v)
                .unwrap_or(Self::V1_04),
        }
    }

    /// Whether inquire output carries creation timestamps (1.50 and later).
    pub fn has_timestamps(self) -> bool {
        self >= Self::V1_50
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// Why a line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// What is wrong, for the log and the output comment.
    pub message: String,
    /// The object named on the line, as far as it could be read, so the
    /// `#ERROR` result can still name it.
    pub name: Option<String>,
}

/// Splits a line into parameters by the Backint rules (see the module docs).
///
/// The rules cannot express a value that ends in a backslash (`"a\"` reads
/// as an escaped quote), so when a quoted value would otherwise be left
/// unterminated, its last `\"` is taken as a literal backslash and the
/// closing quote. A quote that is never closed is an error.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let mut token = String::new();
        if chars[i] == '"' {
            let start = i + 1;
            let mut j = start;
            let mut last_escape: Option<(usize, usize)> = None;
            let mut closed = false;
            while j < chars.len() {
                match chars[j] {
                    '\\' if chars.get(j + 1) == Some(&'"') => {
                        last_escape = Some((j, token.len()));
                        token.push('"');
                        j += 2;
                    }
                    '"' => {
                        closed = true;
                        j += 1;
                        break;
                    }
                    c => {
                        token.push(c);
                        j += 1;
                    }
                }
            }
            if !closed {
                let Some((at, len)) = last_escape else {
                    return Err(format!("unterminated quote in `{}`", line.trim()));
                };
                token.truncate(len);
                token.push('\\');
                j = at + 2;
            }
            i = j;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && chars.get(i + 1) == Some(&'"') {
                    token.push('"');
                    i += 2;
                } else {
                    token.push(chars[i]);
                    i += 1;
                }
            }
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// Quotes a parameter for an output file: `"` + value with every `"`
/// written as `\"` + `"`. Nothing else is escaped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One line of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    /// `#SOFTWAREID "backint <version>" "<caller software>"`.
    SoftwareId {
        /// The announced interface version, if it could be read.
        version: Option<ApiVersion>,
        /// The caller's software, e.g. `HANA HDB server 2.00.071.00.1687900751`.
        software: Option<String>,
    },
    /// `#PIPE <name> [<size>]`: a FIFO HANA created (backup) .
    Pipe {
        /// The FIFO's path.
        name: String,
        /// HANA's size hint (an estimate or upper bound), 1.50 and later.
        size: Option<u64>,
    },
    /// `#FILE <name> [<size>]`: a regular file to back up.
    File {
        /// The file's path.
        name: String,
        /// Size hint.
        size: Option<u64>,
    },
    /// `#EBID <ebid> [<name> [<dest>]]`: one stored version.
    Ebid {
        /// The external backup id this agent returned in `#SAVED`.
        ebid: String,
        /// The object name it was saved under (optional in inquire).
        name: Option<String>,
        /// Where to restore it, when not to `name`.
        dest: Option<String>,
    },
    /// `#NULL [<name> [<dest>]]`: the newest version of `name` (restore),
    /// every version (inquire), or everything (inquire without a name).
    Null {
        /// The object name.
        name: Option<String>,
        /// Where to restore it, when not to `name`.
        dest: Option<String>,
    },
    /// `#TOOLOPTION <text>` (1.50.2): HANA passes the `TOOLOPTION` string of
    /// the SQL statement through; accepted and logged.
    ToolOption(String),
    /// A comment, a blank line or an unknown keyword.
    Comment,
}

impl InputLine {
    /// The object this line is about (for result lines), if any.
    pub fn object_name(&self) -> Option<&str> {
        match self {
            InputLine::Pipe { name, .. } | InputLine::File { name, .. } => Some(name),
            InputLine::Ebid { name, .. } | InputLine::Null { name, .. } => name.as_deref(),
            _ => None,
        }
    }

    /// The line's keyword (`#PIPE`, `#EBID`, ...), empty for a comment.
    pub fn keyword(&self) -> &'static str {
        match self {
            InputLine::SoftwareId { .. } => "#SOFTWAREID",
            InputLine::Pipe { .. } => "#PIPE",
            InputLine::File { .. } => "#FILE",
            InputLine::Ebid { .. } => "#EBID",
            InputLine::Null { .. } => "#NULL",
            InputLine::ToolOption(_) => "#TOOLOPTION",
            InputLine::Comment => "",
        }
    }

    /// Whether the line names a backup object (as opposed to a header or comment).
    pub fn is_object(&self) -> bool {
        matches!(
            self,
            InputLine::Pipe { .. }
                | InputLine::File { .. }
                | InputLine::Ebid { .. }
                | InputLine::Null { .. }
        )
    }
}

fn parse_size(keyword: &str, name: &str, token: Option<&String>) -> Result<Option<u64>, LineError> {
    match token {
        None => Ok(None),
        Some(t) => t.parse::<u64>().map(Some).map_err(|_| LineError {
            message: format!("{keyword} size `{t}` for {name} is not a whole number of bytes"),
            name: Some(name.to_owned()),
        }),
    }
}

/// Parses one line of an input file. Unknown keywords and free text are
/// comments; extra parameters after the known ones are tolerated.
pub fn parse_line(line: &str) -> Result<InputLine, LineError> {
    let trimmed = line.trim_start();
    if !trimmed.starts_with('#') {
        return Ok(InputLine::Comment);
    }
    let keyword_end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
    let keyword = trimmed[1..keyword_end].to_ascii_uppercase();
    let known = matches!(
        keyword.as_str(),
        "SOFTWAREID" | "PIPE" | "FILE" | "EBID" | "NULL" | "TOOLOPTION"
    );
    if !known {
        return Ok(InputLine::Comment);
    }
    let rest = &trimmed[keyword_end..];
    if keyword == "TOOLOPTION" {
        let value = match tokenize(rest) {
            Ok(tokens) if tokens.len() == 1 => tokens.into_iter().next().unwrap_or_default(),
            _ => rest.trim().to_owned(),
        };
        return Ok(InputLine::ToolOption(value));
    }
    let tokens = tokenize(rest).map_err(|message| LineError {
        message,
        name: rest
            .trim()
            .trim_matches('"')
            .split('"')
            .next()
            .map(str::to_owned)
            .filter(|n| !n.is_empty()),
    })?;
    let missing = |what: &str| LineError {
        message: format!("#{keyword} without {what}"),
        name: None,
    };
    match keyword.as_str() {
        "SOFTWAREID" => Ok(InputLine::SoftwareId {
            version: tokens.first().and_then(|t| ApiVersion::parse(t)),
            software: tokens.get(1).cloned(),
        }),
        "PIPE" | "FILE" => {
            let name = tokens.first().cloned().ok_or_else(|| missing("a name"))?;
            if name.is_empty() {
                return Err(missing("a name"));
            }
            let size = parse_size(&format!("#{keyword}"), &name, tokens.get(1))?;
            Ok(if keyword == "PIPE" {
                InputLine::Pipe { name, size }
            } else {
                InputLine::File { name, size }
            })
        }
        "EBID" => {
            let ebid = tokens
                .first()
                .cloned()
                .filter(|e| !e.is_empty())
                .ok_or_else(|| missing("an external backup id"))?;
            Ok(InputLine::Ebid {
                ebid,
                name: tokens.get(1).cloned().filter(|n| !n.is_empty()),
                dest: tokens.get(2).cloned().filter(|n| !n.is_empty()),
            })
        }
        "NULL" => Ok(InputLine::Null {
            name: tokens.first().cloned().filter(|n| !n.is_empty()),
            dest: tokens.get(1).cloned().filter(|n| !n.is_empty()),
        }),
        _ => Ok(InputLine::Comment),
    }
}

/// A parsed input file.
#[derive(Debug, Clone, Default)]
pub struct InputFile {
    /// The version HANA announced in `#SOFTWAREID`, if any.
    pub version: Option<ApiVersion>,
    /// HANA's software string, if any.
    pub software: Option<String>,
    /// `#TOOLOPTION` values, in order.
    pub tool_options: Vec<String>,
    /// The object lines in input order: (1-based line number, parsed line or error).
    pub entries: Vec<(usize, Result<InputLine, LineError>)>,
    /// Lines that are neither blank nor a known keyword (free text, an
    /// unknown `#KEYWORD`): tolerated, as newer HANA versions may add
    /// keywords, but logged with their line number so that a garbled input
    /// file never passes unnoticed.
    pub ignored: Vec<(usize, String)>,
}

impl InputFile {
    /// Parses a whole input file. Comments and blank lines are dropped;
    /// header lines fill the fields; object lines (and malformed lines) are
    /// kept in order.
    pub fn parse(text: &str) -> InputFile {
        let mut file = InputFile::default();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(InputLine::SoftwareId { version, software }) => {
                    file.version = file.version.or(version);
                    file.software = file.software.or(software);
                }
                Ok(InputLine::ToolOption(value)) => file.tool_options.push(value),
                Ok(InputLine::Comment) => {
                    if !line.trim().is_empty() {
                        file.ignored.push((index + 1, line.to_owned()));
                    }
                }
                other => file.entries.push((index + 1, other)),
            }
        }
        file
    }
}

/// Formats a creation time as Backint 1.50 wants it: UTC, exactly three
/// fractional digits, `Z` (`2026-11-22T00:15:00.120Z`).
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One line of an output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLine {
    /// `#SOFTWAREID "backint <version>" "<product>"`: always the first line.
    SoftwareId {
        /// The negotiated interface version.
        version: ApiVersion,
        /// This agent's product and version.
        product: String,
    },
    /// `#SAVED "<ebid>" "<name>" <size>`.
    Saved {
        /// The new external backup id.
        ebid: String,
        /// The object name as HANA sent it.
        name: String,
        /// Bytes read from the pipe.
        size: u64,
    },
    /// `#RESTORED "<ebid>" "<name>"`.
    Restored {
        /// The version that was restored.
        ebid: String,
        /// The object name.
        name: String,
    },
    /// `#BACKUP "<ebid>" "<name>" ["<created>"]`.
    Backup {
        /// A stored version.
        ebid: String,
        /// Its object name.
        name: String,
        /// Its creation time, written for Backint 1.50 and later.
        created: Option<DateTime<Utc>>,
    },
    /// `#DELETED "<ebid>" "<name>"`.
    Deleted {
        /// The deleted version.
        ebid: String,
        /// Its object name.
        name: String,
    },
    /// `#NOTFOUND` followed by whatever identified the request
    /// (`"<name>"`, `"<ebid>" "<name>"`, `"<ebid>"` or nothing).
    NotFound(Vec<String>),
    /// `#ERROR` followed by whatever identified the request.
    Error(Vec<String>),
    /// A free-text line (never starting with `#`), e.g. the reason for an error.
    Comment(String),
}

impl fmt::Display for OutputLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputLine::SoftwareId { version, product } => write!(
                f,
                "#SOFTWAREID {} {}",
                quote(&format!("backint {version}")),
                quote(product)
            ),
            OutputLine::Saved { ebid, name, size } => {
                write!(f, "#SAVED {} {} {size}", quote(ebid), quote(name))
            }
            OutputLine::Restored { ebid, name } => {
                write!(f, "#RESTORED {} {}", quote(ebid), quote(name))
            }
            OutputLine::Backup {
                ebid,
                name,
                created,
            } => {
                write!(f, "#BACKUP {} {}", quote(ebid), quote(name))?;
                if let Some(at) = created {
                    write!(f, " {}", quote(&format_timestamp(*at)))?;
                }
                Ok(())
            }
            OutputLine::Deleted { ebid, name } => {
                write!(f, "#DELETED {} {}", quote(ebid), quote(name))
            }
            OutputLine::NotFound(fields) => write_fields(f, "#NOTFOUND", fields),
            OutputLine::Error(fields) => write_fields(f, "#ERROR", fields),
            OutputLine::Comment(text) => {
                // One line, never mistaken for a keyword.
                let text = text.replace(['\r', '\n'], " ");
                write!(f, "{}", text.trim_start_matches('#'))
            }
        }
    }
}

fn write_fields(f: &mut fmt::Formatter<'_>, keyword: &str, fields: &[String]) -> fmt::Result {
    f.write_str(keyword)?;
    for field in fields {
        write!(f, " {}", quote(field))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_follows_the_spec_examples() {
        assert_eq!(
            tokenize("/var/tmp/backup_Monday_cw47_2012").unwrap(),
            ["/var/tmp/backup_Monday_cw47_2012"]
        );
        assert_eq!(
            tokenize(r#""/var/tmp/backup Monday cw47 2012""#).unwrap(),
            ["/var/tmp/backup Monday cw47 2012"]
        );
        assert_eq!(
            tokenize(r#""Hb12\"NAB" "/var/tmp/myTool.#YSOwa""#).unwrap(),
            ["Hb12\"NAB", "/var/tmp/myTool.#YSOwa"]
        );
        // A backslash escapes a double quote only.
        assert_eq!(
            tokenize(r#""/object'with\"special\characters.txt""#).unwrap(),
            [r#"/object'with"special\characters.txt"#]
        );
        assert_eq!(tokenize(r#"a\\b"#).unwrap(), [r#"a\\b"#]);
        assert!(tokenize(r#""never closed"#).is_err());
        assert_eq!(tokenize("  a\t b  ").unwrap(), ["a", "b"]);
        assert_eq!(tokenize(r#""""#).unwrap(), [""]);
    }

    #[test]
    fn quoting_round_trips_through_the_tokenizer() {
        for name in [
            "/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/COMPLETE_DATA_BACKUP_databackup_0_1",
            "name with spaces",
            r#"quote " inside and \ backslash"#,
            r#"trailing backslash \"#,
            "ünïcödé #hash",
            r#"\""#,
        ] {
            let quoted = quote(name);
            assert_eq!(tokenize(&quoted).unwrap(), [name], "{quoted}");
        }
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\c""#);
    }

    #[test]
    fn versions_parse_and_negotiate() {
        assert_eq!(ApiVersion::parse("backint 1.04"), Some(ApiVersion::V1_04));
        assert_eq!(ApiVersion::parse("Backint 1.50"), Some(ApiVersion::V1_50));
        assert_eq!(ApiVersion::parse("1.50.2"), Some(ApiVersion::V1_50_2));
        assert_eq!(ApiVersion::parse("backint 1.5"), Some(ApiVersion::V1_50));
        assert_eq!(ApiVersion::parse("backint x"), None);
        assert_eq!(ApiVersion::V1_04.to_string(), "1.04");
        assert_eq!(ApiVersion::V1_50_2.to_string(), "1.50.2");
        assert_eq!(ApiVersion::negotiate(None), ApiVersion::V1_04);
        assert_eq!(
            ApiVersion::negotiate(Some(ApiVersion::V1_50)),
            ApiVersion::V1_50
        );
        assert_eq!(
            ApiVersion::negotiate(ApiVersion::parse("1.06")),
            ApiVersion::V1_04
        );
        assert_eq!(
            ApiVersion::negotiate(ApiVersion::parse("1.60")),
            ApiVersion::V1_50_2
        );
        assert!(!ApiVersion::V1_04.has_timestamps());
        assert!(ApiVersion::V1_50_2.has_timestamps());
    }

    #[test]
    fn the_real_hana_input_file_parses() {
        let text = "#SOFTWAREID \"backint 1.04\" \"HANA HDB server 2.00.071.00.1687900751\"\n\
                    #PIPE \"/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/FULL_BACKUP_databackup_0_1\"\n";
        let file = InputFile::parse(text);
        assert_eq!(file.version, Some(ApiVersion::V1_04));
        assert_eq!(
            file.software.as_deref(),
            Some("HANA HDB server 2.00.071.00.1687900751")
        );
        assert_eq!(file.entries.len(), 1);
        assert_eq!(
            file.entries[0].1,
            Ok(InputLine::Pipe {
                name: "/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/FULL_BACKUP_databackup_0_1"
                    .into(),
                size: None
            })
        );
    }

    #[test]
    fn comments_blank_lines_tooloption_and_sizes() {
        let text = "\u{feff}#SOFTWAREID \"backint 1.50.2\"\n\
                    \n\
                    free text from a tool\n\
                    #TOOLOPTION \"PARAMETER_FILE=/x.cfg\"\n\
                    #FUTUREKEYWORD something\n\
                    #PIPE /var/tmp/p1 1048576\n\
                    #PIPE \"/var/tmp/p 2\" 123.45\n\
                    #FILE /var/tmp/f\n\
                    #pipe /lower/case\n";
        let file = InputFile::parse(text);
        assert_eq!(file.version, Some(ApiVersion::V1_50_2));
        assert_eq!(file.software, None);
        assert_eq!(file.tool_options, ["PARAMETER_FILE=/x.cfg"]);
        assert_eq!(file.entries.len(), 4);
        assert_eq!(file.entries[0].0, 6);
        assert_eq!(
            file.entries[0].1,
            Ok(InputLine::Pipe {
                name: "/var/tmp/p1".into(),
                size: Some(1 << 20)
            })
        );
        let err = file.entries[1].1.clone().unwrap_err();
        assert_eq!(err.name.as_deref(), Some("/var/tmp/p 2"));
        assert!(err.message.contains("123.45"), "{}", err.message);
        assert!(matches!(file.entries[2].1, Ok(InputLine::File { .. })));
        assert!(matches!(file.entries[3].1, Ok(InputLine::Pipe { .. })));
    }

    #[test]
    fn restore_inquire_and_delete_lines() {
        assert_eq!(
            parse_line(r#"#EBID "1707397842003" "/a/b" "/c/d" extra"#).unwrap(),
            InputLine::Ebid {
                ebid: "1707397842003".into(),
                name: Some("/a/b".into()),
                dest: Some("/c/d".into())
            }
        );
        assert_eq!(
            parse_line(r#"#EBID "X""#).unwrap(),
            InputLine::Ebid {
                ebid: "X".into(),
                name: None,
                dest: None
            }
        );
        assert_eq!(
            parse_line("#NULL").unwrap(),
            InputLine::Null {
                name: None,
                dest: None
            }
        );
        assert_eq!(
            parse_line(r#"#NULL "/x/log_backup_0_0_0_0""#).unwrap(),
            InputLine::Null {
                name: Some("/x/log_backup_0_0_0_0".into()),
                dest: None
            }
        );
        assert!(parse_line("#EBID").is_err());
        assert!(parse_line("#PIPE").is_err());
        let err = parse_line(r#"#PIPE "/broken"#).unwrap_err();
        assert_eq!(err.name.as_deref(), Some("/broken"));
    }

    #[test]
    fn output_lines_are_quoted_and_sizes_are_not() {
        let saved = OutputLine::Saved {
            ebid: "20261122T001500.123Z-3fa9c1d2".into(),
            name: "/p \"q\"".into(),
            size: 155648,
        };
        assert_eq!(
            saved.to_string(),
            r#"#SAVED "20261122T001500.123Z-3fa9c1d2" "/p \"q\"" 155648"#
        );
        let id = OutputLine::SoftwareId {
            version: ApiVersion::V1_50,
            product: "Strata hdbbackint 0.1.0".into(),
        };
        assert_eq!(
            id.to_string(),
            r#"#SOFTWAREID "backint 1.50" "Strata hdbbackint 0.1.0""#
        );
        let at: DateTime<Utc> = "2026-11-22T00:15:00.120Z".parse().unwrap();
        let backup = OutputLine::Backup {
            ebid: "E".into(),
            name: "N".into(),
            created: Some(at),
        };
        assert_eq!(
            backup.to_string(),
            r#"#BACKUP "E" "N" "2026-11-22T00:15:00.120Z""#
        );
        assert_eq!(OutputLine::NotFound(vec![]).to_string(), "#NOTFOUND");
        assert_eq!(
            OutputLine::Error(vec!["E".into(), "N".into()]).to_string(),
            r#"#ERROR "E" "N""#
        );
        assert_eq!(
            OutputLine::Comment("#SAVED fake\nsecond".into()).to_string(),
            "SAVED fake second"
        );
    }

    #[test]
    fn lines_that_are_not_keywords_are_kept_for_the_log() {
        let file = InputFile::parse(
            "#SOFTWAREID \"backint 1.50\" \"HANA\"\nhello world\n\n#FUTURE x\n#NULL \"/p\"\n",
        );
        assert_eq!(
            file.ignored,
            vec![(2, "hello world".to_owned()), (4, "#FUTURE x".to_owned())]
        );
        assert_eq!(file.entries.len(), 1);
    }
}

//! The command line HANA uses:
//! `hdbbackint -f backup|restore|inquire|delete -p PARFILE -i IN -o OUT -u SID|DB@SID -s BACKUPID -c COUNT -l LEVEL`.
//!
//! Options may come in any order. Unknown options (and their value, when the
//! next argument does not start with `-`) and unknown levels are tolerated:
//! they are kept in [`Invocation::ignored`] and logged, never rejected.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// The function HANA asks for (`-f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Read every `#PIPE` into the vault.
    Backup,
    /// Write stored objects into HANA's pipes.
    Restore,
    /// Answer which versions exist.
    Inquire,
    /// Delete versions.
    Delete,
}

impl Function {
    /// Parses a function name, in any case.
    pub fn parse(text: &str) -> Option<Function> {
        match text.to_ascii_lowercase().as_str() {
            "backup" => Some(Function::Backup),
            "restore" => Some(Function::Restore),
            "inquire" => Some(Function::Inquire),
            "delete" => Some(Function::Delete),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Backup => "backup",
            Function::Restore => "restore",
            Function::Inquire => "inquire",
            Function::Delete => "delete",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-f`, when it named a known function.
    pub function: Option<Function>,
    /// `-f` as given, for messages about an unknown function.
    pub function_text: Option<String>,
    /// `-i`: the input file; standard input when absent.
    pub input: Option<PathBuf>,
    /// `-o`: the output file; standard output when absent.
    pub output: Option<PathBuf>,
    /// `-u`: `SID` or `DBNAME@SID`.
    pub user: Option<String>,
    /// `-s`: HANA's backup id (epoch milliseconds at backup start).
    pub backup_id: Option<String>,
    /// `-c`: the number of objects in the whole backup (all processes).
    pub count: Option<String>,
    /// `-l`: the backup level (`COMPLETE`, `DIFFERENTIAL`, `INCREMENTAL`, `LOG`, ...).
    pub level: Option<String>,
    /// `-p`: the parameter file.
    pub param_file: Option<PathBuf>,
    /// `-v` or `-V`: print the version and exit.
    pub version: bool,
    /// Options this agent does not know, kept for the log.
    pub ignored: Vec<String>,
}

impl Invocation {
    /// Parses the arguments after the program name. Never fails: anything
    /// not understood is recorded in `ignored`.
    pub fn parse<I>(args: I) -> Invocation
    where
        I: IntoIterator<Item = OsString>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut inv = Invocation::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let value = args.get(i + 1).cloned();
            let takes_value = |v: &Option<String>| v.is_some();
            match arg.as_str() {
                "-v" | "-V" | "--version" => {
                    inv.version = true;
                    i += 1;
                    continue;
                }
                "-f" | "-i" | "-o" | "-u" | "-s" | "-c" | "-l" | "-p" if takes_value(&value) => {
                    let value = value.expect("checked");
                    match arg.as_str() {
                        "-f" => {
                            inv.function = Function::parse(&value);
                            inv.function_text = Some(value);
                        }
                        "-i" => inv.input = Some(PathBuf::from(value)),
                        "-o" => inv.output = Some(PathBuf::from(value)),
                        "-u" => inv.user = Some(value),
                        "-s" => inv.backup_id = Some(value),
                        "-c" => inv.count = Some(value),
                        "-l" => inv.level = Some(value),
                        _ => inv.param_file = Some(PathBuf::from(value)),
                    }
                    i += 2;
                    continue;
                }
                _ => {}
            }
            if arg.starts_with('-') && value.as_deref().is_some_and(|v| !v.starts_with('-')) {
                inv.ignored
                    .push(format!("{arg} {}", value.expect("checked")));
                i += 2;
            } else {
                inv.ignored.push(arg.clone());
                i += 1;
            }
        }
        inv
    }

    /// The SID from `-u` (`HDB` from both `HDB` and `SYSTEMDB@HDB`).
    pub fn sid(&self) -> Option<&str> {
        let user = self.user.as_deref()?.trim();
        let sid = user.rsplit('@').next().unwrap_or(user).trim();
        (!sid.is_empty()).then_some(sid)
    }

    /// The database name from `-u`, when given as `DBNAME@SID`.
    pub fn database(&self) -> Option<&str> {
        let user = self.user.as_deref()?;
        let (db, _) = user.rsplit_once('@')?;
        let db = db.trim();
        (!db.is_empty()).then_some(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Invocation {
        Invocation::parse(line.split_whitespace().map(OsString::from))
    }

    #[test]
    fn the_real_hana_command_line() {
        let inv = parse(
            "-f backup -p /usr/sap/HDB/SYS/global/hdb/opt/hdbbackint.cfg -i /var/tmp/hdbbackint_HDB.kwu3jY \
             -o /var/tmp/hdbbackint_HDB.N1KX90 -u HDB -s 1707397841205 -c 2 -l COMPLETE",
        );
        assert_eq!(inv.function, Some(Function::Backup));
        assert_eq!(
            inv.param_file,
            Some(PathBuf::from(
                "/usr/sap/HDB/SYS/global/hdb/opt/hdbbackint.cfg"
            ))
        );
        assert_eq!(
            inv.input,
            Some(PathBuf::from("/var/tmp/hdbbackint_HDB.kwu3jY"))
        );
        assert_eq!(
            inv.output,
            Some(PathBuf::from("/var/tmp/hdbbackint_HDB.N1KX90"))
        );
        assert_eq!(inv.sid(), Some("HDB"));
        assert_eq!(inv.database(), None);
        assert_eq!(inv.backup_id.as_deref(), Some("1707397841205"));
        assert_eq!(inv.count.as_deref(), Some("2"));
        assert_eq!(inv.level.as_deref(), Some("COMPLETE"));
        assert!(inv.ignored.is_empty());
        assert!(!inv.version);
    }

    #[test]
    fn any_order_tenant_user_unknown_options() {
        let inv = parse("-l WHATEVER -u TGT@HDB -x 1 -f RESTORE --debug -o out -i in");
        assert_eq!(inv.function, Some(Function::Restore));
        assert_eq!(inv.sid(), Some("HDB"));
        assert_eq!(inv.database(), Some("TGT"));
        assert_eq!(inv.level.as_deref(), Some("WHATEVER"));
        assert_eq!(inv.ignored, ["-x 1", "--debug"]);
        assert_eq!(inv.input, Some(PathBuf::from("in")));
    }

    #[test]
    fn version_and_unknown_function() {
        assert!(parse("-v").version);
        assert!(parse("-V").version);
        let inv = parse("-f diagnose");
        assert_eq!(inv.function, None);
        assert_eq!(inv.function_text.as_deref(), Some("diagnose"));
        // A trailing option without its value is ignored, not a crash.
        let inv = parse("-f inquire -u");
        assert_eq!(inv.function, Some(Function::Inquire));
        assert_eq!(inv.ignored, ["-u"]);
    }
}

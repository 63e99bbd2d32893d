//! `global.ini`: reading the `[backup]` and `[persistence]` settings and
//! checking them against what Backint with Strata needs.
//!
//! The settings come either from the file
//! (`/usr/sap/<SID>/SYS/global/hdb/custom/config/global.ini`, the SYSTEM
//! layer) or from `SYS.M_INIFILE_CONTENTS` over SQL (every layer; see
//! [`crate::client`]). Every finding says what is wrong and carries the SQL
//! that fixes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use strata_core::{Error, Result};

use crate::sql::set_config;

/// The `[section] key = value` settings of an ini file; section and key
/// names are lower-cased (HANA treats them case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalIni {
    values: BTreeMap<(String, String), String>,
}

impl GlobalIni {
    /// Parses ini text. `#` and `;` start comment lines; a malformed line is
    /// an error naming it.
    pub fn parse(text: &str, origin: &str) -> Result<GlobalIni> {
        let mut ini = GlobalIni::default();
        let mut section = String::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_ascii_lowercase();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::config(format!(
                    "{origin} line {}: `{line}` is neither [section] nor key = value",
                    index + 1
                ))
                .hint(format!("fix line {} of {origin}", index + 1)));
            };
            ini.set(&section, key.trim(), value.trim());
        }
        Ok(ini)
    }

    /// Reads an ini file.
    pub fn load(path: &Path) -> Result<GlobalIni> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read {}: {e}", path.display()))
                .hint("pass --global-ini with the path of the system's global.ini (usually /usr/sap/<SID>/SYS/global/hdb/custom/config/global.ini), or --connect to read it over SQL")
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Sets one value (a later layer overrides an earlier one).
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.values.insert(
            (section.to_ascii_lowercase(), key.to_ascii_lowercase()),
            value.to_owned(),
        );
    }

    /// One value, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values
            .get(&(section.to_ascii_lowercase(), key.to_ascii_lowercase()))
            .map(String::as_str)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fine as it is; reported for completeness.
    Ok,
    /// Works, but not as recommended.
    Warning,
    /// Backint backups will not work (or not all of them).
    Missing,
}

/// One checked setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `section.key`.
    pub setting: String,
    /// The current value (`None`: not set, HANA's default applies).
    pub current: Option<String>,
    /// How it stands.
    pub severity: Severity,
    /// What is wrong or right, in a sentence.
    pub message: String,
    /// The statement that fixes it, when something needs fixing.
    pub fix: Option<String>,
}

/// What the check needs to know besides global.ini.
#[derive(Debug, Clone, Default)]
pub struct CheckContext {
    /// The parameter file to recommend when one is missing.
    pub suggested_param_file: Option<String>,
    /// Whether to check that the parameter files exist on this host.
    pub check_files: bool,
}

fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Checks the settings Backint with Strata needs. The result lists every
/// setting checked, worst first.
pub fn check_backint(ini: &GlobalIni, ctx: &CheckContext) -> Vec<Finding> {
    let mut findings = Vec::new();
    let param = ctx
        .suggested_param_file
        .clone()
        .unwrap_or_else(|| "/usr/sap/<SID>/SYS/global/hdb/opt/hdbconfig/strata.utl".to_owned());
    for key in [
        "data_backup_parameter_file",
        "log_backup_parameter_file",
        "catalog_backup_parameter_file",
    ] {
        let current = ini.get("backup", key).map(str::to_owned);
        let finding = match &current {
            None => Finding {
                setting: format!("backup.{key}"),
                current: None,
                severity: Severity::Missing,
                message: "HANA would call hdbbackint without a parameter file".to_owned(),
                fix: Some(set_config("backup", key, &param)),
            },
            Some(path) if ctx.check_files && !Path::new(path).is_file() => Finding {
                setting: format!("backup.{key}"),
                current: current.clone(),
                severity: Severity::Missing,
                message: format!("{path} does not exist on this host"),
                fix: Some(format!(
                    "-- create {path} (mode 0600, owner <sid>adm), see docs/hana.md"
                )),
            },
            Some(_) => Finding {
                setting: format!("backup.{key}"),
                current: current.clone(),
                severity: Severity::Ok,
                message: "set".to_owned(),
                fix: None,
            },
        };
        findings.push(finding);
    }
    for key in ["log_backup_using_backint", "catalog_backup_using_backint"] {
        let current = ini.get("backup", key).map(str::to_owned);
        let ok = is_true(current.as_deref());
        findings.push(Finding {
            setting: format!("backup.{key}"),
            current,
            severity: if ok { Severity::Ok } else { Severity::Missing },
            message: if ok {
                "true".to_owned()
            } else {
                format!(
                    "must be true, otherwise {} backups go to files on the host",
                    key.split('_').next().unwrap_or("these")
                )
            },
            fix: (!ok).then(|| set_config("backup", key, "true")),
        });
    }
    let timeout = ini
        .get("persistence", "log_backup_timeout_s")
        .map(str::to_owned);
    let seconds = timeout.as_deref().map(|t| t.trim().parse::<u64>());
    let (severity, message) = match seconds {
        None => (
            Severity::Ok,
            "HANA's default of 900 s applies (a 15-minute RPO)".to_owned(),
        ),
        Some(Ok(0)) => (
            Severity::Missing,
            "0 turns time-based log backups off: the RPO is unbounded".to_owned(),
        ),
        Some(Ok(s)) if s <= 900 => (
            Severity::Ok,
            format!("{s} s: log backups at least every {s} s"),
        ),
        Some(Ok(s)) => (
            Severity::Missing,
            format!("{s} s is more than 900 s: the 15-minute RPO cannot be met"),
        ),
        Some(Err(_)) => (Severity::Missing, "is not a number of seconds".to_owned()),
    };
    findings.push(Finding {
        setting: "persistence.log_backup_timeout_s".to_owned(),
        current: timeout,
        fix: (severity != Severity::Ok)
            .then(|| set_config("persistence", "log_backup_timeout_s", "900")),
        severity,
        message,
    });
    let log_mode = ini.get("persistence", "log_mode").map(str::to_owned);
    let overwrite = log_mode
        .as_deref()
        .is_some_and(|m| !m.trim().eq_ignore_ascii_case("normal"));
    findings.push(Finding {
        setting: "persistence.log_mode".to_owned(),
        current: log_mode,
        severity: if overwrite {
            Severity::Missing
        } else {
            Severity::Ok
        },
        message: if overwrite {
            "log backups only happen with log_mode = normal".to_owned()
        } else {
            "normal: log backups happen".to_owned()
        },
        fix: overwrite.then(|| set_config("persistence", "log_mode", "normal")),
    });
    let channels = ini
        .get("backup", "parallel_data_backup_backint_channels")
        .map(str::to_owned);
    let count = channels.as_deref().map(|c| c.trim().parse::<u32>());
    let (severity, message, fix) = match count {
        None => (
            Severity::Ok,
            "one channel per service (set 2 to 8 for large databases)".to_owned(),
            None,
        ),
        Some(Ok(n)) if (1..=32).contains(&n) => {
            (Severity::Ok, format!("{n} channel(s) per service"), None)
        }
        Some(_) => (
            Severity::Warning,
            "must be a number from 1 to 32".to_owned(),
            Some(set_config(
                "backup",
                "parallel_data_backup_backint_channels",
                "4",
            )),
        ),
    };
    findings.push(Finding {
        setting: "backup.parallel_data_backup_backint_channels".to_owned(),
        current: channels,
        severity,
        message,
        fix,
    });
    let response = ini
        .get("backup", "backint_response_timeout")
        .map(str::to_owned);
    let short = response
        .as_deref()
        .and_then(|r| r.trim().parse::<u64>().ok())
        .is_some_and(|s| s < 600);
    findings.push(Finding {
        setting: "backup.backint_response_timeout".to_owned(),
        current: response,
        severity: if short {
            Severity::Warning
        } else {
            Severity::Ok
        },
        message: if short {
            "under 600 s: large restores may be cut off".to_owned()
        } else {
            "fine".to_owned()
        },
        fix: short.then(|| set_config("backup", "backint_response_timeout", "7200")),
    });
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Vec<Finding> {
        check_backint(
            &GlobalIni::parse(text, "global.ini").unwrap(),
            &CheckContext::default(),
        )
    }

    fn finding<'a>(findings: &'a [Finding], setting: &str) -> &'a Finding {
        findings.iter().find(|f| f.setting == setting).unwrap()
    }

    #[test]
    fn an_empty_global_ini_lists_everything_missing_with_fixes() {
        let findings = check("");
        let missing: Vec<&str> = findings
            .iter()
            .filter(|f| f.severity == Severity::Missing)
            .map(|f| f.setting.as_str())
            .collect();
        assert_eq!(
            missing,
            [
                "backup.data_backup_parameter_file",
                "backup.log_backup_parameter_file",
                "backup.catalog_backup_parameter_file",
                "backup.log_backup_using_backint",
                "backup.catalog_backup_using_backint",
            ]
        );
        assert_eq!(
            finding(&findings, "backup.log_backup_using_backint")
                .fix
                .as_deref(),
            Some(
                "ALTER SYSTEM ALTER CONFIGURATION ('global.ini', 'SYSTEM') SET ('backup', 'log_backup_using_backint') = 'true' WITH RECONFIGURE;"
            )
        );
        assert!(
            finding(&findings, "backup.data_backup_parameter_file")
                .fix
                .as_deref()
                .unwrap()
                .contains("'/usr/sap/<SID>/SYS/global/hdb/opt/hdbconfig/strata.utl'")
        );
    }

    #[test]
    fn a_ready_system_passes_and_bad_values_are_named() {
        let ready = "[backup]\n\
            data_backup_parameter_file = /usr/sap/HDB/SYS/global/hdb/opt/hdbconfig/strata.utl\n\
            log_backup_parameter_file = /usr/sap/HDB/SYS/global/hdb/opt/hdbconfig/strata.utl\n\
            catalog_backup_parameter_file = /usr/sap/HDB/SYS/global/hdb/opt/hdbconfig/strata.utl\n\
            Log_Backup_Using_Backint = TRUE\n\
            catalog_backup_using_backint = true\n\
            parallel_data_backup_backint_channels = 4\n\
            # a comment\n\
            [persistence]\n\
            log_backup_timeout_s = 900\n\
            log_mode = normal\n";
        assert!(
            check(ready)
                .iter()
                .all(|f| f.severity == Severity::Ok && f.fix.is_none())
        );

        let findings = check(
            "[persistence]\nlog_backup_timeout_s = 3600\nlog_mode = overwrite\n[backup]\nparallel_data_backup_backint_channels = 64\nbackint_response_timeout = 60\n",
        );
        let timeout = finding(&findings, "persistence.log_backup_timeout_s");
        assert_eq!(timeout.severity, Severity::Missing);
        assert!(timeout.message.contains("3600"));
        assert!(
            timeout
                .fix
                .as_deref()
                .unwrap()
                .contains("SET ('persistence', 'log_backup_timeout_s') = '900'")
        );
        assert_eq!(
            finding(&findings, "persistence.log_mode").severity,
            Severity::Missing
        );
        assert_eq!(
            finding(&findings, "backup.parallel_data_backup_backint_channels").severity,
            Severity::Warning
        );
        assert_eq!(
            finding(&findings, "backup.backint_response_timeout").severity,
            Severity::Warning
        );
        assert_eq!(
            finding(
                &check("[persistence]\nlog_backup_timeout_s = 0\n"),
                "persistence.log_backup_timeout_s"
            )
            .severity,
            Severity::Missing
        );
    }

    #[test]
    fn parameter_files_are_checked_on_the_host_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("strata.utl");
        std::fs::write(&present, "vault = file:///v\n").unwrap();
        let text = format!(
            "[backup]\ndata_backup_parameter_file = {}\nlog_backup_parameter_file = /nowhere/strata.utl\n",
            present.display()
        );
        let ini = GlobalIni::parse(&text, "global.ini").unwrap();
        let findings = check_backint(
            &ini,
            &CheckContext {
                suggested_param_file: None,
                check_files: true,
            },
        );
        assert_eq!(
            finding(&findings, "backup.data_backup_parameter_file").severity,
            Severity::Ok
        );
        let log = finding(&findings, "backup.log_backup_parameter_file");
        assert_eq!(log.severity, Severity::Missing);
        assert!(log.message.contains("/nowhere/strata.utl"));
    }

    #[test]
    fn malformed_ini_lines_are_named() {
        let err = GlobalIni::parse("[backup]\njust words\n", "global.ini").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}

//! The SQL (and the `recoverSys.py` command) Strata sends to HANA.
//!
//! Every statement is built here, from checked names, and unit-tested as
//! text: database and SID names must be plain identifiers, string literals
//! double their quotes, timestamps are UTC (`RECOVER ... UNTIL TIMESTAMP`
//! is interpreted in UTC).

use chrono::{DateTime, Utc};
use serde::Serialize;
use strata_core::catalog::manifest::BackupKind;
use strata_core::{Error, Result};

/// A SQL string literal: `'` + value with `'` doubled + `'`.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Checks and upper-cases a database name or SID: a letter, then letters,
/// digits or `_`, at most 64 characters (HANA's rules for tenant names).
pub fn identifier(kind: &str, name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_ascii_uppercase())
    } else {
        Err(
            Error::config(format!("`{name}` is not a valid {kind}")).hint(format!(
                "a {kind} starts with a letter and has only letters, digits and _ (e.g. HDB)"
            )),
        )
    }
}

/// `ALTER SYSTEM ALTER CONFIGURATION ('global.ini', 'SYSTEM') SET (...) = '...' WITH RECONFIGURE;`
pub fn set_config(section: &str, key: &str, value: &str) -> String {
    format!(
        "ALTER SYSTEM ALTER CONFIGURATION ('global.ini', 'SYSTEM') SET ({}, {}) = {} WITH RECONFIGURE;",
        literal(section),
        literal(key),
        literal(value)
    )
}

/// The Backint directory of a database: `/usr/sap/<SID>/SYS/global/hdb/backint/SYSTEMDB`
/// or `.../DB_<TENANT>`.
pub fn backint_dir(sid: &str, database: &str) -> String {
    let dir = if database == "SYSTEMDB" {
        "SYSTEMDB".to_owned()
    } else {
        format!("DB_{database}")
    };
    format!("/usr/sap/{sid}/SYS/global/hdb/backint/{dir}")
}

/// A data backup to start.
#[derive(Debug, Clone)]
pub struct DataBackup {
    /// The system's SID.
    pub sid: String,
    /// `SYSTEMDB` or a tenant.
    pub database: String,
    /// Full, diff or incr.
    pub kind: BackupKind,
    /// The backup's start time, used in the name prefix.
    pub at: DateTime<Utc>,
}

impl DataBackup {
    /// The object name prefix HANA appends `_databackup_<volume>_<channel>` to.
    pub fn prefix(&self) -> String {
        let kind = match self.kind {
            BackupKind::Diff => "DIFF",
            BackupKind::Incr => "INCR",
            _ => "COMPLETE",
        };
        format!(
            "{}/STRATA_{kind}_DATA_BACKUP_{}",
            backint_dir(&self.sid, &self.database),
            self.at.format("%Y_%m_%d_%H_%M_%S")
        )
    }

    /// `BACKUP DATA [DIFFERENTIAL|INCREMENTAL] FOR <DB> USING BACKINT ('<prefix>')`,
    /// to be run on the SYSTEMDB.
    pub fn statement(&self) -> Result<String> {
        identifier("SID", &self.sid)?;
        let database = identifier("database name", &self.database)?;
        let kind = match self.kind {
            BackupKind::Full => "",
            BackupKind::Diff => "DIFFERENTIAL ",
            BackupKind::Incr => "INCREMENTAL ",
            BackupKind::Log => {
                return Err(Error::config("HANA takes log backups itself")
                    .hint("log backups run every log_backup_timeout_s; `strata hana check` verifies the setting"));
            }
        };
        Ok(format!(
            "BACKUP DATA {kind}FOR {database} USING BACKINT ({})",
            literal(&self.prefix())
        ))
    }
}

/// A recovery to plan.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The SID of the system that took the backups.
    pub source_sid: String,
    /// The database whose backups are used (`SYSTEMDB` or a tenant).
    pub source_database: String,
    /// The SID of the system to recover into (the same, or another for a system copy).
    pub target_sid: String,
    /// The database to recover (the same name, or another tenant).
    pub target_database: String,
    /// Recover to this time (UTC); `None` recovers as far as the log goes.
    pub until: Option<DateTime<Utc>>,
    /// Recover from exactly this data backup (HANA's backup id) instead of
    /// letting HANA choose.
    pub backup_id: Option<u64>,
}

/// What to run for a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecoveryPlan {
    /// SQL statements run in order on the target's SYSTEMDB.
    Sql {
        /// The statements.
        statements: Vec<String>,
    },
    /// A command run as `<sid>adm` on the target host with the system stopped
    /// (the SYSTEMDB cannot recover itself over SQL).
    Command {
        /// The shell command line.
        command: String,
        /// What to do before and after, for the operator.
        notes: Vec<String>,
    },
}

impl Recovery {
    fn is_copy(&self) -> bool {
        self.source_sid != self.target_sid || self.source_database != self.target_database
    }

    /// The `RECOVER DATABASE` statement, without the `FOR` clause when
    /// `for_database` is `None` (as recoverSys.py wants it).
    fn recover_statement(&self, for_database: Option<&str>) -> String {
        let dir = backint_dir(&self.source_sid, &self.source_database);
        let until = self
            .until
            .unwrap_or_else(Utc::now)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let mut sql = String::from("RECOVER DATABASE");
        if let Some(db) = for_database {
            sql.push_str(&format!(" FOR {db}"));
        }
        sql.push_str(&format!(" UNTIL TIMESTAMP {} CLEAR LOG", literal(&until)));
        if self.is_copy() {
            sql.push_str(&format!(
                " USING SOURCE {}",
                literal(&format!("{}@{}", self.source_database, self.source_sid))
            ));
        }
        sql.push_str(&format!(
            " USING CATALOG BACKINT USING LOG PATH ({}) USING DATA PATH ({})",
            literal(&dir),
            literal(&format!("{dir}/"))
        ));
        if let Some(id) = self.backup_id {
            sql.push_str(&format!(" USING BACKUP_ID {id}"));
        }
        sql.push_str(" CHECK ACCESS USING BACKINT");
        sql
    }

    /// The statements (tenant) or the command (SYSTEMDB) that perform the
    /// recovery. Names are checked first.
    pub fn plan(&self) -> Result<RecoveryPlan> {
        let source_sid = identifier("SID", &self.source_sid)?;
        let source_db = identifier("database name", &self.source_database)?;
        let target_sid = identifier("SID", &self.target_sid)?;
        let target_db = identifier("database name", &self.target_database)?;
        let checked = Recovery {
            source_sid,
            source_database: source_db,
            target_sid,
            target_database: target_db.clone(),
            ..self.clone()
        };
        if target_db == "SYSTEMDB" {
            let statement = checked.recover_statement(None);
            let command = format!(
                "HDBSettings.sh recoverSys.py --command=\"{}\" --wait --timeout=3600",
                statement
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('$', "\\$")
                    .replace('`', "\\`")
            );
            return Ok(RecoveryPlan::Command {
                command,
                notes: vec![
                    format!("run as {}adm on the {} host", checked.target_sid.to_ascii_lowercase(), checked.target_sid),
                    "stop the system first: sapcontrol -nr <instance> -function StopSystem HDB".to_owned(),
                    "hdbbackint and its parameter file must be installed on the target (docs/hana.md)".to_owned(),
                    "recover the tenants afterwards (strata restore hana --database <TENANT>)".to_owned(),
                ],
            });
        }
        Ok(RecoveryPlan::Sql {
            statements: vec![
                format!("ALTER SYSTEM STOP DATABASE {target_db}"),
                checked.recover_statement(Some(&target_db)),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn literals_and_identifiers() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(identifier("database name", "hdb").unwrap(), "HDB");
        assert!(identifier("database name", "HDB; DROP").is_err());
        assert!(identifier("database name", "1ABC").is_err());
        let err = identifier("SID", "").unwrap_err();
        assert!(err.hint_text().unwrap().contains("starts with a letter"));
    }

    #[test]
    fn data_backups_for_each_kind() {
        let mut backup = DataBackup {
            sid: "HDB".into(),
            database: "HDB".into(),
            kind: BackupKind::Full,
            at: at("2026-11-22T01:30:00Z"),
        };
        assert_eq!(
            backup.statement().unwrap(),
            "BACKUP DATA FOR HDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/STRATA_COMPLETE_DATA_BACKUP_2026_11_22_01_30_00')"
        );
        backup.kind = BackupKind::Diff;
        assert!(backup.statement().unwrap().starts_with("BACKUP DATA DIFFERENTIAL FOR HDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/STRATA_DIFF_"));
        backup.kind = BackupKind::Incr;
        backup.database = "SYSTEMDB".into();
        assert_eq!(
            backup.statement().unwrap(),
            "BACKUP DATA INCREMENTAL FOR SYSTEMDB USING BACKINT ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/STRATA_INCR_DATA_BACKUP_2026_11_22_01_30_00')"
        );
        backup.kind = BackupKind::Log;
        assert!(
            backup
                .statement()
                .unwrap_err()
                .to_string()
                .contains("log backups itself")
        );
        backup.kind = BackupKind::Full;
        backup.database = "x'y".into();
        assert!(backup.statement().is_err());
    }

    #[test]
    fn tenant_point_in_time_recovery() {
        let plan = Recovery {
            source_sid: "HDB".into(),
            source_database: "HDB".into(),
            target_sid: "HDB".into(),
            target_database: "HDB".into(),
            until: Some(at("2026-11-22T01:00:00Z")),
            backup_id: None,
        }
        .plan()
        .unwrap();
        assert_eq!(
            plan,
            RecoveryPlan::Sql {
                statements: vec![
                    "ALTER SYSTEM STOP DATABASE HDB".into(),
                    "RECOVER DATABASE FOR HDB UNTIL TIMESTAMP '2026-11-22 01:00:00' CLEAR LOG USING CATALOG BACKINT \
                     USING LOG PATH ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB') \
                     USING DATA PATH ('/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/') CHECK ACCESS USING BACKINT"
                        .into(),
                ]
            }
        );
    }

    #[test]
    fn system_copy_to_another_sid() {
        let plan = Recovery {
            source_sid: "QAS".into(),
            source_database: "SRC".into(),
            target_sid: "HDB".into(),
            target_database: "TGT".into(),
            until: Some(at("2020-01-31T01:00:00Z")),
            backup_id: Some(1234567890123),
        }
        .plan()
        .unwrap();
        let RecoveryPlan::Sql { statements } = plan else {
            panic!("a tenant recovers over SQL")
        };
        assert_eq!(
            statements[1],
            "RECOVER DATABASE FOR TGT UNTIL TIMESTAMP '2020-01-31 01:00:00' CLEAR LOG USING SOURCE 'SRC@QAS' \
             USING CATALOG BACKINT USING LOG PATH ('/usr/sap/QAS/SYS/global/hdb/backint/DB_SRC') \
             USING DATA PATH ('/usr/sap/QAS/SYS/global/hdb/backint/DB_SRC/') USING BACKUP_ID 1234567890123 \
             CHECK ACCESS USING BACKINT"
        );
    }

    #[test]
    fn systemdb_recovers_through_recoversys() {
        let plan = Recovery {
            source_sid: "HDB".into(),
            source_database: "SYSTEMDB".into(),
            target_sid: "HDB".into(),
            target_database: "SYSTEMDB".into(),
            until: Some(at("2026-11-22T01:00:00Z")),
            backup_id: None,
        }
        .plan()
        .unwrap();
        let RecoveryPlan::Command { command, notes } = plan else {
            panic!("SYSTEMDB recovers through recoverSys.py")
        };
        assert_eq!(
            command,
            "HDBSettings.sh recoverSys.py --command=\"RECOVER DATABASE UNTIL TIMESTAMP '2026-11-22 01:00:00' CLEAR LOG \
             USING CATALOG BACKINT USING LOG PATH ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB') \
             USING DATA PATH ('/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/') CHECK ACCESS USING BACKINT\" --wait --timeout=3600"
        );
        assert!(notes.iter().any(|n| n.contains("hdbadm")));
    }

    #[test]
    fn config_statements() {
        assert_eq!(
            set_config("persistence", "log_backup_timeout_s", "900"),
            "ALTER SYSTEM ALTER CONFIGURATION ('global.ini', 'SYSTEM') SET ('persistence', 'log_backup_timeout_s') = '900' WITH RECONFIGURE;"
        );
    }
}

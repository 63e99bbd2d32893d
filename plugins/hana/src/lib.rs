//! # strata-hana
//!
//! Strata's SAP HANA plugin. The bytes of HANA backups flow through
//! `hdbbackint` (crate `strata-backint`), which HANA itself calls and which
//! stores each object through the host's lifecycle with this plugin
//! ([`backint`]: names, versions, markers); the rest is the control side:
//!
//! - [`ini`]: reads the `[backup]` and `[persistence]` settings of
//!   `global.ini` and reports what Backint with Strata still needs
//!   (parameter files, `log_backup_using_backint`,
//!   `catalog_backup_using_backint`, `log_backup_timeout_s <= 900`,
//!   channels), each finding with the SQL that fixes it.
//! - [`sql`]: the statements: `BACKUP DATA [DIFFERENTIAL|INCREMENTAL] FOR
//!   <DB> USING BACKINT (...)`, and recoveries to a point in time or to
//!   another SID (`RECOVER DATABASE FOR ... UNTIL TIMESTAMP ... USING
//!   SOURCE ... USING CATALOG BACKINT`, `recoverSys.py` for the SYSTEMDB).
//! - [`client`]: runs them over SQL with hdbconnect.
//!
//! ```
//! use strata_hana::sql::Recovery;
//! let plan = Recovery {
//!     source_sid: "QAS".into(), source_database: "SRC".into(),
//!     target_sid: "HDB".into(), target_database: "TGT".into(),
//!     until: Some("2026-11-22T01:00:00Z".parse().unwrap()), backup_id: None,
//! }.plan().unwrap();
//! println!("{plan:?}");
//! ```
//!
//! ## The engine plugin
//!
//! [`HanaEngine`] is SAP HANA as Strata's [`EnginePlugin`].
//!
//! HANA is an engine that delivers its own backups: it writes every data,
//! log and catalog backup into the pipes it opens for `hdbbackint`, and
//! decides by itself (through Backint `inquire`) which backups a recovery
//! reads. So the plugin says [`Capabilities::engine_delivers`] and
//! [`Capabilities::engine_plans_restore`]:
//!
//! - a backup **without** pushed input (`strata backup hana`) asks HANA over
//!   SQL to run `BACKUP DATA ... USING BACKINT` and waits; the bytes arrive
//!   through `hdbbackint`, which commits one Strata backup per object.
//!   Options: `{"dry_run": bool}` (return the statement without running it).
//! - a backup **with** pushed input is one Backint object (see
//!   [`crate::backint`]); `hdbbackint` runs it through the host's lifecycle.
//! - a restore prints (or runs) the recovery statements; the host hands it
//!   every committed backup of the source database so that a recovery with
//!   no data backup before its target time is refused before HANA is asked.
//!   Destination: [`RecoveryDestination`].

pub mod backint;
pub mod client;
pub mod ini;
pub mod recovery_objects;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::BackupKind;
use strata_core::catalog::planner::RestoreTarget;
use strata_core::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, EnginePlugin,
    RestoreOutcome, RestoreRequest, RestoreSource, parse_options,
};
use strata_core::{Error, Result};

use crate::client::HanaUrl;
use crate::recovery_objects::recovery_objects;
use crate::sql::{DataBackup, Recovery, RecoveryPlan, identifier};

/// The engine name in vault keys and manifests.
pub const ENGINE: &str = "hana";

/// One SAP HANA system (by SID), optionally with its SYSTEMDB's SQL endpoint.
#[derive(Debug, Clone)]
pub struct HanaEngine {
    sid: String,
    connection: Option<HanaUrl>,
}

/// Where a recovery goes (the JSON form of `RestoreRequest::destination`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryDestination {
    /// The database whose backups to use: SYSTEMDB or a tenant (required).
    pub database: String,
    /// Recover into this SID (a system copy); default: the same.
    #[serde(default)]
    pub target_sid: Option<String>,
    /// Recover into this database; default: the same.
    #[serde(default)]
    pub target_database: Option<String>,
    /// Use exactly this HANA data backup id.
    #[serde(default)]
    pub backup_id: Option<u64>,
    /// Run the recovery (tenants only, over SQL) instead of only planning it.
    #[serde(default)]
    pub execute: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerOptions {
    #[serde(default)]
    dry_run: bool,
}

impl HanaEngine {
    /// The plugin of system `sid` (three characters, letters and digits).
    pub fn from_sid(sid: &str) -> Result<Self> {
        let sid = sid.to_ascii_uppercase();
        identifier("SID", &sid)?;
        Ok(HanaEngine {
            sid,
            connection: None,
        })
    }

    /// The plugin `hdbbackint` stores objects with: `sid` as HANA's object
    /// names (or `-u`) give it, kept as is so that existing vault keys stay.
    pub fn backint(sid: &str) -> Self {
        HanaEngine {
            sid: sid.to_owned(),
            connection: None,
        }
    }

    /// Reaches the SYSTEMDB at `connection` for backups and recoveries.
    pub fn with_connection(mut self, connection: Option<HanaUrl>) -> Self {
        self.connection = connection;
        self
    }

    fn connection(&self) -> Result<&HanaUrl> {
        self.connection.as_ref().ok_or_else(|| {
            Error::config("no HANA connection given")
                .hint("pass --connect hdbsql://USER:PASSWORD@host:3<nr>13 or set STRATA_HANA_URL")
        })
    }

    async fn trigger(&self, request: BackupRequest) -> Result<BackupOutcome> {
        let options: TriggerOptions = parse_options(&request.options, "HANA backup options")?;
        let database = request.database.database.clone().ok_or_else(|| {
            Error::config("a HANA data backup needs a database")
                .hint("pass --database SYSTEMDB or a tenant's name")
        })?;
        let backup = DataBackup {
            sid: self.sid.clone(),
            database: database.to_ascii_uppercase(),
            kind: request.kind,
            at: Utc::now(),
        };
        let statement = backup.statement()?;
        if !options.dry_run {
            client::backup_data(self.connection()?, &backup).await?;
        }
        Ok(BackupOutcome {
            engine_meta: serde_json::json!({ "statement": statement, "dry_run": options.dry_run }),
            ..BackupOutcome::default()
        })
    }
}

#[async_trait]
impl EnginePlugin for HanaEngine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn instance(&self) -> &str {
        &self.sid
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: vec![
                BackupKind::Full,
                BackupKind::Diff,
                BackupKind::Incr,
                BackupKind::Log,
            ],
            point_in_time: true,
            alternate_target: true,
            engine_delivers: true,
            engine_plans_restore: true,
            part_size: None,
            settles_kind: false,
        }
    }

    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome> {
        if request.input.is_some() {
            crate::backint::store_object(&self.sid, request, sink, archive.as_ref()).await
        } else {
            self.trigger(request).await
        }
    }

    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome> {
        let destination: RecoveryDestination =
            parse_options(&request.destination, "HANA restore options")?;
        let until = match request.target {
            RestoreTarget::Time(t) => Some(t),
            RestoreTarget::Latest => None,
            other => {
                return Err(
                    Error::config(format!("HANA recovers to a time, not to {other}"))
                        .hint("give --until TIME, or nothing for the latest point"),
                );
            }
        };
        let source_database = destination.database.to_ascii_uppercase();
        let recovery = Recovery {
            source_sid: self.sid.clone(),
            source_database: source_database.clone(),
            target_sid: destination
                .target_sid
                .as_deref()
                .unwrap_or(&self.sid)
                .to_ascii_uppercase(),
            target_database: destination
                .target_database
                .as_deref()
                .unwrap_or(&source_database)
                .to_ascii_uppercase(),
            until,
            backup_id: destination.backup_id,
        };
        let plan = recovery.plan()?;
        let limit = until.unwrap_or_else(Utc::now);
        // HANA reads these once the operator starts the recovery: each must
        // be in the vault now.
        let needed = recovery_objects(
            &request.backups,
            &recovery.source_sid,
            &recovery.source_database,
            limit,
            recovery.backup_id,
        )?;
        for manifest in needed {
            source.check_stored(&manifest.id).await?;
        }
        let summary = match &plan {
            RecoveryPlan::Sql { statements } => {
                let mut text = format!("-- on the SYSTEMDB of {}:\n", recovery.target_sid);
                for s in statements {
                    text.push_str(&format!("{s};\n"));
                }
                text
            }
            RecoveryPlan::Command { command, notes } => {
                let mut text = String::new();
                for note in notes {
                    text.push_str(&format!("# {note}\n"));
                }
                text.push_str(&format!("{command}\n"));
                text
            }
        };
        let details = serde_json::to_value(&plan)?;
        if destination.execute {
            match plan {
                RecoveryPlan::Sql { statements } => {
                    client::execute(self.connection()?, statements).await?;
                }
                RecoveryPlan::Command { .. } => {
                    return Err(
                        Error::config("the SYSTEMDB cannot be recovered over SQL").hint(
                            "stop the system and run the printed recoverSys.py command as <sid>adm",
                        ),
                    );
                }
            }
        }
        Ok(RestoreOutcome {
            position: None,
            time: until,
            summary,
            details,
        })
    }

    async fn verify_archive(
        &self,
        backups: &[strata_core::catalog::manifest::Manifest],
        archive: Arc<dyn ArchiveStore>,
    ) -> Result<Vec<strata_core::plugin::ArchiveFinding>> {
        backint::verify_markers(backups, archive.as_ref()).await
    }
}

//! # strata-hana
//!
//! Strata's SAP HANA plugin. The bytes of HANA backups flow through
//! `hdbbackint` (crate `strata-backint`), which HANA itself calls; this crate
//! is the control side:
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

pub mod backint;
pub mod client;
mod engine;
pub mod ini;
pub mod sql;

pub use engine::{ENGINE, HanaEngine, RecoveryDestination};

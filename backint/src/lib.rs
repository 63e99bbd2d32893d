//! # strata-backint
//!
//! `hdbbackint`, SAP HANA's Backint agent (interface versions 1.04, 1.50 and
//! 1.50.2), writing straight into a Strata vault.
//!
//! HANA runs the agent for every data, log and catalog backup and for every
//! recovery step:
//!
//! ```text
//! hdbbackint -f backup|restore|inquire|delete -p PARFILE -i IN -o OUT -u SID|DB@SID -s BACKUPID -c COUNT -l LEVEL
//! ```
//!
//! 1. [`args`] reads that command line, tolerating options and levels it does
//!    not know; [`params`] reads the parameter file (the vault, writer
//!    settings, timeouts, the log file).
//! 2. [`protocol`] parses the input file and formats the output file
//!    (`#SOFTWAREID` first, then one result line per object).
//! 3. [`agent`] does the work: **backup** reads every `#PIPE` (a FIFO HANA
//!    writes) to its end, concurrently, through the vault writer; each object
//!    becomes one Strata backup whose id is the EBID returned in `#SAVED`,
//!    committed (manifest written) before `#SAVED` is reported. **Restore**
//!    writes each version into the FIFO HANA opens for reading, logs strictly
//!    one after the other. **Inquire** and **delete** answer from the vault.
//! 4. [`versions`] maps names and EBIDs to manifests and keeps every version
//!    of a name (HANA reuses names such as `log_backup_0_0_0_0`); [`pipes`]
//!    opens FIFOs without creating them and without hanging.
//!
//! [`run`] ties it together and returns the process exit code: 0 when every
//! object succeeded, 1 when any `#ERROR` was written, 2 for a command line or
//! parameter file that cannot be used (after writing `#SOFTWAREID` and one
//! `#ERROR` per object).

pub mod agent;
pub mod args;
pub mod params;
pub mod pipes;
pub mod protocol;
pub mod report;
pub mod versions;

mod run;

pub use run::{PRODUCT, run, software_id};

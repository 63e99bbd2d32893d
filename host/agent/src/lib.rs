//! The `strata` agent's commands and service, as a library: `main.rs`
//! parses the command line and calls into it. Kept apart from the binary so
//! that tools beside it (the fuzz targets) reach the configuration parser
//! ([`config::Config::parse`]) exactly as the CLI runs it.

pub mod config;
pub mod context;
pub mod deleting;
pub mod engines;
pub mod hana;
pub mod listing;
pub mod output;
pub mod pg;
pub mod progress;
pub mod service;
pub mod sqlserver;
pub mod stream;
pub mod vault_cmd;

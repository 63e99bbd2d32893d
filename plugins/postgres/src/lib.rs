//! # strata-postgres
//!
//! Strata's PostgreSQL (15 and later) engine: native full backups with the
//! non-exclusive low-level API, WAL archiving, and point-in-time restore to
//! another data directory, port or host.
//!
//! ## A short tour
//!
//! 1. Describe a cluster with a [`ClusterConfig`] (`[postgres.<name>]` in the
//!    TOML config) and run [`check::check`]: it reports the server's version,
//!    system identifier, timeline and archiving settings, and prints the exact
//!    line to fix each problem.
//! 2. PostgreSQL's `archive_command` calls `strata pg wal-push %p`, which is
//!    [`WalArchive::push`]: one object per WAL file in the cluster's archive
//!    store (host-provided, see `strata_core::plugin::ArchiveStore`), keyed
//!    by system identifier and timeline and stored once.
//!    `restore_command` calls [`WalArchive::fetch`]. The plugin never
//!    talks to object storage: it depends on strata-core without the vault.
//! 3. [`backup::full_backup`] runs `pg_backup_start`, streams the data
//!    directory and tablespaces into the vault in parallel (small files bundled
//!    into a few streams, see [`bundle`]) while it checks every page's
//!    checksum ([`pages`]), copies `pg_control` last, runs
//!    `pg_backup_stop` and returns only once the WAL from start to stop is archived.
//! 4. [`chain`] turns the archive and the committed backups into recoverable
//!    windows per timeline and picks the backup and WAL for a target;
//!    [`restore::restore`] lays the files down in a new data directory,
//!    writes the recovery settings and optionally starts the copy.

pub mod backup;
pub mod bundle;
pub mod chain;
pub mod check;
pub mod config;
pub mod pages;
pub mod restore;
pub mod wal;
pub mod walname;

pub use config::ClusterConfig;
pub use wal::WalArchive;
pub use walname::{Lsn, WalFileName};

/// The engine name used in vault keys and manifests.
pub const ENGINE: &str = "postgres";

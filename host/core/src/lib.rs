//! # strata-core
//!
//! The engine-agnostic heart of Strata: it moves a backup's byte streams into
//! object storage and back, and knows which backups restore which point in time.
//!
//! ## A short tour
//!
//! 1. Open (or create) a [`vault::Vault`] from a URL: `file:///var/lib/strata/vault`,
//!    `memory://test`, `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
//! 2. Start a backup with [`vault::writer::BackupWriter`], hand it one or more
//!    `AsyncRead` streams (each is cut into parts, compressed on every core,
//!    optionally encrypted, checksummed and uploaded with bounded memory), then
//!    `commit` it: the [`catalog::manifest::Manifest`] is written last, create-only,
//!    and is the commit point.
//! 3. Read a stream back with [`vault::reader`]: parallel ranged reads,
//!    every part checked before a byte is handed on.
//! 4. Record manifests in the [`catalog::index::CatalogIndex`] (a SQLite cache
//!    that can always be rebuilt from the vault) and ask the
//!    [`catalog::planner`] which backups restore a point in time, and which
//!    windows of time are restorable at all.
//! 5. Keep the small create-only objects an engine pushes one at a time
//!    (PostgreSQL WAL, Backint name markers) in a [`vault::VaultArchive`]:
//!    put once, identical duplicates accepted, compressed, sealed and
//!    checked like parts.
//!
//! Engines plug in through the contract in [`plugin`], and every backup and
//! restore of every engine runs through one lifecycle, [`lifecycle::Host`]:
//! it opens the writer, lets the plugin write, commits the manifest or
//! leaves nothing, records the index, and plans restores with the engine's
//! chain rules. The steps above are what it is made of; the CLI,
//! `hdbbackint` and the service call the lifecycle, not the steps. Every Strata program
//! reads the same configuration file through [`config`] (the `[vault]`,
//! `[catalog]` and `[writer]` sections, sizes such as `16MiB`), and every
//! point in time an operator types goes through [`time::parse_time`].
//!
//! ## Features
//!
//! - `vault` (default): the vault, the writer and reader, archive objects
//!   and the catalog index, with their object-store and SQLite dependencies.
//!   Engine plugins depend on this crate without it (`default-features =
//!   false`): manifests, the planner, the plugin contract, errors and
//!   crypto are all they may use, so a plugin cannot reach object storage.

pub mod catalog;
pub mod checksum;
#[cfg(feature = "vault")]
pub mod config;
pub mod crypto;
pub mod error;
#[cfg(feature = "vault")]
pub mod lifecycle;
pub mod plugin;
pub mod time;
#[cfg(feature = "vault")]
pub mod vault;

pub use error::{Error, ErrorKind, IoResultExt, Result};

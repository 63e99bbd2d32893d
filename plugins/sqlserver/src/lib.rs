//! Strata's SQL Server engine plugin: not built yet.
//!
//! The intended shape is in the design brief: control over TDS (tiberius),
//! native `BACKUP ... TO URL` aimed at a blob endpoint the plugin serves on
//! loopback so SQL Server streams straight into the vault, the chain from
//! `msdb.dbo.backupset`, and restores `WITH MOVE` / `STOPAT` to an alternate
//! database. This crate holds its place in the workspace until that work is
//! scheduled; it exports nothing.

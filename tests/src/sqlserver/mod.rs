//! A SQL Server emulator for Strata's tests: what the SQL Server plugin
//! relies on, played faithfully at the interfaces it uses (TDS and T-SQL,
//! LSNs and `msdb` history, and SQL Server's own calls to an Azure Blob
//! endpoint during `BACKUP ... TO URL` and `RESTORE ... FROM URL`).

pub mod blob_client;
pub mod engine;
pub mod media;
pub mod sql;
pub mod tds;

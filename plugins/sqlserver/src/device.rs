//! Where SQL Server's `BACKUP` writes and `RESTORE` reads: the data path
//! behind one trait.
//!
//! Today the one implementation is [`crate::blob::BlobEndpoint`], an
//! Azure-Blob-compatible HTTPS endpoint that `BACKUP ... TO URL` and
//! `RESTORE ... FROM URL` talk to. The trait keeps the rest of the plugin
//! (the T-SQL, the chain, the catalog) unaware of how the bytes travel, so
//! that SQL Server 2022's `s3://` URLs or the Virtual Device Interface can
//! be added beside it.
//!
//! A data path never stores anything itself: a backup device streams what
//! SQL Server writes into the host's [`BackupSink`], and a restore device
//! reads what SQL Server asks for from the host's [`RestoreSource`].

use async_trait::async_trait;
use strata_core::Result;
use strata_core::catalog::manifest::{BackupId, StreamRecord};
use strata_core::plugin::{BackupSink, RestoreSource};

/// Where SQL Server's `BACKUP` writes and `RESTORE` reads.
pub trait DataPath: Send + Sync {
    /// A device for one backup of `stripes` stripes (at least 1): its T-SQL
    /// clause and its receiver. The device list belongs to this backup
    /// alone until the device is dropped.
    ///
    /// # Errors
    /// What starting the data path meets: a listen address in use or not
    /// allowed, a missing certificate, no Tokio runtime.
    fn open_backup(&self, stripes: usize) -> Result<Box<dyn BackupDevice>>;

    /// Devices serving `backups` (each: its stripes' stream names and raw
    /// sizes, from the manifest) for a restore, read-only, until dropped.
    ///
    /// # Errors
    /// As [`open_backup`](Self::open_backup).
    fn open_restore(&self, backups: Vec<ServedBackup>) -> Result<Box<dyn RestoreDevice>>;
}

/// One committed backup a restore device serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBackup {
    /// The backup in the vault.
    pub id: BackupId,
    /// Its stripes in device order: the stream name (`stripe-000`, ...) and
    /// the stream's raw size in bytes ([`StreamRecord::raw_size`]).
    pub stripes: Vec<(String, u64)>,
}

/// The devices of one `BACKUP` statement.
#[async_trait]
pub trait BackupDevice: Send {
    /// `TO URL = N'...', URL = N'...'` (the device list of the BACKUP
    /// statement), one device per stripe in stripe order.
    fn to_clause(&self) -> String;

    /// The name of stripe 0's device as SQL Server records it in
    /// `msdb.dbo.backupmediafamily.physical_device_name` (its URL); unique
    /// to this backup, so it finds the backup's history row.
    fn first_device(&self) -> String;

    /// Receives the stripes into `sink` until every stripe's block list is
    /// committed, each stripe as the stream `stripe-NNN`; returns the
    /// stream records in stripe order. Runs only while awaited: start it
    /// together with the `BACKUP` statement.
    ///
    /// # Errors
    /// The first stripe that failed ([`ErrorKind::Engine`] when SQL Server
    /// sent what cannot be followed, such as blocks further out of order
    /// than the reorder window; the sink's error when the vault failed), or
    /// the endpoint when it stopped accepting connections. Called a second
    /// time: [`ErrorKind::Engine`].
    ///
    /// [`ErrorKind::Engine`]: strata_core::ErrorKind::Engine
    async fn receive(&mut self, sink: &dyn BackupSink) -> Result<Vec<StreamRecord>>;
}

/// The devices of a restore: every stripe of every served backup.
#[async_trait]
pub trait RestoreDevice: Send + Sync {
    /// `FROM URL = N'...', URL = N'...'` for backup `index` of the list
    /// given to [`DataPath::open_restore`].
    ///
    /// # Panics
    /// When `index` is not an index of that list.
    // Named after T-SQL's FROM clause, not a conversion.
    #[allow(clippy::wrong_self_convention)]
    fn from_clause(&self, index: usize) -> String;

    /// Serves reads from `source` until the future is dropped; SQL Server's
    /// reads wait while no `serve` runs. Run it beside each `RESTORE`
    /// statement (or once beside all of them).
    ///
    /// # Errors
    /// The first read of `source` that failed (a damaged or missing part:
    /// SQL Server was answered with an error, and its `RESTORE` fails), the
    /// endpoint when it stopped accepting connections, or
    /// [`ErrorKind::Engine`](strata_core::ErrorKind::Engine) when another
    /// `serve` of this device is running.
    async fn serve(&self, source: &dyn RestoreSource) -> Result<()>;
}

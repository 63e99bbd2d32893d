//! The blob endpoint: an Azure-Blob-compatible HTTPS server on this host
//! that SQL Server's `BACKUP ... TO URL` writes into and `RESTORE ... FROM
//! URL` reads from, with the vault behind it and nothing on local disk.
//!
//! # How SQL Server talks to it
//!
//! For a URL device with a shared-access-signature credential, SQL Server
//! writes a block blob (Microsoft's "SQL Server backup to URL for Microsoft
//! Azure Blob Storage"): Put Blob of 0 bytes, an infinite lease, Put Block
//! of up to `MAXTRANSFERSIZE` bytes per request with base64 block ids, Put
//! Block List in UTF-16, and the lease's release. A restore issues Get Blob
//! Properties, then ranged Get Blob requests. The endpoint implements those
//! operations (and Get Block List and Delete Blob), answers errors in
//! Azure's XML format, and ignores the signature SQL Server appends to
//! every URL (it listens on this host only, and authorizes nothing).
//!
//! # Layout
//!
//! URLs are `https://<host>[:<port>]/strata/<token>/stripe-NNN.bak`: the
//! container `strata` (so the credential SQL Server needs is named
//! [`BlobEndpoint::credential_name`]), a token per backup (fresh for every
//! job, so a URL names one backup only), and a blob per stripe, which is
//! the vault stream `stripe-NNN`.
//!
//! - `listener`: one listener per listen address per process, shared by
//!   concurrent jobs, routing by token;
//! - `route`: the operations, and the hand-over of requests to the job;
//! - `stripe`: a backup stripe streamed into the vault through a bounded
//!   reorder window;
//! - `serve`: a restore's stripes read from the vault, sequentially
//!   with read-ahead or by range;
//! - `azure` and `block_list`: the protocol's formats.
//!
//! The job side of every request runs inside the plugin's `backup()` or
//! `restore()` future ([`BackupDevice::receive`], [`RestoreDevice::serve`]),
//! which lends it the host's sink or source.

mod azure;
mod block_list;
mod listener;
mod route;
mod serve;
mod stripe;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use strata_core::catalog::manifest::StreamRecord;
use strata_core::plugin::{BackupSink, RestoreSource};
use strata_core::{Error, Result};
use tokio::sync::mpsc;

use crate::device::{BackupDevice, DataPath, RestoreDevice, ServedBackup};
use crate::tsql::quote_literal;
use listener::{Listener, Registration};
use route::{Blob, Call, lock};
use serve::ServedBlob;

/// Blocks held in memory per stripe unless configured otherwise.
pub const DEFAULT_REORDER_WINDOW: usize = 8;

/// The port the URLs leave out (HTTPS's own).
const HTTPS_PORT: u16 = 443;

/// How the blob endpoint listens and names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEndpointConfig {
    /// Where to listen (an address of this host, usually loopback).
    pub listen: SocketAddr,
    /// The host name in the URLs: resolves to `listen` where SQL Server
    /// runs, and is the name in the certificate (SQL Server needs a name,
    /// not an address).
    pub host: String,
    /// The port in the URLs; `None`: the port listened on.
    pub port: Option<u16>,
    /// The certificate chain (PEM), `blob.crt` of `strata sqlserver setup`.
    pub tls_cert: PathBuf,
    /// Its private key (PEM), `blob.key`.
    pub tls_key: PathBuf,
    /// Blocks held in memory per backup, shared by its stripes (each holds
    /// at least [`MIN_STRIPE_WINDOW`]): how far out of order SQL Server's
    /// blocks may arrive, and what bounds the endpoint's memory whatever
    /// the number of stripes.
    pub reorder_window: usize,
}

/// The fewest blocks a stripe's reorder window holds: SQL Server keeps
/// several buffers of a device in flight (the emulator four), and a
/// window smaller than that would fail stripes whose blocks merely
/// overtook each other.
pub const MIN_STRIPE_WINDOW: usize = 4;

/// Each stripe's share of a backup's `window` blocks (at least
/// [`MIN_STRIPE_WINDOW`]).
pub fn stripe_window(window: usize, stripes: usize) -> usize {
    (window / stripes.max(1)).max(MIN_STRIPE_WINDOW)
}

impl BlobEndpointConfig {
    /// A configuration with the URL port of `listen` and the default window.
    pub fn new(
        listen: SocketAddr,
        host: impl Into<String>,
        tls_cert: impl Into<PathBuf>,
        tls_key: impl Into<PathBuf>,
    ) -> Self {
        BlobEndpointConfig {
            listen,
            host: host.into(),
            port: None,
            tls_cert: tls_cert.into(),
            tls_key: tls_key.into(),
            reorder_window: DEFAULT_REORDER_WINDOW,
        }
    }
}

/// The blob endpoint as a [`DataPath`]. Starts listening when the first
/// device is opened, and stops when the last device is dropped.
#[derive(Debug)]
pub struct BlobEndpoint {
    config: BlobEndpointConfig,
    /// The listener the devices of this endpoint hold, while one does.
    running: Mutex<Weak<Listener>>,
}

impl BlobEndpoint {
    /// An endpoint for `config`; nothing listens until a device is opened.
    pub fn new(config: BlobEndpointConfig) -> Self {
        BlobEndpoint {
            config,
            running: Mutex::new(Weak::new()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &BlobEndpointConfig {
        &self.config
    }

    /// The name of the credential SQL Server needs for the endpoint's URLs:
    /// `https://<host>[:<port>]/strata` (SQL Server picks the credential
    /// whose name is the longest prefix of a URL). With a listen port of 0
    /// and no URL port configured, the port is the running listener's.
    pub fn credential_name(&self) -> String {
        let port = self
            .config
            .port
            .or_else(|| self.local_addr().map(|a| a.port()))
            .unwrap_or(self.config.listen.port());
        self.container_url(port)
    }

    /// The address listened on, while a device of this endpoint is open.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.running).upgrade().map(|l| l.addr)
    }

    fn container_url(&self, port: u16) -> String {
        let host = &self.config.host;
        match port {
            HTTPS_PORT => format!("https://{host}/{}", azure::CONTAINER),
            port => format!("https://{host}:{port}/{}", azure::CONTAINER),
        }
    }

    /// The listener, started if none of this endpoint's runs.
    fn listener(&self) -> Result<Arc<Listener>> {
        let mut running = lock(&self.running);
        if let Some(listener) = running.upgrade()
            && !listener.has_stopped()
        {
            return Ok(listener);
        }
        let config = &self.config;
        let listener = Listener::shared(config.listen, &config.tls_cert, &config.tls_key)?;
        *running = Arc::downgrade(&listener);
        Ok(listener)
    }

    /// The URL of `blob` under `token`.
    fn url(&self, listener: &Listener, token: &str, blob: &str) -> String {
        let container = self.container_url(self.config.port.unwrap_or(listener.addr.port()));
        format!("{container}/{token}/{}", azure::percent_encode(blob))
    }
}

/// The vault stream of stripe `index` (`stripe-000`, ...).
pub fn stripe_stream(index: usize) -> String {
    format!("stripe-{index:03}")
}

/// A device list: `<keyword> URL = N'..', URL = N'..'`.
fn url_clause(keyword: &str, urls: &[String]) -> String {
    let urls: Vec<String> = urls
        .iter()
        .map(|url| format!("URL = {}", quote_literal(url)))
        .collect();
    format!("{keyword} {}", urls.join(", "))
}

impl DataPath for BlobEndpoint {
    fn open_backup(&self, stripes: usize) -> Result<Box<dyn BackupDevice>> {
        if stripes == 0 {
            return Err(Error::config("a backup needs at least one stripe"));
        }
        let listener = self.listener()?;
        let (blobs, calls): (Vec<_>, Vec<_>) = (0..stripes)
            .map(|i| Blob::backup(&stripe_stream(i)))
            .unzip();
        let registration = listener.register(blobs.clone());
        let urls = blobs
            .iter()
            .map(|blob| self.url(&listener, &registration.token, &blob.name))
            .collect();
        Ok(Box::new(BlobBackupDevice {
            registration,
            blobs,
            calls: Some(calls),
            urls,
            window: stripe_window(self.config.reorder_window, stripes),
        }))
    }

    fn open_restore(&self, backups: Vec<ServedBackup>) -> Result<Box<dyn RestoreDevice>> {
        let listener = self.listener()?;
        let mut registrations = Vec::with_capacity(backups.len());
        let mut urls = Vec::with_capacity(backups.len());
        let mut served = Vec::new();
        for backup in backups {
            let mut blobs = Vec::with_capacity(backup.stripes.len());
            for (stream, size) in &backup.stripes {
                let (blob, calls) = Blob::restore(stream, *size);
                blobs.push(blob.clone());
                served.push(ServedBlob {
                    blob,
                    backup: backup.id.clone(),
                    size: *size,
                    calls,
                });
            }
            let registration = listener.register(blobs.clone());
            urls.push(
                blobs
                    .iter()
                    .map(|blob| self.url(&listener, &registration.token, &blob.name))
                    .collect(),
            );
            registrations.push(registration);
        }
        Ok(Box::new(BlobRestoreDevice {
            listener,
            _registrations: registrations,
            urls,
            served: Mutex::new(Some(served)),
        }))
    }
}

/// The URL devices of one backup.
struct BlobBackupDevice {
    registration: Registration,
    blobs: Vec<Arc<Blob>>,
    /// The stripes' calls, until [`receive`](BackupDevice::receive) takes them.
    calls: Option<Vec<mpsc::Receiver<Call>>>,
    urls: Vec<String>,
    window: usize,
}

#[async_trait]
impl BackupDevice for BlobBackupDevice {
    fn to_clause(&self) -> String {
        url_clause("TO", &self.urls)
    }

    fn first_device(&self) -> String {
        self.urls[0].clone()
    }

    async fn receive(&mut self, sink: &dyn BackupSink) -> Result<Vec<StreamRecord>> {
        let calls = self
            .calls
            .take()
            .ok_or_else(|| Error::engine("this backup device already received its stripes"))?;
        let window = self.window;
        let stripes = self
            .blobs
            .iter()
            .zip(calls)
            .map(|(blob, calls)| stripe::receive(blob.clone(), calls, sink, window));
        let listener = &self.registration.listener;
        tokio::select! {
            records = futures::future::try_join_all(stripes) => records,
            error = listener.stopped() => Err(error),
        }
    }
}

/// The URL devices of a restore.
struct BlobRestoreDevice {
    listener: Arc<Listener>,
    /// Keeps the URLs served.
    _registrations: Vec<Registration>,
    /// Per backup, its stripes' URLs.
    urls: Vec<Vec<String>>,
    /// The blobs and their calls while no `serve`(RestoreDevice::serve) runs.
    served: Mutex<Option<Vec<ServedBlob>>>,
}

/// The blobs a running `serve` holds; given back when it ends.
struct Serving<'a> {
    device: &'a BlobRestoreDevice,
    blobs: Vec<ServedBlob>,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        *lock(&self.device.served) = Some(std::mem::take(&mut self.blobs));
    }
}

#[async_trait]
impl RestoreDevice for BlobRestoreDevice {
    fn from_clause(&self, index: usize) -> String {
        url_clause("FROM", &self.urls[index])
    }

    async fn serve(&self, source: &dyn RestoreSource) -> Result<()> {
        let blobs = lock(&self.served)
            .take()
            .ok_or_else(|| Error::engine("this restore device is already serving its backups"))?;
        let mut serving = Serving {
            device: self,
            blobs,
        };
        let blobs = serving
            .blobs
            .iter_mut()
            .map(|blob| serve::serve(blob, source));
        tokio::select! {
            served = futures::future::try_join_all(blobs) => served.map(|_| ()),
            error = self.listener.stopped() => Err(error),
        }
    }
}

//! The HTTPS listener: one per listen address per process, shared by every
//! job that uses the address, alive while a job holds it.
//!
//! A log backup must be able to run while a full backup of another
//! database (or of the same one) runs, and both write to URLs of the same
//! host and port: so the listener is not a job's. Jobs register their
//! blobs under a fresh token ([`Registration`]); the listener routes each
//! request by the token in its path. When the last job lets go of a
//! listener its task ends and the port is free; the next job starts a new
//! one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use strata_core::{Error, Result};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::route::{self, Blob, Routes, lock};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many accept failures in a row (other than a client that went
/// away) stop the listener.
const ACCEPT_FAILURES: u32 = 10;

/// The running listeners with a non-zero port, by listen address.
static LISTENERS: LazyLock<Mutex<HashMap<SocketAddr, Weak<Listener>>>> =
    LazyLock::new(Default::default);

/// A running listener.
pub struct Listener {
    /// The bound address (the actual port when the listen port was 0).
    pub addr: SocketAddr,
    /// The certificate and key it serves.
    tls_files: (PathBuf, PathBuf),
    routes: Arc<Routes>,
    /// Why the listener stopped, once it did.
    stopped: watch::Receiver<Option<String>>,
    task: AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// The listener on `listen`: the running one if this process has one
    /// there, else a new one serving `cert` and `key`. Listeners on port 0
    /// are never shared (each has a port of its own).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](strata_core::ErrorKind::Config) when a running
    /// listener on `listen` serves another certificate; otherwise as
    /// [`start`](Self::start).
    pub fn shared(listen: SocketAddr, cert: &Path, key: &Path) -> Result<Arc<Listener>> {
        if listen.port() == 0 {
            return Self::start(listen, cert, key);
        }
        let mut listeners = lock(&LISTENERS);
        listeners.retain(|_, listener| listener.strong_count() > 0);
        if let Some(running) = listeners.get(&listen).and_then(Weak::upgrade)
            && !running.has_stopped()
        {
            if running.tls_files != (cert.to_path_buf(), key.to_path_buf()) {
                return Err(Error::config(format!(
                    "the blob endpoint on {listen} is already serving the certificate {}, not {}",
                    running.tls_files.0.display(),
                    cert.display()
                ))
                .hint("give the SQL Server instances that share blob_listen the same tls_cert and tls_key, or each its own blob_listen"));
            }
            return Ok(running);
        }
        let listener = Self::start(listen, cert, key)?;
        listeners.insert(listen, Arc::downgrade(&listener));
        Ok(listener)
    }

    /// Binds `listen` and serves HTTPS there with the certificate chain in
    /// `cert` and the key in `key`, on the current Tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](strata_core::ErrorKind::Config) for unusable
    /// certificate files or no Tokio runtime;
    /// [`ErrorKind::Io`](strata_core::ErrorKind::Io) when the address
    /// cannot be bound, with what to do about it.
    pub fn start(listen: SocketAddr, cert: &Path, key: &Path) -> Result<Arc<Listener>> {
        let tls = crate::tls::server_config(cert, key)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("the blob endpoint needs a Tokio runtime to run on"))?;
        let _entered = runtime.enter();
        let listener = bind(listen)?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("cannot read the address bound for {listen}: {e}")))?;
        let routes = Arc::new(Routes::default());
        let (stop, stopped) = watch::channel(None);
        let task = runtime.spawn(accept(
            listener,
            TlsAcceptor::from(tls),
            routes.clone(),
            stop,
            addr,
        ));
        tracing::info!(%addr, cert = %cert.display(), "blob endpoint listening");
        Ok(Arc::new(Listener {
            addr,
            tls_files: (cert.to_path_buf(), key.to_path_buf()),
            routes,
            stopped,
            task: task.abort_handle(),
        }))
    }

    /// Whether the listener stopped accepting connections.
    pub fn has_stopped(&self) -> bool {
        self.stopped.borrow().is_some() || self.task.is_finished()
    }

    /// Waits until the listener stops accepting connections, and says why.
    pub async fn stopped(&self) -> Error {
        let mut stopped = self.stopped.clone();
        let why = match stopped.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The task ended without saying why: it panicked.
            Err(_) => format!("the blob endpoint on {} stopped unexpectedly", self.addr),
        };
        Error::io(why).hint("run the job again; the blob endpoint starts anew")
    }

    /// Serves `blobs` under a new token until the registration is dropped.
    pub fn register(self: &Arc<Self>, blobs: Vec<Arc<Blob>>) -> Registration {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.routes.insert(token.clone(), blobs);
        Registration {
            listener: self.clone(),
            token,
        }
    }
}

/// A job's blobs, served under [`token`](Self::token) while this lives.
pub struct Registration {
    /// The listener serving them.
    pub listener: Arc<Listener>,
    /// The token in the URLs.
    pub token: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.listener.routes.remove(&self.token);
    }
}

/// Binds `listen` (with `SO_REUSEADDR`, so that a listener started right
/// after another one on the same port finds it free).
fn bind(listen: SocketAddr) -> Result<TcpListener> {
    let failed = |e: std::io::Error| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another program listens on {listen}, or another `strata` command of this instance runs a backup or restore now (one process serves one endpoint: the service shares it among its jobs, and a command started beside it cannot): wait for it and run this again, run backups through the service, or set blob_listen (and blob_port) to a free address"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need CAP_NET_BIND_SERVICE: grant it to the strata service (AmbientCapabilities=CAP_NET_BIND_SERVICE), or listen on a higher port than {}",
                listen.port()
            ),
            _ => format!("check blob_listen ({listen}) names an address of this host"),
        };
        Error::io(format!(
            "cannot listen on {listen} for SQL Server's backups: {e}"
        ))
        .with_source(e)
        .hint(hint)
    };
    let socket = match listen {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(listen).map_err(failed)?;
    socket.listen(1024).map_err(failed)
}

/// Accepts connections until aborted, or until accepting keeps failing.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    routes: Arc<Routes>,
    stop: watch::Sender<Option<String>>,
    addr: SocketAddr,
) {
    let mut connections = JoinSet::new();
    let mut failures = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    failures = 0;
                    connections.spawn(connection(tcp, peer, acceptor.clone(), routes.clone()));
                }
                // The client went away before it was accepted.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    failures += 1;
                    tracing::warn!(%addr, error = %e, failures, "the blob endpoint cannot accept a connection");
                    if failures >= ACCEPT_FAILURES {
                        let why = format!("the blob endpoint on {addr} stopped accepting connections: {e}");
                        tracing::error!(%addr, "{why}");
                        stop.send_replace(Some(why));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Serves one connection: the TLS handshake, then HTTP/1.1 requests.
async fn connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, routes: Arc<Routes>) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(
                %peer,
                error = %e,
                "TLS handshake with the blob endpoint failed: SQL Server's host must trust the endpoint's CA (ca.crt) and use the host name of its certificate"
            );
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake with the blob endpoint timed out");
            return;
        }
    };
    let service = service_fn(move |request| {
        let routes = routes.clone();
        async move { Ok::<_, std::convert::Infallible>(route::handle(&routes, request).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "blob endpoint connection ended");
    }
}

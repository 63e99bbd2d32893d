//! A fault-injecting HTTP proxy in front of an object-store emulator (moto
//! for S3, Azurite for Azure Blob), on loopback: what the `outage` campaign
//! puts between Strata and its vault.
//!
//! [`StoreProxy::start`] listens on a free port of 127.0.0.1 and forwards
//! every request to the emulator, one upstream connection per request,
//! headers and bodies untouched (so request signatures stay valid). At any
//! moment the campaign arms one [`Fault`] with [`StoreProxy::inject`]; from
//! then on each request is either passed through or gets the fault:
//!
//! | [`FaultKind`] | what the client sees | does the store see the request? |
//! |---|---|---|
//! | `Refuse` | connection refused: the listener is closed for the whole window (requests on connections already open are reset) | no |
//! | `Reset` | the connection is reset (TCP RST) when the request arrives | no |
//! | `Status(500 / 503)` | that status, with the store's own error body (S3 `InternalError` / `SlowDown`, Azure `InternalError` / `ServerBusy`) | no |
//! | `Delay(d)` | the store's answer, `d` late | yes |
//! | `Throttle { bytes_per_second }` | both bodies trickle at that rate | yes |
//! | `CutRequest { after_bytes }` | the upload is cut: that many body bytes are read, then the connection is reset | no |
//! | `CutResponse { after_bytes }` | the answer's head and that many body bytes, then a reset (a shorter body arrives whole and counts as no fault) | yes |
//! | `LoseResponse` | the store does the work, the answer never arrives (reset) | yes |
//!
//! A fault applies to the requests its [`Matcher`] selects (a method, a
//! text in the path or the query: "only the `PUT` of manifests", "only the
//! `POST` that completes a multipart upload"), each with a probability (a
//! random fraction of the requests), at most a number of times, and during a
//! window: from now, from the n-th request (or the n-th selected request)
//! after it was armed, or from a moment, for a duration or until
//! [`StoreProxy::pass`]. `Refuse` closes the
//! listener, which cannot choose requests: it ignores the matcher and the
//! probability.
//!
//! [`StoreProxy::stats`] counts connections, requests, requests forwarded
//! and faults injected (in all and per kind); [`StoreProxy::window`] says
//! whether and when the armed fault's window began, so a campaign knows
//! whether its outage hit the command it ran. Dropping the proxy stops it
//! (its runtime and every connection go).
//!
//! Strata is pointed at the proxy through the store's endpoint variable
//! ([`StoreProxy::env`]): `AWS_ENDPOINT` for S3 (the bucket stays in the
//! path), `AZURITE_BLOB_STORAGE_URL` for Azurite; the vault URLs
//! (`s3://strata-test/...`, `az://strata-test/...`) do not change.
//!
//! ```no_run
//! use std::time::Duration;
//! use strata_e2e::chaos::proxy::{Fault, FaultKind, Matcher, StoreKind, StoreProxy};
//!
//! let proxy = StoreProxy::start(StoreKind::S3, "127.0.0.1:5000".parse().unwrap()).unwrap();
//! // Every manifest PUT answers 503 for two seconds, starting at the 10th request.
//! proxy.inject(
//!     Fault::new(FaultKind::Status(503))
//!         .matching(Matcher::any().method("PUT").path_contains("/manifests/"))
//!         .after_requests(10)
//!         .lasting(Duration::from_secs(2)),
//! );
//! // ... run `strata` with proxy.env() ...
//! proxy.pass();
//! println!("{:?}", proxy.stats());
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::backends::Backend;

/// The store behind the proxy: it decides the error bodies the proxy
/// answers with and the variable that points Strata at the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 (moto).
    S3,
    /// Azure Blob storage (Azurite).
    Azure,
}

impl StoreKind {
    /// The store of a backend; `None` for backends without an HTTP endpoint
    /// the proxy can stand in front of.
    pub fn of(backend: Backend) -> Option<StoreKind> {
        match backend {
            Backend::S3 => Some(StoreKind::S3),
            Backend::Azure => Some(StoreKind::Azure),
            _ => None,
        }
    }

    /// The backend.
    pub fn backend(self) -> Backend {
        match self {
            StoreKind::S3 => Backend::S3,
            StoreKind::Azure => Backend::Azure,
        }
    }

    /// The variable holding the emulator's endpoint (`http://127.0.0.1:port`),
    /// which the proxy replaces for the commands it stands in front of.
    pub fn endpoint_variable(self) -> &'static str {
        match self {
            StoreKind::S3 => "AWS_ENDPOINT",
            StoreKind::Azure => "AZURITE_BLOB_STORAGE_URL",
        }
    }

    /// A short name (`s3`, `azure`).
    pub fn name(self) -> &'static str {
        self.backend().name()
    }
}

/// What a faulty request gets. See the module docs for what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The store is unreachable: connections are refused.
    Refuse,
    /// The connection is reset when a request arrives.
    Reset,
    /// An HTTP error status (500, 503) with the store's error body.
    Status(u16),
    /// The store's answer arrives this late.
    Delay(Duration),
    /// Request and response bodies trickle at this rate.
    Throttle {
        /// Bytes per second, in each direction.
        bytes_per_second: u64,
    },
    /// The request body is cut after this many bytes (the store never
    /// sees the request).
    CutRequest {
        /// Body bytes read before the reset.
        after_bytes: u64,
    },
    /// The response body is cut after this many bytes.
    CutResponse {
        /// Body bytes delivered before the reset.
        after_bytes: u64,
    },
    /// The store handles the request; its answer is lost.
    LoseResponse,
}

impl FaultKind {
    /// A short name for counts and reports (`refuse`, `reset`, `500`,
    /// `503`, `delay`, `throttle`, `cut-request`, `cut-response`,
    /// `lose-response`).
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Refuse => "refuse",
            FaultKind::Reset => "reset",
            FaultKind::Status(500) => "500",
            FaultKind::Status(503) => "503",
            FaultKind::Status(_) => "status",
            FaultKind::Delay(_) => "delay",
            FaultKind::Throttle { .. } => "throttle",
            FaultKind::CutRequest { .. } => "cut-request",
            FaultKind::CutResponse { .. } => "cut-response",
            FaultKind::LoseResponse => "lose-response",
        }
    }
}

/// Which requests a fault applies to. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    method: Option<Method>,
    path: Vec<String>,
    query: Option<String>,
}

impl Matcher {
    /// Every request.
    pub fn any() -> Matcher {
        Matcher::default()
    }

    /// Only requests with this method (`PUT`, `POST`, `GET`, ...).
    ///
    /// # Panics
    /// When `method` is not an HTTP method.
    pub fn method(mut self, method: &str) -> Matcher {
        self.method = Some(Method::from_bytes(method.as_bytes()).expect("an HTTP method"));
        self
    }

    /// Only requests whose path contains `text` (`/manifests/`,
    /// `/engines/`); given twice, both must be there.
    pub fn path_contains(mut self, text: &str) -> Matcher {
        self.path.push(text.to_owned());
        self
    }

    /// Only requests whose query contains `text` (`uploadId=`,
    /// `comp=blocklist`).
    pub fn query_contains(mut self, text: &str) -> Matcher {
        self.query = Some(text.to_owned());
        self
    }

    /// Whether a request matches.
    pub fn matches(&self, method: &Method, path: &str, query: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.iter().all(|p| path.contains(p.as_str()))
            && self.query.as_deref().is_none_or(|q| query.contains(q))
    }
}

/// When a fault's window begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Now,
    AfterRequests(u64),
    AfterMatching(u64),
    At(Instant),
}

/// A fault to arm: its kind, which requests, how likely, and when.
#[derive(Debug, Clone)]
pub struct Fault {
    kind: FaultKind,
    matcher: Matcher,
    probability: f64,
    start: Start,
    duration: Option<Duration>,
    limit: Option<u64>,
    seed: u64,
}

impl Fault {
    /// `kind` for every request, from now until [`StoreProxy::pass`].
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            matcher: Matcher::any(),
            probability: 1.0,
            start: Start::Now,
            duration: None,
            limit: None,
            seed: 0,
        }
    }

    /// The kind.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    /// Only the requests `matcher` selects.
    pub fn matching(mut self, matcher: Matcher) -> Fault {
        self.matcher = matcher;
        self
    }

    /// Each selected request gets the fault with this probability (the
    /// draws come from `seed`, see [`Fault::seed`]).
    pub fn probability(mut self, probability: f64) -> Fault {
        self.probability = probability.clamp(0.0, 1.0);
        self
    }

    /// The seed of the probability draws.
    pub fn seed(mut self, seed: u64) -> Fault {
        self.seed = seed;
        self
    }

    /// The window begins with the `n`-th request (counting from 1, every
    /// request counts) after the fault is armed.
    pub fn after_requests(mut self, n: u64) -> Fault {
        self.start = Start::AfterRequests(n.max(1));
        self
    }

    /// The window begins with the `n`-th request (counting from 1) the
    /// matcher selects after the fault is armed: a fault aimed at one kind
    /// of request starts with one of those.
    pub fn after_matching(mut self, n: u64) -> Fault {
        self.start = Start::AfterMatching(n.max(1));
        self
    }

    /// The window begins `delay` after the fault is armed.
    pub fn after(mut self, delay: Duration) -> Fault {
        self.start = Start::At(Instant::now() + delay);
        self
    }

    /// The window lasts `duration` (by default until [`StoreProxy::pass`]).
    pub fn lasting(mut self, duration: Duration) -> Fault {
        self.duration = Some(duration);
        self
    }

    /// At most `n` requests get the fault.
    pub fn at_most(mut self, n: u64) -> Fault {
        self.limit = Some(n);
        self
    }
}

/// What the proxy has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests forwarded to the store.
    pub forwarded: u64,
    /// Faults injected: requests that got one, and each closing of the
    /// listener by `Refuse`.
    pub faults: u64,
    /// Faults injected per [`FaultKind::name`].
    pub by_kind: BTreeMap<&'static str, u64>,
}

/// The window of the armed fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When it began; `None` while it waits for its start.
    pub began: Option<Instant>,
    /// Requests that got the fault.
    pub injected: u64,
}

/// The armed fault and what happened to it.
#[derive(Debug)]
struct Armed {
    fault: Fault,
    seen: u64,
    matched: u64,
    began: Option<Instant>,
    injected: u64,
    rng: StdRng,
}

impl Armed {
    /// Whether the window is open at `now`; opens it when its start is due.
    fn open_at(&mut self, now: Instant) -> bool {
        if self.began.is_none()
            && let Start::At(at) = self.fault.start
            && now >= at
        {
            self.began = Some(at);
        }
        match (self.began, self.fault.duration) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(began), Some(duration)) => now < began + duration,
        }
    }

    /// When the window closes (`None`: not before [`StoreProxy::pass`]).
    fn closes(&self) -> Option<Instant> {
        Some(self.began? + self.fault.duration?)
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    by_kind: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug)]
struct Shared {
    store: StoreKind,
    upstream: SocketAddr,
    armed: Mutex<Option<Armed>>,
    changed: Notify,
    counters: Counters,
}

impl Shared {
    fn armed(&self) -> MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, kind: &FaultKind) {
        *self
            .counters
            .by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.name())
            .or_default() += 1;
    }

    /// The fault this request gets, if any (counted as injected).
    fn decide(&self, method: &Method, path: &str, query: &str) -> Option<FaultKind> {
        let mut guard = self.armed();
        let armed = guard.as_mut()?;
        let now = Instant::now();
        let kind = armed.fault.kind;
        let selects = kind == FaultKind::Refuse || armed.fault.matcher.matches(method, path, query);
        armed.seen += 1;
        armed.matched += u64::from(selects);
        let due = match armed.fault.start {
            Start::AfterRequests(n) => armed.seen >= n,
            Start::AfterMatching(n) => armed.matched >= n,
            Start::Now | Start::At(_) => false,
        };
        if armed.began.is_none() && due {
            armed.began = Some(now);
            self.changed.notify_one();
        }
        if !armed.open_at(now) {
            return None;
        }
        if !selects
            || armed
                .fault
                .limit
                .is_some_and(|limit| armed.injected >= limit)
        {
            return None;
        }
        if kind != FaultKind::Refuse
            && armed.fault.probability < 1.0
            && !armed.rng.random_bool(armed.fault.probability)
        {
            return None;
        }
        armed.injected += 1;
        Some(kind)
    }

    /// For the accept loop: `Ok(until)` while connections must be refused
    /// (until `until`, or until the fault changes), `Err(next)` otherwise
    /// (`next`: when that may change without a notice).
    fn refusing(&self) -> Result<Option<Instant>, Option<Instant>> {
        let mut guard = self.armed();
        let Some(armed) = guard.as_mut() else {
            return Err(None);
        };
        if armed.fault.kind != FaultKind::Refuse {
            return Err(None);
        }
        let now = Instant::now();
        if armed.open_at(now) {
            return Ok(armed.closes());
        }
        match (armed.began, armed.fault.start) {
            (None, Start::At(at)) => Err(Some(at)),
            _ => Err(None),
        }
    }
}

/// The fault-injecting proxy. See the module docs.
pub struct StoreProxy {
    shared: Arc<Shared>,
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for StoreProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreProxy")
            .field("store", &self.shared.store)
            .field("port", &self.port)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl StoreProxy {
    /// A proxy in front of the emulator of `store` that the environment
    /// names (`AWS_ENDPOINT`, `AZURITE_BLOB_STORAGE_URL`, as
    /// `scripts/emulators.sh` writes them); `None` when it is not set.
    ///
    /// # Panics
    /// When the variable does not hold `http://<ip>:<port>`, or the proxy
    /// cannot start.
    pub fn in_front_of(store: StoreKind) -> Option<StoreProxy> {
        let endpoint = std::env::var(store.endpoint_variable()).ok()?;
        let address = endpoint
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| {
                panic!(
                    "{}={endpoint} is not http://<ip>:<port>: {e}",
                    store.endpoint_variable()
                )
            });
        Some(
            StoreProxy::start(store, address)
                .unwrap_or_else(|e| panic!("the {} proxy does not start: {e}", store.name())),
        )
    }

    /// Starts a proxy on a free port of 127.0.0.1 in front of the store at
    /// `upstream`, passing everything through.
    ///
    /// # Errors
    /// When no port can be bound or the runtime cannot start.
    pub fn start(store: StoreKind, upstream: SocketAddr) -> io::Result<StoreProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(bind(0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            store,
            upstream,
            armed: Mutex::new(None),
            changed: Notify::new(),
            counters: Counters::default(),
        });
        runtime.spawn(accept_loop(shared.clone(), listener, port));
        Ok(StoreProxy {
            shared,
            port,
            runtime: Some(runtime),
        })
    }

    /// The store behind the proxy.
    pub fn store(&self) -> StoreKind {
        self.shared.store
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's endpoint, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variable and value that point a command at the proxy instead of
    /// the store (see [`StoreKind::endpoint_variable`]).
    pub fn env(&self) -> (&'static str, String) {
        (self.shared.store.endpoint_variable(), self.url())
    }

    /// Arms `fault`, replacing the one armed before.
    pub fn inject(&self, fault: Fault) {
        let began = (fault.start == Start::Now).then(Instant::now);
        let rng = StdRng::seed_from_u64(fault.seed);
        *self.shared.armed() = Some(Armed {
            fault,
            seen: 0,
            matched: 0,
            began,
            injected: 0,
            rng,
        });
        self.shared.changed.notify_one();
    }

    /// Disarms the fault: everything passes through again, and a closed
    /// listener opens again.
    pub fn pass(&self) {
        *self.shared.armed() = None;
        self.shared.changed.notify_one();
    }

    /// The armed fault's window; `None` when no fault is armed.
    pub fn window(&self) -> Option<Window> {
        let mut guard = self.shared.armed();
        let armed = guard.as_mut()?;
        armed.open_at(Instant::now());
        Some(Window {
            began: armed.began,
            injected: armed.injected,
        })
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let by_kind = c.by_kind.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            faults: by_kind.values().sum(),
            by_kind,
        }
    }
}

impl Drop for StoreProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A listener on `port` of 127.0.0.1 (0: any free port), with
/// `SO_REUSEADDR` so that a refusal can close it and bind it again.
async fn bind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: u16) {
    let mut listener = Some(listener);
    loop {
        let changed = shared.changed.notified();
        match shared.refusing() {
            Ok(until) => {
                if listener.take().is_some() {
                    shared.count(&FaultKind::Refuse);
                }
                match until {
                    Some(until) => {
                        tokio::select! {
                            _ = changed => {}
                            _ = tokio::time::sleep_until(until.into()) => {}
                        }
                    }
                    None => changed.await,
                }
            }
            Err(next) => {
                if listener.is_none() {
                    // Another process may hold the port for a moment (a
                    // client's ephemeral port): try again until it is free.
                    match bind(port).await {
                        Ok(bound) => listener = Some(bound),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let open = listener.as_ref().expect("bound above");
                let far = Instant::now() + Duration::from_secs(3600);
                tokio::select! {
                    accepted = open.accept() => {
                        if let Ok((stream, _)) = accepted {
                            shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(serve(shared.clone(), stream));
                        }
                    }
                    _ = changed => {}
                    _ = tokio::time::sleep_until(next.unwrap_or(far).into()) => {}
                }
            }
        }
    }
}

/// A client connection that ends with a TCP reset instead of a close when
/// a fault says so.
struct ClientConnection {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset.load(Ordering::Relaxed) {
            // No orderly close: the drop resets the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

type ProxyBody = BoxBody<Bytes, io::Error>;

/// Why the proxy dropped a connection (hyper then closes it).
#[derive(Debug)]
struct Dropped(&'static str);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Dropped {}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ClientConnection {
        stream,
        reset: reset.clone(),
    });
    let service =
        hyper::service::service_fn(move |request| handle(shared.clone(), reset.clone(), request));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Dropped> {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (method, path, query) = (
        request.method().clone(),
        request.uri().path().to_owned(),
        request.uri().query().unwrap_or_default().to_owned(),
    );
    let Some(kind) = shared.decide(&method, &path, &query) else {
        return forward(&shared, request, None).await;
    };
    let drop_connection = |what: &'static str| {
        reset.store(true, Ordering::Relaxed);
        Err(Dropped(what))
    };
    match kind {
        FaultKind::Refuse | FaultKind::Reset => {
            shared.count(&kind);
            drop_connection("reset")
        }
        FaultKind::Status(code) => {
            // Read the upload first, so the client sees the answer rather
            // than a connection closed under its body.
            let _ = request.into_body().collect().await;
            shared.count(&kind);
            Ok(error_response(shared.store, code, &method))
        }
        FaultKind::Delay(delay) => {
            let response = forward(&shared, request, None).await;
            tokio::time::sleep(delay).await;
            shared.count(&kind);
            response
        }
        FaultKind::Throttle { bytes_per_second } => {
            shared.count(&kind);
            forward(&shared, request, Some(bytes_per_second)).await
        }
        FaultKind::CutRequest { after_bytes } => {
            let mut body = BodyStream::new(request.into_body());
            let mut read = 0u64;
            while read < after_bytes {
                match body.next().await {
                    Some(Ok(frame)) => {
                        read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
            shared.count(&kind);
            drop_connection("request cut")
        }
        FaultKind::CutResponse { after_bytes } => {
            let response = forward(&shared, request, None).await?;
            let (parts, body) = response.into_parts();
            let known = body.size_hint().exact();
            if known.is_some_and(|len| len <= after_bytes) {
                return Ok(Response::from_parts(parts, body));
            }
            shared.count(&kind);
            let body = cut_after(body, after_bytes, reset.clone());
            Ok(Response::from_parts(parts, body))
        }
        FaultKind::LoseResponse => {
            let response = forward(&shared, request, None).await?;
            // The store finished the request; its answer goes nowhere.
            let _ = response.into_body().collect().await;
            shared.count(&kind);
            drop_connection("response lost")
        }
    }
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
}

/// Sends the request to the store on a new connection; `throttle` slows
/// both bodies to that many bytes per second.
async fn forward(
    shared: &Shared,
    request: Request<Incoming>,
    throttle: Option<u64>,
) -> Result<Response<ProxyBody>, Dropped> {
    let (parts, body) = request.into_parts();
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(stream) => stream,
        Err(_) => {
            return Ok(plain_response(
                StatusCode::BAD_GATEWAY,
                "the emulator behind the proxy is down",
            ));
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|_| Dropped("upstream handshake"))?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(parts.uri)
        .version(hyper::Version::HTTP_11);
    for (name, value) in end_to_end(&parts.headers) {
        builder = builder.header(name, value);
    }
    let body = match throttle {
        Some(rate) if body.size_hint().exact() != Some(0) => slowed(body, rate),
        _ => body.map_err(io::Error::other).boxed(),
    };
    let upstream_request = builder.body(body).map_err(|_| Dropped("request"))?;
    let response = sender
        .send_request(upstream_request)
        .await
        .map_err(|_| Dropped("upstream request"))?;
    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = response.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    for (name, value) in end_to_end(&headers) {
        parts.headers.append(name, value.clone());
    }
    let body = match throttle {
        Some(rate) if body.size_hint().exact() != Some(0) => slowed(body, rate),
        _ => body.map_err(io::Error::other).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}

/// `body`, trickling at `rate` bytes per second (in pieces of a tenth of a
/// second).
fn slowed(body: Incoming, rate: u64) -> ProxyBody {
    let piece = (rate / 10).max(1) as usize;
    let per_piece = Duration::from_secs_f64(piece as f64 / rate.max(1) as f64);
    let frames = BodyStream::new(body).flat_map(move |frame| {
        let pieces: Vec<Result<Frame<Bytes>, io::Error>> = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(mut data) => {
                    let mut out = Vec::new();
                    while !data.is_empty() {
                        let n = data.len().min(piece);
                        out.push(Ok(Frame::data(data.split_to(n))));
                    }
                    out
                }
                Err(frame) => vec![Ok(frame)],
            },
            Err(e) => vec![Err(io::Error::other(e))],
        };
        futures::stream::iter(pieces).then(move |item| async move {
            tokio::time::sleep(per_piece).await;
            item
        })
    });
    BoxBody::new(StreamBody::new(frames))
}

/// `body`'s first `after` bytes, then an error (hyper then aborts the
/// connection, which `reset` turns into a TCP reset).
fn cut_after(body: ProxyBody, after: u64, reset: Arc<AtomicBool>) -> ProxyBody {
    enum Cut {
        Sending(BodyStream<ProxyBody>, u64),
        Failing,
        Over,
    }
    let frames = futures::stream::unfold(Cut::Sending(BodyStream::new(body), 0), move |state| {
        let reset = reset.clone();
        async move {
            let (mut frames, sent) = match state {
                Cut::Sending(frames, sent) => (frames, sent),
                Cut::Failing => {
                    let cut = io::Error::new(io::ErrorKind::ConnectionReset, "response cut");
                    return Some((Err(cut), Cut::Over));
                }
                Cut::Over => return None,
            };
            match frames.next().await? {
                Ok(frame) => {
                    let mut data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Some((Ok(frame), Cut::Sending(frames, sent))),
                    };
                    let left = after.saturating_sub(sent);
                    if (data.len() as u64) < left {
                        let sent = sent + data.len() as u64;
                        return Some((Ok(Frame::data(data)), Cut::Sending(frames, sent)));
                    }
                    // The bytes up to the cut go out; the next poll fails.
                    let head = data.split_to(left as usize);
                    reset.store(true, Ordering::Relaxed);
                    Some((Ok(Frame::data(head)), Cut::Failing))
                }
                Err(e) => Some((Err(e), Cut::Over)),
            }
        }
    });
    BoxBody::new(StreamBody::new(frames))
}

fn plain_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// An error answer as the store itself writes it: S3's XML `<Error>` with
/// `InternalError` or `SlowDown`, Azure's with `InternalError` or
/// `ServerBusy` and the `x-ms-error-code` header. A `HEAD` gets no body.
fn error_response(store: StoreKind, code: u16, method: &Method) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = format!("{:016X}", rand::random::<u64>());
    let (error, message) = match (store, code) {
        (StoreKind::S3, 503) => ("SlowDown", "Please reduce your request rate.".to_owned()),
        (StoreKind::S3, _) => (
            "InternalError",
            "We encountered an internal error. Please try again.".to_owned(),
        ),
        (StoreKind::Azure, 503) => (
            "ServerBusy",
            format!(
                "The server is currently unable to receive requests. Please retry your request.\nRequestId:{request_id}"
            ),
        ),
        (StoreKind::Azure, _) => (
            "InternalError",
            format!(
                "The server encountered an internal error. Please retry the request.\nRequestId:{request_id}"
            ),
        ),
    };
    let text = match store {
        StoreKind::S3 => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{error}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
        ),
        StoreKind::Azure => format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{error}</Code><Message>{message}</Message></Error>"
        ),
    };
    let length = text.len();
    let body = if *method == Method::HEAD {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/xml"));
    headers.insert("content-length", HeaderValue::from(length));
    match store {
        StoreKind::S3 => {
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert("x-amz-request-id", value);
            }
        }
        StoreKind::Azure => {
            headers.insert("x-ms-error-code", HeaderValue::from_static(error));
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert("x-ms-request-id", value);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matcher_needs_every_condition() {
        let manifests = Matcher::any().method("PUT").path_contains("/manifests/");
        let put = Method::PUT;
        assert!(manifests.matches(&put, "/b/v/manifests/stream/x/1.json", ""));
        assert!(!manifests.matches(&Method::GET, "/b/v/manifests/stream/x/1.json", ""));
        assert!(!manifests.matches(&put, "/b/v/data/stream/x/1/0.zst", ""));
        let complete = Matcher::any().method("POST").query_contains("uploadId=");
        assert!(complete.matches(&Method::POST, "/b/k", "uploadId=7"));
        assert!(!complete.matches(&Method::POST, "/b/k", "uploads"));
        assert!(Matcher::any().matches(&Method::DELETE, "/", ""));
    }

    fn shared() -> Shared {
        Shared {
            store: StoreKind::S3,
            upstream: "127.0.0.1:9".parse().unwrap(),
            armed: Mutex::new(None),
            changed: Notify::new(),
            counters: Counters::default(),
        }
    }

    fn arm(shared: &Shared, fault: Fault) {
        let began = (fault.start == Start::Now).then(Instant::now);
        *shared.armed() = Some(Armed {
            rng: StdRng::seed_from_u64(fault.seed),
            fault,
            seen: 0,
            matched: 0,
            began,
            injected: 0,
        });
    }

    #[test]
    fn a_window_opens_at_the_nth_request_and_honours_the_limit() {
        let s = shared();
        arm(
            &s,
            Fault::new(FaultKind::Status(503))
                .after_requests(3)
                .at_most(2),
        );
        let get = |s: &Shared| s.decide(&Method::GET, "/b/k", "");
        assert_eq!(get(&s), None);
        assert_eq!(get(&s), None);
        assert_eq!(get(&s), Some(FaultKind::Status(503)));
        assert_eq!(get(&s), Some(FaultKind::Status(503)));
        assert_eq!(get(&s), None, "at most two");
    }

    #[test]
    fn an_aimed_fault_starts_with_a_request_it_aims_at() {
        let s = shared();
        arm(
            &s,
            Fault::new(FaultKind::Status(500))
                .matching(Matcher::any().method("PUT"))
                .after_matching(2),
        );
        assert_eq!(s.decide(&Method::GET, "/", ""), None);
        assert_eq!(s.decide(&Method::PUT, "/", ""), None, "the first PUT");
        assert_eq!(s.decide(&Method::GET, "/", ""), None);
        assert_eq!(
            s.decide(&Method::PUT, "/", ""),
            Some(FaultKind::Status(500))
        );
    }

    #[test]
    fn a_window_closes_after_its_duration() {
        let s = shared();
        arm(
            &s,
            Fault::new(FaultKind::Reset).lasting(Duration::from_millis(30)),
        );
        assert_eq!(s.decide(&Method::GET, "/", ""), Some(FaultKind::Reset));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.decide(&Method::GET, "/", ""), None);
    }

    #[test]
    fn a_fraction_of_the_requests_get_the_fault() {
        let s = shared();
        arm(
            &s,
            Fault::new(FaultKind::Status(500)).probability(0.25).seed(7),
        );
        let hits = (0..2000)
            .filter(|_| s.decide(&Method::PUT, "/", "").is_some())
            .count();
        assert!((400..600).contains(&hits), "{hits} of 2000");
    }

    #[test]
    fn refusal_follows_the_window() {
        let s = shared();
        assert_eq!(s.refusing(), Err(None));
        arm(
            &s,
            Fault::new(FaultKind::Refuse).after(Duration::from_secs(60)),
        );
        assert!(matches!(s.refusing(), Err(Some(_))), "not yet");
        arm(&s, Fault::new(FaultKind::Refuse));
        assert_eq!(s.refusing(), Ok(None), "until the fault is disarmed");
    }
}

//! What the parameter file's `parts_in_flight` (formerly `parallel_parts`)
//! promises: "uploads in flight per pipe" (docs/hana.md). A pipe's segment
//! goes to S3 (moto) as a multipart upload through a recording relay on
//! loopback; the relay counts the upload requests that are in flight at
//! once and holds each one's answer back until N are (or a generous wait
//! passed) and a moment longer, so that an agent that may run N uploads at
//! once does run N however slow the machine. The largest number seen must
//! be exactly the configured one.
//!
//! The relay knows nothing of HTTP beyond its order: on one connection a
//! request (client to store) is answered (store to client) before the next
//! one starts. A request whose body passes 1 MiB is an upload chunk (the
//! writer uploads 8 MiB chunks; every other request is small).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_e2e::backends::{Backend, TestVault};
use strata_e2e::cli::Strata;
use strata_e2e::hana::{BackintCall, HanaHost, Piece, back_up};

/// How long the relay holds back the answer to an upload chunk once the
/// expected number of chunks is in flight (time for one more to start, if
/// the agent would start one).
const HOLD: Duration = Duration::from_millis(400);
/// The longest the relay waits for the expected number of chunks to be in
/// flight before it answers anyway: a slow machine still overlaps them, and
/// an agent that runs fewer is seen to (the peak stays lower).
const OVERLAP_WAIT: Duration = Duration::from_secs(10);
/// A request whose body passes this is an upload chunk.
const UPLOAD: u64 = 1 << 20;

/// `parts_in_flight = 1`: one upload chunk at a time.
#[test]
fn parts_in_flight_1_uploads_one_chunk_at_a_time() {
    uploads_at_most(1, "parts_in_flight_1_uploads_one_chunk_at_a_time");
}

/// `parts_in_flight = 3`: three upload chunks at once, never four.
#[test]
fn parts_in_flight_3_uploads_three_chunks_at_once() {
    uploads_at_most(3, "parts_in_flight_3_uploads_three_chunks_at_once");
}

fn uploads_at_most(parts_in_flight: usize, test: &str) {
    let Some(location) = TestVault::new(Backend::S3, test) else {
        return;
    };
    let endpoint = std::env::var("AWS_ENDPOINT").expect("AWS_ENDPOINT names the S3 endpoint");
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .expect("the S3 endpoint is host:port")
        .next()
        .expect("an address");
    Strata::new()
        .arg("--vault")
        .arg(location.url())
        .args(["vault", "init"])
        .run()
        .success();
    let relay = Relay::start(upstream, parts_in_flight);
    let host = HanaHost::new();
    let par = host.param_file(
        "HDB",
        "data.utl",
        &format!(
            "vault = {}\nvault.aws_endpoint = http://{}\npart_size = 1MiB\n\
             compression_level = 1\nparts_in_flight = {parts_in_flight}\n",
            location.url(),
            relay.address
        ),
    );
    let dir = host.backint_dir("HDB", "DB_HDB");
    // Six full 8 MiB upload chunks and a bit: random bytes, which zstd
    // stores as they are.
    let piece = Piece::fifo(
        &dir,
        "COMPLETE_DATA_BACKUP_databackup_3_1",
        (6 << 23) + 12_345,
        101,
    );
    back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .params(&par)
            .backup_id("1763779000000")
            .count(1)
            .level("COMPLETE"),
        &[&piece],
    );
    let uploads = relay.uploads.load(Ordering::SeqCst);
    let peak = relay.peak.load(Ordering::SeqCst);
    assert!(
        uploads >= 6,
        "{uploads} upload chunks went through the relay"
    );
    assert_eq!(
        peak, parts_in_flight,
        "with parts_in_flight = {parts_in_flight}, {peak} upload chunks were in flight at once \
         (of {uploads})"
    );
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(location.cleanup());
}

/// A TCP relay on loopback in front of the store that counts upload
/// chunks in flight.
struct Relay {
    address: SocketAddr,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    uploads: Arc<AtomicUsize>,
}

/// One relayed connection: bytes of the current request so far, and
/// whether it is counted as an upload in flight.
#[derive(Default)]
struct Exchange {
    sent: u64,
    counted: bool,
}

impl Relay {
    /// A relay to `upstream` that holds each upload chunk's answer until
    /// `expected` chunks are in flight (or [`OVERLAP_WAIT`] passed), then
    /// [`HOLD`] longer.
    fn start(upstream: SocketAddr, expected: usize) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let relay = Relay {
            address: listener.local_addr().unwrap(),
            in_flight: Arc::default(),
            peak: Arc::default(),
            uploads: Arc::default(),
        };
        let (in_flight, peak, uploads) = (
            relay.in_flight.clone(),
            relay.peak.clone(),
            relay.uploads.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(store) = TcpStream::connect(upstream) else {
                    continue;
                };
                let exchange = Arc::new(Mutex::new(Exchange::default()));
                let counters = (in_flight.clone(), peak.clone(), uploads.clone());
                let (client_in, store_out) =
                    (client.try_clone().unwrap(), store.try_clone().unwrap());
                let requests = exchange.clone();
                let (in_flight_up, peak_up, uploads_up) = counters.clone();
                std::thread::spawn(move || {
                    pump(client_in, store_out, |n| {
                        let mut x = requests.lock().unwrap();
                        x.sent += n as u64;
                        if !x.counted && x.sent > UPLOAD {
                            x.counted = true;
                            uploads_up.fetch_add(1, Ordering::SeqCst);
                            let now = in_flight_up.fetch_add(1, Ordering::SeqCst) + 1;
                            peak_up.fetch_max(now, Ordering::SeqCst);
                        }
                    })
                });
                let (in_flight_down, _, _) = counters;
                std::thread::spawn(move || {
                    pump(store, client, |_| {
                        let mut x = exchange.lock().unwrap();
                        if x.counted {
                            // The answer to an upload chunk: held back, so
                            // that the agent's other uploads overlap it.
                            let deadline = std::time::Instant::now() + OVERLAP_WAIT;
                            while in_flight_down.load(Ordering::SeqCst) < expected
                                && std::time::Instant::now() < deadline
                            {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            std::thread::sleep(HOLD);
                            x.counted = false;
                            in_flight_down.fetch_sub(1, Ordering::SeqCst);
                        }
                        x.sent = 0;
                    })
                });
            }
        });
        relay
    }
}

/// Copies `from` to `to` until either side closes, calling `seen` with
/// the size of each read before its bytes are passed on.
fn pump(mut from: TcpStream, mut to: TcpStream, mut seen: impl FnMut(usize)) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen(n);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

//! What the parameter file's `max_channels` promises ("pipes one process
//! serves at once", docs/hana.md): with one more pipe in the call than
//! `max_channels`, the agent opens (is the reader of) exactly
//! `max_channels` pipes while HANA keeps them all busy, and takes the last
//! one only once a pipe is done.
//!
//! Whether the agent reads a pipe is seen from HANA's side of the FIFO: a
//! non-blocking open for writing succeeds only when a reader has it open
//! (otherwise `ENXIO`), and has no effect on the agent.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_e2e::hana::{AGENT_TIMEOUT, BackintCall, HanaHost, Pattern, Piece, TestVault};

/// How long the harness waits for the agent to open a pipe it must open.
const OPENS_WITHIN: Duration = Duration::from_secs(30);
/// How long the harness watches a pipe the agent must leave alone.
const LEFT_ALONE_FOR: Duration = Duration::from_millis(1500);
/// Bytes HANA writes into each pipe: less than a pipe's buffer, so that
/// one non-blocking write takes them all.
const PIECE: u64 = 10_000;

/// `max_channels = 1`: the second pipe is not opened while HANA still
/// writes the first.
#[test]
fn max_channels_1_serves_one_pipe_at_a_time() {
    serves_at_most(1);
}

/// `max_channels = 2`: two pipes are read at once, the third waits until
/// one of them is done.
#[test]
fn max_channels_2_serves_two_pipes_at_a_time() {
    serves_at_most(2);
}

fn serves_at_most(max_channels: usize) {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params(
        "HDB",
        "data.utl",
        vault.url(),
        &format!("max_channels = {max_channels}"),
    );
    let pieces: Vec<Piece> = (0..=max_channels)
        .map(|i| {
            Piece::fifo(
                &dir,
                &format!("COMPLETE_DATA_BACKUP_databackup_3_{}", i + 1),
                PIECE,
                60 + i as u64,
            )
        })
        .collect();
    let mut call = BackintCall::new("backup", "HDB")
        .params(&par)
        .backup_id("1763775000000")
        .count(pieces.len())
        .level("COMPLETE");
    for piece in &pieces {
        call = call.pipe(&piece.path);
    }
    let agent = call.spawn(&host);

    // HANA opens the first `max_channels` pipes and writes a first byte
    // into each, keeping them all open: the agent reads every one of them.
    let mut busy: Vec<File> = pieces[..max_channels]
        .iter()
        .map(|p| {
            let mut w = reader_appears(&p.path)
                .unwrap_or_else(|| panic!("the agent never opened {}", p.path.display()));
            w.write_all(&bytes(p)[..1]).unwrap();
            w
        })
        .collect();
    // ... and not one more while they are busy.
    let last = &pieces[max_channels];
    let deadline = Instant::now() + LEFT_ALONE_FOR;
    while Instant::now() < deadline {
        assert!(
            reader_now(&last.path).is_none(),
            "with max_channels = {max_channels} the agent opened pipe {} while {max_channels} \
             were busy",
            max_channels + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One pipe done: the agent takes the last one.
    let mut first = busy.remove(0);
    first.write_all(&bytes(&pieces[0])[1..]).unwrap();
    drop(first);
    let mut w = reader_appears(&last.path)
        .unwrap_or_else(|| panic!("the agent never opened {}", last.path.display()));
    w.write_all(&bytes(last)).unwrap();
    drop(w);
    for (mut w, p) in busy.into_iter().zip(&pieces[1..max_channels]) {
        w.write_all(&bytes(p)[1..]).unwrap();
    }

    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    for piece in &pieces {
        assert_eq!(result.saved(&piece.path).1, PIECE, "{}", result.describe());
    }
    for m in vault.manifests() {
        let name = m.engine_meta["backint"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let piece = pieces
            .iter()
            .find(|p| p.path.display().to_string() == name)
            .expect("a manifest per piece");
        assert_eq!(m.raw_size(), piece.len, "{name}");
    }
}

/// The bytes HANA writes into `piece`'s pipe.
fn bytes(piece: &Piece) -> Vec<u8> {
    let mut out = vec![0u8; piece.len as usize];
    Pattern::new(piece.len, piece.seed).fill(&mut out);
    out
}

/// HANA's end of the FIFO at `path` if the agent has it open for reading
/// right now (a non-blocking open for writing), `None` if not (`ENXIO`).
fn reader_now(path: &Path) -> Option<File> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => Some(file),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => None,
        Err(e) => panic!("opening {} for writing: {e}", path.display()),
    }
}

/// [`reader_now`], waiting up to [`OPENS_WITHIN`] for the agent.
fn reader_appears(path: &Path) -> Option<File> {
    let deadline = Instant::now() + OPENS_WITHIN;
    loop {
        if let Some(file) = reader_now(path) {
            return Some(file);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

//! What the parameter file's `max_channels` promises ("pipes one process
//! serves at once", docs/hana.md): with one more pipe in the call than
//! `max_channels`, the agent opens (is the reader of) exactly
//! `max_channels` pipes while HANA keeps them all busy, and takes the last
//! one only once a pipe is done.
//!
//! The same holds for a restore: with one more `#EBID`/`#NULL` line than
//! `max_channels`, the agent writes into `max_channels` destination pipes
//! while HANA reads them slowly, and opens the last one only once a pipe
//! is done.
//!
//! Whether the agent reads a pipe is seen from HANA's side of the FIFO: a
//! non-blocking open for writing succeeds only when a reader has it open
//! (otherwise `ENXIO`), and has no effect on the agent. Whether it writes
//! into a destination pipe is seen the same way: HANA holds the pipe open
//! for reading, non-blocking, from before the agent starts, and a
//! non-blocking read returns end of file while no writer has it open, and
//! data or `EAGAIN` once the agent has opened it for writing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, PART_SIZE, Pattern, Piece, TestVault, Transfer, back_up,
    mkfifo, q,
};

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

/// Bytes of each object restored: more than a pipe's buffer holds, so that
/// the agent stays on a destination pipe HANA does not read.
const RESTORED_PIECE: u64 = 4 * PART_SIZE as u64 + 3;

/// `max_channels = 1` on a restore: the second destination pipe gets no
/// writer while HANA still reads the first.
#[test]
fn max_channels_1_restores_into_one_pipe_at_a_time() {
    restores_into_at_most(1);
}

/// `max_channels = 2` on a restore: two destination pipes are written at
/// once, the third only once one of them is done; every pipe then carries
/// the bytes that were backed up.
#[test]
fn max_channels_2_restores_into_two_pipes_at_a_time() {
    restores_into_at_most(2);
}

fn restores_into_at_most(max_channels: usize) {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let backup_par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let pieces: Vec<Piece> = (0..=max_channels)
        .map(|i| {
            Piece::fifo(
                &dir,
                &format!("COMPLETE_DATA_BACKUP_databackup_{}_1", i + 2),
                RESTORED_PIECE,
                70 + i as u64,
            )
        })
        .collect();
    let saved = back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .params(&backup_par)
            .backup_id("1763775500000")
            .count(pieces.len())
            .level("COMPLETE"),
        &pieces.iter().collect::<Vec<_>>(),
    );
    let ebids: Vec<String> = pieces.iter().map(|p| saved.saved(&p.path).0).collect();

    // HANA's destination pipes, open for reading before the agent starts.
    let mut dests: Vec<Destination> = (0..=max_channels)
        .map(|i| Destination::open(&dir.join(format!("restore_{}", i + 1))))
        .collect();
    let restore_par = host.standard_params(
        "HDB",
        "restore.utl",
        vault.url(),
        &format!("max_channels = {max_channels}"),
    );
    let mut call = BackintCall::new("restore", "HDB").params(&restore_par);
    for (i, (piece, dest)) in pieces.iter().zip(&dests).enumerate() {
        call = if i < max_channels {
            call.ebid_to(&ebids[i], &piece.path, &dest.path)
        } else {
            // The last one by name: its newest version.
            call.line(format!(
                "#NULL {} {}",
                q(&piece.path.display().to_string()),
                q(&dest.path.display().to_string())
            ))
        };
    }
    let agent = call.spawn(&host);

    // The agent writes into the first `max_channels` pipes; HANA takes at
    // most one byte of each and reads on no further.
    for dest in &mut dests[..max_channels] {
        assert!(
            dest.writer_appears(),
            "the agent never opened {} for writing",
            dest.path.display()
        );
    }
    // ... and it does not open one more while they are busy.
    let deadline = Instant::now() + LEFT_ALONE_FOR;
    while Instant::now() < deadline {
        assert!(
            !dests[max_channels].has_writer(),
            "with max_channels = {max_channels} the agent opened destination pipe {} for \
             writing while {max_channels} were being read",
            max_channels + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One pipe done: the agent takes the last one.
    dests[0].read_to_end();
    assert!(
        dests[max_channels].writer_appears(),
        "the agent never opened {} for writing after {} was done",
        dests[max_channels].path.display(),
        dests[0].path.display()
    );
    for dest in &mut dests {
        dest.read_to_end();
    }

    for (piece, dest) in pieces.iter().zip(&dests) {
        let got = dest.transfer();
        assert_eq!(got.bytes, piece.len, "{}", dest.path.display());
        assert_eq!(got.blake3, piece.digest(), "{}", dest.path.display());
    }
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let mut restored = result.with("#RESTORED");
    restored.sort();
    let mut expected: Vec<Vec<String>> = pieces
        .iter()
        .zip(&ebids)
        .map(|(p, ebid)| vec![ebid.clone(), p.path.display().to_string()])
        .collect();
    expected.sort();
    assert_eq!(restored, expected, "{}", result.describe());
}

/// HANA's reading end of a restore's destination FIFO, opened
/// non-blocking (which never waits, and lets the agent's open for writing
/// succeed), with every byte read from it so far.
struct Destination {
    path: PathBuf,
    file: File,
    bytes: Vec<u8>,
}

impl Destination {
    /// Creates the FIFO at `path` and opens it for reading.
    fn open(path: &Path) -> Destination {
        mkfifo(path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("opening {} for reading: {e}", path.display()));
        Destination {
            path: path.to_owned(),
            file,
            bytes: Vec::new(),
        }
    }

    /// Reads what is there, at most `max` bytes: `None` at end of file (no
    /// writer has the pipe open), else how many bytes came (0: a writer
    /// has it open but wrote nothing yet).
    fn read_some(&mut self, max: usize) -> Option<usize> {
        let mut buf = vec![0u8; max];
        match self.file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                self.bytes.extend_from_slice(&buf[..n]);
                Some(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(0),
            Err(e) => panic!("reading {}: {e}", self.path.display()),
        }
    }

    /// Whether the agent has the pipe open for writing now; reads at most
    /// one byte.
    fn has_writer(&mut self) -> bool {
        self.read_some(1).is_some()
    }

    /// [`has_writer`](Self::has_writer), waiting up to [`OPENS_WITHIN`].
    fn writer_appears(&mut self) -> bool {
        let deadline = Instant::now() + OPENS_WITHIN;
        while Instant::now() < deadline {
            if self.has_writer() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Reads until the agent, which has the pipe open, closes it.
    fn read_to_end(&mut self) {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        while let Some(n) = self.read_some(1 << 16) {
            if n == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the agent did not finish writing {}",
                    self.path.display()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// What came through the pipe.
    fn transfer(&self) -> Transfer {
        Transfer {
            bytes: self.bytes.len() as u64,
            blake3: blake3::hash(&self.bytes).to_hex().to_string(),
        }
    }
}

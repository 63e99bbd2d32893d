//! `hdbbackint` with its vault on a full or read-only file system, and a
//! `#FILE` object restored onto one, played with the HANA harness
//! ([`crate::hana`]): HANA's pipes are FIFOs, which never fill, so the
//! files Backint writes are the vault's and a `#FILE` restore's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::checks::{Fault, leftovers};
use super::stream::LocalVault;
use super::tmpfs::SmallDisk;
use super::{Campaign, Tally};
use crate::hana::{
    AGENT_TIMEOUT, AgentResult, BackintCall, HanaHost, Pattern, Piece, back_up, drain_pipe,
    feed_pipe, mkfifo, q,
};

const BACKUP_FULL: &str = "hdbbackint backup, vault full";
const BACKUP_READ_ONLY: &str = "hdbbackint backup, vault read-only";
const FILE_FULL: &str = "hdbbackint restore, file target full";
const FILE_READ_ONLY: &str = "hdbbackint restore, file target read-only";

/// The system the harness plays.
const SID: &str = "HDB";

/// How long the harness waits for the agent to open a pipe.
const OPEN: Duration = Duration::from_secs(60);

/// Room enough for anything a run writes before its fault.
const ROOMY: u64 = 256 << 20;

/// Runs the Backint cases.
pub(super) fn run(campaign: &mut Campaign) {
    let root = campaign.dir("hana");
    for (case, fault, runs) in [
        (BACKUP_FULL, Fault::Full, (2, 30)),
        (BACKUP_READ_ONLY, Fault::ReadOnly, (1, 10)),
    ] {
        campaign.case(case, runs, |t, rng| {
            let dir = root.join(format!("{}-{}", slug(case), t.run));
            if let Err(why) = backup_into_small_vault(&dir, fault, t, rng) {
                t.failed(why);
            }
        });
    }
    for (case, fault, runs) in [
        (FILE_FULL, Fault::Full, (2, 30)),
        (FILE_READ_ONLY, Fault::ReadOnly, (1, 10)),
    ] {
        campaign.case(case, runs, |t, rng| {
            let dir = root.join(format!("{}-{}", slug(case), t.run));
            if let Err(why) = restore_file_to_small_disk(&dir, fault, t, rng) {
                t.failed(why);
            }
        });
    }
}

fn slug(case: &str) -> String {
    case.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// One HANA host and its vault.
struct Backint {
    host: HanaHost,
    vault: LocalVault,
    params: PathBuf,
    pipes: PathBuf,
    /// Pieces made so far (each FIFO name is used once).
    made: usize,
}

impl Backint {
    fn new(vault_dir: &Path, scratch: &Path) -> Result<Backint, String> {
        let host = HanaHost::new();
        let vault = LocalVault::init(vault_dir, &scratch.join("catalog.db"))?;
        let url = format!("file://{}", vault_dir.display());
        let params = host.standard_params(SID, "data.utl", &url, "");
        let pipes = host.backint_dir(SID, "DB_HDB");
        Ok(Backint {
            host,
            vault,
            params,
            pipes,
            made: 0,
        })
    }

    /// A new data backup piece of `len` pattern bytes, its FIFO created.
    fn piece(&mut self, len: u64, seed: u64) -> Piece {
        self.made += 1;
        Piece::fifo(
            &self.pipes,
            &format!("COMPLETE_DATA_BACKUP_databackup_{}_1", self.made),
            len,
            seed,
        )
    }

    /// Backs `piece` up, HANA writing its pipe; returns the run.
    fn backup(&self, piece: &Piece) -> AgentResult {
        let agent = BackintCall::new("backup", SID)
            .params(&self.params)
            .pipe(&piece.path)
            .spawn(&self.host);
        let feeder = feed_pipe(&piece.path, piece.len, piece.seed, OPEN);
        let result = agent.finish(AGENT_TIMEOUT);
        // A failed backup stops reading: HANA's write then fails, as it should.
        let _ = feeder.join();
        result
    }

    /// Restores version `ebid` of `piece` into its (new) FIFO and returns
    /// the digest of what came out, or what went wrong.
    fn restored_digest(&self, ebid: &str, piece: &Piece) -> Result<String, String> {
        let _ = std::fs::remove_file(&piece.path);
        mkfifo(&piece.path);
        let agent = BackintCall::new("restore", SID)
            .params(&self.params)
            .ebid(ebid, &piece.path)
            .spawn(&self.host);
        let got = drain_pipe(&piece.path, OPEN);
        let result = agent.finish(AGENT_TIMEOUT);
        if result.code != Some(0) {
            return Err(format!(
                "the restore of {ebid} failed:\n{}",
                result.describe()
            ));
        }
        let got = got.map_err(|e| format!("reading the restore pipe: {e}"))?;
        if got.bytes != piece.len {
            return Err(format!(
                "{ebid} restored {} of {} bytes",
                got.bytes, piece.len
            ));
        }
        Ok(got.blake3)
    }

    /// The Backint log file, where the agent writes each error in full.
    fn log(&self) -> String {
        let log = self
            .host
            .root()
            .join(format!("usr/sap/{SID}/strata-backint.log"));
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

/// What HANA and its operator see of a run: the output file, the agent's
/// standard error, and the Backint log.
fn said(result: &AgentResult, log: &str) -> String {
    format!("{}\n{}\n{log}", result.text, result.stderr)
}

/// A Backint data backup into a vault whose disk fills at a random point
/// of it, or is read-only.
fn backup_into_small_vault(
    dir: &Path,
    fault: Fault,
    t: &mut Tally,
    rng: &mut StdRng,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let disk = SmallDisk::mount(&dir.join("vault-disk"), ROOMY)?;
    let mut backint = Backint::new(&disk.join("vault"), dir)?;
    let base = backint.piece(rng.random_range(1..=1 << 20), rng.random());
    let base_ebid = back_up(
        &backint.host,
        BackintCall::new("backup", SID).params(&backint.params),
        &[&base],
    )
    .saved(&base.path)
    .0;
    let before = backint.vault.ids()?;

    let piece = backint.piece(rng.random_range(256 << 10..=6 << 20), rng.random());
    match fault {
        Fault::Full => disk.leave_free((piece.len as f64 * rng.random_range(0.0..0.95)) as u64)?,
        Fault::ReadOnly => disk.read_only()?,
    }
    let result = backint.backup(&piece);
    let saved = result
        .with("#SAVED")
        .iter()
        .any(|f| f.get(1).map(String::as_str) == Some(&*piece.path.to_string_lossy()));
    if saved || result.code == Some(0) {
        t.failed(format!(
            "a backup of {} bytes was saved into a {} vault:\n{}",
            piece.len,
            if fault == Fault::Full {
                "full"
            } else {
                "read-only"
            },
            result.describe()
        ));
        return Ok(());
    }
    t.fault();
    let errors = result.with("#ERROR");
    if !errors
        .iter()
        .any(|f| f.first().map(String::as_str) == Some(&*piece.path.to_string_lossy()))
    {
        t.failed(format!(
            "no #ERROR line names the piece:\n{}",
            result.describe()
        ));
    }
    let log = backint.log();
    t.clear_error(&said(&result, &log), result.code, 1, fault, disk.path());

    // Nothing half-committed; the earlier version still restores.
    let after = backint.vault.ids()?;
    if after != before {
        t.failed(format!(
            "`list` changed across the failed backup: {before:?}, then {after:?}"
        ));
    }
    let left = leftovers(&backint.vault.dir);
    if !left.is_empty() {
        t.failed(format!("the failed backup left in the vault: {left:?}"));
    }
    if let Err(why) = backint.vault.verify() {
        t.failed(format!("verify after the fault: {why}"));
    }
    match backint.restored_digest(&base_ebid, &base) {
        Ok(digest) if digest == base.digest() => {}
        Ok(_) => t.lost(format!("{base_ebid} restores other bytes")),
        Err(why) => t.lost(why),
    }
    if fault == Fault::ReadOnly {
        // Inquire only reads: it lists the earlier version.
        let result = BackintCall::new("inquire", SID)
            .params(&backint.params)
            .null(&base.path)
            .run(&backint.host);
        let listed = result.with("#BACKUP");
        if result.code != Some(0) || !listed.iter().any(|f| f.first() == Some(&base_ebid)) {
            t.failed(format!(
                "inquire on a read-only vault does not list {base_ebid}:\n{}",
                result.describe()
            ));
        }
    }

    match fault {
        Fault::Full => disk.leave_free(ROOMY)?,
        Fault::ReadOnly => disk.read_write()?,
    }
    let again = backint.piece(piece.len, piece.seed);
    let result = backint.backup(&again);
    if result.code != Some(0) {
        return Err(format!("the re-run failed:\n{}", result.describe()));
    }
    let ebid = result.saved(&again.path).0;
    match backint.restored_digest(&ebid, &again) {
        Ok(digest) if digest == Pattern::digest(again.len, again.seed) => t.rerun_ok(),
        Ok(_) => t.lost(format!("the re-run's {ebid} restores other bytes")),
        Err(why) => t.lost(why),
    }
    Ok(())
}

/// A `#FILE` object restored to a regular file on a disk that fills at a
/// random point of it, or is read-only: `#ERROR`, no file left that looks
/// restored, and the re-run restores it exactly.
fn restore_file_to_small_disk(
    dir: &Path,
    fault: Fault,
    t: &mut Tally,
    rng: &mut StdRng,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let backint = Backint::new(&dir.join("vault"), dir)?;
    let file = backint.pipes.join("topology.bin");
    let bytes = crate::data::random_bytes(rng.random_range(64 << 10..=4 << 20), rng.random());
    std::fs::write(&file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let result = BackintCall::new("backup", SID)
        .params(&backint.params)
        .line(format!("#FILE {}", q(&file.display().to_string())))
        .run(&backint.host);
    if result.code != Some(0) {
        return Err(format!("the #FILE backup failed:\n{}", result.describe()));
    }
    let ebid = result.saved(&file).0;

    let disk = SmallDisk::mount(&dir.join("target"), ROOMY)?;
    let dest = disk.join("restored topology.bin");
    match fault {
        Fault::Full => {
            disk.leave_free((bytes.len() as f64 * rng.random_range(0.0..0.95)) as u64)?
        }
        Fault::ReadOnly => disk.read_only()?,
    }
    let restore = BackintCall::new("restore", SID)
        .params(&backint.params)
        .ebid_to(&ebid, &file, &dest);
    let result = restore.run(&backint.host);
    if result.code == Some(0) {
        t.failed(format!(
            "a #FILE of {} bytes was restored onto a {} disk:\n{}",
            bytes.len(),
            if fault == Fault::Full {
                "full"
            } else {
                "read-only"
            },
            result.describe()
        ));
        return Ok(());
    }
    t.fault();
    if result.with("#ERROR").is_empty() {
        t.failed(format!("no #ERROR line:\n{}", result.describe()));
    }
    t.clear_error(
        &said(&result, &backint.log()),
        result.code,
        1,
        fault,
        disk.path(),
    );
    if let Ok(left) = std::fs::metadata(&dest) {
        t.failed(format!(
            "the failed restore left {} ({} of {} bytes), which looks restored",
            dest.display(),
            left.len(),
            bytes.len()
        ));
    }

    match fault {
        Fault::Full => disk.leave_free(bytes.len() as u64 + (1 << 20))?,
        Fault::ReadOnly => disk.read_write()?,
    }
    let result = restore.run(&backint.host);
    if result.code != Some(0) {
        return Err(format!("the re-run failed:\n{}", result.describe()));
    }
    match std::fs::read(&dest) {
        Ok(back) if back == bytes => t.rerun_ok(),
        Ok(back) => t.lost(format!(
            "the re-run restored {} bytes that differ from the {} backed up",
            back.len(),
            bytes.len()
        )),
        Err(e) => t.failed(format!("the re-run wrote no {}: {e}", dest.display())),
    }
    Ok(())
}

//! Stream backups and restores, `strata delete` and `vault gc` on a local
//! `file://` vault, and the catalog index, on full and read-only file
//! systems.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::rngs::StdRng;

use super::checks::{Fault, leftovers};
use super::tmpfs::SmallDisk;
use super::{Campaign, Tally};
use crate::cli::{RunOutput, Strata};
use crate::data::random_bytes;

const VAULT_FULL: &str = "stream backup, vault full";
const VAULT_READ_ONLY: &str = "stream backup, vault read-only";
const DELETE_FULL: &str = "stream delete, vault full";
const RESTORE_FULL: &str = "stream restore, target full";
const RESTORE_READ_ONLY: &str = "stream restore, target read-only";
const INDEX_FULL: &str = "index full";
const INDEX_READ_ONLY: &str = "index read-only";

/// Room enough for anything a run writes before its fault.
const ROOMY: u64 = 256 << 20;

/// Runs the stream, delete, gc and index cases.
pub(super) fn run(campaign: &mut Campaign) {
    let root = campaign.dir("stream");
    campaign.case(VAULT_FULL, (2, 40), |t, rng| {
        let dir = run_dir(&root, "vault-full", t);
        if let Err(why) = vault_full(&dir, t, rng) {
            t.failed(why);
        }
    });
    campaign.case(VAULT_READ_ONLY, (1, 10), |t, rng| {
        let dir = run_dir(&root, "vault-ro", t);
        if let Err(why) = vault_read_only(&dir, t, rng) {
            t.failed(why);
        }
    });
    campaign.case(DELETE_FULL, (1, 10), |t, rng| {
        let dir = run_dir(&root, "delete-full", t);
        if let Err(why) = delete_full(&dir, t, rng) {
            t.failed(why);
        }
    });
    // The restore and index cases read from one vault on the ordinary disk.
    let source = root.join("source");
    let mut vault = None;
    for (case, fault, runs) in [
        (RESTORE_FULL, Fault::Full, (2, 40)),
        (RESTORE_READ_ONLY, Fault::ReadOnly, (1, 10)),
    ] {
        campaign.case(case, runs, |t, rng| {
            let dir = run_dir(
                &root,
                if fault == Fault::Full {
                    "restore-full"
                } else {
                    "restore-ro"
                },
                t,
            );
            let result = source_vault(&mut vault, &source)
                .and_then(|vault| restore_to_small_disk(vault, &dir, fault, t, rng));
            if let Err(why) = result {
                t.failed(why);
            }
        });
    }
    for (case, fault, runs) in [
        (INDEX_FULL, Fault::Full, (2, 20)),
        (INDEX_READ_ONLY, Fault::ReadOnly, (1, 10)),
    ] {
        campaign.case(case, runs, |t, rng| {
            let dir = run_dir(
                &root,
                if fault == Fault::Full {
                    "index-full"
                } else {
                    "index-ro"
                },
                t,
            );
            let result = source_vault(&mut vault, &source)
                .and_then(|vault| index_on_small_disk(vault, &dir, fault, t, rng));
            if let Err(why) = result {
                t.failed(why);
            }
        });
    }
}

fn run_dir(root: &Path, name: &str, t: &Tally) -> PathBuf {
    let dir = root.join(format!("{name}-{}", t.run));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn source_vault<'a>(
    vault: &'a mut Option<LocalVault>,
    dir: &Path,
) -> Result<&'a LocalVault, String> {
    if vault.is_none() {
        *vault = Some(LocalVault::init(
            &dir.join("vault"),
            &dir.join("catalog.db"),
        )?);
    }
    Ok(vault.as_ref().expect("set above"))
}

/// A `file://` vault and the catalog index the commands use with it.
pub(super) struct LocalVault {
    /// The vault's directory.
    pub dir: PathBuf,
    url: String,
    catalog: PathBuf,
}

impl LocalVault {
    /// `strata vault init` of a vault at `dir` (soft delete off, so that a
    /// deletion frees its space at once).
    pub fn init(dir: &Path, catalog: &Path) -> Result<LocalVault, String> {
        let vault = LocalVault {
            dir: dir.to_path_buf(),
            url: format!("file://{}", dir.display()),
            catalog: catalog.to_path_buf(),
        };
        expect_success(
            Strata::new()
                .args(["vault", "init", &vault.url, "--soft-delete-days", "0"])
                .run(),
        )?;
        Ok(vault)
    }

    /// This vault with another catalog index.
    fn with_catalog(&self, catalog: &Path) -> LocalVault {
        LocalVault {
            dir: self.dir.clone(),
            url: self.url.clone(),
            catalog: catalog.to_path_buf(),
        }
    }

    /// `strata --vault <url> --catalog <index> args...`.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .arg("--vault")
            .arg(&self.url)
            .arg("--catalog")
            .arg(&self.catalog)
            .args(args)
            .timeout(std::time::Duration::from_secs(120))
            .run()
    }

    /// Backs `data` up as stream `name` (through a file in `scratch`) and
    /// returns what the command did.
    fn back_up(
        &self,
        name: &str,
        data: &[u8],
        scratch: &Path,
        extra: &[&str],
    ) -> Result<RunOutput, String> {
        let input = scratch.join(format!("{name}.in"));
        std::fs::write(&input, data).map_err(|e| format!("writing {}: {e}", input.display()))?;
        let input_text = input.display().to_string();
        let mut args = vec!["backup", "stream", name, "--input", &input_text];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let _ = std::fs::remove_file(&input);
        Ok(out)
    }

    /// Backs `data` up and returns the committed backup's id.
    fn committed(
        &self,
        name: &str,
        data: &[u8],
        scratch: &Path,
        extra: &[&str],
    ) -> Result<String, String> {
        let out = expect_success(self.back_up(name, data, scratch, extra)?)?;
        backup_id(&out)
    }

    /// The ids `list` shows.
    pub fn ids(&self) -> Result<BTreeSet<String>, String> {
        let out = expect_success(self.run(&["--json", "list"]))?;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`strata list --json` printed no JSON ({e}): {}",
                out.stdout_text()
            )
        })?;
        Ok(listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// The bytes of backup `id` of stream `name`.
    fn restored(&self, name: &str, id: &str) -> Result<Vec<u8>, String> {
        Ok(expect_success(self.run(&["restore", "stream", name, "--backup", id]))?.stdout)
    }

    /// `strata verify` passes.
    pub fn verify(&self) -> Result<(), String> {
        expect_success(self.run(&["verify"])).map(|_| ())
    }
}

/// `out` when it exited 0, otherwise what it said.
pub(super) fn expect_success(out: RunOutput) -> Result<RunOutput, String> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            out.command,
            out.status,
            out.stderr_text().trim()
        ))
    }
}

/// The id `backup stream` printed (its standard output is the id alone).
fn backup_id(out: &RunOutput) -> Result<String, String> {
    let id = out.stdout_text().trim().to_owned();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(format!("`{}` printed no backup id: {id:?}", out.command));
    }
    Ok(id)
}

/// What every fault on a vault must leave: `list` showing `before`, no
/// data of an uncommitted backup and no staging file, `verify` passing,
/// and `kept` (a backup committed before the fault, with its bytes)
/// restoring exactly.
fn vault_unharmed(
    t: &mut Tally,
    vault: &LocalVault,
    before: &BTreeSet<String>,
    kept: (&str, &str, &[u8]),
) -> Result<(), String> {
    let after = vault.ids()?;
    if &after != before {
        t.failed(format!(
            "`list` changed across a failed command: {before:?} before, {after:?} after"
        ));
    }
    let left = leftovers(&vault.dir);
    if !left.is_empty() {
        t.failed(format!("the failed command left in the vault: {left:?}"));
    }
    if let Err(why) = vault.verify() {
        t.failed(format!("verify after the fault: {why}"));
    }
    let (name, id, bytes) = kept;
    match vault.restored(name, id) {
        Ok(back) if back == bytes => {}
        Ok(back) => t.lost(format!(
            "backup {id} restores {} bytes that differ from the {} backed up",
            back.len(),
            bytes.len()
        )),
        Err(why) => t.lost(format!("backup {id} no longer restores: {why}")),
    }
    Ok(())
}

/// `vault gc` works on the full (or read-only) disk and finds nothing to
/// remove: a failed backup deletes what it wrote.
fn gc_finds_nothing(t: &mut Tally, vault: &LocalVault, dry_run: bool) -> Result<(), String> {
    let mut args = vec!["--json", "vault", "gc", "--older-than", "0s"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = vault.run(&args);
    if !out.status.success() {
        t.failed(format!(
            "`vault gc` failed on the {}: {}",
            if dry_run {
                "read-only vault"
            } else {
                "full vault"
            },
            out.stderr_text().trim()
        ));
        return Ok(());
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`vault gc --json` printed no JSON ({e})"))?;
    let found = report["orphans"].as_array().map_or(0, Vec::len)
        + report["unfinished_uploads"].as_array().map_or(0, Vec::len);
    if found > 0 {
        t.failed(format!(
            "`vault gc` found what a failed backup left behind: {}",
            report
        ));
    }
    Ok(())
}

/// A backup stream into a vault whose disk fills at a random point of it.
fn vault_full(dir: &Path, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
    let disk = SmallDisk::mount(&dir.join("disk"), ROOMY)?;
    let vault = LocalVault::init(&disk.join("vault"), &dir.join("catalog.db"))?;
    let base = random_bytes(rng.random_range(1..=512 << 10), rng.random());
    let base_id = vault.committed("base", &base, dir, &[])?;
    let before = vault.ids()?;

    let len = rng.random_range(256 << 10..=6 << 20);
    let data = random_bytes(len, rng.random());
    let part = ["64KiB", "256KiB", "1MiB", "4MiB"][rng.random_range(0..4)];
    let room = (len as f64 * rng.random_range(0.0..0.95)) as u64;
    disk.leave_free(room)?;
    let out = vault.back_up("data", &data, dir, &["--part-size", part])?;
    if out.status.success() {
        // Incompressible data never fits in less room than its size.
        t.failed(format!(
            "a backup of {len} incompressible bytes was committed with {room} bytes free"
        ));
        return Ok(());
    }
    t.fault();
    t.clear_error(&out.stderr_text(), out.code(), 4, Fault::Full, disk.path());
    vault_unharmed(t, &vault, &before, ("base", &base_id, &base))?;
    gc_finds_nothing(t, &vault, false)?;

    disk.leave_free(len as u64 * 2 + (1 << 20))?;
    let id = vault.committed("data", &data, dir, &["--part-size", part])?;
    match vault.restored("data", &id) {
        Ok(back) if back == data => t.rerun_ok(),
        Ok(_) => t.lost(format!("the re-run's backup {id} restores other bytes")),
        Err(why) => t.lost(format!("the re-run's backup {id} does not restore: {why}")),
    }
    Ok(())
}

/// A backup, a delete and gc on a vault remounted read-only: writes fail
/// clearly, reads (list, verify, restore) work.
fn vault_read_only(dir: &Path, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
    let disk = SmallDisk::mount(&dir.join("disk"), ROOMY)?;
    let vault = LocalVault::init(&disk.join("vault"), &dir.join("catalog.db"))?;
    let base = random_bytes(rng.random_range(1..=512 << 10), rng.random());
    let base_id = vault.committed("base", &base, dir, &[])?;
    let before = vault.ids()?;
    disk.read_only()?;

    let data = random_bytes(rng.random_range(1..=2 << 20), rng.random());
    let out = vault.back_up("data", &data, dir, &[])?;
    if out.status.success() {
        t.failed("a backup was committed into a read-only vault");
    } else {
        t.fault();
        t.clear_error(
            &out.stderr_text(),
            out.code(),
            4,
            Fault::ReadOnly,
            disk.path(),
        );
    }
    let out = vault.run(&["delete", &base_id]);
    if out.status.success() {
        t.failed(format!("`delete {base_id}` succeeded on a read-only vault"));
    } else {
        t.fault();
        t.clear_error(
            &out.stderr_text(),
            out.code(),
            4,
            Fault::ReadOnly,
            disk.path(),
        );
    }
    vault_unharmed(t, &vault, &before, ("base", &base_id, &base))?;
    gc_finds_nothing(t, &vault, true)?;
    if let Err(why) = expect_success(vault.run(&["catalog", "rebuild"])) {
        t.failed(format!("`catalog rebuild` from a read-only vault: {why}"));
    }

    disk.read_write()?;
    let id = vault.committed("data", &data, dir, &[])?;
    match vault.restored("data", &id) {
        Ok(back) if back == data => t.rerun_ok(),
        Ok(_) => t.lost(format!("the re-run's backup {id} restores other bytes")),
        Err(why) => t.lost(format!("the re-run's backup {id} does not restore: {why}")),
    }
    expect_success(vault.run(&["delete", &base_id]))?;
    if vault.ids()?.contains(&base_id) {
        t.failed(format!(
            "{base_id} is still listed after its delete succeeded"
        ));
    }
    Ok(())
}

/// `strata delete` on a vault with no room left for the tombstone, and
/// `vault gc` on it.
fn delete_full(dir: &Path, t: &mut Tally, rng: &mut StdRng) -> Result<(), String> {
    let disk = SmallDisk::mount(&dir.join("disk"), ROOMY)?;
    let vault = LocalVault::init(&disk.join("vault"), &dir.join("catalog.db"))?;
    let first = random_bytes(rng.random_range(1..=256 << 10), rng.random());
    let second = random_bytes(rng.random_range(1..=256 << 10), rng.random());
    let first_id = vault.committed("first", &first, dir, &[])?;
    let second_id = vault.committed("second", &second, dir, &[])?;
    let before = vault.ids()?;
    // No page left, or (one run in five) one: whether the tombstone fits
    // in it depends on the manifest's size.
    disk.leave_free(if t.run % 5 == 4 { 1 } else { 0 })?;
    let out = vault.run(&["delete", &first_id]);
    if out.status.success() {
        // It fitted: then it is deleted, and the other backup is intact.
        if vault.ids()?.contains(&first_id) {
            t.failed(format!(
                "{first_id} is still listed after its delete succeeded"
            ));
        }
    } else {
        t.fault();
        t.clear_error(&out.stderr_text(), out.code(), 4, Fault::Full, disk.path());
        vault_unharmed(t, &vault, &before, ("first", &first_id, &first))?;
    }
    gc_finds_nothing(t, &vault, false)?;

    disk.leave_free(ROOMY)?;
    if vault.ids()?.contains(&first_id) {
        expect_success(vault.run(&["delete", &first_id]))?;
        t.rerun_ok();
    }
    let after = vault.ids()?;
    if after.contains(&first_id) || !after.contains(&second_id) {
        t.failed(format!("after deleting {first_id}, `list` shows {after:?}"));
    }
    match vault.restored("second", &second_id) {
        Ok(back) if back == second => {}
        Ok(_) => t.lost(format!("backup {second_id} restores other bytes")),
        Err(why) => t.lost(format!("backup {second_id} does not restore: {why}")),
    }
    Ok(())
}

/// `restore stream --output` onto a disk that fills at a random point of
/// the stream, or is read-only; half the runs replace an existing file
/// (`--force`), which must survive the failure unchanged.
fn restore_to_small_disk(
    vault: &LocalVault,
    dir: &Path,
    fault: Fault,
    t: &mut Tally,
    rng: &mut StdRng,
) -> Result<(), String> {
    let len = rng.random_range(64 << 10..=6 << 20);
    let data = random_bytes(len, rng.random());
    let id = vault.committed("dump", &data, dir, &[])?;
    let disk = SmallDisk::mount(&dir.join("target"), ROOMY)?;
    let output = disk.join("dump.sql");
    let old = rng
        .random_bool(0.5)
        .then(|| random_bytes(rng.random_range(1..=256 << 10), rng.random()));
    if let Some(old) = &old {
        std::fs::write(&output, old).map_err(|e| format!("writing {}: {e}", output.display()))?;
    }
    match fault {
        Fault::Full => disk.leave_free((len as f64 * rng.random_range(0.0..0.95)) as u64)?,
        Fault::ReadOnly => disk.read_only()?,
    }
    let output_text = output.display().to_string();
    let mut args = vec![
        "restore",
        "stream",
        "dump",
        "--backup",
        &id,
        "--output",
        &output_text,
    ];
    if old.is_some() {
        args.push("--force");
    }
    let out = vault.run(&args);
    if out.status.success() {
        t.failed(format!(
            "the restore of {len} bytes succeeded on a {} disk",
            if fault == Fault::Full {
                "full"
            } else {
                "read-only"
            }
        ));
        return Ok(());
    }
    t.fault();
    t.clear_error(&out.stderr_text(), out.code(), 10, fault, disk.path());
    let partial = disk.join("dump.sql.partial");
    if partial.exists() {
        t.failed(format!("the failed restore left {}", partial.display()));
    }
    match (&old, std::fs::read(&output)) {
        (None, Ok(bytes)) => t.failed(format!(
            "the failed restore left {} ({} bytes), which looks like a finished one",
            output.display(),
            bytes.len()
        )),
        (Some(old), Ok(bytes)) if &bytes != old => t.lost(format!(
            "the failed restore changed the existing {} (now {} bytes)",
            output.display(),
            bytes.len()
        )),
        (Some(_), Err(e)) => t.lost(format!(
            "the failed restore removed the existing {}: {e}",
            output.display()
        )),
        _ => {}
    }

    match fault {
        Fault::Full => disk.leave_free(len as u64 + (1 << 20))?,
        Fault::ReadOnly => disk.read_write()?,
    }
    expect_success(vault.run(&args))?;
    match std::fs::read(&output) {
        Ok(bytes) if bytes == data => t.rerun_ok(),
        Ok(bytes) => t.lost(format!(
            "the re-run restored {} bytes that differ from the {len} backed up",
            bytes.len()
        )),
        Err(e) => t.failed(format!("the re-run wrote no {}: {e}", output.display())),
    }
    Ok(())
}

/// Backups, `list` and `catalog rebuild` with the catalog index on a disk
/// that fills at a random point (the index grows with every manifest), or
/// is read-only. The index is a cache: backups and `list` go on without it,
/// `catalog rebuild` fails clearly, and rebuilds once space is back.
fn index_on_small_disk(
    source: &LocalVault,
    dir: &Path,
    fault: Fault,
    t: &mut Tally,
    rng: &mut StdRng,
) -> Result<(), String> {
    let size = match fault {
        Fault::Full => rng.random_range(1..=24) * super::tmpfs::PAGE,
        Fault::ReadOnly => ROOMY,
    };
    let disk = SmallDisk::mount(&dir.join("index"), size)?;
    let vault = source.with_catalog(&disk.join("catalog.db"));
    if fault == Fault::ReadOnly {
        // An index that exists, then its file system turns read-only.
        vault.ids()?;
        disk.read_only()?;
    }
    let mut made = Vec::new();
    for n in 0..rng.random_range(1..=4) {
        let data = random_bytes(rng.random_range(1..=64 << 10), rng.random());
        let out = vault.back_up("indexed", &data, dir, &[])?;
        if out.status.success() {
            made.push(backup_id(&out)?);
        } else {
            t.failed(format!(
                "backup {n} failed because of the catalog index's disk (the index is a cache): {}",
                out.stderr_text().trim()
            ));
        }
    }
    let truth = source.ids()?;
    match vault.ids() {
        Ok(listed) if listed == truth => {}
        Ok(listed) => t.failed(format!(
            "`list` with the index on a {} disk shows {} backups, the vault holds {}",
            if fault == Fault::Full {
                "full"
            } else {
                "read-only"
            },
            listed.len(),
            truth.len()
        )),
        Err(why) => t.failed(format!("`list` with the index's disk at fault: {why}")),
    }
    if let Some(missing) = made.iter().find(|id| !truth.contains(*id)) {
        t.lost(format!(
            "backup {missing} reported committed is not in the vault"
        ));
    }
    let out = vault.run(&["catalog", "rebuild"]);
    if out.status.success() {
        if fault == Fault::ReadOnly {
            t.failed("`catalog rebuild` succeeded on a read-only file system");
        }
        // The index fitted: no fault in this run.
        return Ok(());
    }
    t.fault();
    t.clear_error(&out.stderr_text(), out.code(), 11, fault, disk.path());

    match fault {
        Fault::Full => disk.resize(ROOMY)?,
        Fault::ReadOnly => disk.read_write()?,
    }
    expect_success(vault.run(&["catalog", "rebuild"]))?;
    let listed = vault.ids()?;
    if listed == truth {
        t.rerun_ok();
    } else {
        t.failed(format!(
            "after the rebuild `list` shows {} backups, the vault holds {}",
            listed.len(),
            truth.len()
        ));
    }
    Ok(())
}

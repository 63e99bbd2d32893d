//! The `hdbbackint` case: a data backup of two pipes, HANA played by
//! [`crate::hana`], under an outage; then every object a backup saved,
//! and every version `inquire` lists, restores bit-exact into a fresh pipe.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

use super::{
    Campaign, CaseSpec, CommandOutcome, NEVER_SAID, Outage, Tally, draw_store, names_the_store,
    requests_of, tail, under_outage,
};
use crate::chaos::proxy::{Matcher, StoreKind};
use crate::cli::Strata;
use crate::hana::{
    AGENT_TIMEOUT, AgentResult, BackintCall, HanaHost, Piece, drain_pipe, feed_pipe, mkfifo,
};

/// How long HANA's side waits for the agent to open a pipe.
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// A HANA host whose parameter file points at a vault on one store.
struct BackintVault {
    host: HanaHost,
    params: PathBuf,
    tenant: PathBuf,
    proxy_env: String,
    /// The requests a clean backup of two pipes makes.
    requests: u64,
}

/// The objects of one backup call: each piece, and the EBID it was saved
/// under when it was.
struct Call {
    pieces: Vec<Piece>,
    saved: BTreeMap<String, String>,
    result: AgentResult,
}

impl BackintVault {
    fn new(c: &mut Campaign, store: StoreKind, rng: &mut impl Rng) -> BackintVault {
        let url = c.vault_url(store, "backint");
        Strata::new()
            .arg("--vault")
            .arg(&url)
            .args(["vault", "init"])
            .run()
            .success();
        let host = HanaHost::new();
        let params = host.standard_params("HDB", "strata.utl", &url, &c.retries.backint_lines());
        let tenant = host.backint_dir("HDB", "DB_HDB");
        let (variable, value) = c.emulator(store).proxy.env();
        let mut vault = BackintVault {
            host,
            params,
            tenant,
            proxy_env: format!("{variable}={value}"),
            requests: 0,
        };
        let pieces = vault.pieces("clean", rng);
        let proxy = &c.emulator(store).proxy;
        let (call, requests) = requests_of(proxy, || vault.back_up(pieces));
        call.result.assert_exit(0);
        vault.requests = requests;
        vault
    }

    /// Two pieces named after `label`: one of up to 3 MiB, one of 1 to 10
    /// MiB (above 8 MiB: a multipart upload).
    fn pieces(&self, label: &str, rng: &mut impl Rng) -> Vec<Piece> {
        vec![
            Piece::fifo(
                &self.tenant,
                &format!("COMPLETE_DATA_BACKUP_{label}_1"),
                rng.random_range(100_000..3 << 20),
                rng.random(),
            ),
            Piece::fifo(
                &self.tenant,
                &format!("COMPLETE_DATA_BACKUP_{label}_2"),
                rng.random_range(1 << 20..10 << 20),
                rng.random(),
            ),
        ]
    }

    /// A data backup of `pieces` through the proxy, as HANA runs it: the
    /// agent started, every pipe written at once. When the agent ends
    /// without reading a pipe, the pipe is released so its writer ends.
    fn back_up(&self, pieces: Vec<Piece>) -> Call {
        let mut call = BackintCall::new("backup", "HDB")
            .user("HDB@HDB")
            .params(&self.params)
            .backup_id(&format!("{}", chrono::Utc::now().timestamp_millis()))
            .count(pieces.len())
            .level("COMPLETE");
        for piece in &pieces {
            call = call.pipe(&piece.path);
        }
        let agent = call.spawn_with(&self.host, Path::new("/usr/bin/env"), &[&self.proxy_env]);
        let feeders: Vec<_> = pieces
            .iter()
            .map(|p| feed_pipe(&p.path, p.len, p.seed, OPEN_WAIT))
            .collect();
        let result = agent.finish(AGENT_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while feeders.iter().any(|f| !f.is_finished()) && Instant::now() < deadline {
            for piece in &pieces {
                // A reader that comes and goes: a writer still waiting to
                // open the pipe opens it, and its first write fails.
                let _ = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&piece.path);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut saved = BTreeMap::new();
        for fields in result.with("#SAVED") {
            if let (Some(ebid), Some(name)) = (fields.first(), fields.get(1)) {
                saved.insert(name.clone(), ebid.clone());
            }
        }
        for piece in &pieces {
            let _ = std::fs::remove_file(&piece.path);
        }
        Call {
            pieces,
            saved,
            result,
        }
    }

    /// The EBIDs `inquire` lists for `name`.
    fn inquire(&self, name: &Path) -> Result<BTreeSet<String>, String> {
        let result = BackintCall::new("inquire", "HDB")
            .params(&self.params)
            .null(name)
            .run(&self.host);
        if result.code != Some(0) && result.with("#NOTFOUND").is_empty() {
            return Err(result.describe());
        }
        Ok(result
            .with("#BACKUP")
            .into_iter()
            .filter_map(|f| f.first().cloned())
            .collect())
    }

    /// Restores version `ebid` of `piece` into a fresh pipe (straight to
    /// the store) and compares the bytes with what HANA wrote.
    fn restores_exactly(&self, piece: &Piece, ebid: &str) -> Result<(), String> {
        let dest = self.tenant.join("restore-pipe");
        let _ = std::fs::remove_file(&dest);
        mkfifo(&dest);
        let agent = BackintCall::new("restore", "HDB")
            .params(&self.params)
            .ebid_to(ebid, &piece.path, &dest)
            .spawn(&self.host);
        let got = drain_pipe(&dest, OPEN_WAIT);
        let result = agent.finish(AGENT_TIMEOUT);
        let _ = std::fs::remove_file(&dest);
        let got = got.map_err(|e| format!("the restore pipe: {e}\n{}", result.describe()))?;
        if result.code != Some(0) {
            return Err(result.describe());
        }
        if got.bytes != piece.len || got.blake3 != piece.digest() {
            return Err(format!(
                "{} bytes came back, {} were backed up, with another digest",
                got.bytes, piece.len
            ));
        }
        Ok(())
    }
}

/// The rule for a failed Backint call: exit code 1, an `#ERROR` for every
/// object not `#SAVED`, one line on stderr naming the store's failure.
fn clear_backint(out: &CommandOutcome) -> Result<String, String> {
    if let Some(bad) = NEVER_SAID.iter().find(|bad| out.stderr.contains(**bad)) {
        return Err(format!("its stderr contains `{bad}`"));
    }
    if out.code != Some(1) {
        return Err(format!(
            "it exited with {:?}, not 1 (an object failed)",
            out.code
        ));
    }
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.len() != 1 {
        return Err(format!(
            "it printed {} lines on stderr, HANA shows one",
            lines.len()
        ));
    }
    if !names_the_store(lines[0]) {
        return Err(format!(
            "its stderr does not say the object store or the vault failed: {}",
            lines[0]
        ));
    }
    Ok(lines[0].to_owned())
}

/// `hdbbackint -f backup` under an outage.
pub(super) fn run(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let mut vaults: BTreeMap<&'static str, BackintVault> = BTreeMap::new();
    let mut tally = Tally::default();
    let retries = c.retries.clone();
    // The EBIDs calls saved, and those restored once.
    let mut saved: BTreeSet<String> = BTreeSet::new();
    let mut checked: BTreeSet<String> = BTreeSet::new();
    let mut listed_though_failed = 0u64;
    for run in 0..runs {
        let store = draw_store(&mut rng, StoreKind::Azure);
        if !vaults.contains_key(store.name()) {
            let vault = BackintVault::new(c, store, &mut rng);
            vaults.insert(store.name(), vault);
        }
        let vault = &vaults[store.name()];
        let mut scopes = super::streams::write_scopes(store);
        scopes.push((
            "name markers",
            Matcher::any().method("PUT").path_contains("/engines/"),
        ));
        let outage = Outage::draw(&mut rng, vault.requests, &retries, &scopes);
        let proxy = &c.emulator(store).proxy;
        let call_pieces = vault.pieces(&format!("run{run}"), &mut rng);
        let (call, window) = under_outage(proxy, &outage, || vault.back_up(call_pieces));
        let outcome = CommandOutcome {
            command: format!("hdbbackint -f backup ({} pipes)", call.pieces.len()),
            success: call.result.code == Some(0),
            code: call.result.code,
            stderr: call.result.stderr.clone(),
            more: call.result.text.clone(),
            clear: clear_backint,
        };
        c.judge(case, run, &mut tally, &outage, window, &outcome);
        // Each object is either saved or an error, never both or neither.
        let errors: BTreeSet<String> = call
            .result
            .with("#ERROR")
            .into_iter()
            .filter_map(|f| f.first().cloned())
            .collect();
        for piece in &call.pieces {
            let name = piece.path.display().to_string();
            let answered =
                usize::from(call.saved.contains_key(&name)) + usize::from(errors.contains(&name));
            if answered != 1 {
                c.failed(
                    case,
                    format!(
                        "run {run}: {name} got {answered} answers (#SAVED or #ERROR) instead of one\n{}",
                        call.result.describe()
                    ),
                );
            }
            if outcome.success && !call.saved.contains_key(&name) {
                c.failed(case, format!("run {run}: exit 0 without #SAVED for {name}"));
            }
        }
        saved.extend(call.saved.values().cloned());
        // The checks, with the store back: what inquire lists restores,
        // and every saved version is listed.
        for piece in &call.pieces {
            let name = piece.path.display().to_string();
            let listed = match vault.inquire(&piece.path) {
                Ok(listed) => listed,
                Err(e) => {
                    c.failed(
                        case,
                        format!("run {run}: inquire fails once the store is back: {e}"),
                    );
                    continue;
                }
            };
            if let Some(ebid) = call.saved.get(&name)
                && !listed.contains(ebid)
            {
                c.lost(
                    case,
                    format!("run {run}: {name} was #SAVED as {ebid}, and inquire does not list it"),
                );
            }
            for ebid in listed {
                if !checked.insert(ebid.clone()) {
                    continue;
                }
                if !saved.contains(&ebid) {
                    listed_though_failed += 1;
                }
                tally.checked += 1;
                if let Err(e) = vault.restores_exactly(piece, &ebid) {
                    c.lost(
                        case,
                        format!(
                            "run {run}: {name} version {ebid}, listed by inquire, does not restore: {}",
                            tail(&e, 20)
                        ),
                    );
                }
            }
        }
    }
    tally
        .extra
        .insert("listed though the call failed", listed_though_failed);
    c.case_line(case, &tally);
}

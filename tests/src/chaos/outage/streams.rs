//! The stream cases: `strata backup stream`, `strata restore stream` and
//! `strata vault gc` under an outage, and the checks of every stream
//! backup a vault lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::{
    Campaign, CaseSpec, CommandOutcome, Length, Outage, Retries, Tally, draw_store, requests_of,
    under_outage,
};
use crate::chaos::proxy::{Matcher, StoreKind};
use crate::cli::{RunOutput, Strata};
use crate::data::{compressible_bytes, random_bytes};

/// The data of one stream backup: how to make its bytes again.
#[derive(Debug, Clone, Copy)]
pub(super) struct DataSpec {
    len: usize,
    seed: u64,
    compressible: bool,
}

impl DataSpec {
    /// 1 to 13 MiB of noise (above 8 MiB: a multipart upload) or 2 to 8
    /// MiB of rows that compress (a single put).
    fn draw(rng: &mut StdRng) -> DataSpec {
        let compressible = rng.random_bool(0.3);
        let len = if compressible {
            rng.random_range(2 << 20..8 << 20)
        } else {
            rng.random_range(1 << 20..13 << 20)
        };
        DataSpec {
            len,
            seed: rng.random(),
            compressible,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        if self.compressible {
            compressible_bytes(self.len, self.seed)
        } else {
            random_bytes(self.len, self.seed)
        }
    }
}

/// A vault on one emulator with its Strata configurations: one that the
/// commands under test use through the proxy, one (with its own catalog
/// index) for the checks, straight to the store.
pub(super) struct StreamVault {
    pub url: String,
    config: PathBuf,
    /// The same with 2 MiB segments: a backup of several objects.
    small_segments: PathBuf,
    check_config: PathBuf,
    pub dir: PathBuf,
    proxy_env: (&'static str, String),
}

impl StreamVault {
    /// A new vault on `store`, created; `writer` adds lines to the
    /// `[writer]` section.
    pub fn new(
        c: &mut Campaign,
        store: StoreKind,
        label: &str,
        retries: &Retries,
        writer: &str,
    ) -> StreamVault {
        let url = c.vault_url(store, label);
        let dir = c.dir(&format!("{label}-{}", store.name()));
        let write = |name: &str, writer: &str| {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[vault]\nurl = \"{url}\"\n\n{}\n[catalog]\npath = \"{}\"\n\n[writer]\ncompression_level = 1\n{writer}\n",
                    retries.toml(),
                    dir.join(format!("{name}.db")).display()
                ),
            )
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        };
        let vault = StreamVault {
            config: write("strata", writer),
            small_segments: write("strata-small", "segment_size = \"2MiB\""),
            check_config: write("check", writer),
            proxy_env: c.emulator(store).proxy.env(),
            url,
            dir: dir.clone(),
        };
        vault.direct(&["vault", "init"]).success();
        vault
    }

    /// `strata --config <config> args`, through the proxy.
    pub fn proxied(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .env(self.proxy_env.0, &self.proxy_env.1)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .timeout(Duration::from_secs(600))
            .run()
    }

    /// [`StreamVault::proxied`], with 2 MiB segments when `small`.
    pub fn proxied_with(&self, small: bool, args: &[&str]) -> RunOutput {
        Strata::new()
            .env(self.proxy_env.0, &self.proxy_env.1)
            .arg("--config")
            .arg(if small {
                &self.small_segments
            } else {
                &self.config
            })
            .args(args)
            .timeout(Duration::from_secs(600))
            .run()
    }

    /// `strata --config <check config> args`, straight to the store.
    pub fn direct(&self, args: &[&str]) -> RunOutput {
        Strata::new()
            .arg("--config")
            .arg(&self.check_config)
            .args(args)
            .timeout(Duration::from_secs(600))
            .run()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What a case knows about the stream backups of one vault.
#[derive(Default)]
pub(super) struct StreamBook {
    /// The data of each stream name.
    specs: BTreeMap<String, DataSpec>,
    /// Backups a command acknowledged: id, name.
    acknowledged: BTreeMap<String, String>,
    /// Backups restored bit-exact once.
    checked: BTreeSet<String>,
    /// Listed backups whose command failed.
    pub listed_though_failed: u64,
}

impl StreamBook {
    /// Writes the input of stream `name` and remembers its data.
    fn input(&mut self, vault: &StreamVault, name: &str, spec: DataSpec) -> PathBuf {
        let path = vault.path("input.bin");
        std::fs::write(&path, spec.bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.specs.insert(name.to_owned(), spec);
        path
    }

    /// Records the backup id `backup stream --json` printed.
    fn acknowledge(&mut self, c: &mut Campaign, case: &str, name: &str, out: &RunOutput) {
        match serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            Some(id) => {
                self.acknowledged.insert(id, name.to_owned());
            }
            None => c.failed(
                case,
                format!(
                    "`{}` exited 0 without printing its backup id: {}",
                    out.command,
                    out.stdout_text()
                ),
            ),
        }
    }

    /// Every stream backup `list` shows restores bit-exact (each once);
    /// every acknowledged one is listed. Returns the listed ids.
    pub fn check_listed(
        &mut self,
        c: &mut Campaign,
        case: &str,
        vault: &StreamVault,
        tally: &mut Tally,
    ) -> BTreeSet<String> {
        let Some(listed) = list_streams(c, case, vault) else {
            return BTreeSet::new();
        };
        for (id, name) in &self.acknowledged {
            if !listed.contains_key(id) {
                c.lost(
                    case,
                    format!("backup {id} of stream {name}, acknowledged, is not listed"),
                );
            }
        }
        for (id, name) in &listed {
            if self.checked.contains(id) {
                continue;
            }
            self.checked.insert(id.clone());
            let Some(spec) = self.specs.get(name) else {
                continue;
            };
            if !self.acknowledged.contains_key(id) {
                self.listed_though_failed += 1;
            }
            tally.checked += 1;
            let output = vault.path("restored.bin");
            let out = vault.direct(&[
                "restore",
                "stream",
                name,
                "--backup",
                id,
                "--output",
                &output.display().to_string(),
                "--force",
            ]);
            let restored = std::fs::read(&output).ok();
            let _ = std::fs::remove_file(&output);
            if !out.status.success() {
                c.lost(
                    case,
                    format!(
                        "listed backup {id} of {name} does not restore: {}",
                        out.stderr_text()
                    ),
                );
            } else if restored.as_deref() != Some(&spec.bytes()[..]) {
                c.lost(
                    case,
                    format!(
                        "listed backup {id} of {name} restores other bytes than were backed up"
                    ),
                );
            }
        }
        listed.into_keys().collect()
    }
}

/// The stream backups `list --json` shows: id, name.
fn list_streams(
    c: &mut Campaign,
    case: &str,
    vault: &StreamVault,
) -> Option<BTreeMap<String, String>> {
    let out = vault.direct(&["list", "stream", "--json"]);
    let listed = out
        .status
        .success()
        .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .flatten();
    let Some(serde_json::Value::Array(listed)) = listed else {
        c.failed(
            case,
            format!("`list` fails once the store is back: {}", out.stderr_text()),
        );
        return None;
    };
    Some(
        listed
            .iter()
            .filter_map(|b| {
                Some((
                    b["id"].as_str()?.to_owned(),
                    b["instance"].as_str()?.to_owned(),
                ))
            })
            .collect(),
    )
}

/// `strata verify` passes once the store is back: every listed backup's
/// parts are whole.
pub(super) fn verify(c: &mut Campaign, case: &str, vault: &StreamVault) {
    let out = vault.direct(&["verify"]);
    if !out.status.success() {
        c.lost(
            case,
            format!(
                "`verify` fails on {}: {}{}",
                vault.url,
                out.stdout_text(),
                out.stderr_text()
            ),
        );
    }
}

/// The requests aimed at by outages of a backup: the commit points and
/// the uploads.
pub(super) fn write_scopes(store: StoreKind) -> Vec<(&'static str, Matcher)> {
    let commit = match store {
        StoreKind::S3 => (
            "multipart commits",
            Matcher::any().method("POST").query_contains("uploadId="),
        ),
        StoreKind::Azure => (
            "block list commits",
            Matcher::any()
                .method("PUT")
                .query_contains("comp=blocklist"),
        ),
    };
    vec![
        (
            "manifest puts",
            Matcher::any().method("PUT").path_contains("/manifests/"),
        ),
        (
            "segment uploads",
            Matcher::any().method("PUT").path_contains("/data/"),
        ),
        commit,
        (
            "vault metadata reads",
            Matcher::any().path_contains("strata-vault.json"),
        ),
    ]
}

/// The requests aimed at by outages of a restore.
fn read_scopes() -> Vec<(&'static str, Matcher)> {
    vec![
        (
            "segment reads",
            Matcher::any().method("GET").path_contains("/data/"),
        ),
        (
            "manifest reads",
            Matcher::any().method("GET").path_contains("/manifests/"),
        ),
    ]
}

/// One vault per store, made when first drawn, with its book and the
/// requests a clean backup makes.
struct Vaults {
    label: &'static str,
    retries: Retries,
    writer: &'static str,
    open: BTreeMap<&'static str, (StreamVault, StreamBook, u64)>,
}

impl Vaults {
    fn new(label: &'static str, retries: Retries, writer: &'static str) -> Vaults {
        Vaults {
            label,
            retries,
            writer,
            open: BTreeMap::new(),
        }
    }

    /// The vault on `store`, made (with a clean backup whose requests are
    /// counted) when first asked for.
    fn get(
        &mut self,
        c: &mut Campaign,
        case: &str,
        store: StoreKind,
        rng: &mut StdRng,
    ) -> &mut (StreamVault, StreamBook, u64) {
        let (label, retries, writer) = (self.label, self.retries.clone(), self.writer);
        self.open.entry(store.name()).or_insert_with(|| {
            let vault = StreamVault::new(c, store, label, &retries, writer);
            let mut book = StreamBook::default();
            let spec = DataSpec {
                len: 10 << 20,
                seed: rng.random(),
                compressible: false,
            };
            let input = book.input(&vault, "clean", spec);
            let proxy = &c.emulator(store).proxy;
            let (out, requests) = requests_of(proxy, || {
                vault.proxied(&strs(&backup_args("clean", &input)))
            });
            let out = out.success();
            book.acknowledge(c, case, "clean", &out);
            (vault, book, requests)
        })
    }
}

fn backup_args(name: &str, input: &Path) -> Vec<String> {
    [
        "--json",
        "backup",
        "stream",
        name,
        "--input",
        &input.display().to_string(),
        "--part-size",
        "1MiB",
    ]
    .map(str::to_owned)
    .into()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `strata backup stream` under an outage.
pub(super) fn backup(c: &mut Campaign, spec: &CaseSpec) {
    let retries = c.retries.clone();
    backup_with(c, spec, retries, "stream-backup");
}

/// `strata backup stream` under an outage, with Strata's default retry
/// settings: short and medium outages only (a long one would keep each
/// failing request retrying for up to a minute).
pub(super) fn backup_default_retries(c: &mut Campaign, spec: &CaseSpec) {
    backup_with(c, spec, Retries::defaults(), "stream-defaults");
}

fn backup_with(c: &mut Campaign, spec: &CaseSpec, retries: Retries, label: &'static str) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let mut vaults = Vaults::new(label, retries.clone(), "");
    let mut tally = Tally::default();
    for run in 0..runs {
        let store = draw_store(&mut rng, StoreKind::S3);
        let data = DataSpec::draw(&mut rng);
        let (vault, book, requests) = vaults.get(c, case, store, &mut rng);
        let requests = *requests;
        let mut outage = Outage::draw(&mut rng, requests, &retries, &write_scopes(store));
        // With the defaults a request rides out 1 to 100 s of outage: the
        // case stays within 1 to 10 s, where a real store's hiccups are.
        let too_long = match outage.length {
            Length::Long => true,
            Length::Medium(d) => d > Duration::from_secs(10),
            Length::Short(_) => false,
        };
        if retries.options.is_empty() && too_long {
            outage.length = Length::Medium(Duration::from_secs_f64(rng.random_range(1.0..10.0)));
        }
        let name = format!("s{run}");
        let input = book.input(vault, &name, data);
        // Half the runs cut the stream into 2 MiB segments: several
        // objects, each a single put, committed by one manifest.
        let small = rng.random_bool(0.5);
        let proxy = &c.emulator(store).proxy;
        let (out, window) = under_outage(proxy, &outage, || {
            vault.proxied_with(small, &strs(&backup_args(&name, &input)))
        });
        let outcome = CommandOutcome::strata(&out);
        if c.judge(case, run, &mut tally, &outage, window, &outcome) {
            book.acknowledge(c, case, &name, &out);
        }
        book.check_listed(c, case, vault, &mut tally);
    }
    for (vault, book, _) in vaults.open.values() {
        verify(c, case, vault);
        *tally
            .extra
            .entry("listed though the command failed")
            .or_default() += book.listed_though_failed;
    }
    c.case_line(&format!("{case} ({} retries)", retries.name), &tally);
}

/// `strata restore stream --output` under an outage: success means the
/// backup's bytes, failure leaves no output file, and the next run works.
pub(super) fn restore(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let retries = c.retries.clone();
    let mut vaults = Vaults::new("stream-restore", retries.clone(), "");
    let mut tally = Tally::default();
    // The backups to restore: per store, the clean one plus two more.
    let mut restorable: BTreeMap<&'static str, Vec<(String, String, u64)>> = BTreeMap::new();
    for run in 0..runs {
        let store = draw_store(&mut rng, StoreKind::S3);
        let (vault, book, _) = vaults.get(c, case, store, &mut rng);
        let backups = restorable.entry(store.name()).or_insert_with(|| {
            for name in ["r1", "r2"] {
                let data = DataSpec::draw(&mut rng);
                let input = book.input(vault, name, data);
                let out = vault.direct(&strs(&backup_args(name, &input))).success();
                book.acknowledge(c, case, name, &out);
            }
            let proxy = &c.emulator(store).proxy;
            book.acknowledged
                .clone()
                .into_iter()
                .map(|(id, name)| {
                    let output = vault.path("measured.bin");
                    let (_, requests) = requests_of(proxy, || {
                        vault
                            .proxied(&[
                                "restore",
                                "stream",
                                &name,
                                "--backup",
                                &id,
                                "--output",
                                &output.display().to_string(),
                                "--force",
                            ])
                            .success()
                    });
                    (id, name, requests)
                })
                .collect()
        });
        let (id, name, requests) = backups[rng.random_range(0..backups.len())].clone();
        let outage = Outage::draw(&mut rng, requests, &retries, &read_scopes());
        let output = vault.path(&format!("restore-{run}.bin"));
        let args = [
            "restore",
            "stream",
            name.as_str(),
            "--backup",
            id.as_str(),
            "--output",
            &output.display().to_string(),
        ]
        .map(str::to_owned);
        let proxy = &c.emulator(store).proxy;
        let (out, window) = under_outage(proxy, &outage, || vault.proxied(&strs(&args)));
        let outcome = CommandOutcome::strata(&out);
        let ok = c.judge(case, run, &mut tally, &outage, window, &outcome);
        let expected = book.specs[&name].bytes();
        let written = std::fs::read(&output).ok();
        let mut partial = output.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        if ok {
            tally.checked += 1;
            if written.as_deref() != Some(&expected[..]) {
                c.lost(
                    case,
                    format!(
                        "run {run}: restore of {id} exited 0 but wrote other bytes ({})",
                        outage.describe()
                    ),
                );
            }
        } else {
            if written.is_some() {
                c.failed(
                    case,
                    format!(
                        "run {run}: the failed restore of {id} left {} behind, which looks restored",
                        output.display()
                    ),
                );
            }
            if partial.exists() {
                c.failed(
                    case,
                    format!("run {run}: the failed restore left {}", partial.display()),
                );
            }
            // The next run, with the store back, works.
            let again = vault.direct(&strs(&args));
            let bytes = std::fs::read(&output).ok();
            if !again.status.success() || bytes.as_deref() != Some(&expected[..]) {
                c.failed(
                    case,
                    format!(
                        "run {run}: restoring {id} again once the store is back fails: {}",
                        again.stderr_text()
                    ),
                );
            }
            tally.checked += 1;
            *tally.extra.entry("re-runs after a failure").or_default() += 1;
        }
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_file(&partial);
    }
    for (vault, book, _) in vaults.open.values_mut() {
        let _ = book;
        verify(c, case, vault);
    }
    c.case_line(case, &tally);
}

/// `strata vault gc --older-than 0s` under an outage, over the leftovers
/// of backups that failed in a long outage (their cleanup failed too).
/// Whatever gc did, every listed backup still restores and verifies, and
/// a re-run with the store back leaves no leftover.
pub(super) fn gc(c: &mut Campaign, spec: &CaseSpec) {
    let case = spec.name;
    let runs = c.options.runs_or(spec.ci, spec.large);
    let mut rng = c.rng(case);
    let retries = c.retries.clone();
    let mut vaults = Vaults::new("stream-gc", retries.clone(), "segment_size = \"2MiB\"");
    let mut tally = Tally::default();
    for run in 0..runs {
        let store = draw_store(&mut rng, StoreKind::S3);
        let (vault, book, backup_requests) = vaults.get(c, case, store, &mut rng);
        let backup_requests = *backup_requests;
        // Leftovers: backups cut by a long outage after their first
        // uploads, so that their own cleanup fails as well.
        for attempt in 0..2 {
            let name = format!("g{run}-{attempt}");
            let data = DataSpec {
                len: rng.random_range(9 << 20..13 << 20),
                seed: rng.random(),
                compressible: false,
            };
            let input = book.input(vault, &name, data);
            let leave = Outage {
                kind: crate::chaos::proxy::FaultKind::Status(503),
                scope: None,
                probability: 1.0,
                from_request: rng.random_range(4..=backup_requests.max(5) - 1),
                length: Length::Long,
                seed: 0,
            };
            let (out, _) = under_outage(&c.emulator(store).proxy, &leave, || {
                vault.proxied(&strs(&backup_args(&name, &input)))
            });
            if out.status.success() {
                book.acknowledge(c, case, &name, &out);
            }
        }
        let listed_before = book.check_listed(c, case, vault, &mut tally);
        let leftovers = leftovers(&vault.url);
        *tally.extra.entry("leftovers made").or_default() += leftovers.len() as u64;
        let proxy = &c.emulator(store).proxy;
        let (_, requests) = requests_of(proxy, || {
            vault.proxied(&["vault", "gc", "--older-than", "0s", "--dry-run"])
        });
        let deletes = match store {
            StoreKind::S3 => Matcher::any().method("POST").query_contains("delete"),
            StoreKind::Azure => Matcher::any().method("POST").query_contains("comp=batch"),
        };
        let outage = Outage::draw(
            &mut rng,
            requests + 2 * leftovers.len() as u64,
            &retries,
            &[("bulk deletes", deletes)],
        );
        let (out, window) = under_outage(proxy, &outage, || {
            vault.proxied(&["vault", "gc", "--older-than", "0s"])
        });
        let outcome = CommandOutcome::strata(&out);
        let ok = c.judge(case, run, &mut tally, &outage, window, &outcome);
        if ok && !self::leftovers(&vault.url).is_empty() {
            c.failed(
                case,
                format!(
                    "run {run}: `vault gc` exited 0 but left {:?} ({})",
                    self::leftovers(&vault.url),
                    outage.describe()
                ),
            );
        }
        // Nothing listed went, and all of it still verifies.
        let listed_after = book.check_listed(c, case, vault, &mut tally);
        for gone in listed_before.difference(&listed_after) {
            c.lost(
                case,
                format!(
                    "run {run}: `vault gc` removed the listed backup {gone} ({})",
                    outage.describe()
                ),
            );
        }
        verify(c, case, vault);
        let again = vault.direct(&["vault", "gc", "--older-than", "0s"]);
        let left = self::leftovers(&vault.url);
        if !again.status.success() || !left.is_empty() {
            c.failed(
                case,
                format!(
                    "run {run}: `vault gc` once the store is back leaves {left:?}: {}",
                    again.stderr_text()
                ),
            );
        }
        *tally.extra.entry("leftovers removed").or_default() +=
            (leftovers.len() - left.len().min(leftovers.len())) as u64;
    }
    c.case_line(case, &tally);
}

/// The backups whose data is in the vault at `url` without a manifest
/// (`data/<engine>/<instance>/<id>`), by an independent walk of the store.
pub(super) fn leftovers(url: &str) -> BTreeSet<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let config = strata_core::vault::VaultConfig::from_url(url);
        let (store, root) = strata_core::vault::build_store(&config).expect("the vault's store");
        let keys: Vec<String> = store
            .list(Some(&root))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("listing the vault");
        let prefix = format!("{root}/");
        let relative: Vec<&str> = keys
            .iter()
            .map(|k| k.strip_prefix(&prefix).unwrap_or(k))
            .collect();
        let committed: BTreeSet<String> = relative
            .iter()
            .filter_map(|k| k.strip_prefix("manifests/"))
            .filter_map(|k| k.strip_suffix(".json"))
            .map(str::to_owned)
            .collect();
        relative
            .iter()
            .filter_map(|k| k.strip_prefix("data/"))
            .filter_map(|k| k.rsplit_once('/').map(|(backup, _)| backup.to_owned()))
            .filter(|backup| !committed.contains(backup))
            .collect()
    })
}

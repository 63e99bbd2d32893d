//! The checks every case makes of its `file://` vault: what `strata list`
//! shows, `strata verify`, and `strata vault gc` against an independent
//! walk of the vault directory for what killed runs leave behind.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use super::Case;
use crate::cli::{RunOutput, Strata};

/// How `strata` reaches one vault: `--config FILE`, or `--vault URL
/// --catalog FILE`.
#[derive(Debug, Clone)]
pub(crate) struct Cli {
    base: Vec<OsString>,
    /// The vault's directory.
    pub vault_dir: PathBuf,
}

impl Cli {
    /// Through a configuration file that names the vault in `vault_dir`.
    pub fn config(config: &Path, vault_dir: &Path) -> Cli {
        Cli {
            base: vec!["--config".into(), config.into()],
            vault_dir: vault_dir.to_path_buf(),
        }
    }

    /// The vault in `vault_dir` with the catalog index `catalog`, and
    /// optionally a configuration file for the writer settings.
    pub fn vault(vault_dir: &Path, catalog: &Path, config: Option<&Path>) -> Cli {
        let mut base: Vec<OsString> = Vec::new();
        if let Some(config) = config {
            base.extend(["--config".into(), config.into()]);
        }
        base.extend([
            "--vault".into(),
            format!("file://{}", vault_dir.display()).into(),
            "--catalog".into(),
            catalog.into(),
        ]);
        Cli {
            base,
            vault_dir: vault_dir.to_path_buf(),
        }
    }

    /// The vault URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.vault_dir.display())
    }

    /// `strata <base> args...`, not run yet.
    pub fn strata<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Strata {
        Strata::new()
            .args(&self.base)
            .args(args)
            .timeout(Duration::from_secs(600))
    }

    /// Runs `strata <base> args...`.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> RunOutput {
        self.strata(args).run()
    }

    /// `strata <base> args...` as a command to start and kill.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> std::process::Command {
        let mut command = super::process::strata(&self.base);
        command.args(args);
        command
    }

    /// Every committed backup `strata --json list` shows.
    pub fn list(&self) -> Result<Vec<Listed>, String> {
        let out = self.run(&["--json", "list"]);
        if !out.status.success() {
            return Err(format!(
                "`strata list` failed ({}): {}",
                out.status,
                out.stderr_text()
            ));
        }
        serde_json::from_slice::<Vec<Listed>>(&out.stdout).map_err(|e| {
            format!(
                "`strata list --json` printed no list ({e}): {}",
                out.stdout_text()
            )
        })
    }
}

/// A backup as `strata list --json` shows it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Listed {
    /// The backup id.
    pub id: String,
    /// The engine (`stream`, `postgres`, `hana`).
    pub engine: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (its manifest was written right after).
    pub ended_at: DateTime<Utc>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What killed runs leave in a `file://` vault, found by walking its
/// directory, independently of Strata's own gc: the backup folders
/// (`data/<engine>/<instance>/<id>`) that hold objects but have neither a
/// manifest nor a tombstone, and the staging files (`<object>#<digits>`)
/// of uploads that never completed. Each with its newest write.
#[derive(Debug, Default, Clone)]
pub(crate) struct Leftovers {
    /// Uncommitted backup folders, relative to the vault.
    pub orphans: BTreeMap<String, SystemTime>,
    /// Staging files, relative to the vault.
    pub staging: BTreeMap<String, SystemTime>,
}

impl Leftovers {
    /// Walks `vault`.
    pub fn of(vault: &Path) -> Leftovers {
        let mut found = Leftovers::default();
        let mut files = Vec::new();
        walk(vault, &mut files);
        for (path, modified) in files {
            let Ok(rel) = path.strip_prefix(vault) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            let name = rel.rsplit('/').next().unwrap_or_default();
            if is_staging(name) {
                found.staging.insert(rel.clone(), modified);
                continue;
            }
            let parts: Vec<&str> = rel.split('/').collect();
            if let ["data", engine, instance, id, _segment] = parts.as_slice() {
                let backup = format!("{engine}/{instance}/{id}");
                let committed = vault.join(format!("manifests/{backup}.json")).exists()
                    || vault.join(format!("deleted/{backup}.json")).exists();
                if !committed {
                    let newest = found
                        .orphans
                        .entry(format!("data/{backup}"))
                        .or_insert(modified);
                    *newest = (*newest).max(modified);
                }
            }
        }
        found
    }

    /// Only what was last written before `cutoff`.
    pub fn older_than(&self, cutoff: SystemTime) -> Leftovers {
        let keep = |map: &BTreeMap<String, SystemTime>| {
            map.iter()
                .filter(|(_, t)| **t < cutoff)
                .map(|(k, t)| (k.clone(), *t))
                .collect()
        };
        Leftovers {
            orphans: keep(&self.orphans),
            staging: keep(&self.staging),
        }
    }

    /// No leftover at all.
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.staging.is_empty()
    }

    /// How many leftovers.
    pub fn len(&self) -> usize {
        self.orphans.len() + self.staging.len()
    }

    /// The leftovers, one per line, for messages.
    pub fn describe(&self) -> String {
        self.orphans
            .keys()
            .chain(self.staging.keys())
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A staging file's name: `<object>#<digits>`.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(object, digits)| {
        !object.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(&entry.path(), out);
        } else if meta.is_file() {
            out.push((
                entry.path(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
}

/// Runs `strata verify` of `ids` (every backup when empty); a failure is
/// recorded against run `run`. Whether it passed.
pub(crate) fn verify(case: &mut Case, cli: &Cli, ids: &[String], run: Option<usize>) -> bool {
    let mut args = vec!["verify".to_owned()];
    args.extend(ids.iter().cloned());
    let out = cli.run(&args);
    if out.status.success() {
        return true;
    }
    let what = if ids.is_empty() {
        "every backup".to_owned()
    } else {
        ids.join(" ")
    };
    case.lost(
        run,
        format!(
            "`strata verify` of {what} failed ({}): {}{}",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        ),
    );
    false
}

/// The grace `vault gc` is run with: younger data may belong to a run
/// still going, so every check waits this long after the last kill.
pub(crate) const GC_GRACE: Duration = Duration::from_secs(1);

/// The end of a case: `vault gc --dry-run` must name exactly the leftovers
/// the walk finds (those older than the grace), `vault gc` must remove
/// them and nothing else: the listing is the same afterwards, `verify`
/// passes and the walk finds nothing old left. Returns how many leftovers
/// gc removed.
pub(crate) fn gc_checked(case: &mut Case, cli: &Cli) -> usize {
    std::thread::sleep(GC_GRACE + Duration::from_millis(200));
    let listed_before = match cli.list() {
        Ok(list) => ids(&list),
        Err(e) => {
            case.failed(None, e);
            return 0;
        }
    };
    let walked_at = SystemTime::now();
    let walked = Leftovers::of(&cli.vault_dir);
    let dry = cli.run(&["--json", "vault", "gc", "--older-than", "1s", "--dry-run"]);
    if !dry.status.success() {
        case.failed(
            None,
            format!(
                "`vault gc --dry-run` failed ({}): {}",
                dry.status,
                dry.stderr_text()
            ),
        );
        return 0;
    }
    let report = dry.json();
    let named = gc_named(&report, "orphans", "unfinished_uploads");
    // Whatever gc would delete must be a leftover; every leftover older
    // than the grace when the walk ran must be named.
    for (what, kind) in named.iter() {
        let known = match *kind {
            "orphan" => walked.orphans.contains_key(what),
            _ => walked.staging.contains_key(what),
        };
        if !known {
            case.lost(
                None,
                format!(
                    "`vault gc --dry-run` would delete {what}, which is no leftover of a killed run"
                ),
            );
        }
    }
    let old = walked.older_than(walked_at - GC_GRACE);
    let missed: Vec<&String> = old
        .orphans
        .keys()
        .chain(old.staging.keys())
        .filter(|k| !named.contains_key(*k))
        .collect();
    if !missed.is_empty() {
        case.failed(
            None,
            format!(
                "`vault gc --dry-run` does not name these leftovers of killed runs: {missed:?}"
            ),
        );
    }
    let started = SystemTime::now();
    let gc = cli.run(&["--json", "vault", "gc", "--older-than", "1s"]);
    if !gc.status.success() {
        case.failed(
            None,
            format!("`vault gc` failed ({}): {}", gc.status, gc.stderr_text()),
        );
        return 0;
    }
    let report = gc.json();
    let removed = report["deleted"].as_array().map_or(0, Vec::len)
        + report["unfinished_uploads_deleted"]
            .as_array()
            .map_or(0, Vec::len);
    let left = Leftovers::of(&cli.vault_dir).older_than(started - GC_GRACE);
    if !left.is_empty() {
        case.failed(
            None,
            format!("`vault gc` left these leftovers: {}", left.describe()),
        );
    }
    match cli.list() {
        Ok(after) => {
            let after = ids(&after);
            let gone: Vec<&String> = listed_before.difference(&after).collect();
            if !gone.is_empty() {
                case.lost(
                    None,
                    format!("backups listed before `vault gc` are gone after it: {gone:?}"),
                );
            }
        }
        Err(e) => case.failed(None, e),
    }
    verify(case, cli, &[], None);
    removed
}

/// What a gc report names: `(relative path, "orphan" | "upload")`.
fn gc_named(
    report: &serde_json::Value,
    orphans: &str,
    uploads: &str,
) -> BTreeMap<String, &'static str> {
    let mut named = BTreeMap::new();
    for o in report[orphans].as_array().into_iter().flatten() {
        if let Some(prefix) = o["prefix"].as_str() {
            named.insert(prefix.to_owned(), "orphan");
        }
    }
    for u in report[uploads].as_array().into_iter().flatten() {
        if let Some(path) = u["path"].as_str() {
            named.insert(path.to_owned(), "upload");
        }
    }
    named
}

/// The ids of a listing.
pub(crate) fn ids(list: &[Listed]) -> BTreeSet<String> {
    list.iter().map(|b| b.id.clone()).collect()
}

//! The Backint fixture: a `file://` vault into which `hdbbackint`, driven
//! as SAP HANA drives it ([`crate::hana`]), stored two complete data
//! backups of tenant `HDB` (one piece each, the same name, the same size:
//! 64 KiB parts, 128 KiB segments) and two versions of HANA's backup
//! catalog (`log_backup_0_0_0_0`). Runs restore the newest data piece by
//! its EBID, as HANA does from its catalog, and the newest catalog version
//! with `#NULL`, as a recovery asks for it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Copy, Fixture, Object, Outcome, Part, Target, copy_tree};
use crate::hana::{BackintCall, HanaHost, Pattern, Piece, back_up, drain_pipe, mkfifo, q};

/// Bytes of each data piece: five parts and a bit.
const PIECE_BYTES: u64 = 5 * (64 << 10) + 123;

/// Bytes of each catalog version.
const CATALOG_BYTES: u64 = 20_000;

/// How long a restore run may take.
const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// One stored version of a Backint object.
#[derive(Debug, Clone)]
struct Version {
    ebid: String,
    name: PathBuf,
    len: u64,
    seed: u64,
}

/// The Backint fixture (see the module docs).
pub struct BackintFixture {
    host: HanaHost,
    dir: PathBuf,
    /// The data piece's versions, oldest first.
    data: [Version; 2],
    /// The catalog's versions, oldest first.
    catalog: [Version; 2],
}

impl BackintFixture {
    /// Builds the vault and the backups under `dir`.
    ///
    /// # Panics
    /// When a backup or `verify` of the sound vault fails.
    pub fn build(dir: &Path) -> BackintFixture {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let host = HanaHost::new();
        write_config(&dir.join("strata.toml"), dir);
        super::strata(&dir.join("strata.toml"), &["vault", "init"]).success();
        let params = params(&host, dir, "fixture");
        let tenant = host.backint_dir("HDB", "DB_HDB");
        let piece = Piece::fifo(
            &tenant,
            "COMPLETE_DATA_BACKUP_databackup_0_1",
            PIECE_BYTES,
            11,
        );
        let catalog = Piece::fifo(&tenant, "log_backup_0_0_0_0", CATALOG_BYTES, 13);
        let store = |piece: &Piece, seed: u64, backup_id: &str, level: &str| {
            let piece = Piece {
                seed,
                ..piece.clone()
            };
            let call = BackintCall::new("backup", "HDB")
                .params(&params)
                .backup_id(backup_id)
                .count(1)
                .level(level);
            let result = back_up(&host, call, &[&piece]);
            Version {
                ebid: result.saved(&piece.path).0,
                name: piece.path.clone(),
                len: piece.len,
                seed,
            }
        };
        let data = [
            store(&piece, 11, "1763771700001", "COMPLETE"),
            store(&piece, 12, "1763771700002", "COMPLETE"),
        ];
        let catalog = [
            store(&catalog, 13, "1763771700003", "LOG"),
            store(&catalog, 14, "1763771700004", "LOG"),
        ];
        // The sound vault verifies clean, and its index knows every backup.
        super::strata(&dir.join("strata.toml"), &["verify"]).success();
        BackintFixture {
            host,
            dir: dir.to_path_buf(),
            data,
            catalog,
        }
    }

    fn manifest(&self, version: &Version) -> serde_json::Value {
        let path = self
            .dir
            .join(format!("vault/manifests/hana/HDB/{}.json", version.ebid));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The key of the name marker of `version`.
    fn marker(&self, version: &Version) -> String {
        let vault = self.dir.join("vault");
        find_file(&vault.join("engines/hana/HDB/objects"), &version.ebid)
            .and_then(|p| p.strip_prefix(&vault).ok().map(|p| p.display().to_string()))
            .unwrap_or_else(|| panic!("the marker of {} in {}", version.ebid, vault.display()))
    }
}

/// The file called `name` somewhere under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name().to_string_lossy() == name {
            return Some(path);
        }
    }
    None
}

/// The `strata` configuration of the vault at `<dir>/vault`.
fn write_config(path: &Path, dir: &Path) {
    let text = format!(
        "[vault]\nurl = \"file://{}/vault\"\n\n[catalog]\npath = \"{}/catalog.db\"\n",
        dir.display(),
        dir.display()
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A parameter file for the vault at `<dir>/vault`, logging to
/// `<dir>/backint.log`: 64 KiB parts, 128 KiB segments.
fn params(host: &HanaHost, dir: &Path, name: &str) -> PathBuf {
    host.param_file(
        "HDB",
        &format!("{name}.utl"),
        &format!(
            "vault = file://{}/vault\npart_size = 65536\nsegment_size = 131072\nlog_file = {}/backint.log\n",
            dir.display(),
            dir.display()
        ),
    )
}

/// The key of the segment at `part` of `manifest`'s only stream.
fn segment_key(manifest: &serde_json::Value, part: Part) -> String {
    let segments = manifest["streams"][0]["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("segments: {manifest}"));
    assert!(
        segments.len() >= 3,
        "first, middle and last differ: {manifest}"
    );
    segments[part.index(segments.len())]["key"]
        .as_str()
        .expect("a key")
        .to_owned()
}

impl Fixture for BackintFixture {
    fn target(&self, object: Object) -> Target {
        let [old, new] = &self.data;
        match object {
            Object::BackintSegment(part) => Target::new(
                segment_key(&self.manifest(new), part),
                segment_key(&self.manifest(old), part),
            ),
            Object::BackintManifest => Target::new(
                format!("manifests/hana/HDB/{}.json", new.ebid),
                format!("manifests/hana/HDB/{}.json", old.ebid),
            ),
            Object::BackintMarker => {
                Target::new(self.marker(&self.catalog[1]), self.marker(&self.catalog[0]))
            }
            other => panic!("{other:?} is not a Backint fixture object"),
        }
    }

    fn copy(&self, _object: Object, dir: &Path) -> Copy {
        let vault = dir.join("vault");
        copy_tree(&self.dir.join("vault"), &vault);
        copy_tree(&self.dir.join("catalog.db"), &dir.join("catalog.db"));
        let config = dir.join("strata.toml");
        write_config(&config, dir);
        Copy {
            dir: dir.to_path_buf(),
            vault,
            config,
        }
    }

    fn verify(&self, _object: Object, copy: &Copy) -> Outcome {
        Outcome::of(&super::strata(&copy.config, &["--json", "verify"]))
    }

    fn restore(&self, object: Object, copy: &Copy) -> Outcome {
        let run = copy
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let params = params(&self.host, &copy.dir, &run);
        let dest = copy.dir.join("pipe");
        mkfifo(&dest);
        // The newest data piece by its EBID; the newest catalog by `#NULL`.
        let (version, line) = if object == Object::BackintMarker {
            let version = &self.catalog[1];
            (
                version,
                format!(
                    "#NULL {} {}",
                    q(&version.name.display().to_string()),
                    q(&dest.display().to_string())
                ),
            )
        } else {
            let version = &self.data[1];
            (
                version,
                format!(
                    "#EBID {} {} {}",
                    q(&version.ebid),
                    q(&version.name.display().to_string()),
                    q(&dest.display().to_string())
                ),
            )
        };
        let agent = BackintCall::new("restore", "HDB")
            .params(&params)
            .line(line)
            .spawn(&self.host);
        let reader = {
            let dest = dest.clone();
            std::thread::spawn(move || drain_pipe(&dest, RESTORE_WAIT))
        };
        let result = agent.finish(RESTORE_WAIT);
        if !reader.is_finished() {
            // The agent never opened the pipe: let the reader go.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&dest);
        }
        let transfer = reader.join().expect("the reader thread");
        let log = std::fs::read_to_string(copy.dir.join("backint.log")).unwrap_or_default();
        let restored = !result.with("#RESTORED").is_empty();
        let not_found = !result.with("#NOTFOUND").is_empty();
        Outcome {
            refused: result.code == Some(0) && not_found && !restored,
            command: format!("hdbbackint -f restore ({})", version.name.display()),
            code: result.code,
            text: format!("{}\n{}\n{log}", result.text, result.stderr),
            correct: (result.code == Some(0) && !not_found).then(|| {
                restored
                    && transfer.as_ref().is_ok_and(|t| {
                        t.bytes == version.len
                            && t.blake3 == Pattern::digest(version.len, version.seed)
                    })
            }),
        }
    }
}

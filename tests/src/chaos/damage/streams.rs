//! The stream fixture: a plain and an encrypted `file://` vault, each with
//! two backups of the stream `alpha` (same size, different bytes: a
//! segment of one has the size of the other's), and in the plain vault two
//! soft-deleted backups (`gamma`, `delta`) whose tombstones the runs
//! damage; two more empty vaults give another vault's metadata.

use std::path::{Path, PathBuf};

use super::{Copy, Fixture, Object, Outcome, Target, copy_tree, strata};
use crate::data::{blake3_hex, random_bytes};

/// Bytes of each `alpha` backup: five 64 KiB parts, so first, middle and
/// last are different segments.
const ALPHA_BYTES: usize = 300_000;

/// One vault of the fixture.
struct StreamVault {
    dir: PathBuf,
    key_file: Option<PathBuf>,
    /// The backups of `alpha`, oldest first: id and manifest.
    alpha: Vec<(String, serde_json::Value)>,
}

impl StreamVault {
    fn create(dir: &Path, encrypted: bool) -> StreamVault {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let vault = StreamVault {
            dir: dir.to_path_buf(),
            key_file: encrypted.then(|| dir.join("vault.key")),
            alpha: Vec::new(),
        };
        write_config(&vault.config(), dir, vault.key_file.as_deref());
        let mut init = vec!["vault", "init"];
        if encrypted {
            init.push("--encrypt");
        }
        strata(&vault.config(), &init).success();
        vault
    }

    fn config(&self) -> PathBuf {
        self.dir.join("strata.toml")
    }

    fn vault(&self) -> PathBuf {
        self.dir.join("vault")
    }

    fn manifest(&self, name: &str, id: &str) -> serde_json::Value {
        let path = self
            .vault()
            .join(format!("manifests/stream/{name}/{id}.json"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn copy_to(&self, dir: &Path) -> Copy {
        let vault = dir.join("vault");
        copy_tree(&self.vault(), &vault);
        let index = self.dir.join("catalog.db");
        if index.exists() {
            copy_tree(&index, &dir.join("catalog.db"));
        }
        let config = dir.join("strata.toml");
        write_config(&config, dir, self.key_file.as_deref());
        Copy {
            dir: dir.to_path_buf(),
            vault,
            config,
        }
    }
}

/// The configuration of a vault at `<dir>/vault` with its index at
/// `<dir>/catalog.db`: 64 KiB parts, at most two per segment.
fn write_config(path: &Path, dir: &Path, key_file: Option<&Path>) {
    let key = key_file
        .map(|k| format!("key_file = \"{}\"\n", k.display()))
        .unwrap_or_default();
    let text = format!(
        "[vault]\nurl = \"file://{}/vault\"\n{key}\n[catalog]\npath = \"{}/catalog.db\"\n\n\
         [writer]\npart_size = \"64KiB\"\nsegment_size = \"128KiB\"\n",
        dir.display(),
        dir.display()
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The stream fixture (see the module docs).
pub struct StreamVaults {
    plain: StreamVault,
    encrypted: StreamVault,
    spare_plain: StreamVault,
    spare_encrypted: StreamVault,
    /// The bytes of the newest `alpha`, what its restore must give back.
    alpha_digest: String,
    /// The soft-deleted `gamma`: its id and digest; `delta`'s id.
    gamma: (String, String),
    delta: String,
}

impl StreamVaults {
    /// Builds the vaults and backups under `dir`.
    ///
    /// # Panics
    /// When a backup or `verify` of the sound vaults fails.
    pub fn build(dir: &Path) -> StreamVaults {
        let mut plain = StreamVault::create(&dir.join("plain"), false);
        let mut encrypted = StreamVault::create(&dir.join("encrypted"), true);
        let spare_plain = StreamVault::create(&dir.join("spare-plain"), false);
        let spare_encrypted = StreamVault::create(&dir.join("spare-encrypted"), true);
        let versions = [random_bytes(ALPHA_BYTES, 1), random_bytes(ALPHA_BYTES, 2)];
        for vault in [&mut plain, &mut encrypted] {
            for data in &versions {
                let id = back_up(vault, "alpha", data);
                let manifest = vault.manifest("alpha", &id);
                vault.alpha.push((id, manifest));
            }
        }
        let gamma_data = random_bytes(100_000, 3);
        let gamma = back_up(&plain, "gamma", &gamma_data);
        let delta = back_up(&plain, "delta", &random_bytes(100_000, 4));
        strata(&plain.config(), &["delete", &gamma, &delta]).success();
        // The sound vaults verify clean (and their indexes know every backup).
        for vault in [&plain, &encrypted] {
            strata(&vault.config(), &["verify"]).success();
        }
        StreamVaults {
            plain,
            encrypted,
            spare_plain,
            spare_encrypted,
            alpha_digest: blake3_hex(&versions[1]),
            gamma: (gamma, blake3_hex(&gamma_data)),
            delta,
        }
    }

    fn vault_of(&self, object: Object) -> &StreamVault {
        match object {
            Object::EncryptedSegment(_)
            | Object::EncryptedManifest
            | Object::EncryptedVaultMeta => &self.encrypted,
            _ => &self.plain,
        }
    }
}

/// `strata backup stream name` fed `data`; returns the backup id.
fn back_up(vault: &StreamVault, name: &str, data: &[u8]) -> String {
    let out = crate::cli::Strata::new()
        .arg("--config")
        .arg(vault.config())
        .args(["backup", "stream", name])
        .stdin(data.to_vec())
        .run()
        .success();
    let id = out.stdout_text().trim().to_owned();
    assert!(!id.is_empty(), "backup stream {name} printed no id");
    id
}

/// The key of segment `index` of the only stream of `manifest`.
fn segment_key(manifest: &serde_json::Value, part: super::Part) -> String {
    let segments = manifest["streams"][0]["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("a manifest with segments: {manifest}"));
    assert!(
        segments.len() >= 3,
        "first, middle and last differ: {manifest}"
    );
    segments[part.index(segments.len())]["key"]
        .as_str()
        .expect("a segment key")
        .to_owned()
}

impl Fixture for StreamVaults {
    fn target(&self, object: Object) -> Target {
        let vault = self.vault_of(object);
        let [(old, old_manifest), (new, new_manifest)] = &vault.alpha[..] else {
            panic!("two backups of alpha");
        };
        match object {
            Object::StreamSegment(part) | Object::EncryptedSegment(part) => Target::new(
                segment_key(new_manifest, part),
                segment_key(old_manifest, part),
            ),
            Object::StreamManifest | Object::EncryptedManifest => Target::new(
                format!("manifests/stream/alpha/{new}.json"),
                format!("manifests/stream/alpha/{old}.json"),
            ),
            Object::VaultMeta | Object::EncryptedVaultMeta => {
                let spare = if object == Object::VaultMeta {
                    &self.spare_plain
                } else {
                    &self.spare_encrypted
                };
                Target::new(
                    "strata-vault.json",
                    spare
                        .vault()
                        .join("strata-vault.json")
                        .display()
                        .to_string(),
                )
            }
            Object::Tombstone => Target::new(
                format!("deleted/stream/gamma/{}.json", self.gamma.0),
                format!("deleted/stream/delta/{}.json", self.delta),
            ),
            other => panic!("{other:?} is not a stream fixture object"),
        }
    }

    fn copy(&self, object: Object, dir: &Path) -> Copy {
        self.vault_of(object).copy_to(dir)
    }

    fn verify(&self, _object: Object, copy: &Copy) -> Outcome {
        Outcome::of(&strata(&copy.config, &["--json", "verify"]))
    }

    fn restore(&self, object: Object, copy: &Copy) -> Outcome {
        let (name, digest) = if object == Object::Tombstone {
            let (id, digest) = &self.gamma;
            let out = strata(&copy.config, &["undelete", id]);
            if out.code() != Some(0) {
                return Outcome::of(&out);
            }
            ("gamma", digest)
        } else {
            ("alpha", &self.alpha_digest)
        };
        let restored = copy.dir.join("restored");
        let out = strata(
            &copy.config,
            &[
                "restore",
                "stream",
                name,
                "--output",
                restored.to_str().expect("a UTF-8 path"),
            ],
        );
        let mut outcome = Outcome::of(&out);
        if out.code() == Some(0) {
            let bytes = std::fs::read(&restored).unwrap_or_default();
            outcome.correct = Some(&blake3_hex(&bytes) == digest);
        }
        outcome
    }
}

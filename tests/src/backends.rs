//! Vault locations on every object-store backend, one per test.
//!
//! | Backend | Location | Needs |
//! |---|---|---|
//! | [`Backend::File`] | a fresh temporary directory | nothing |
//! | [`Backend::Memory`] | `memory://strata-e2e/<test>-<random>` | nothing |
//! | [`Backend::Azure`] | `$STRATA_TEST_AZURE_URL/<test>-<random>` | Azurite (or Azure) and its `AZURE_*` variables |
//! | [`Backend::S3`] | `$STRATA_TEST_S3_URL/<test>-<random>` | moto (or S3) and its `AWS_*` variables |
//! | [`Backend::Gcs`] | `$STRATA_TEST_GCS_URL/<test>-<random>` | fake-gcs-server behind `scripts/gcs-xml-front.py` (or GCS) and its `GOOGLE_*` variables |
//!
//! `scripts/emulators.sh start` starts Azurite, moto and fake-gcs-server and writes the
//! variables; `scripts/test.sh` does that and sets `STRATA_REQUIRE_EMULATORS=1`.
//! Without that variable a backend whose URL variable is unset is skipped
//! with a notice on stderr; with it, a missing backend fails the test, so a
//! CI run cannot pass by skipping.

use futures::StreamExt;
use object_store::ObjectStore;
use strata_core::vault::{VaultConfig, build_store};

use crate::fixture::TestDir;

/// The variable that makes a missing emulator a test failure instead of a skip.
pub const REQUIRE_EMULATORS: &str = "STRATA_REQUIRE_EMULATORS";

/// An object-store backend a vault can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A local directory (`file://`).
    File,
    /// The in-process memory store (`memory://`).
    Memory,
    /// Azure Blob storage (`az://`), in tests Azurite.
    Azure,
    /// Amazon S3 (`s3://`), in tests moto.
    S3,
    /// Google Cloud Storage (`gs://`), in tests fake-gcs-server behind the
    /// XML API front (`scripts/gcs-xml-front.py`).
    Gcs,
}

impl Backend {
    /// Every backend, in the order the conformance suite reports them.
    pub const ALL: [Backend; 5] = [
        Backend::File,
        Backend::Memory,
        Backend::Azure,
        Backend::S3,
        Backend::Gcs,
    ];

    /// A short lowercase name (`file`, `memory`, `azure`, `s3`, `gcs`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Memory => "memory",
            Backend::Azure => "azure",
            Backend::S3 => "s3",
            Backend::Gcs => "gcs",
        }
    }

    /// The environment variable holding the base URL of an external
    /// backend; `None` for backends that are always available.
    pub fn url_variable(self) -> Option<&'static str> {
        match self {
            Backend::File | Backend::Memory => None,
            Backend::Azure => Some("STRATA_TEST_AZURE_URL"),
            Backend::S3 => Some("STRATA_TEST_S3_URL"),
            Backend::Gcs => Some("STRATA_TEST_GCS_URL"),
        }
    }
}

/// Whether `STRATA_REQUIRE_EMULATORS=1` is set.
pub fn emulators_required() -> bool {
    std::env::var(REQUIRE_EMULATORS).is_ok_and(|v| v.trim() == "1")
}

/// The base URL of an external backend (`az://container`, `s3://bucket`),
/// without a trailing slash; `None` for `file` and `memory`.
///
/// Returns `None` (after printing a notice that `test` is skipped) when the
/// backend's URL variable is unset.
///
/// # Panics
/// When the variable is unset and [`emulators_required`].
pub fn external_base_url(backend: Backend, test: &str) -> Option<String> {
    let variable = backend.url_variable()?;
    match std::env::var(variable) {
        Ok(base) if !base.trim().is_empty() => Some(base.trim().trim_end_matches('/').to_owned()),
        _ => {
            if emulators_required() {
                panic!(
                    "{variable} is not set but {REQUIRE_EMULATORS}=1: the {} backend \
                     must be tested. Start the emulators with `scripts/emulators.sh start` \
                     and `source .work/emulators.env`, or run `scripts/test.sh`",
                    backend.name()
                );
            }
            crate::skip::skipped(
                &format!("{test} on {}", backend.name()),
                &format!(
                    "{variable} is not set (run `scripts/emulators.sh start` \
                     and `source .work/emulators.env`)"
                ),
            );
            None
        }
    }
}

/// A place for one test's vault on one backend. The vault is not created:
/// tests call `Vault::init(&location.config(), key)` themselves.
#[derive(Debug)]
pub struct TestVault {
    backend: Backend,
    url: String,
    /// Keeps a `file://` vault's directory alive for the test.
    dir: Option<TestDir>,
}

impl TestVault {
    /// A fresh, unique location for `test` on `backend`.
    ///
    /// Returns `None` (after printing a notice) when the backend's URL
    /// variable is unset, so the caller skips the test.
    ///
    /// # Panics
    /// When the backend is not configured and [`emulators_required`].
    pub fn new(backend: Backend, test: &str) -> Option<TestVault> {
        let unique = format!("{}-{:08x}", sanitize(test), rand::random::<u32>());
        match backend {
            Backend::File => {
                let dir = TestDir::new(&format!("vault-{}", sanitize(test)));
                let url = dir.file_url("vault");
                Some(TestVault {
                    backend,
                    url,
                    dir: Some(dir),
                })
            }
            Backend::Memory => Some(TestVault {
                backend,
                url: format!("memory://strata-e2e/{unique}"),
                dir: None,
            }),
            Backend::Azure | Backend::S3 | Backend::Gcs => {
                let base = external_base_url(backend, test)?;
                Some(TestVault {
                    backend,
                    url: format!("{base}/{unique}"),
                    dir: None,
                })
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The vault URL (`file:///tmp/...`, `memory://...`, `az://...`, `s3://...`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A vault configuration for this location (store options come from the
    /// environment).
    pub fn config(&self) -> VaultConfig {
        VaultConfig::from_url(&self.url)
    }

    /// The temporary directory of a `file://` location (the vault lives in
    /// its `vault` subdirectory), for tests that need a scratch directory too.
    pub fn dir(&self) -> Option<&TestDir> {
        self.dir.as_ref()
    }

    /// Deletes every object under the location, so the emulators (which
    /// hold everything in memory) stay small over a long run. A `file://`
    /// location is deleted with its directory when dropped.
    ///
    /// # Panics
    /// When the store cannot be listed or an object cannot be deleted: that
    /// is a backend failure the test run should show.
    pub async fn cleanup(&self) {
        if self.backend == Backend::File {
            return;
        }
        let (store, root) = build_store(&self.config())
            .unwrap_or_else(|e| panic!("cleaning up {}: {e:?}", self.url));
        let locations = store
            .list(Some(&root))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let mut deleted = store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => panic!("cleaning up {}: {e}", self.url),
            }
        }
    }
}

/// A test name as a safe key component: lowercase letters, digits and `-`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(48);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_unique_per_call() {
        let a = TestVault::new(Backend::Memory, "same::name").unwrap();
        let b = TestVault::new(Backend::Memory, "same::name").unwrap();
        assert_ne!(a.url(), b.url());
        assert!(
            a.url().starts_with("memory://strata-e2e/same--name-"),
            "{}",
            a.url()
        );
        let f = TestVault::new(Backend::File, "t").unwrap();
        assert!(f.url().starts_with("file:///"), "{}", f.url());
        assert!(f.dir().unwrap().root().is_dir());
    }
}

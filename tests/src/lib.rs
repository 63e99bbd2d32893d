//! # strata-e2e
//!
//! The pieces Strata's end-to-end tests share: they run the real `strata`
//! binary, real object stores (a directory, memory, and the Azurite and moto
//! emulators that `scripts/test.sh` starts) and real engines, never mocks.
//!
//! ## A short tour
//!
//! - [`fixture::TestDir`]: a temporary directory that is deleted when the test
//!   ends, with `path("name")` for the files a test creates in it.
//! - [`cli::Strata`]: runs the built `strata` binary ([`cli::strata_bin`]) with
//!   a clean environment and captures its exit code and output;
//!   [`cli::RunOutput::success`] and [`cli::RunOutput::failure`] assert the
//!   outcome and print everything the command said when it is not the expected one.
//! - [`backends::Backend`] and [`backends::TestVault`]: one vault location per
//!   test on each object-store backend (`file://`, `memory://`, `az://`,
//!   `s3://`), each under its own unique prefix. Emulator backends are skipped
//!   with a notice when their environment variable is unset, unless
//!   `STRATA_REQUIRE_EMULATORS=1`, which turns a missing emulator into a failure.
//! - [`data`]: deterministic test data (incompressible or compressible) and
//!   its BLAKE3 digest.
//! - [`net::free_port`]: a free TCP port on loopback for a server a test starts.
//! - [`skip::skipped`]: a test that cannot run here records it, and
//!   `scripts/test.sh` counts it as skipped, not passed.
//!
//! ```no_run
//! use strata_e2e::backends::{Backend, TestVault};
//! use strata_core::vault::Vault;
//!
//! # async fn example() {
//! // `None` means: this backend is not configured here, skip the test.
//! let Some(location) = TestVault::new(Backend::S3, "my_test") else { return };
//! let vault = Vault::init(&location.config(), None).await.unwrap();
//! // ... write and read backups ...
//! location.cleanup().await;
//! # }
//! ```

pub mod backends;
pub mod chaos;
pub mod cli;
pub mod data;
pub mod fixture;
pub mod hana;
pub mod net;
pub mod pg;
pub mod skip;
pub mod sqlserver;

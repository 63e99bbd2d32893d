//! The `strata` CLI against every object store an operator can point it at
//! from outside the process: a directory (`file://`), Azure Blob (Azurite)
//! and S3 (moto), configured the way operators configure them, through the
//! store's environment variables.
//!
//! Each case runs once per backend (`file::<case>`, `azure::<case>`,
//! `s3::<case>`); see `vault_conformance.rs` for how emulator backends are
//! found, skipped or required. `memory://` is left out: it lives inside one
//! process.

use std::path::PathBuf;

use strata_e2e::backends::TestVault;
use strata_e2e::cli::{RunOutput, Strata};
use strata_e2e::data::{blake3_hex, compressible_bytes, random_bytes};
use strata_e2e::fixture::TestDir;

macro_rules! on_backends {
    ($($case:ident),* $(,)?) => {
        mod file { on_backends!(@on File; $($case),*); }
        mod azure { on_backends!(@on Azure; $($case),*); }
        mod s3 { on_backends!(@on S3; $($case),*); }
        mod gcs { on_backends!(@on Gcs; $($case),*); }
    };
    (@on $backend:ident; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                let backend = strata_e2e::backends::Backend::$backend;
                let Some(location) =
                    strata_e2e::backends::TestVault::new(backend, stringify!($case))
                else {
                    return;
                };
                super::$case(&super::Operator::new(&location));
                tokio::runtime::Runtime::new()
                    .expect("a runtime for the cleanup")
                    .block_on(location.cleanup());
            }
        )*
    };
}

on_backends!(
    stream_backup_lists_verifies_and_restores,
    encrypted_vault_needs_its_key,
    second_init_is_refused_and_changes_nothing,
    deleted_backup_is_hidden_restorable_when_undeleted_and_purged_after_its_period,
    interrupted_purge_is_finished_by_the_next_gc,
    init_refuses_backups_left_without_their_metadata,
);

/// An operator's shell: a scratch directory, a local catalog index and a
/// vault URL given on every command line.
struct Operator<'a> {
    location: &'a TestVault,
    dir: TestDir,
}

impl<'a> Operator<'a> {
    fn new(location: &'a TestVault) -> Operator<'a> {
        Operator {
            location,
            dir: TestDir::new("operator"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn strata<const N: usize>(&self, args: [&str; N]) -> Strata {
        Strata::new()
            .arg("--vault")
            .arg(self.location.url())
            .arg("--catalog")
            .arg(self.path("catalog.db"))
            .args(args)
    }

    fn run<const N: usize>(&self, args: [&str; N]) -> RunOutput {
        self.strata(args).run()
    }

    fn input(&self, name: &str, data: &[u8]) -> String {
        self.dir.write(name, data).to_string_lossy().into_owned()
    }
}

fn stream_backup_lists_verifies_and_restores(op: &Operator) {
    op.run(["vault", "init"]).success();
    // Rows that compress, then noise that does not: both kinds of part.
    let mut data = compressible_bytes(2 << 20, 1);
    data.extend(random_bytes((1 << 20) + 17, 2));
    let input = op.input("input.bin", &data);

    let out = op
        .run([
            "backup",
            "stream",
            "nightly",
            "--input",
            &input,
            "--part-size",
            "1MiB",
            "--json",
        ])
        .success();
    let summary = out.json();
    assert_eq!(summary["raw_bytes"], data.len() as u64);
    assert_eq!(summary["parts"], 4, "3 MiB + 17 B in 1 MiB parts");
    assert_eq!(summary["blake3"], blake3_hex(&data).as_str());
    let id = summary["id"].as_str().expect("the backup id").to_owned();

    let listed = op.run(["list", "--json"]).success().json();
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["instance"], "nightly");

    let out = op.run(["verify"]).success();
    assert!(
        out.stdout_text()
            .contains("1 backup(s) verified, 0 damaged"),
        "{}",
        out.stdout_text()
    );

    let restored = op.path("restored.bin");
    op.run([
        "restore",
        "stream",
        "nightly",
        "--output",
        restored.to_str().unwrap(),
    ])
    .success();
    let bytes = std::fs::read(&restored).expect("the restored file");
    assert!(bytes == data, "the restored bytes differ from the input");

    // The index is a cache: a host with none sees the same backup, and
    // restores the same bytes from the vault alone.
    std::fs::remove_file(op.path("catalog.db")).expect("the index exists");
    let listed = op.run(["list", "--json"]).success().json();
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| b["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    std::fs::remove_file(op.path("catalog.db")).expect("list wrote a new index");
    let again = op.path("restored-on-a-new-host.bin");
    op.run([
        "restore",
        "stream",
        "nightly",
        "--output",
        again.to_str().unwrap(),
    ])
    .success();
    let bytes = std::fs::read(&again).expect("the restored file");
    assert!(
        bytes == data,
        "the bytes restored without an index differ from the input"
    );
}

fn encrypted_vault_needs_its_key(op: &Operator) {
    let key = op.path("vault.key");
    let key = key.to_str().unwrap();
    op.run(["vault", "init", "--encrypt", "--key-file", key])
        .success();
    let data = random_bytes(300_000, 3);
    let input = op.input("input.bin", &data);
    op.run([
        "backup",
        "stream",
        "secret",
        "--key-file",
        key,
        "--input",
        &input,
    ])
    .success();

    op.run(["restore", "stream", "secret"])
        .failure(7)
        .stderr_contains("encrypted and no key was given");
    let other = op.dir.write("other.key", format!("{}\n", "ab".repeat(32)));
    // Owner-only, as a key file must be (a looser one is refused first).
    std::fs::set_permissions(
        &other,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    op.run([
        "restore",
        "stream",
        "secret",
        "--key-file",
        other.to_str().unwrap(),
    ])
    .failure(7)
    .stderr_contains("does not belong");

    let out = op
        .run(["restore", "stream", "secret", "--key-file", key])
        .success();
    assert!(out.stdout == data, "restored bytes differ");
}

fn second_init_is_refused_and_changes_nothing(op: &Operator) {
    op.run(["vault", "init"]).success();
    let data = b"configuration snapshot\n".repeat(1000);
    let input = op.input("input.bin", &data);
    op.run(["backup", "stream", "cfg", "--input", &input])
        .success();

    op.run(["vault", "init"])
        .failure(9)
        .stderr_contains("already exists");
    let key = op.path("new.key");
    op.run([
        "vault",
        "init",
        "--encrypt",
        "--key-file",
        key.to_str().unwrap(),
    ])
    .failure(9)
    .stderr_contains("already exists");

    let out = op.run(["restore", "stream", "cfg"]).success();
    assert!(
        out.stdout == data,
        "the backup changed after a refused init"
    );
}

fn listed_ids(out: RunOutput) -> Vec<String> {
    out.success()
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| b["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn deleted_backup_is_hidden_restorable_when_undeleted_and_purged_after_its_period(op: &Operator) {
    op.run(["vault", "init", "--soft-delete-days", "3"])
        .success();
    let info = op.run(["vault", "info", "--json"]).success().json();
    assert_eq!(info["meta"]["soft_delete_days"], 3, "{info}");
    let first = random_bytes(200_000, 5);
    let second = random_bytes(200_000, 6);
    let id_of = |out: RunOutput| out.success().json()["id"].as_str().unwrap().to_owned();
    let input = op.input("first.bin", &first);
    let old = id_of(op.run(["backup", "stream", "db", "--input", &input, "--json"]));
    let input = op.input("second.bin", &second);
    let new = id_of(op.run(["backup", "stream", "db", "--input", &input, "--json"]));

    op.run(["delete", &new, "--reason", "wrong\ndump"])
        .success();
    op.run(["delete", &new])
        .failure(8)
        .stderr_contains(&format!("backup {new} is already deleted"))
        .stderr_contains(&format!("`strata undelete {new}`"));
    op.run(["undelete", &old])
        .failure(9)
        .stderr_contains(&format!("backup {old} is not deleted"));
    // Hidden from list and restore: the stream's newest is the old one.
    assert_eq!(
        listed_ids(op.run(["list", "--json"])),
        std::slice::from_ref(&old)
    );
    let out = op.run(["restore", "stream", "db"]).success();
    assert!(out.stdout == first, "restore uses what is listed");
    let deleted = op.run(["list", "--deleted", "--json"]).success().json();
    assert_eq!(deleted[0]["id"], new.as_str(), "{deleted}");
    assert_eq!(
        deleted[0]["reason"], "wrong dump",
        "one line, control characters blanked: {deleted}"
    );
    // Soft-deleted data is neither an orphan to gc nor purged early.
    op.run(["vault", "gc", "--older-than", "1s"]).success();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    op.run(["vault", "gc", "--older-than", "1s"]).success();
    assert_eq!(
        listed_ids(op.run(["list", "--deleted", "--json"])),
        std::slice::from_ref(&new)
    );

    op.run(["undelete", &new]).success();
    assert_eq!(
        listed_ids(op.run(["list", "--json"])),
        [old.clone(), new.clone()]
    );
    assert!(listed_ids(op.run(["list", "--deleted", "--json"])).is_empty());
    let out = op.run(["restore", "stream", "db"]).success();
    assert!(
        out.stdout == second,
        "the undeleted backup restores bit-exact"
    );
    op.run(["undelete", &new])
        .failure(9)
        .stderr_contains(&format!("backup {new} is not deleted"));

    // Deleted again: purged only after its 3 days.
    op.run(["delete", &new]).success();
    let two_days = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    op.run(["vault", "gc", "--now", &two_days]).success();
    assert_eq!(
        listed_ids(op.run(["list", "--deleted", "--json"])),
        std::slice::from_ref(&new)
    );
    let four_days = (chrono::Utc::now() + chrono::Duration::days(4)).to_rfc3339();
    // A dry run says what it would purge, and purges nothing.
    let out = op
        .run(["vault", "gc", "--dry-run", "--now", &four_days])
        .success();
    assert!(
        out.stdout_text()
            .contains("would purge 1 deleted backup(s)"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(
        listed_ids(op.run(["list", "--deleted", "--json"])),
        std::slice::from_ref(&new)
    );
    let out = op.run(["vault", "gc", "--now", &four_days]).success();
    assert!(
        out.stdout_text().contains("purged 1 deleted backup(s)"),
        "{}",
        out.stdout_text()
    );
    assert!(listed_ids(op.run(["list", "--deleted", "--json"])).is_empty());
    op.run(["undelete", &new])
        .failure(8)
        .stderr_contains("no deleted backup");
    // The kept backup is whole.
    op.run(["verify"]).success();
    assert_eq!(listed_ids(op.run(["list", "--json"])), [old]);
}

/// A purge killed after it deleted some segments (here the first, deleted
/// by hand as the killed gc did) cannot be undone: the next gc finishes it
/// whatever the purge date, and undelete says the data is gone.
fn interrupted_purge_is_finished_by_the_next_gc(op: &Operator) {
    op.run(["vault", "init"]).success();
    let input = op.input("data.bin", &random_bytes(300_000, 7));
    let out = op
        .run([
            "backup",
            "stream",
            "db",
            "--input",
            &input,
            "--part-size",
            "64KiB",
            "--json",
        ])
        .success();
    let id = out.json()["id"].as_str().unwrap().to_owned();
    op.run(["delete", &id]).success();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = || async {
        strata_core::vault::Vault::open(&op.location.config())
            .await
            .unwrap()
    };
    runtime.block_on(async {
        let vault = vault().await;
        let tombstone = &vault.deleted_backups().await.unwrap()[0];
        let first = tombstone.manifest.streams[0].segments[0].key.clone();
        vault.delete_object(&first).await.unwrap();
    });
    op.run(["undelete", &id])
        .failure(8)
        .stderr_contains("its data was purged, or partly purged");
    op.run(["vault", "gc"]).success();
    assert!(listed_ids(op.run(["list", "--deleted", "--json"])).is_empty());
    op.run(["undelete", &id])
        .failure(8)
        .stderr_contains("there is no deleted backup");
    let leftovers = runtime.block_on(async { vault().await.list_keys("data").await.unwrap() });
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A vault whose metadata object was deleted (by hand, or on S3 hidden by
/// a delete marker) still holds its backups: init refuses to make a new
/// vault of them that their key and index would not match.
fn init_refuses_backups_left_without_their_metadata(op: &Operator) {
    op.run(["vault", "init"]).success();
    let input = op.input("data.bin", &random_bytes(10_000, 8));
    op.run(["backup", "stream", "db", "--input", &input])
        .success();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let vault = strata_core::vault::Vault::open(&op.location.config())
            .await
            .unwrap();
        vault.delete_object("strata-vault.json").await.unwrap();
    });
    op.run(["list"])
        .failure(8)
        .stderr_contains("is a vault whose metadata is gone: it holds backups")
        .stderr_contains("delete marker");
    op.run(["vault", "init"])
        .failure(9)
        .stderr_contains("already holds backups")
        .stderr_contains("strata-vault.json is missing");
    // Out-of-range periods are refused before anything is written.
    op.run(["vault", "init", "--soft-delete-days", "4294967295"])
        .failure(2)
        .stderr_contains("--soft-delete-days");
}

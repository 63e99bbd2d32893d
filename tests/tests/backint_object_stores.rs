//! hdbbackint on the cloud object stores, as a HANA system uses it: a
//! multistream data backup, a log backup and two catalog backups into a vault
//! on S3 (moto) and on Azure Blob (Azurite, encrypted), found again with
//! `inquire`, then restored on a second host (a fresh root, a fresh catalog
//! index) into fresh pipes, every byte compared with what HANA wrote.
//!
//! See `tests/src/backends.rs` for how the emulators are found: without
//! them the cases are skipped with a notice, and with
//! `STRATA_REQUIRE_EMULATORS=1` (CI) a missing one fails.

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use strata_core::vault::build_store;
use strata_e2e::backends::{Backend, TestVault};
use strata_e2e::cli::Strata;
use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, PART_SIZE, Pattern, Piece, back_up, drain_pipe, mkfifo,
};

/// S3: data, log and catalog objects back up, are found by `inquire` and
/// restore byte for byte on a second host.
#[test]
fn backint_round_trips_on_s3() {
    round_trip(Backend::S3, false, "backint_round_trips_on_s3");
}

/// Azure Blob, encrypted vault: the same round trip, with the key file
/// named in the parameter file; no stored object holds the plaintext, and
/// a parameter file without the key gets `#ERROR` for the object.
#[test]
fn backint_round_trips_on_an_encrypted_azure_vault() {
    round_trip(
        Backend::Azure,
        true,
        "backint_round_trips_on_an_encrypted_azure_vault",
    );
}

fn round_trip(backend: Backend, encrypted: bool, test: &str) {
    let Some(location) = TestVault::new(backend, test) else {
        return;
    };
    let host = HanaHost::new();
    let key = host.root().join("vault.key");
    let mut init = Strata::new()
        .arg("--vault")
        .arg(location.url())
        .args(["vault", "init"]);
    if encrypted {
        init = init.args(["--encrypt", "--key-file"]).arg(&key);
    }
    init.run().success();
    let key_line = if encrypted {
        format!("key_file = {}", key.display())
    } else {
        String::new()
    };
    let par = host.standard_params("HDB", "data.utl", location.url(), &key_line);
    let tenant = host.backint_dir("HDB", "DB_HDB");

    // A data backup of two channels; the second is larger than one upload
    // chunk (8 MiB), so its segment goes up as a multipart upload.
    let data = [
        Piece::fifo(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_1", 300_007, 41),
        Piece::fifo(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_2", 9 << 20, 42),
    ];
    let saved = back_up(
        &host,
        BackintCall::new("backup", "HDB")
            .user("HDB@HDB")
            .params(&par)
            .backup_id("1763774000000")
            .count(2)
            .level("COMPLETE"),
        &[&data[0], &data[1]],
    );
    let data_ebids: Vec<String> = data.iter().map(|p| saved.saved(&p.path).0).collect();
    let log = Piece::fifo(
        &tenant,
        "log_backup_3_0_7000_8000",
        3 * PART_SIZE as u64 + 5,
        43,
    );
    let log_ebid = back_up(
        &host,
        BackintCall::new("backup", "HDB").params(&par).level("LOG"),
        &[&log],
    )
    .saved(&log.path)
    .0;
    // The catalog, backed up twice under one name.
    let catalog = Piece::fifo(&tenant, "log_backup_0_0_0_0", 20_011, 44);
    let catalog_newer = Piece {
        seed: 45,
        len: 21_013,
        ..catalog.clone()
    };
    let mut catalog_ebids = Vec::new();
    for version in [&catalog, &catalog_newer] {
        let call = BackintCall::new("backup", "HDB").params(&par).level("LOG");
        catalog_ebids.push(back_up(&host, call, &[version]).saved(&version.path).0);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    // A second host: its own root and parameter file (with a catalog index
    // that does not exist yet) over the same vault.
    let second = HanaHost::new();
    let index = second.root().join("catalog.db");
    let second_par = second.standard_params(
        "HDB",
        "data.utl",
        location.url(),
        &format!("{key_line}\ncatalog = {}", index.display()),
    );
    let found = BackintCall::new("inquire", "HDB")
        .params(&second_par)
        .null(&catalog.path)
        .ebid(&data_ebids[0], &data[0].path)
        .ebid(&data_ebids[1], &data[1].path)
        .ebid(&log_ebid, &log.path)
        .run(&second);
    found.assert_exit(0);
    let listed: Vec<Vec<String>> = found
        .with("#BACKUP")
        .into_iter()
        .map(|f| f[..2].to_vec())
        .collect();
    let name = |p: &Piece| p.path.display().to_string();
    assert_eq!(
        listed,
        vec![
            vec![catalog_ebids[1].clone(), name(&catalog)],
            vec![catalog_ebids[0].clone(), name(&catalog)],
            vec![data_ebids[0].clone(), name(&data[0])],
            vec![data_ebids[1].clone(), name(&data[1])],
            vec![log_ebid.clone(), name(&log)],
        ],
        "{}",
        found.describe()
    );

    // Restore into pipes of the second host: the data channels and the
    // log by EBID, the catalog by name (`#NULL`: the newest version).
    let restore_dir = second.backint_dir("HDB", "DB_HDB");
    let dest = |n: &str| {
        let path = restore_dir.join(n);
        mkfifo(&path);
        path
    };
    let targets = [
        (
            data_ebids[0].clone(),
            &data[0],
            dest("data_3_1"),
            data[0].digest(),
        ),
        (
            data_ebids[1].clone(),
            &data[1],
            dest("data_3_2"),
            data[1].digest(),
        ),
        (log_ebid.clone(), &log, dest("log"), log.digest()),
    ];
    let catalog_dest = dest("catalog");
    let mut call = BackintCall::new("restore", "HDB").params(&second_par);
    for (ebid, piece, to, _) in &targets {
        call = call.ebid_to(ebid, &piece.path, to);
    }
    call = call.line(format!(
        "#NULL {} {}",
        strata_e2e::hana::q(&name(&catalog)),
        strata_e2e::hana::q(&catalog_dest.display().to_string())
    ));
    let agent = call.spawn(&second);
    for (_, piece, to, digest) in &targets {
        let got = drain_pipe(to, std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(got.bytes, piece.len, "{}", name(piece));
        assert_eq!(&got.blake3, digest, "{}", name(piece));
    }
    let got = drain_pipe(&catalog_dest, std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(
        got.blake3,
        catalog_newer.digest(),
        "#NULL restores the newest catalog"
    );
    let restored = agent.finish(AGENT_TIMEOUT);
    restored.assert_exit(0);
    let mut lines = restored.with("#RESTORED");
    lines.sort();
    let mut expected: Vec<Vec<String>> = targets
        .iter()
        .map(|(ebid, piece, _, _)| vec![ebid.clone(), name(piece)])
        .collect();
    expected.push(vec![catalog_ebids[1].clone(), name(&catalog)]);
    expected.sort();
    assert_eq!(lines, expected, "{}", restored.describe());

    // What is stored: the first bytes HANA wrote into the large channel
    // are plain in an unencrypted vault (zstd keeps incompressible data as
    // it is) and nowhere in an encrypted one.
    let mut head = vec![0u8; 64];
    Pattern::new(64, data[1].seed).fill(&mut head);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let stored = runtime.block_on(stored_data_objects(&location));
    assert!(
        stored.len() >= 5,
        "one segment per object at least: {:?}",
        stored.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let holding: Vec<&String> = stored
        .iter()
        .filter(|(_, bytes)| bytes.windows(head.len()).any(|w| w == head.as_slice()))
        .map(|(key, _)| key)
        .collect();
    if encrypted {
        assert!(holding.is_empty(), "plaintext in {holding:?}");
        // Without the key file the agent cannot read the vault: #ERROR for
        // the object, exit 1, the reason on stderr.
        let keyless = second.standard_params("HDB", "keyless.utl", location.url(), "");
        let result = BackintCall::new("restore", "HDB")
            .params(&keyless)
            .ebid_to(&log_ebid, &log.path, &targets[2].2)
            .run(&second);
        result.assert_exit(1);
        assert_eq!(result.with("#ERROR"), vec![vec![name(&log)]]);
        assert!(
            result.stderr.contains("encrypted and no key was given"),
            "{}",
            result.describe()
        );
    } else {
        assert_eq!(
            holding.len(),
            1,
            "the large channel's segment holds its bytes"
        );
    }
    runtime.block_on(location.cleanup());
}

/// Every object under the vault's `data/` prefix: key and bytes.
async fn stored_data_objects(location: &TestVault) -> Vec<(String, Vec<u8>)> {
    let (store, root) = build_store(&location.config()).expect("the vault's store");
    let prefix = root.clone().join("data");
    let metas: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .expect("listing the vault's data");
    let mut out = Vec::new();
    for meta in metas {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("reading a stored object")
            .bytes()
            .await
            .expect("its bytes");
        out.push((meta.location.to_string(), bytes.to_vec()));
    }
    out
}

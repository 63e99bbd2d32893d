//! hdbbackint driven exactly as HANA drives it: concurrent agent processes
//! for the services of one data backup (multistream channels included), a
//! log backup and a catalog backup at the same time, then a restore into
//! fresh FIFOs that "HANA" opens late and one at a time, and a system copy
//! to another SID. Every restored byte is compared with what was written.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use strata_core::catalog::manifest::BackupKind;
use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, PART_SIZE, Pattern, TestVault, drain_pipe, feed_pipe,
    is_fifo, mkfifo,
};

const OPEN: Duration = Duration::from_secs(60);

struct Piece {
    path: PathBuf,
    len: u64,
    seed: u64,
}

fn piece(dir: &std::path::Path, name: &str, len: u64, seed: u64) -> Piece {
    let path = dir.join(name);
    mkfifo(&path);
    Piece { path, len, seed }
}

#[test]
fn concurrent_data_log_and_catalog_backups_restore_byte_for_byte() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let sysdb = host.backint_dir("HDB", "SYSTEMDB");
    let tenant = host.backint_dir("HDB", "DB_HDB");
    let data_par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let log_par = host.standard_params("HDB", "log.utl", vault.url(), "");
    let catalog_par =
        host.standard_params("HDB", "catalog.utl", vault.url(), "compression_level = 1");
    let p = PART_SIZE as u64;
    let backup_id = "1763771700123";

    // Service 1: the SYSTEMDB nameserver volume, one pipe.
    let nameserver = vec![piece(
        &sysdb,
        "COMPLETE_DATA_BACKUP_databackup_0_1",
        155_648,
        1,
    )];
    // Service 2: the tenant indexserver, four multistream channels with
    // the sizes at the edges: empty, one byte, one part -1 and +1.
    let indexserver = vec![
        piece(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_1", 0, 2),
        piece(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_2", 1, 3),
        piece(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_3", p - 1, 4),
        piece(&tenant, "COMPLETE_DATA_BACKUP_databackup_3_4", p + 1, 5),
    ];
    // Service 3: a volume whose prefix has spaces and quotes, exactly one part.
    let xsengine = vec![piece(&tenant, "MY \"weekly\" BACKUP_databackup_4_1", p, 6)];
    // A log backup and a catalog backup running at the same time.
    let log = vec![piece(&tenant, "log_backup_3_0_5000_9000", 3 * p + 17, 7)];
    let catalog = vec![piece(&tenant, "log_backup_0_0_0_0", 20_000, 8)];

    let data_count = nameserver.len() + indexserver.len() + xsengine.len();
    let call = |pieces: &[Piece], par: &PathBuf, level: &str, user: &str| {
        let mut call = BackintCall::new("backup", "HDB")
            .user(user)
            .params(par)
            .backup_id(backup_id)
            .count(data_count)
            .level(level);
        for piece in pieces {
            call = call.pipe(&piece.path);
        }
        call.spawn(&host)
    };
    let agents = vec![
        (call(&nameserver, &data_par, "COMPLETE", "HDB"), &nameserver),
        (
            call(&indexserver, &data_par, "COMPLETE", "HDB@HDB"),
            &indexserver,
        ),
        (call(&xsengine, &data_par, "COMPLETE", "HDB"), &xsengine),
        (call(&log, &log_par, "LOG", "HDB"), &log),
        (call(&catalog, &catalog_par, "LOG", "HDB"), &catalog),
    ];
    // HANA writes every channel at once.
    let feeders: Vec<_> = agents
        .iter()
        .flat_map(|(_, pieces)| pieces.iter())
        .map(|piece| (piece, feed_pipe(&piece.path, piece.len, piece.seed, OPEN)))
        .collect();
    let mut ebids = HashSet::new();
    let mut saved = Vec::new();
    let results: Vec<_> = agents
        .into_iter()
        .map(|(agent, pieces)| (agent.finish(AGENT_TIMEOUT), pieces))
        .collect();
    for (piece, feeder) in feeders {
        let sent = feeder.join().unwrap().expect("the agent read the pipe");
        assert_eq!(sent.bytes, piece.len);
    }
    for (result, pieces) in &results {
        result.assert_exit(0);
        assert_eq!(
            result.with("#SAVED").len(),
            pieces.len(),
            "{}",
            result.describe()
        );
        assert!(result.with("#ERROR").is_empty(), "{}", result.describe());
        for piece in pieces.iter() {
            let (ebid, size) = result.saved(&piece.path);
            assert_eq!(size, piece.len, "size of {}", piece.path.display());
            assert!(ebids.insert(ebid.clone()), "EBID {ebid} is not unique");
            assert!(
                is_fifo(&piece.path),
                "{} is no longer a FIFO",
                piece.path.display()
            );
            saved.push((ebid, piece));
        }
    }

    // The vault records each object with SID, database, level and HANA's backup id.
    let manifests = vault.manifests();
    assert_eq!(manifests.len(), saved.len());
    for (ebid, piece) in &saved {
        let m = manifests
            .iter()
            .find(|m| m.id.as_str() == ebid)
            .expect("a manifest per EBID");
        assert_eq!(m.engine, "hana");
        assert_eq!(m.instance, "HDB");
        let in_sysdb = piece.path.starts_with(&sysdb);
        assert_eq!(
            m.database.as_deref(),
            Some(if in_sysdb { "SYSTEMDB" } else { "HDB" })
        );
        let name = piece
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let expected_kind = if name.starts_with("log_backup") {
            BackupKind::Log
        } else {
            BackupKind::Full
        };
        assert_eq!(m.kind, expected_kind, "{name}");
        assert_eq!(
            m.engine_meta["backint"]["name"],
            piece.path.display().to_string()
        );
        assert_eq!(m.engine_meta["backint"]["hana_backup_id"], backup_id);
        assert_eq!(m.raw_size(), piece.len);
    }

    // Restore: fresh FIFOs, one restore call for all data pieces; HANA
    // opens them late and one at a time, in input order.
    let mut call = BackintCall::new("restore", "HDB").params(&data_par);
    for (ebid, piece) in &saved {
        std::fs::remove_file(&piece.path).unwrap();
        mkfifo(&piece.path);
        call = call.ebid(ebid, &piece.path);
    }
    let agent = call.spawn(&host);
    std::thread::sleep(Duration::from_millis(300));
    for (_, piece) in &saved {
        let got = drain_pipe(&piece.path, OPEN).expect("the agent wrote the pipe");
        assert_eq!(got.bytes, piece.len, "{}", piece.path.display());
        assert_eq!(
            got.blake3,
            Pattern::digest(piece.len, piece.seed),
            "{}",
            piece.path.display()
        );
    }
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let restored = result.with("#RESTORED");
    assert_eq!(restored.len(), saved.len(), "{}", result.describe());
    for (ebid, piece) in &saved {
        let name = piece.path.display().to_string();
        assert!(
            restored.iter().any(|f| f[0] == *ebid && f[1] == name),
            "#RESTORED {ebid} {name} missing:\n{}",
            result.describe()
        );
    }
}

/// A system copy: objects QAS backed up (tenant SRC) are restored into the
/// pipes of system HDB (tenant TGT) by EBID, and by name alone (`#NULL`),
/// which resolves to the newest of two versions of that name.
#[test]
fn system_copy_restores_source_objects_into_another_sid() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let src = host.backint_dir("QAS", "DB_SRC");
    let par = host.standard_params("QAS", "data.utl", vault.url(), "");
    let pieces = [
        piece(&src, "COMPLETE_DATA_BACKUP_databackup_2_1", 300_001, 21),
        piece(&src, "COMPLETE_DATA_BACKUP_databackup_3_1", 70_000, 22),
    ];
    let backup = |pieces: &[&Piece], backup_id: &str| {
        let mut call = BackintCall::new("backup", "QAS")
            .user("SRC@QAS")
            .params(&par)
            .backup_id(backup_id)
            .count(pieces.len())
            .level("COMPLETE");
        for p in pieces {
            call = call.pipe(&p.path);
        }
        let agent = call.spawn(&host);
        let feeders: Vec<_> = pieces
            .iter()
            .map(|p| feed_pipe(&p.path, p.len, p.seed, OPEN))
            .collect();
        let result = agent.finish(AGENT_TIMEOUT);
        for f in feeders {
            f.join().unwrap().unwrap();
        }
        result.assert_exit(0);
        result
    };
    let result = backup(&[&pieces[0], &pieces[1]], "1763771800000");
    // A later backup writes a second version of the first name, with other
    // bytes: `#NULL` must give this one.
    let newer = Piece {
        path: pieces[0].path.clone(),
        len: 120_003,
        seed: 23,
    };
    let newer_ebid = backup(&[&newer], "1763771900000").saved(&newer.path).0;
    let (first_ebid, _) = result.saved(&pieces[0].path);
    assert_ne!(newer_ebid, first_ebid);

    // The target system HDB, tenant TGT, with its own parameter file that
    // points at the same vault; the source names arrive with target pipes.
    let tgt = host.backint_dir("HDB", "DB_TGT");
    let tgt_par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let mut call = BackintCall::new("restore", "HDB")
        .user("TGT@HDB")
        .params(&tgt_par);
    let mut dests = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let (ebid, _) = result.saved(&p.path);
        let dest = tgt.join(format!("restore_pipe_{}_1", i + 2));
        mkfifo(&dest);
        call = call.ebid_to(&ebid, &p.path, &dest);
        dests.push(dest);
    }
    // And one by name only (#NULL = newest), for the catalog-less recovery.
    let null_dest = tgt.join("restore_pipe_null");
    mkfifo(&null_dest);
    call = call.line(format!(
        "#NULL {} {}",
        strata_e2e::hana::q(&pieces[0].path.display().to_string()),
        strata_e2e::hana::q(&null_dest.display().to_string())
    ));
    let agent = call.spawn(&host);
    // By EBID: the first version of each name, as written.
    for (p, dest) in pieces.iter().zip(&dests) {
        let got = drain_pipe(dest, OPEN).unwrap();
        assert_eq!(got.bytes, p.len, "{}", dest.display());
        assert_eq!(got.blake3, Pattern::digest(p.len, p.seed));
    }
    // By #NULL: the newer version's bytes.
    let got = drain_pipe(&null_dest, OPEN).unwrap();
    assert_eq!(got.bytes, newer.len);
    assert_eq!(
        got.blake3,
        Pattern::digest(newer.len, newer.seed),
        "#NULL must restore the newest version's bytes"
    );
    let restored = agent.finish(AGENT_TIMEOUT);
    restored.assert_exit(0);
    let name = pieces[0].path.display().to_string();
    let mut lines = restored.with("#RESTORED");
    lines.sort();
    let (second_ebid, _) = result.saved(&pieces[1].path);
    let mut expected = vec![
        vec![first_ebid, name.clone()],
        vec![newer_ebid, name],
        vec![second_ebid, pieces[1].path.display().to_string()],
    ];
    expected.sort();
    assert_eq!(
        lines,
        expected,
        "#NULL must resolve to the newest EBID:\n{}",
        restored.describe()
    );
    // The source's pipes were not touched by the restore.
    for p in &pieces {
        assert!(is_fifo(&p.path));
    }
}

#[test]
fn file_objects_are_read_and_restored_as_regular_files() {
    // #FILE (inherited from Backint for Oracle/MaxDB) names a regular file:
    // backed up by reading it, restored by creating it.
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let file = dir.join("exported file.bin");
    let bytes = strata_e2e::data::random_bytes(200_000, 77);
    std::fs::write(&file, &bytes).unwrap();
    let result = BackintCall::new("backup", "HDB")
        .params(&par)
        .line(format!(
            "#FILE {}",
            strata_e2e::hana::q(&file.display().to_string())
        ))
        .run(&host);
    result.assert_exit(0);
    let (ebid, size) = result.saved(&file);
    assert_eq!(size, bytes.len() as u64);
    let dest = dir.join("restored copy.bin");
    let result = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid_to(&ebid, &file, &dest)
        .run(&host);
    result.assert_exit(0);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

/// Object names whose escaped form exceeds a local file system's 255-byte
/// names (a 211-byte base name, non-ASCII components) are stored under
/// bounded keys and restored whole.
#[test]
fn long_object_names_back_up_and_restore() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let long = format!("{}_0_1", "COMPLETE_DATA_BACKUP_".repeat(10));
    let nested = dir.join("データ・バックアップ");
    std::fs::create_dir_all(&nested).unwrap();
    for (i, file) in [dir.join(&long), nested.join("ログ 0")].iter().enumerate() {
        let bytes = strata_e2e::data::random_bytes(300_000, 90 + i as u64);
        std::fs::write(file, &bytes).unwrap();
        let result = BackintCall::new("backup", "HDB")
            .params(&par)
            .line(format!(
                "#FILE {}",
                strata_e2e::hana::q(&file.display().to_string())
            ))
            .run(&host);
        result.assert_exit(0);
        let (ebid, size) = result.saved(file);
        assert_eq!(size, bytes.len() as u64);
        let dest = dir.join(format!("restored {i}"));
        let result = BackintCall::new("restore", "HDB")
            .params(&par)
            .ebid_to(&ebid, file, &dest)
            .run(&host);
        result.assert_exit(0);
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    }
}

#[test]
fn an_encrypted_vault_needs_the_key_file_named_in_the_parameter_file() {
    let host = HanaHost::new();
    let vault = TestVault::encrypted();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let key = format!("key_file = {}", vault.key_file().display());
    let par = host.standard_params("HDB", "data.utl", vault.url(), &key);
    let pipe = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    mkfifo(&pipe);
    // Text-like data, so that plaintext would be recognisable in the vault.
    let marker = b"CONFIDENTIAL-PAYROLL-ROW ";
    let data: Vec<u8> = marker.iter().copied().cycle().take(300_000).collect();
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .pipe(&pipe)
        .spawn(&host);
    let mut writer = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
    std::io::Write::write_all(&mut writer, &data).unwrap();
    drop(writer);
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    let (ebid, _) = result.saved(&pipe);
    let objects = walk(&vault.path().join("data"));
    assert!(
        !objects.is_empty(),
        "the backup's segment objects are in the vault"
    );
    for object in objects {
        let stored = std::fs::read(&object).unwrap();
        assert!(
            !stored.windows(marker.len()).any(|w| w == marker),
            "plaintext in {}",
            object.display()
        );
    }

    // Without the key file the agent cannot open the vault: #ERROR, one line.
    let keyless = host.standard_params("HDB", "keyless.utl", vault.url(), "");
    let result = BackintCall::new("restore", "HDB")
        .params(&keyless)
        .ebid(&ebid, &pipe)
        .run(&host);
    result.assert_exit(1);
    assert_eq!(
        result.with("#ERROR"),
        vec![vec![pipe.display().to_string()]]
    );
    assert!(result.stderr.contains("encrypted"), "{}", result.stderr);

    // With it, the bytes come back.
    std::fs::remove_file(&pipe).unwrap();
    mkfifo(&pipe);
    let agent = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid(&ebid, &pipe)
        .spawn(&host);
    let got = drain_pipe(&pipe, OPEN).unwrap();
    agent.finish(AGENT_TIMEOUT).assert_exit(0);
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(got.blake3, strata_e2e::data::blake3_hex(&data));
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// HANA may write (and read) the pipes of one call one after the other: the
/// open timeout of a pipe must not run while HANA is still busy with the
/// previous one, however long that takes.
#[test]
fn pipes_used_one_after_another_outlast_the_open_timeout() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "open_timeout = 1");
    let first = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    let second = dir.join("COMPLETE_DATA_BACKUP_databackup_2_2");
    mkfifo(&first);
    mkfifo(&second);
    let chunk = 64 << 10;
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .pipe(&first)
        .pipe(&second)
        .spawn(&host);
    // HANA writes the first pipe slowly (2.5 s, over twice the timeout),
    // and opens the second only then.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap();
    let mut first_bytes = vec![0u8; 5 * chunk];
    Pattern::new(first_bytes.len() as u64, 11).fill(&mut first_bytes);
    for slow in first_bytes.chunks(chunk) {
        std::io::Write::write_all(&mut writer, slow).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(writer);
    let sent = feed_pipe(&second, 10_000, 12, OPEN)
        .join()
        .unwrap()
        .unwrap();
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    assert_eq!(result.saved(&first).1, 5 * chunk as u64);
    let (second_ebid, _) = result.saved(&second);
    let (first_ebid, _) = result.saved(&first);

    // Restore: HANA reads the first pipe slowly, then opens the second.
    for p in [&first, &second] {
        std::fs::remove_file(p).unwrap();
        mkfifo(p);
    }
    let agent = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid(&first_ebid, &first)
        .ebid(&second_ebid, &second)
        .spawn(&host);
    let mut reader = strata_e2e::hana::open_for_reading(&first, OPEN).unwrap();
    let mut read_back = vec![0u8; 5 * chunk];
    for slow in read_back.chunks_mut(chunk) {
        std::io::Read::read_exact(&mut reader, slow).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut after = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut reader, &mut after).unwrap(),
        0,
        "EOF after the piece"
    );
    drop(reader);
    assert!(
        read_back == first_bytes,
        "the first piece came back with other bytes (BLAKE3 {} instead of {})",
        strata_e2e::data::blake3_hex(&read_back),
        strata_e2e::data::blake3_hex(&first_bytes)
    );
    let got = drain_pipe(&second, OPEN).unwrap();
    assert_eq!(got, sent);
    let result = agent.finish(AGENT_TIMEOUT);
    result.assert_exit(0);
    assert_eq!(result.with("#RESTORED").len(), 2, "{}", result.describe());
}

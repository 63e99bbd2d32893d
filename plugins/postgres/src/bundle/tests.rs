use super::*;
use std::path::{Path, PathBuf};

use strata_core::catalog::manifest::BackupKind;
use strata_core::vault::reader::{ReaderConfig, read_stream};
use strata_core::vault::writer::{
    BackupOutcome, BackupTarget, BackupWriter, MIN_PART_SIZE, StreamDigest, WriterConfig,
};
use strata_core::vault::{Vault, VaultConfig};

/// XXH3-128 as `xxhsum -H2` prints it.
fn xxh3_hex(data: &[u8]) -> String {
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(data))
}

#[test]
fn roundtrip_pads_shrunk_files_and_checks_digests() {
    let mut w = BundleWriter::new(Vec::new());
    w.add_dir("pg_wal", 0o700).unwrap();
    let d1 = w
        .add_file("base/1/1259", 0o600, 5, &mut &b"hello world"[..])
        .unwrap();
    let d2 = w
        .add_file("PG_VERSION", 0o600, 6, &mut &b"15\n"[..])
        .unwrap();
    let mut out = w.finish().unwrap();
    assert_eq!(d1, FileChecksum::Xxh3(xxh3_hex(b"hello")));
    assert_eq!(d2, FileChecksum::Xxh3(xxh3_hex(b"15\n\0\0\0")));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let entries = extract(&mut &out[..], &|p| root.join(p), true, "data.0").unwrap();
    assert_eq!(entries.entries, 3);
    assert_eq!(std::fs::read(root.join("base/1/1259")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read(root.join("PG_VERSION")).unwrap(),
        b"15\n\0\0\0"
    );
    assert!(root.join("pg_wal").is_dir());

    // One flipped content byte is caught and the file is not left behind.
    let pos = out.windows(5).position(|w| w == b"hello").unwrap();
    out[pos] = b'j';
    let dir2 = tempfile::tempdir().unwrap();
    let root2 = dir2.path().to_path_buf();
    let err = extract(&mut &out[..], &|p| root2.join(p), false, "data.0").unwrap_err();
    assert!(err.to_string().contains("base/1/1259"), "{err}");
    assert!(!root2.join("base/1/1259").exists());
}

/// A restore onto a full disk names the file, keeps "No space left on
/// device" and tells the operator which file system to free up
/// (`/dev/full` fails every write with ENOSPC).
#[test]
fn a_full_disk_names_the_file_and_its_file_system() {
    assert!(
        Path::new("/dev/full").exists(),
        "Linux provides /dev/full (a device whose every write fails with ENOSPC); \
         this test needs it"
    );
    let mut w = BundleWriter::new(Vec::new());
    w.add_file("base/1/1259", 0o600, 5, &mut &b"hello"[..])
        .unwrap();
    let out = w.finish().unwrap();
    let err = extract(
        &mut &out[..],
        &|_| PathBuf::from("/dev/full"),
        false,
        "data.0",
    )
    .unwrap_err();
    assert_eq!(err.kind(), strata_core::ErrorKind::Io);
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "writing /dev/full: No space left on device (os error 28)"
    );
    assert_eq!(err.field("path"), Some("/dev/full"));
    assert_eq!(err.hints(), ["free space on /dev/full's file system"]);
}

/// A vault in memory named after `label`, and a backup writer into it
/// with the smallest parts, so that a few files span many.
async fn small_part_writer(label: &str) -> (Vault, BackupWriter) {
    let url = format!("memory://bundle-{label}-{}", std::process::id());
    let vault = Vault::init(&VaultConfig::from_url(url), None)
        .await
        .unwrap();
    let config = WriterConfig {
        part_size: MIN_PART_SIZE,
        compression_level: 1,
        ..WriterConfig::default()
    };
    let target = BackupTarget {
        engine: "postgres".into(),
        instance: "test".into(),
        database: None,
        kind: BackupKind::Full,
    };
    let writer = BackupWriter::start(&vault, target, config).unwrap();
    (vault, writer)
}

/// The raw bytes of stream `name` of a committed backup.
async fn raw_stream(
    vault: &Vault,
    manifest: &strata_core::catalog::manifest::Manifest,
    name: &str,
) -> Vec<u8> {
    let mut stream = Vec::new();
    read_stream(
        vault,
        manifest,
        name,
        &mut stream,
        &ReaderConfig::default(),
        None,
    )
    .await
    .unwrap();
    stream
}

/// Through the vault writer's part buffers: headers and file contents
/// that straddle part boundaries, an empty file, a file that shrank, and
/// several parts' worth of one file come back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_writer_round_trips_across_part_boundaries() {
    let p = MIN_PART_SIZE;
    let (vault, writer) = small_part_writer("test").await;
    let content = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    // (path, size recorded, bytes the file holds now)
    let files: Vec<(String, u64, Vec<u8>)> = vec![
        ("PG_VERSION".into(), 3, b"15\n".to_vec()),
        ("base/5/empty".into(), 0, Vec::new()),
        (
            "base/5/just_under".into(),
            (p - 40) as u64,
            content(p - 40, 1),
        ),
        ("base/5/exact".into(), p as u64, content(p, 2)),
        (
            "base/5/three_parts".into(),
            (3 * p + 5) as u64,
            content(3 * p + 5, 3),
        ),
        ("base/5/shrank".into(), 1000, content(10, 4)),
    ];
    let (feed, parts) = writer.part_channel();
    let fed = files.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut bundle = BundleWriter::new(PartWriter::new(feed));
        bundle.add_dir("base/5", 0o700).unwrap();
        let digests: Vec<FileChecksum> = fed
            .iter()
            .map(|(path, size, bytes)| {
                bundle
                    .add_file(path, 0o600, *size, &mut &bytes[..])
                    .unwrap()
            })
            .collect();
        bundle.finish().unwrap();
        digests
    });
    let record = writer
        .write_parts("data.0", parts, StreamDigest::Skip, None)
        .await
        .unwrap();
    let digests = producer.await.unwrap();
    assert!(record.part_count() >= 5, "{} parts", record.part_count());
    // A second stream whose bundle is well formed and stored soundly
    // (every part's CRC is right) but one file's content does not match
    // its digest: only the bundle check can tell.
    let mut w = BundleWriter::new(Vec::new());
    w.add_file("base/5/16384", 0o600, 5, &mut &b"hello"[..])
        .unwrap();
    let mut forged = w.finish().unwrap();
    let at = forged.windows(5).position(|w| w == b"hello").unwrap();
    forged[at] = b'j';
    let (feed, parts) = writer.part_channel();
    let sender = tokio::task::spawn_blocking(move || {
        let mut buf = feed.buffer();
        buf[..forged.len()].copy_from_slice(&forged);
        feed.send(buf, forged.len()).unwrap();
    });
    writer
        .write_parts("data.1", parts, StreamDigest::Skip, None)
        .await
        .unwrap();
    sender.await.unwrap();
    let manifest = writer.commit(BackupOutcome::default()).await.unwrap();

    let report = strata_core::vault::reader::verify_backup_with(
        &vault,
        &manifest,
        &ReaderConfig::default(),
        None,
        Some(&BundleCheck),
    )
    .await
    .unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert!(
        problem.contains("data.1")
            && problem.contains("base/5/16384 ")
            && problem.contains("checksum"),
        "{problem}"
    );

    let stream = raw_stream(&vault, &manifest, "data.0").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let entries = extract(&mut &stream[..], &|p| root.join(p), true, "data.0").unwrap();
    assert_eq!(entries.entries, files.len() as u64 + 1);
    for ((path, size, bytes), digest) in files.iter().zip(&digests) {
        let mut expected = bytes.clone();
        expected.resize(*size as usize, 0);
        let restored = std::fs::read(root.join(path)).unwrap();
        assert!(
            restored == expected,
            "{path}: {} bytes back",
            restored.len()
        );
        assert_eq!(*digest, FileChecksum::Xxh3(xxh3_hex(&expected)), "{path}");
    }
}

/// Large files read with direct I/O into aligned part buffers, each
/// starting a part, between small files, across part boundaries, with a
/// last partial block: byte for byte back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_round_trip_with_each_large_file_starting_a_part() {
    use std::os::unix::fs::OpenOptionsExt;

    let p = MIN_PART_SIZE;
    let (vault, writer) = small_part_writer("direct").await;
    let dir = tempfile::tempdir().unwrap();
    let sizes = [
        ("base/5/small", 999usize),
        ("base/5/large", DIRECT_MIN as usize + 12_345),
        ("base/5/tiny", 7),
        ("base/5/parts", 3 * p + 3 * DIRECT_ALIGN),
        ("base/5/under", DIRECT_MIN as usize - 1),
    ];
    let mut files = Vec::new();
    for (i, (name, size)) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..*size)
            .map(|j| ((j / 7) as u8).wrapping_mul(13) ^ i as u8)
            .collect();
        let path = dir.path().join(name.replace('/', "_"));
        std::fs::write(&path, &bytes).unwrap();
        files.push((name.to_string(), path, bytes));
    }
    // A file system without direct I/O (some tmpfs) is read through the
    // page cache, parts unaligned; the content must come back all the same.
    let direct_io = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&files[1].1)
        .is_ok();
    let (feed, parts) = writer.part_channel();
    let fed = files.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut bundle = BundleWriter::new(PartWriter::new(feed));
        for (name, path, bytes) in &fed {
            let file = std::fs::File::open(path).unwrap();
            let direct = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok();
            bundle
                .add_os_file(
                    Path::new(name),
                    0o600,
                    bytes.len() as u64,
                    &file,
                    direct.as_ref(),
                    None,
                )
                .unwrap();
        }
        bundle.finish().unwrap();
    });
    let record = writer
        .write_parts("data.0", parts, StreamDigest::Skip, None)
        .await
        .unwrap();
    producer.await.unwrap();
    let manifest = writer.commit(BackupOutcome::default()).await.unwrap();

    let stream = raw_stream(&vault, &manifest, "data.0").await;
    // Every large file's content starts a part.
    let mut starts = std::collections::HashSet::new();
    let mut at = 0u64;
    for segment in &record.segments {
        for part in &segment.parts {
            starts.insert(at);
            at += part.raw;
        }
    }
    for (name, _, bytes) in files.iter().filter(|_| direct_io) {
        if bytes.len() as u64 >= DIRECT_MIN {
            let header_end = stream
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap()
                + name.len()
                + 12;
            assert!(starts.contains(&(header_end as u64)), "{name}");
        }
    }
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_path_buf();
    let entries = extract(&mut &stream[..], &|p| root.join(p), false, "data.0").unwrap();
    assert_eq!(entries.entries, files.len() as u64);
    for (name, _, bytes) in &files {
        let restored = std::fs::read(root.join(name)).unwrap();
        assert!(restored == *bytes, "{name}: {} bytes back", restored.len());
    }
}

/// A bundle exactly as format version 1 wrote it (BLAKE3 after each
/// file) still restores, damage in it is still caught, and a manifest
/// entry of that time still parses.
#[test]
fn version_1_bundles_still_restore() {
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"SPGF\x00");
    v1.extend_from_slice(&11u16.to_le_bytes());
    v1.extend_from_slice(b"base/1/1259");
    v1.extend_from_slice(&0o600u32.to_le_bytes());
    v1.extend_from_slice(&5u64.to_le_bytes());
    v1.extend_from_slice(b"hello");
    v1.extend_from_slice(blake3::hash(b"hello").as_bytes());
    v1.extend_from_slice(b"SPGE");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let entries = extract(&mut &v1[..], &|p| root.join(p), false, "data.0").unwrap();
    assert_eq!(entries.entries, 1);
    assert_eq!(std::fs::read(root.join("base/1/1259")).unwrap(), b"hello");

    let at = v1.windows(5).position(|w| w == b"hello").unwrap();
    v1[at + 1] = b'a';
    let err = check(&mut &v1[..], "data.0").unwrap_err();
    assert!(
        err.to_string()
            .contains("base/1/1259 in stream data.0 does not match its checksum"),
        "{err}"
    );

    let old: StoredFile =
        serde_json::from_str(r#"{"path":"PG_VERSION","size":3,"blake3":"ab12","stream":"data.0"}"#)
            .unwrap();
    assert_eq!(old.checksum, FileChecksum::Blake3("ab12".into()));
    let new = StoredFile {
        checksum: FileChecksum::Xxh3(xxh3_hex(b"15\n")),
        ..old
    };
    let json = serde_json::to_value(&new).unwrap();
    assert_eq!(json["xxh3_128"], xxh3_hex(b"15\n"));
    assert_eq!(serde_json::from_value::<StoredFile>(json).unwrap(), new);
}

/// An entry kind this version does not know is refused by name, not
/// misread as something else.
#[test]
fn unknown_entry_kinds_are_refused() {
    let mut out = Vec::new();
    out.extend_from_slice(b"SPGF\x07");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(b"x");
    out.extend_from_slice(&0o600u32.to_le_bytes());
    let err = check(&mut &out[..], "data.3").unwrap_err();
    assert!(
        err.to_string().contains("data.3") && err.to_string().contains("unknown entry kind 7"),
        "{err}"
    );
}

#[test]
fn unsafe_paths_are_refused() {
    let mut w = BundleWriter::new(Vec::new());
    w.add_file("../etc/passwd", 0o600, 1, &mut &b"x"[..])
        .unwrap();
    let out = w.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let err = extract(&mut &out[..], &|p| root.join(p), false, "s").unwrap_err();
    assert!(err.to_string().contains("unsafe path"), "{err}");
}

/// Found by fuzzing (fuzz/corpus/bundle/dot-removed): a path `.` was
/// laid down as the restore directory itself, so a removed entry `.`
/// deleted everything restored before it.
#[test]
fn dot_components_are_refused_and_nothing_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("PG_VERSION"), "15\n").unwrap();
    for path in [&b"."[..], b"./base", b"base/./1", b"base/."] {
        let mut out = Vec::new();
        out.extend_from_slice(b"SPGF\x04");
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&0o700u32.to_le_bytes());
        out.extend_from_slice(b"SPGE");
        let shown = String::from_utf8_lossy(path);
        let err = check(&mut &out[..], "data.0").unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{shown}: {err}");
        let err = extract(&mut &out[..], &|p| root.join(p), false, "data.0").unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{shown}: {err}");
        assert_eq!(
            std::fs::read_to_string(root.join("PG_VERSION")).unwrap(),
            "15\n",
            "{shown}"
        );
    }
}

fn page_of(byte: u8) -> [u8; PAGE] {
    [byte; PAGE]
}

/// A differential's bundle: pages entries patch the files the base laid
/// down (shorter or longer), removed entries delete, and a damaged or
/// misapplied entry is refused with the file named.
#[test]
fn pages_and_removed_entries_apply_on_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut base = BundleWriter::new(Vec::new());
    let mut three_pages = Vec::new();
    for b in [1u8, 2, 3] {
        three_pages.extend_from_slice(&page_of(b));
    }
    base.add_file(
        "base/5/16384",
        0o600,
        three_pages.len() as u64,
        &mut &three_pages[..],
    )
    .unwrap();
    base.add_file(
        "base/5/16385",
        0o600,
        three_pages.len() as u64,
        &mut &three_pages[..],
    )
    .unwrap();
    base.add_file("base/6/1", 0o600, 1, &mut &b"x"[..]).unwrap();
    base.add_file("base/5/gone", 0o600, 1, &mut &b"x"[..])
        .unwrap();
    let base = base.finish().unwrap();
    extract(&mut &base[..], &|p| root.join(p), false, "data.0").unwrap();

    let mut diff = BundleWriter::new(Vec::new());
    diff.add_removed(Path::new("base/6")).unwrap();
    diff.add_removed(Path::new("base/5/gone")).unwrap();
    diff.add_removed(Path::new("base/5/never-there")).unwrap();
    // Grows to four pages: page 1 changed, page 3 new.
    let stored = diff
        .add_pages(Path::new("base/5/16384"), 0o600, 4 * PAGE as u64, |sink| {
            sink.page(1, &page_of(9))?;
            sink.page(3, &page_of(8))
        })
        .unwrap();
    assert_eq!(stored, 2);
    // Truncated to one page, unchanged.
    diff.add_pages(Path::new("base/5/16385"), 0o600, PAGE as u64, |_| Ok(()))
        .unwrap();
    let diff = diff.finish().unwrap();
    let summary = check(&mut &diff[..], "data.0").unwrap();
    assert_eq!((summary.patched, summary.removed), (2, 3));

    let summary = extract(&mut &diff[..], &|p| root.join(p), false, "data.0").unwrap();
    assert_eq!(summary.bytes, 2 * PAGE as u64);
    let mut expected = Vec::new();
    for b in [1u8, 9, 3, 8] {
        expected.extend_from_slice(&page_of(b));
    }
    assert_eq!(std::fs::read(root.join("base/5/16384")).unwrap(), expected);
    assert_eq!(
        std::fs::read(root.join("base/5/16385")).unwrap(),
        page_of(1)
    );
    assert!(!root.join("base/6").exists());
    assert!(!root.join("base/5/gone").exists());

    // A changed byte in a stored page fails the entry's digest.
    let at = diff.windows(PAGE).position(|w| w == page_of(9)).unwrap();
    let mut damaged = diff.clone();
    damaged[at + 100] ^= 1;
    let err = check(&mut &damaged[..], "data.1").unwrap_err();
    assert_eq!(err.kind(), strata_core::ErrorKind::Integrity);
    assert!(
        err.to_string()
            .contains("the pages of base/5/16384 in stream data.1 do not match their checksum"),
        "{err}"
    );

    // Pages for a file the base did not lay down: refused, not created.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().to_path_buf();
    let err = extract(&mut &diff[..], &|p| other.join(p), false, "data.0").unwrap_err();
    assert_eq!(err.kind(), strata_core::ErrorKind::Integrity);
    assert!(
        err.to_string().contains(
            "stream data.0 patches base/5/16384, which the backup it applies on did not restore"
        ),
        "{err}"
    );
    assert!(!other.join("base/5/16384").exists());
}

#[test]
fn pages_out_of_order_or_past_the_size_are_refused() {
    for (size, blocks) in [(4 * PAGE as u64, [2u32, 1]), (2 * PAGE as u64, [0, 2])] {
        let mut diff = BundleWriter::new(Vec::new());
        diff.add_pages(Path::new("base/5/1"), 0o600, size, |sink| {
            for b in blocks {
                sink.page(b, &page_of(1))?;
            }
            Ok(())
        })
        .unwrap();
        let diff = diff.finish().unwrap();
        let err = check(&mut &diff[..], "data.0").unwrap_err();
        assert!(
            err.to_string().contains("out of order or past its size"),
            "{blocks:?}: {err}"
        );
    }
}

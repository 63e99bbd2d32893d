use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use object_store::ObjectStoreExt;
use tokio::io::{AsyncWriteExt, ReadBuf};

use crate::catalog::manifest::{BackupKind, Compression, MANIFEST_FORMAT, Manifest, Position};
use crate::crypto::PART_ALGORITHM;
use crate::error::ErrorKind;

use super::*;
use crate::vault::VaultConfig;
use crate::vault::reader::{ReaderConfig, read_stream};

/// Deterministic test data: 4 KiB blocks alternating between text that
/// compresses well and pseudo-random bytes that do not.
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words = [
        "checkpoint ",
        "wal ",
        "lsn=0/1A2B3C ",
        "INSERT INTO t VALUES ",
        "(42, 'x') ",
    ];
    let mut out = Vec::with_capacity(len);
    let mut block = 0usize;
    while out.len() < len {
        let end = (out.len() + 4096).min(len);
        while out.len() < end {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if block.is_multiple_of(2) {
                let word = words[(state % words.len() as u64) as usize].as_bytes();
                let n = word.len().min(end - out.len());
                out.extend_from_slice(&word[..n]);
            } else {
                let n = 8.min(end - out.len());
                out.extend_from_slice(&state.to_le_bytes()[..n]);
            }
        }
        block += 1;
    }
    out
}

pub(crate) async fn memory_vault(key: Option<crate::crypto::VaultKey>) -> Vault {
    let name = format!("memory://writer-test-{:016x}", rand::random::<u64>());
    Vault::init(&VaultConfig::from_url(name), key)
        .await
        .unwrap()
}

pub(crate) async fn file_vault() -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/vault", dir.path().display());
    let vault = Vault::init(&VaultConfig::from_url(url), None)
        .await
        .unwrap();
    (dir, vault)
}

/// 64 KiB parts, segments of at most three parts.
pub(crate) fn small_config() -> WriterConfig {
    WriterConfig {
        part_size: MIN_PART_SIZE,
        compression_level: 3,
        workers: 2,
        parts_in_flight: 2,
        segment_size: 3 * MIN_PART_SIZE as u64,
    }
}

pub(crate) fn target() -> BackupTarget {
    BackupTarget {
        engine: "stream".into(),
        instance: "test/instance".into(),
        database: None,
        kind: BackupKind::Full,
    }
}

/// Writes `streams` one after another in one backup and commits it.
pub(crate) async fn backup(
    vault: &Vault,
    config: WriterConfig,
    streams: &[(&str, &[u8])],
) -> Manifest {
    let writer = BackupWriter::start(vault, target(), config).unwrap();
    for (name, bytes) in streams {
        writer.write_stream(name, *bytes, None).await.unwrap();
    }
    writer.commit(BackupOutcome::default()).await.unwrap()
}

pub(crate) async fn restore(vault: &Vault, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_stream(
        vault,
        manifest,
        name,
        &mut out,
        &ReaderConfig::default(),
        None,
    )
    .await?;
    Ok(out)
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every key in the vault, and for a file vault every file on disk
/// (staging files of unfinished uploads included).
async fn leftovers(vault: &Vault, dir: Option<&std::path::Path>) -> Vec<String> {
    let mut keys = vault.list_keys("").await.unwrap();
    if let Some(dir) = dir {
        for path in walkdir(dir) {
            keys.push(format!(
                "file {}",
                path.strip_prefix(dir).unwrap().display()
            ));
        }
    }
    keys.sort();
    keys
}

async fn roundtrip_edge_sizes(vault: &Vault) {
    let p = MIN_PART_SIZE;
    let sizes = [0, 1, p - 1, p, p + 1, 7 * p + 3];
    let inputs: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("s{n}"), data(n, i as u64)))
        .collect();
    let streams: Vec<(&str, &[u8])> = inputs
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let manifest = backup(vault, small_config(), &streams).await;
    assert_eq!(manifest.streams.len(), sizes.len());
    for ((name, input), record) in inputs.iter().zip(&manifest.streams) {
        assert_eq!(&record.name, name, "streams are in index order");
        assert_eq!(record.raw_size, input.len() as u64);
        assert_eq!(record.blake3, Some(blake3_hex(input)), "digest of {name}");
        assert_eq!(record.part_count(), input.len().div_ceil(p), "{name}");
        for segment in &record.segments {
            assert!(segment.stored_size <= 3 * p as u64 || segment.parts.len() == 1);
        }
        let restored = restore(vault, &manifest, name).await.unwrap();
        assert!(restored == *input, "stream {name} restored byte for byte");
        assert_eq!(blake3_hex(&restored), blake3_hex(input));
    }
    let big = &manifest.streams[5];
    assert!(
        big.segments.len() >= 2,
        "7 parts need several segments of 192 KiB"
    );
    // A segment is cut only when the next part would not fit.
    for pair in big.segments.windows(2) {
        assert!(pair[0].stored_size + pair[1].parts[0].stored > 3 * p as u64);
    }
    assert!(
        manifest.streams[0].segments.is_empty(),
        "an empty stream stores no object"
    );
    // The stored objects are exactly the segments the manifest records.
    let mut recorded: Vec<String> = manifest
        .streams
        .iter()
        .flat_map(|s| s.segments.iter().map(|g| g.key.clone()))
        .collect();
    recorded.sort();
    let prefix = layout::backup_data_prefix("stream", "test/instance", &manifest.id);
    assert_eq!(vault.list_keys(&prefix).await.unwrap(), recorded);
    for segment in manifest.streams.iter().flat_map(|s| &s.segments) {
        let bytes = vault.get_bytes(&segment.key).await.unwrap();
        assert_eq!(bytes.len() as u64, segment.stored_size, "{}", segment.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_round_trip_in_memory() {
    roundtrip_edge_sizes(&memory_vault(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_round_trip_on_files() {
    let (_dir, vault) = file_vault().await;
    roundtrip_edge_sizes(&vault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_segments_use_multipart_and_cut_on_part_boundaries() {
    let (_dir, vault) = file_vault().await;
    // Random data barely compresses: 1 MiB parts store at a little over
    // 1 MiB, so 11 fit in a 12 MiB segment and 24 parts need 3 segments.
    let mut input = vec![0u8; 24 << 20];
    let mut state = 0x1234_5678_9abc_def1u64;
    for chunk in input.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let config = WriterConfig {
        part_size: 1 << 20,
        compression_level: 1,
        workers: 2,
        parts_in_flight: 2,
        segment_size: 12 << 20,
    };
    let manifest = backup(&vault, config, &[("big", &input)]).await;
    let record = &manifest.streams[0];
    assert_eq!(record.segments.len(), 3);
    assert_eq!(record.segments[0].parts.len(), 11);
    assert!(record.segments[0].stored_size > UPLOAD_CHUNK_SIZE as u64);
    for segment in &record.segments {
        assert!(segment.stored_size <= 12 << 20);
        let meta = vault.store().head(&vault.path(&segment.key)).await.unwrap();
        assert_eq!(meta.size, segment.stored_size);
    }
    let restored = restore(&vault, &manifest, "big").await.unwrap();
    assert!(restored == input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_round_trip_stores_no_plaintext() {
    let key = crate::crypto::VaultKey::generate();
    let vault = memory_vault(Some(key)).await;
    let input = data(5 * MIN_PART_SIZE + 17, 7);
    let manifest = backup(&vault, small_config(), &[("db", &input)]).await;
    let encryption = manifest.encryption.as_ref().expect("encrypted manifest");
    assert_eq!(encryption.algorithm, PART_ALGORITHM);
    // The control: without encryption the same input leaves its words in
    // zstd's literals, where the search below finds them.
    let plain = memory_vault(None).await;
    let plain_manifest = backup(&plain, small_config(), &[("db", &input)]).await;
    for segment in &plain_manifest.streams[0].segments {
        let stored = plain.get_bytes(&segment.key).await.unwrap();
        assert!(
            stored.windows(11).any(|w| w == b"checkpoint "),
            "the control found no plaintext in an unencrypted segment"
        );
    }
    assert!(!manifest.streams[0].segments.is_empty());
    for segment in &manifest.streams[0].segments {
        let stored = vault.get_bytes(&segment.key).await.unwrap();
        assert_ne!(
            &stored[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "not a bare zstd frame"
        );
        assert!(
            !stored.windows(11).any(|w| w == b"checkpoint "),
            "no plaintext stored"
        );
    }
    assert!(restore(&vault, &manifest, "db").await.unwrap() == input);
}

/// Parts handed over whole through a [`PartFeed`], of any size up to the
/// part size (the producer decides), round trip on plain and encrypted
/// vaults; with [`StreamDigest::Skip`] the manifest records no digest and
/// reads and `verify` still check every part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fed_parts_round_trip_without_a_stream_digest() {
    let p = MIN_PART_SIZE;
    for key in [None, Some(crate::crypto::VaultKey::generate())] {
        let vault = memory_vault(key).await;
        let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
        let lengths = [p, 1, p - 1, p, 0, 3 * p / 2, 7];
        let input = data(lengths.iter().filter(|l| **l <= p).sum(), 11);
        let (feed, parts) = writer.part_channel();
        assert_eq!(feed.part_size(), p);
        let fed = input.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let mut at = 0;
            for len in lengths {
                let mut buf = feed.buffer();
                assert_eq!(buf.len(), p);
                if len > p {
                    let err = feed.send(buf, len).unwrap_err();
                    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
                    continue;
                }
                buf[..len].copy_from_slice(&fed[at..at + len]);
                at += len;
                feed.send(buf, len).unwrap();
            }
        });
        let record = writer
            .write_parts("bundle", parts, StreamDigest::Skip, None)
            .await
            .unwrap();
        producer.await.unwrap();
        assert_eq!(record.blake3, None);
        assert_eq!(record.raw_size, input.len() as u64);
        assert_eq!(
            record.part_count(),
            5,
            "the empty and the oversized part add nothing"
        );
        let manifest = writer.commit(BackupOutcome::default()).await.unwrap();
        assert_eq!(restore(&vault, &manifest, "bundle").await.unwrap(), input);
        let report =
            crate::vault::reader::verify_backup(&vault, &manifest, &ReaderConfig::default(), None)
                .await
                .unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.raw_bytes, input.len() as u64);
    }
}

/// A producer that fails its feed leaves nothing behind, and the backup
/// cannot be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_feed_leaves_nothing() {
    let vault = memory_vault(None).await;
    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    let (feed, parts) = writer.part_channel();
    let producer = tokio::task::spawn_blocking(move || {
        let buf = feed.buffer();
        feed.send(buf, MIN_PART_SIZE).unwrap();
        feed.fail(std::io::Error::other(
            "cannot read base/5/16384: disk on fire",
        ));
    });
    let err = writer
        .write_parts("bundle", parts, StreamDigest::Skip, None)
        .await
        .unwrap_err();
    producer.await.unwrap();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(
        writer
            .commit(BackupOutcome::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(vault.list_keys("").await.unwrap(), ["strata-vault.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_of_one_backup() {
    let vault = memory_vault(None).await;
    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    let inputs: Vec<Vec<u8>> = (0..4)
        .map(|i| data(3 * MIN_PART_SIZE + i * 1000, i as u64))
        .collect();
    let names = ["ch0", "ch1", "ch2", "ch3"];
    let records = futures::future::try_join_all(
        names
            .iter()
            .zip(&inputs)
            .map(|(name, input)| writer.write_stream(name, input.as_slice(), None)),
    )
    .await
    .unwrap();
    let manifest = writer.commit(BackupOutcome::default()).await.unwrap();
    assert_eq!(manifest.streams.len(), 4);
    for (name, input) in names.iter().zip(&inputs) {
        let record = manifest.stream(name).unwrap();
        assert!(records.contains(record));
        assert_eq!(record.blake3, Some(blake3_hex(input)));
        assert!(restore(&vault, &manifest, name).await.unwrap() == *input);
    }
    // Stream indexes are distinct: no two streams share a segment key.
    let mut keys: Vec<&str> = manifest
        .streams
        .iter()
        .flat_map(|s| s.segments.iter().map(|g| g.key.as_str()))
        .collect();
    let count = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_records_details_and_cannot_be_overwritten() {
    let vault = memory_vault(None).await;
    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    let id = writer.id().clone();
    let input = data(100_000, 3);
    writer
        .write_stream("db", input.as_slice(), None)
        .await
        .unwrap();
    let details = BackupOutcome {
        fork: "timeline-1".into(),
        start: Some(Position(100)),
        end: Some(Position(200)),
        labels: [("host".to_owned(), "db1".to_owned())].into(),
        engine_meta: serde_json::json!({"label": "START WAL LOCATION"}),
        ..Default::default()
    };
    let manifest = writer.commit(details).await.unwrap();
    assert_eq!(manifest.id, id);
    assert_eq!(manifest.format, MANIFEST_FORMAT);
    assert_eq!(
        manifest.compression,
        Compression {
            algorithm: "zstd".into(),
            level: 3
        }
    );
    assert!(manifest.encryption.is_none());
    assert_eq!(
        (manifest.start, manifest.end),
        (Some(Position(100)), Some(Position(200)))
    );
    assert_eq!(manifest.raw_size(), input.len() as u64);
    let stored = vault
        .read_manifest("stream", "test/instance", &id)
        .await
        .unwrap();
    assert_eq!(stored, manifest);

    let mut other = manifest.clone();
    other.fork = "forged".into();
    let err = vault.put_manifest(&other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let stored = vault
        .read_manifest("stream", "test/instance", &id)
        .await
        .unwrap();
    assert_eq!(
        stored.fork, "timeline-1",
        "the committed manifest is untouched"
    );
}

struct FailingReader {
    left: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "engine went away",
            )));
        }
        let n = self.left.min(buf.remaining()).min(10_000);
        buf.put_slice(&vec![b'x'; n]);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_input_leaves_nothing_and_commit_refuses() {
    let (dir, vault) = file_vault().await;
    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    writer
        .write_stream("ok", data(200_000, 1).as_slice(), None)
        .await
        .unwrap();
    let err = writer
        .write_stream(
            "db",
            FailingReader {
                left: 10 * MIN_PART_SIZE,
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("stream `db`"), "{err}");
    assert!(err.to_string().contains("engine went away"), "{err}");
    let err = writer
        .write_stream("late", &b"abc"[..], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let err = writer.commit(BackupOutcome::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(err.to_string().contains("stream `db` failed"), "{err}");
    assert_eq!(
        leftovers(&vault, Some(dir.path())).await,
        ["file vault/strata-vault.json", "strata-vault.json"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_duplicate_names_are_refused() {
    let vault = memory_vault(None).await;
    let config = WriterConfig {
        part_size: 1000,
        ..Default::default()
    };
    let err = BackupWriter::start(&vault, target(), config).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("part size 1000"), "{err}");
    assert!(err.hint_text().unwrap().contains("64 KiB"));
    let config = WriterConfig {
        compression_level: 99,
        ..Default::default()
    };
    let err = BackupWriter::start(&vault, target(), config).err().unwrap();
    assert!(err.to_string().contains("compression level 99"), "{err}");

    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    writer.write_stream("a", &b"one"[..], None).await.unwrap();
    let err = writer
        .write_stream("a", &b"two"[..], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    writer.abort().await.unwrap();
    assert_eq!(vault.list_keys("").await.unwrap(), ["strata-vault.json"]);
}

#[derive(Default)]
struct Counter(AtomicU64);

impl Progress for Counter {
    fn add(&self, raw_bytes: u64) {
        self.0.fetch_add(raw_bytes, Ordering::Relaxed);
    }
}

/// How a test ends a backup whose stream future it dropped.
#[derive(Clone, Copy, Debug)]
enum AfterDrop {
    Abort,
    Commit,
    DropWriter,
}

/// Feeds 20 MiB (enough for a finished segment and an open multipart
/// upload) through a pipe that then stalls, drops the stream future
/// midway, and checks that only the vault metadata remains.
async fn cancel_midway(vault: Vault, dir: Option<&std::path::Path>, after: AfterDrop) {
    let config = WriterConfig {
        part_size: 1 << 20,
        compression_level: 1,
        workers: 2,
        parts_in_flight: 2,
        segment_size: 9 << 20,
    };
    let writer = BackupWriter::start(&vault, target(), config).unwrap();
    let (mut feed, pipe) = tokio::io::duplex(1 << 20);
    let total = 20u64 << 20;
    let feeder = tokio::spawn(async move {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..20 {
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            feed.write_all(&chunk).await.unwrap();
        }
        // Keep the pipe open: the engine stalls.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(feed);
    });
    let counter = Counter::default();
    {
        let stream = writer.write_stream("stalled", pipe, Some(&counter));
        tokio::pin!(stream);
        loop {
            tokio::select! {
                result = &mut stream => panic!("the stream cannot finish: {result:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if counter.0.load(Ordering::Relaxed) >= total - (1 << 20) {
                break;
            }
        }
        let prefix = layout::backup_data_prefix("stream", "test/instance", writer.id());
        assert!(
            !vault.list_keys(&prefix).await.unwrap().is_empty(),
            "a segment was completed before the drop"
        );
    } // the stream future is dropped here
    feeder.abort();
    match after {
        AfterDrop::Abort => writer.abort().await.unwrap(),
        AfterDrop::Commit => {
            let err = writer.commit(BackupOutcome::default()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Cancelled);
            assert!(
                err.to_string().contains("stream `stalled` was cancelled"),
                "{err}"
            );
        }
        AfterDrop::DropWriter => {
            drop(writer);
            // Cleanup runs in the background; wait for it (bounded).
            for _ in 0..200 {
                if leftovers(&vault, dir).await.len() <= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let expected: &[&str] = if dir.is_some() {
        &["file vault/strata-vault.json", "strata-vault.json"]
    } else {
        &["strata-vault.json"]
    };
    assert_eq!(leftovers(&vault, dir).await, expected, "after {after:?}");
    assert!(vault.all_manifests().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_stream_leaves_nothing_in_memory() {
    for after in [AfterDrop::Abort, AfterDrop::Commit, AfterDrop::DropWriter] {
        cancel_midway(memory_vault(None).await, None, after).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_stream_leaves_nothing_on_files() {
    for after in [AfterDrop::Abort, AfterDrop::Commit, AfterDrop::DropWriter] {
        let (dir, vault) = file_vault().await;
        cancel_midway(vault, Some(dir.path()), after).await;
    }
}

/// A local vault moved away (or unmounted) while a backup runs: the writes
/// recreate its directories, but the commit sees that the vault is gone and
/// refuses, so no backup is reported as taken that no later command can read.
#[tokio::test]
async fn a_vault_that_disappears_before_the_commit_is_not_committed_into() {
    let (dir, vault) = file_vault().await;
    let writer = BackupWriter::start(&vault, target(), small_config()).unwrap();
    writer
        .write_stream("one", &b"before the move"[..], None)
        .await
        .unwrap();
    let moved = dir.path().join("moved");
    std::fs::rename(dir.path().join("vault"), &moved).unwrap();
    writer
        .write_stream("two", &vec![7u8; 200_000][..], None)
        .await
        .unwrap();
    let err = writer.commit(BackupOutcome::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage, "{err:?}");
    assert!(err.to_string().contains("is gone"), "{err}");
    assert!(!err.is_retryable());
    // Nothing is committed where the vault was, nor in the vault itself.
    let manifests = |root: &std::path::Path| {
        walkdir(root)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/manifests/"))
            .count()
    };
    assert_eq!(manifests(&dir.path().join("vault")), 0);
    assert_eq!(manifests(&moved), 0);
}

/// Every file under `root` (none when it does not exist).
fn walkdir(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

//! The vault conformance suite: one set of tests that every object-store
//! backend must pass, run against `file://`, `memory://`, Azure Blob
//! (Azurite) and S3 (moto).
//!
//! Every case runs once per backend (`file::<case>`, `memory::<case>`,
//! `azure::<case>`, `s3::<case>`), each time in a fresh vault under its own
//! unique prefix, created with `Vault::init`. Azure and S3 need
//! `STRATA_TEST_AZURE_URL` / `STRATA_TEST_S3_URL` and their credentials
//! (`scripts/emulators.sh start` writes them to `.work/emulators.env`);
//! without them those cases are skipped with a notice, unless
//! `STRATA_REQUIRE_EMULATORS=1` (as `scripts/test.sh` sets), which makes a
//! missing emulator a failure.
//!
//! Data sizes are small (parts of 64 KiB, a few MiB per case at most): the
//! emulators hold everything in memory.

use std::collections::BTreeSet;

use bytes::Bytes;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use strata_core::ErrorKind;
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::crypto::VaultKey;
use strata_core::plugin::{ArchiveStore, Attributes, PutOnce};
use strata_core::vault::layout;
use strata_core::vault::reader::{ReaderConfig, read_stream, verify_backup};
use strata_core::vault::writer::{BackupOutcome, BackupTarget, BackupWriter, WriterConfig};
use strata_core::vault::{Vault, VaultArchive, VaultConfig};
use strata_e2e::backends::TestVault;
use strata_e2e::data::{blake3_hex, compressible_bytes, random_bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

/// Runs each listed case once per backend, in modules named after the backend.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod file { conformance!(@on File; $($case),*); }
        mod memory { conformance!(@on Memory; $($case),*); }
        mod azure { conformance!(@on Azure; $($case),*); }
        mod s3 { conformance!(@on S3; $($case),*); }
        mod gcs { conformance!(@on Gcs; $($case),*); }
    };
    (@on $backend:ident; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = strata_e2e::backends::Backend::$backend;
                let Some(location) =
                    strata_e2e::backends::TestVault::new(backend, stringify!($case))
                else {
                    return;
                };
                super::$case(&location).await;
                location.cleanup().await;
            }
        )*
    };
}

conformance!(
    empty_stream_round_trips,
    one_byte_round_trips,
    part_size_minus_one_round_trips,
    exactly_part_size_round_trips,
    part_size_plus_one_round_trips,
    multi_segment_stream_round_trips,
    large_segments_round_trip_through_multipart_uploads,
    compressible_data_is_stored_compressed,
    encrypted_backup_round_trips_and_hides_plaintext,
    concurrent_backups_commit_independently,
    concurrent_streams_of_one_backup_round_trip,
    manifest_is_create_only,
    cancelled_stream_leaves_nothing_and_refuses_commit,
    dropped_writer_leaves_nothing,
    cancelled_multipart_upload_leaves_nothing,
    failed_input_leaves_nothing,
    flipped_byte_is_detected_by_verify_and_read,
    missing_or_truncated_segment_is_named,
    wrong_key_is_refused,
    backup_cannot_be_read_with_another_key,
    init_over_existing_vault_is_refused,
    archive_put_is_create_only_and_judged_by_content,
    archive_objects_are_sealed_and_refuse_another_key,
    archive_damage_is_an_integrity_error,
    archive_attributes_come_from_the_header_alone,
    archive_lists_by_prefix_in_key_order,
    archive_delete_is_idempotent,
);

/// The part size of most cases: the smallest the writer accepts.
const PART: usize = 64 << 10;

fn config(part_size: usize, segment_size: u64) -> WriterConfig {
    WriterConfig {
        part_size,
        compression_level: 3,
        workers: 2,
        parts_in_flight: 2,
        segment_size,
    }
}

/// Small parts, one segment for anything a case writes.
fn small_parts() -> WriterConfig {
    config(PART, 1 << 30)
}

fn target(instance: &str) -> BackupTarget {
    BackupTarget {
        engine: "stream".to_owned(),
        instance: instance.to_owned(),
        database: None,
        kind: BackupKind::Full,
    }
}

async fn init(location: &TestVault, key: Option<VaultKey>) -> Vault {
    Vault::init(&location.config(), key)
        .await
        .unwrap_or_else(|e| panic!("init {}: {e:?}", location.url()))
}

/// The vault's metadata replaced by hand with a new vault's (another key,
/// or none): `Vault::init` refuses a prefix that holds backups, so only a
/// hand-made metadata object puts old backups under a new key.
async fn remade_by_hand(location: &TestVault, key: Option<VaultKey>) -> Vault {
    let scratch = VaultConfig::from_url(format!("memory://remade-{:08x}", rand::random::<u32>()));
    let fresh = Vault::init(&scratch, key.clone()).await.unwrap();
    let meta = fresh.get_bytes(layout::VAULT_META).await.unwrap();
    let (store, root) = strata_core::vault::build_store(&location.config()).unwrap();
    store
        .put(&layout::join(&root, &[layout::VAULT_META]), meta.into())
        .await
        .unwrap();
    Vault::open_with_key(&location.config(), key).await.unwrap()
}

/// Writes one backup of `streams` (in order) and commits it.
async fn backup(
    vault: &Vault,
    instance: &str,
    streams: &[(&str, &[u8])],
    config: WriterConfig,
) -> Manifest {
    let writer = BackupWriter::start(vault, target(instance), config).unwrap();
    for (name, data) in streams {
        let record = writer
            .write_stream(name, *data, None)
            .await
            .unwrap_or_else(|e| panic!("writing stream {name}: {e:?}"));
        assert_eq!(record.raw_size, data.len() as u64, "stream {name}");
        assert_eq!(record.blake3, Some(blake3_hex(data)), "stream {name}");
    }
    writer.commit(BackupOutcome::default()).await.unwrap()
}

/// Reads stream `name` of a backup back, checking the reported statistics.
async fn restore(vault: &Vault, manifest: &Manifest, name: &str) -> strata_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    let stats = read_stream(
        vault,
        manifest,
        name,
        &mut out,
        &ReaderConfig::default(),
        None,
    )
    .await?;
    assert_eq!(stats.raw_bytes, out.len() as u64, "raw bytes reported");
    assert_eq!(
        stats.parts as usize,
        manifest.stream(name).unwrap().part_count()
    );
    Ok(out)
}

/// Asserts two byte strings are equal without printing megabytes.
#[track_caller]
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first = actual
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        panic!(
            "{what}: {} bytes read back, {} expected; first difference at byte {first}",
            actual.len(),
            expected.len()
        );
    }
}

/// Every key in the vault, relative to its root.
async fn all_keys(vault: &Vault) -> Vec<String> {
    vault.list_keys("").await.unwrap()
}

/// Asserts the vault holds nothing but its metadata: no segment, no manifest.
async fn assert_only_metadata(vault: &Vault) {
    assert_eq!(all_keys(vault).await, vec![layout::VAULT_META.to_owned()]);
    assert!(vault.all_manifests().await.unwrap().is_empty());
}

/// Backs up `data` as one stream, reads it back, verifies it, and checks the
/// number of parts the manifest records.
async fn round_trip(location: &TestVault, data: &[u8], expected_parts: usize) {
    let vault = init(location, None).await;
    let manifest = backup(&vault, "db", &[("data", data)], small_parts()).await;
    let stream = manifest.stream("data").unwrap();
    assert_eq!(stream.raw_size, data.len() as u64);
    assert_eq!(
        stream.part_count(),
        expected_parts,
        "parts of {} bytes",
        data.len()
    );

    // Read back through a freshly opened vault, as a restore on another host would.
    let reopened = Vault::open(&location.config()).await.unwrap();
    let committed = reopened
        .read_manifest("stream", "db", &manifest.id)
        .await
        .unwrap();
    assert_eq!(committed, manifest);
    let restored = restore(&reopened, &committed, "data").await.unwrap();
    assert_same_bytes(&restored, data, "restored stream");
    let report = verify_backup(&reopened, &committed, &ReaderConfig::default(), None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.raw_bytes, data.len() as u64);
    assert_eq!(report.parts as usize, expected_parts);
}

async fn empty_stream_round_trips(location: &TestVault) {
    round_trip(location, &[], 0).await;
}

async fn one_byte_round_trips(location: &TestVault) {
    round_trip(location, &[0x5a], 1).await;
}

async fn part_size_minus_one_round_trips(location: &TestVault) {
    round_trip(location, &random_bytes(PART - 1, 1), 1).await;
}

async fn exactly_part_size_round_trips(location: &TestVault) {
    round_trip(location, &random_bytes(PART, 2), 1).await;
}

async fn part_size_plus_one_round_trips(location: &TestVault) {
    round_trip(location, &random_bytes(PART + 1, 3), 2).await;
}

/// Checks that every segment object exists with the size the manifest records.
async fn assert_segments_stored(vault: &Vault, manifest: &Manifest) {
    for stream in &manifest.streams {
        for segment in &stream.segments {
            let meta = vault
                .store()
                .head(&vault.path(&segment.key))
                .await
                .unwrap_or_else(|e| panic!("segment {}: {e}", segment.key));
            assert_eq!(meta.size, segment.stored_size, "size of {}", segment.key);
        }
    }
}

async fn multi_segment_stream_round_trips(location: &TestVault) {
    let vault = init(location, None).await;
    let data = random_bytes(10 * PART + 7, 4);
    let segment_size = 3 * PART as u64;
    let manifest = backup(&vault, "db", &[("data", &data)], config(PART, segment_size)).await;
    let stream = manifest.stream("data").unwrap();
    assert_eq!(stream.part_count(), 11);
    assert!(
        stream.segments.len() >= 4,
        "{} segments for 11 incompressible parts of a third of a segment each",
        stream.segments.len()
    );
    for segment in &stream.segments {
        assert!(segment.stored_size <= segment_size, "{}", segment.key);
    }
    let keys: BTreeSet<_> = stream.segments.iter().map(|s| &s.key).collect();
    assert_eq!(
        keys.len(),
        stream.segments.len(),
        "segment keys are distinct"
    );
    assert_segments_stored(&vault, &manifest).await;
    assert_same_bytes(
        &restore(&vault, &manifest, "data").await.unwrap(),
        &data,
        "restored stream",
    );
}

async fn large_segments_round_trip_through_multipart_uploads(location: &TestVault) {
    // Segments above one upload chunk (8 MiB) go up as multipart uploads.
    let vault = init(location, None).await;
    let data = random_bytes(18 << 20, 5);
    let manifest = backup(&vault, "db", &[("data", &data)], config(1 << 20, 12 << 20)).await;
    let stream = manifest.stream("data").unwrap();
    assert_eq!(stream.part_count(), 18);
    assert_eq!(stream.segments.len(), 2);
    assert!(stream.segments[0].stored_size > 8 << 20);
    assert_segments_stored(&vault, &manifest).await;
    assert_same_bytes(
        &restore(&vault, &manifest, "data").await.unwrap(),
        &data,
        "restored stream",
    );
}

async fn compressible_data_is_stored_compressed(location: &TestVault) {
    let vault = init(location, None).await;
    let data = compressible_bytes(8 * PART + 100, 6);
    let manifest = backup(&vault, "db", &[("rows", &data)], small_parts()).await;
    assert!(
        manifest.stored_size() * 3 < manifest.raw_size(),
        "{} raw bytes stored as {}",
        manifest.raw_size(),
        manifest.stored_size()
    );
    assert_segments_stored(&vault, &manifest).await;
    assert_same_bytes(
        &restore(&vault, &manifest, "rows").await.unwrap(),
        &data,
        "restored stream",
    );
}

/// Whether `window` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], window: &[u8]) -> bool {
    haystack.windows(window.len()).any(|w| w == window)
}

/// The concatenated bytes of every segment object of a backup.
async fn stored_bytes(vault: &Vault, manifest: &Manifest) -> Vec<u8> {
    let mut all = Vec::new();
    for stream in &manifest.streams {
        for segment in &stream.segments {
            all.extend_from_slice(&vault.get_bytes(&segment.key).await.unwrap());
        }
    }
    all
}

async fn encrypted_backup_round_trips_and_hides_plaintext(location: &TestVault) {
    let key = VaultKey::generate();
    let vault = init(location, Some(key.clone())).await;
    // Incompressible data: zstd keeps it as it is, so without encryption the
    // objects would hold the plaintext verbatim.
    let data = random_bytes(3 * PART + 11, 7);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;
    assert!(
        manifest.encryption.is_some(),
        "the manifest records encryption"
    );

    let reopened = Vault::open_with_key(&location.config(), Some(key))
        .await
        .unwrap();
    assert_same_bytes(
        &restore(&reopened, &manifest, "data").await.unwrap(),
        &data,
        "restored stream",
    );
    let report = verify_backup(&reopened, &manifest, &ReaderConfig::default(), None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    let window = &data[PART + 1000..PART + 1064];
    let sealed = stored_bytes(&vault, &manifest).await;
    assert!(
        !contains(&sealed, window),
        "plaintext found in an encrypted segment"
    );

    // The control: the same data in a plaintext vault is visible as it is,
    // so the check above can fail.
    let plain_location = TestVault::new(location.backend(), "plaintext-control")
        .expect("the backend of the running case is available");
    let plain = init(&plain_location, None).await;
    let plain_manifest = backup(&plain, "db", &[("data", &data)], small_parts()).await;
    assert!(plain_manifest.encryption.is_none());
    assert!(contains(
        &stored_bytes(&plain, &plain_manifest).await,
        window
    ));
    plain_location.cleanup().await;
}

async fn concurrent_backups_commit_independently(location: &TestVault) {
    let vault = init(location, None).await;
    let inputs: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(3 * PART + i * 1000, 100 + i as u64))
        .collect();
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|data| {
            // Each writer opens the vault itself, as separate processes would.
            let config = location.config();
            tokio::spawn(async move {
                let vault = Vault::open(&config).await.unwrap();
                backup(&vault, "shared", &[("data", &data)], small_parts()).await
            })
        })
        .collect();
    let mut manifests = Vec::new();
    for task in tasks {
        manifests.push(task.await.expect("a backup task panicked"));
    }
    let ids: BTreeSet<_> = manifests.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 4, "every backup has its own id");

    let listed = vault
        .read_manifests(&layout::manifest_prefix("stream", "shared"))
        .await
        .unwrap();
    let listed_ids: BTreeSet<_> = listed.iter().map(|m| m.id.clone()).collect();
    assert_eq!(listed_ids, ids);
    for (manifest, data) in manifests.iter().zip(&inputs) {
        assert_same_bytes(
            &restore(&vault, manifest, "data").await.unwrap(),
            data,
            &format!("backup {}", manifest.id),
        );
    }
}

async fn concurrent_streams_of_one_backup_round_trip(location: &TestVault) {
    let vault = init(location, None).await;
    let inputs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("channel-{i}"),
                random_bytes(4 * PART + 17 * i, 200 + i as u64),
            )
        })
        .collect();
    let writer = BackupWriter::start(&vault, target("db"), small_parts()).unwrap();
    let records = futures::future::try_join_all(
        inputs
            .iter()
            .map(|(name, data)| writer.write_stream(name, data.as_slice(), None)),
    )
    .await
    .unwrap();
    for (record, (name, data)) in records.iter().zip(&inputs) {
        assert_eq!(&record.name, name);
        assert_eq!(record.blake3, Some(blake3_hex(data)));
    }
    let manifest = writer.commit(BackupOutcome::default()).await.unwrap();
    let names: BTreeSet<_> = manifest.streams.iter().map(|s| s.name.clone()).collect();
    let expected: BTreeSet<_> = inputs.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, expected);
    let segment_keys: BTreeSet<_> = manifest
        .streams
        .iter()
        .flat_map(|s| &s.segments)
        .map(|s| s.key.clone())
        .collect();
    assert_eq!(
        segment_keys.len(),
        manifest
            .streams
            .iter()
            .map(|s| s.segments.len())
            .sum::<usize>(),
        "streams never share a segment object"
    );
    for (name, data) in &inputs {
        assert_same_bytes(&restore(&vault, &manifest, name).await.unwrap(), data, name);
    }
}

async fn manifest_is_create_only(location: &TestVault) {
    let vault = init(location, None).await;
    let data = random_bytes(PART + 5, 8);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;
    let key = layout::manifest_key("stream", "db", &manifest.id);
    let original = vault.get_bytes(&key).await.unwrap();

    let mut forged = manifest.clone();
    forged
        .labels
        .insert("note".to_owned(), "a second writer".to_owned());
    forged.streams.clear();
    let err = vault.put_manifest(&forged).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
    assert!(err.to_string().contains(&manifest.id.to_string()), "{err}");

    assert_eq!(vault.get_bytes(&key).await.unwrap(), original);
    let committed = vault
        .read_manifest("stream", "db", &manifest.id)
        .await
        .unwrap();
    assert_eq!(committed, manifest);
    assert_same_bytes(
        &restore(&vault, &committed, "data").await.unwrap(),
        &data,
        "the first backup after the refused overwrite",
    );
}

/// An input that yields `data`, then signals, then never ends: a database
/// that stalls mid-backup.
struct StallingInput {
    data: Cursor<Vec<u8>>,
    fed: Arc<Notify>,
    signalled: bool,
}

impl StallingInput {
    fn new(data: Vec<u8>) -> (StallingInput, Arc<Notify>) {
        let fed = Arc::new(Notify::new());
        let input = StallingInput {
            data: Cursor::new(data),
            fed: fed.clone(),
            signalled: false,
        };
        (input, fed)
    }
}

impl AsyncRead for StallingInput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if (this.data.position() as usize) < this.data.get_ref().len() {
            return Pin::new(&mut this.data).poll_read(cx, buf);
        }
        if !this.signalled {
            this.signalled = true;
            this.fed.notify_one();
        }
        // Never woken: the stream stalls until it is dropped.
        Poll::Pending
    }
}

/// Drives `write` until the input has been consumed and at least one object
/// is under `data/` (when `expect_objects`), without letting it finish.
async fn drive_until_stalled<F>(
    vault: &Vault,
    write: Pin<&mut F>,
    fed: &Notify,
    expect_objects: bool,
) where
    F: Future<Output = strata_core::Result<strata_core::catalog::manifest::StreamRecord>>,
{
    let mut write = write;
    tokio::select! {
        result = write.as_mut() => panic!("the stream ended while its input was still open: {result:?}"),
        _ = fed.notified() => {}
    }
    if !expect_objects {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            result = write.as_mut() => panic!("the stream ended while its input was still open: {result:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if !vault.list_keys(layout::DATA).await.unwrap().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no segment object appeared while the stream was being written"
        );
    }
}

async fn cancelled_stream_leaves_nothing_and_refuses_commit(location: &TestVault) {
    let vault = init(location, None).await;
    // Two parts per segment, so finished segments are in the store when
    // the stream is cancelled.
    let writer =
        BackupWriter::start(&vault, target("db"), config(PART, 2 * PART as u64 + 4096)).unwrap();
    let (input, fed) = StallingInput::new(random_bytes(8 * PART, 9));
    {
        let write = writer.write_stream("data", input, None);
        tokio::pin!(write);
        drive_until_stalled(&vault, write, &fed, true).await;
        // The write future is dropped here, mid-stream.
    }
    let id = writer.id().clone();
    let err = writer
        .commit(BackupOutcome::default())
        .await
        .expect_err("a backup with a cancelled stream must not commit");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "backup {id} cannot be committed: stream `data` was cancelled before it finished"
        )),
        "names the backup and the stream: {err}"
    );
    assert_only_metadata(&vault).await;
}

async fn dropped_writer_leaves_nothing(location: &TestVault) {
    let vault = init(location, None).await;
    let writer =
        BackupWriter::start(&vault, target("db"), config(PART, 2 * PART as u64 + 4096)).unwrap();
    let (input, fed) = StallingInput::new(random_bytes(8 * PART, 10));
    {
        let write = writer.write_stream("data", input, None);
        tokio::pin!(write);
        drive_until_stalled(&vault, write, &fed, true).await;
    }
    // A crash of the caller's task: neither commit nor abort. The writer
    // cleans up in the background.
    drop(writer);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = all_keys(&vault).await;
        if keys == [layout::VAULT_META] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dropped writer left objects behind: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(vault.all_manifests().await.unwrap().is_empty());
}

async fn cancelled_multipart_upload_leaves_nothing(location: &TestVault) {
    let vault = init(location, None).await;
    // 1 MiB parts in one large segment: by the time 12 MiB have been read,
    // more than one upload chunk (8 MiB) is buffered and a multipart
    // upload is under way.
    let writer = BackupWriter::start(&vault, target("db"), config(1 << 20, 1 << 30)).unwrap();
    let (input, fed) = StallingInput::new(random_bytes(12 << 20, 11));
    {
        let write = writer.write_stream("data", input, None);
        tokio::pin!(write);
        drive_until_stalled(&vault, write, &fed, false).await;
    }
    writer.abort().await.unwrap();
    assert_only_metadata(&vault).await;
    // No object listing shows an unfinished upload: ask for them (on S3,
    // the bucket's multipart uploads under the vault; in a local vault, the
    // staging files), with no grace period.
    let left = strata_core::vault::gc::find_unfinished_uploads(&vault, Duration::ZERO)
        .await
        .unwrap();
    assert!(left.is_empty(), "the upload was aborted: {left:?}");
}

/// An input that fails after `data`: a pipe whose writer died.
struct FailingInput {
    data: Cursor<Vec<u8>>,
}

impl AsyncRead for FailingInput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if (this.data.position() as usize) < this.data.get_ref().len() {
            return Pin::new(&mut this.data).poll_read(cx, buf);
        }
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the engine closed the pipe",
        )))
    }
}

async fn failed_input_leaves_nothing(location: &TestVault) {
    let vault = init(location, None).await;
    let writer =
        BackupWriter::start(&vault, target("db"), config(PART, 2 * PART as u64 + 4096)).unwrap();
    let good = random_bytes(2 * PART, 12);
    writer
        .write_stream("good", good.as_slice(), None)
        .await
        .unwrap();
    let failing = FailingInput {
        data: Cursor::new(random_bytes(5 * PART + 3, 13)),
    };
    let err = writer
        .write_stream("broken", failing, None)
        .await
        .expect_err("a failing input fails the stream");
    assert!(
        err.to_string().contains("the engine closed the pipe"),
        "says why: {err}"
    );
    let id = writer.id().clone();
    assert!(
        err.to_string()
            .contains(&format!("backup {id}, stream `broken`")),
        "names the backup and the stream: {err}"
    );
    let err = writer
        .commit(BackupOutcome::default())
        .await
        .expect_err("a backup with a failed stream must not commit");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "backup {id} cannot be committed: stream `broken` failed: "
        )),
        "names the backup and the failed stream: {err}"
    );
    assert_only_metadata(&vault).await;
}

async fn flipped_byte_is_detected_by_verify_and_read(location: &TestVault) {
    let vault = init(location, None).await;
    let data = random_bytes(4 * PART, 14);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;
    let segment = &manifest.stream("data").unwrap().segments[0];
    assert_eq!(segment.parts.len(), 4);

    // Flip one byte in the middle of part 2, and put the object back.
    let path = vault.path(&segment.key);
    let mut stored = vault.get_bytes(&segment.key).await.unwrap().to_vec();
    let offset =
        (segment.parts[0].stored + segment.parts[1].stored + segment.parts[2].stored / 2) as usize;
    stored[offset] ^= 0x01;
    vault
        .store()
        .put(&path, PutPayload::from(stored))
        .await
        .unwrap();

    let err = assert_damage_reported(
        &vault,
        &manifest,
        &data,
        &segment.key,
        ErrorKind::Integrity,
        Some("part 2"),
        2 * PART,
    )
    .await;
    assert!(err.hint_text().is_some(), "tells the operator what to do");
    let report = verify_backup(&vault, &manifest, &ReaderConfig::default(), None)
        .await
        .unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

/// Checks that damage to the object `key` is reported by `verify_backup`
/// (every problem names the object, one names `part`) and stops
/// `read_stream` with an error of `kind` naming the object and `part`,
/// after handing on at most `max_sound` bytes, all of them the original
/// ones. Returns the read error for further checks.
async fn assert_damage_reported(
    vault: &Vault,
    manifest: &Manifest,
    data: &[u8],
    key: &str,
    kind: ErrorKind,
    part: Option<&str>,
    max_sound: usize,
) -> strata_core::Error {
    let report = verify_backup(vault, manifest, &ReaderConfig::default(), None)
        .await
        .unwrap();
    assert!(!report.is_ok(), "verify did not notice the damage to {key}");
    assert!(
        report.problems.iter().all(|p| p.contains(key)),
        "every problem names the object: {:?}",
        report.problems
    );
    if let Some(part) = part {
        assert!(
            report.problems.iter().any(|p| p.contains(part)),
            "names the part: {:?}",
            report.problems
        );
    }
    let mut out = Vec::new();
    let err = read_stream(
        vault,
        manifest,
        "data",
        &mut out,
        &ReaderConfig::default(),
        None,
    )
    .await
    .expect_err("damage must fail the read");
    assert_eq!(err.kind(), kind, "{err:?}");
    assert!(err.to_string().contains(key), "names the object: {err}");
    if let Some(part) = part {
        assert!(err.to_string().contains(part), "names the part: {err}");
    }
    // Only the sound parts before the damage may have been handed on.
    assert!(out.len() <= max_sound, "{} bytes handed on", out.len());
    assert_same_bytes(
        &out,
        &data[..out.len()],
        "bytes handed on before the damage",
    );
    err
}

async fn missing_or_truncated_segment_is_named(location: &TestVault) {
    let vault = init(location, None).await;
    // Two parts per segment.
    let config = || config(PART, 2 * PART as u64 + 4096);
    let data = random_bytes(4 * PART, 18);
    let truncated = backup(&vault, "db", &[("data", &data)], config()).await;
    let missing = backup(&vault, "db", &[("data", &data)], config()).await;

    // Cut the first segment of one backup in the middle of its second part.
    let segment = &truncated.stream("data").unwrap().segments[0];
    assert_eq!(segment.parts.len(), 2);
    let cut = (segment.parts[0].stored + segment.parts[1].stored / 2) as usize;
    let mut stored = vault.get_bytes(&segment.key).await.unwrap().to_vec();
    stored.truncate(cut);
    vault
        .store()
        .put(&vault.path(&segment.key), PutPayload::from(stored))
        .await
        .unwrap();
    assert_damage_reported(
        &vault,
        &truncated,
        &data,
        &segment.key,
        ErrorKind::Integrity,
        Some("part 1"),
        PART,
    )
    .await;

    // Delete the second segment of the other backup.
    let segment = &missing.stream("data").unwrap().segments[1];
    vault
        .store()
        .delete(&vault.path(&segment.key))
        .await
        .unwrap();
    assert_damage_reported(
        &vault,
        &missing,
        &data,
        &segment.key,
        ErrorKind::NotFound,
        None,
        2 * PART,
    )
    .await;
}

async fn wrong_key_is_refused(location: &TestVault) {
    let key = VaultKey::generate();
    let vault = init(location, Some(key.clone())).await;
    let data = random_bytes(2 * PART + 1, 15);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;

    let err = Vault::open_with_key(&location.config(), Some(VaultKey::generate()))
        .await
        .expect_err("another key must not open the vault");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "the key does not belong to the vault at {}",
            location.url()
        )),
        "{err}"
    );
    assert!(
        err.hint_text()
            .is_some_and(|h| h.contains("the key file written by `strata vault init --encrypt`")),
        "{err:?}"
    );

    let err = Vault::open_with_key(&location.config(), None)
        .await
        .expect_err("an encrypted vault must not open without its key");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "the vault at {} is encrypted and no key was given",
            location.url()
        )),
        "{err}"
    );

    // The same refusal through a key file, as the CLI and the service load it.
    let keys = strata_e2e::fixture::TestDir::new("keys");
    let wrong_file = keys.path("wrong.key");
    VaultKey::generate().save_new(&wrong_file).unwrap();
    let err = Vault::open(&VaultConfig {
        key_file: Some(wrong_file),
        ..location.config()
    })
    .await
    .expect_err("a wrong key file must not open the vault");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");

    // The right key still reads the backup: the refusals changed nothing.
    let right_file = keys.path("right.key");
    key.save_new(&right_file).unwrap();
    let reopened = Vault::open(&VaultConfig {
        key_file: Some(right_file),
        ..location.config()
    })
    .await
    .unwrap();
    assert_same_bytes(
        &restore(&reopened, &manifest, "data").await.unwrap(),
        &data,
        "restored with the right key",
    );
}

async fn backup_cannot_be_read_with_another_key(location: &TestVault) {
    let vault = init(location, Some(VaultKey::generate())).await;
    let data = random_bytes(2 * PART + 1, 16);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;

    // The vault metadata is lost and the vault re-initialised with a new
    // key: its old backups must fail cleanly, never decode to garbage.
    let rekeyed = remade_by_hand(location, Some(VaultKey::generate())).await;
    let committed = rekeyed
        .read_manifest("stream", "db", &manifest.id)
        .await
        .unwrap();
    let mut out = Vec::new();
    let err = read_stream(
        &rekeyed,
        &committed,
        "data",
        &mut out,
        &ReaderConfig::default(),
        None,
    )
    .await
    .expect_err("another key must not read the backup");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(
        err.to_string().contains(&manifest.id.to_string()),
        "names the backup: {err}"
    );
    assert!(out.is_empty(), "{} bytes handed on", out.len());
    let report = verify_backup(&rekeyed, &committed, &ReaderConfig::default(), None)
        .await
        .unwrap();
    assert!(!report.is_ok(), "verify with another key passed");

    // Re-initialised without a key: the backup says it needs one.
    let plain = remade_by_hand(location, None).await;
    let mut out = Vec::new();
    let err = read_stream(
        &plain,
        &committed,
        "data",
        &mut out,
        &ReaderConfig::default(),
        None,
    )
    .await
    .expect_err("an encrypted backup must not be read without a key");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(err.hint_text().is_some(), "{err:?}");
    assert!(out.is_empty());
}

async fn init_over_existing_vault_is_refused(location: &TestVault) {
    let err = Vault::open(&location.config())
        .await
        .expect_err("there is no vault yet");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(
        err.hint_text()
            .is_some_and(|h| h.contains("strata vault init")),
        "{err:?}"
    );

    let vault = init(location, None).await;
    let data = random_bytes(PART + 9, 17);
    let manifest = backup(&vault, "db", &[("data", &data)], small_parts()).await;
    let meta_before = vault.get_bytes(layout::VAULT_META).await.unwrap();

    for key in [None, Some(VaultKey::generate())] {
        let err = Vault::init(&location.config(), key)
            .await
            .expect_err("init over an existing vault must be refused");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(err.hint_text().is_some(), "{err:?}");
    }

    assert_eq!(
        vault.get_bytes(layout::VAULT_META).await.unwrap(),
        meta_before
    );
    let reopened = Vault::open(&location.config()).await.unwrap();
    assert_eq!(reopened.meta(), vault.meta());
    assert!(reopened.key().is_none());
    assert_same_bytes(
        &restore(&reopened, &manifest, "data").await.unwrap(),
        &data,
        "the backup after the refused init",
    );
}

// The archive-object API (`ArchiveStore`, implemented by `VaultArchive`).

/// The archive of instance `main` of engine `postgres`, as the WAL archive uses it.
fn archive_of(vault: &Vault) -> VaultArchive {
    VaultArchive::new(vault.clone(), "postgres", "main")
}

fn attributes(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const WAL_KEY: &str = "wal/42/00000001/000000010000000000000003";

async fn archive_put_is_create_only_and_judged_by_content(location: &TestVault) {
    let vault = init(location, None).await;
    let archive = archive_of(&vault);
    let first = random_bytes(100_000, 21);
    let first_attributes = attributes(&[("system_id", "42"), ("mtime", "2026-11-22T00:15:00Z")]);
    let stored = archive
        .put_once(
            WAL_KEY,
            Bytes::from(first.clone()),
            first_attributes.clone(),
        )
        .await
        .unwrap();
    let full = format!("engines/postgres/main/{WAL_KEY}");
    let object_size = vault.get_bytes(&full).await.unwrap().len() as u64;
    assert_eq!(
        stored,
        PutOnce::Stored {
            stored_bytes: object_size
        },
        "stored where the WAL archive always kept it"
    );

    // The same bytes again (PostgreSQL re-archiving after a crash), even
    // with other attributes: identical, nothing rewritten.
    assert_eq!(
        archive
            .put_once(
                WAL_KEY,
                Bytes::from(first.clone()),
                attributes(&[("mtime", "2030-01-01T00:00:00Z")])
            )
            .await
            .unwrap(),
        PutOnce::Identical
    );

    // Other bytes under the key: a conflict naming the key and both digests.
    let mut second = first.clone();
    second[50_000] ^= 0x01;
    let err = archive
        .put_once(WAL_KEY, Bytes::from(second.clone()), Attributes::new())
        .await
        .expect_err("different content must not replace the object");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&full), "names the object: {text}");
    assert!(
        text.contains(&blake3_hex(&first)),
        "names the stored digest: {text}"
    );
    assert!(
        text.contains(&blake3_hex(&second)),
        "names the new digest: {text}"
    );
    assert!(err.hint_text().is_some(), "{err:?}");

    let kept = archive.get(WAL_KEY).await.unwrap().expect("still stored");
    assert_same_bytes(&kept.bytes, &first, "the original after the conflict");
    assert_eq!(kept.attributes, first_attributes);
    assert!(
        archive
            .get("wal/42/00000001/other")
            .await
            .unwrap()
            .is_none()
    );

    // Keys are checked before anything is stored.
    for bad in ["", "wal/../x", "wal//x", "wal/a b"] {
        let err = archive
            .put_once(bad, Bytes::from_static(b"x"), Attributes::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err:?}");
    }
    let long = format!("wal/{}", "x".repeat(201));
    assert_eq!(
        archive.get(&long).await.unwrap_err().kind(),
        ErrorKind::Config
    );
}

async fn archive_objects_are_sealed_and_refuse_another_key(location: &TestVault) {
    let key = VaultKey::generate();
    let vault = init(location, Some(key.clone())).await;
    let archive = archive_of(&vault);
    // Incompressible: without encryption the object would hold it verbatim.
    let data = random_bytes(200_000, 22);
    archive
        .put_once(
            WAL_KEY,
            Bytes::from(data.clone()),
            attributes(&[("system_id", "42")]),
        )
        .await
        .unwrap();
    let full = format!("engines/postgres/main/{WAL_KEY}");
    let stored = vault.get_bytes(&full).await.unwrap();
    assert!(
        !contains(&stored, &data[1000..1064]),
        "plaintext found in an encrypted archive object"
    );

    let reopened = Vault::open_with_key(&location.config(), Some(key))
        .await
        .unwrap();
    let object = archive_of(&reopened).get(WAL_KEY).await.unwrap().unwrap();
    assert_same_bytes(&object.bytes, &data, "the sealed object");
    assert_eq!(object.attributes, attributes(&[("system_id", "42")]));
    assert_eq!(
        archive_of(&reopened)
            .put_once(WAL_KEY, Bytes::from(data.clone()), Attributes::new())
            .await
            .unwrap(),
        PutOnce::Identical
    );

    // The vault re-initialised with another key: the object fails cleanly.
    let rekeyed = remade_by_hand(location, Some(VaultKey::generate())).await;
    let err = archive_of(&rekeyed)
        .get(WAL_KEY)
        .await
        .expect_err("another key must not open the object");
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(err.to_string().contains(&full), "names the object: {err}");
    assert!(err.hint_text().is_some(), "{err:?}");

    // And without a key: it says it needs one.
    let plain = remade_by_hand(location, None).await;
    let err = archive_of(&plain).get(WAL_KEY).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Crypto, "{err:?}");
    assert!(err.hint_text().is_some(), "{err:?}");
}

/// Flips one byte of the stored object at `full`, `from_end` bytes before its end.
async fn flip_stored_byte(vault: &Vault, full: &str, from_end: usize) {
    let mut stored = vault.get_bytes(full).await.unwrap().to_vec();
    let at = stored.len() - from_end;
    stored[at] ^= 0x01;
    vault
        .store()
        .put(&vault.path(full), PutPayload::from(stored))
        .await
        .unwrap();
}

async fn archive_damage_is_an_integrity_error(location: &TestVault) {
    for key in [None, Some(VaultKey::generate())] {
        let encrypted = key.is_some();
        let vault = init(location, key).await;
        let archive = archive_of(&vault);
        let data = compressible_bytes(300_000, 23);
        archive
            .put_once(WAL_KEY, Bytes::from(data.clone()), Attributes::new())
            .await
            .unwrap();
        let full = format!("engines/postgres/main/{WAL_KEY}");
        let size = vault.get_bytes(&full).await.unwrap().len();
        flip_stored_byte(&vault, &full, size / 4).await;

        let err = archive
            .get(WAL_KEY)
            .await
            .expect_err("a damaged object must not be handed on");
        assert_eq!(
            err.kind(),
            ErrorKind::Integrity,
            "encrypted {encrypted}: {err:?}"
        );
        assert!(err.to_string().contains(&full), "names the object: {err}");
        assert!(err.hint_text().is_some(), "{err:?}");
        // A put of the original bytes must not call the damaged copy identical.
        let err = archive
            .put_once(WAL_KEY, Bytes::from(data.clone()), Attributes::new())
            .await
            .expect_err("a damaged object is not a duplicate");
        assert_eq!(
            err.kind(),
            ErrorKind::Integrity,
            "encrypted {encrypted}: {err:?}"
        );

        // Start over for the next round.
        for object in vault.list_keys("").await.unwrap() {
            vault.store().delete(&vault.path(&object)).await.unwrap();
        }
    }
}

async fn archive_attributes_come_from_the_header_alone(location: &TestVault) {
    let vault = init(location, None).await;
    let archive = archive_of(&vault);
    let wanted = attributes(&[("system_id", "42"), ("mtime", "2026-11-22T00:15:00.5Z")]);
    archive
        .put_once(
            WAL_KEY,
            Bytes::from(random_bytes(500_000, 24)),
            wanted.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        archive.attributes(WAL_KEY).await.unwrap(),
        Some(wanted.clone())
    );

    // Cut the body short: the attributes are still there (only the header
    // was read), the bytes are not.
    let full = format!("engines/postgres/main/{WAL_KEY}");
    let stored = vault.get_bytes(&full).await.unwrap();
    vault
        .store()
        .put(&vault.path(&full), PutPayload::from(stored.slice(..1024)))
        .await
        .unwrap();
    assert_eq!(archive.attributes(WAL_KEY).await.unwrap(), Some(wanted));
    let err = archive.get(WAL_KEY).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err:?}");

    assert_eq!(
        archive.attributes("wal/42/00000001/missing").await.unwrap(),
        None
    );
}

async fn archive_lists_by_prefix_in_key_order(location: &TestVault) {
    let vault = init(location, None).await;
    let archive = archive_of(&vault);
    let keys = [
        "wal/10/00000001/c",
        "other/x",
        "wal/1/00000002/b",
        "wal/1/00000001/a",
    ];
    for (i, key) in keys.iter().enumerate() {
        archive
            .put_once(
                key,
                Bytes::from(vec![i as u8; 1000 * (i + 1)]),
                Attributes::new(),
            )
            .await
            .unwrap();
    }
    // Another instance's objects are not this archive's.
    VaultArchive::new(vault.clone(), "postgres", "other")
        .put_once(
            "wal/1/00000001/z",
            Bytes::from_static(b"z"),
            Attributes::new(),
        )
        .await
        .unwrap();

    let listed = |entries: Vec<strata_core::plugin::ArchiveEntry>| -> Vec<String> {
        entries.into_iter().map(|e| e.key).collect()
    };
    assert_eq!(
        listed(archive.list("wal/1").await.unwrap()),
        ["wal/1/00000001/a", "wal/1/00000002/b"],
        "a prefix is whole components: wal/1 is not wal/10"
    );
    let all = archive.list("").await.unwrap();
    assert_eq!(
        listed(all.clone()),
        [
            "other/x",
            "wal/1/00000001/a",
            "wal/1/00000002/b",
            "wal/10/00000001/c"
        ]
    );
    for entry in &all {
        let stored = vault
            .get_bytes(&format!("engines/postgres/main/{}", entry.key))
            .await
            .unwrap();
        assert_eq!(entry.stored_bytes, stored.len() as u64, "{}", entry.key);
        let age = chrono::Utc::now() - entry.stored_at;
        assert!(age < chrono::Duration::minutes(10), "{}: {age}", entry.key);
    }
    assert!(archive.list("nothing/here").await.unwrap().is_empty());
    assert_eq!(
        archive.list("wal/..").await.unwrap_err().kind(),
        ErrorKind::Config
    );
}

async fn archive_delete_is_idempotent(location: &TestVault) {
    let vault = init(location, None).await;
    let archive = archive_of(&vault);
    archive
        .put_once(WAL_KEY, Bytes::from_static(b"first"), Attributes::new())
        .await
        .unwrap();
    archive.delete(WAL_KEY).await.unwrap();
    assert!(archive.get(WAL_KEY).await.unwrap().is_none());
    assert!(archive.list("").await.unwrap().is_empty());
    archive.delete(WAL_KEY).await.unwrap();
    archive.delete("never/there").await.unwrap();
    // Once deleted, the key takes new content.
    assert!(matches!(
        archive
            .put_once(WAL_KEY, Bytes::from_static(b"second"), Attributes::new())
            .await
            .unwrap(),
        PutOnce::Stored { .. }
    ));
    assert_eq!(
        &archive.get(WAL_KEY).await.unwrap().unwrap().bytes[..],
        b"second"
    );
}

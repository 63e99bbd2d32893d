//! The blob endpoint over HTTPS, driven the way SQL Server drives it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Client, StatusCode};
use strata_core::catalog::manifest::{BackupId, StreamRecord};
use strata_core::plugin::{BackupSink, PartBuffers, PartFeed, PartStream, StreamDigest};
use strata_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::*;
use crate::test_support::MemorySource;
use crate::tls::{self, CertBundle};

const HOST: &str = "blob.test";
const BLOCK: usize = 64 * 1024;

/// An endpoint on 127.0.0.1:0 with certificates for `blob.test`.
struct Fixture {
    endpoint: BlobEndpoint,
    certs: CertBundle,
    _dir: tempfile::TempDir,
}

fn fixture(window: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(HOST).unwrap();
    let files = certs.write(dir.path()).unwrap();
    let mut config =
        BlobEndpointConfig::new("127.0.0.1:0".parse().unwrap(), HOST, files.cert, files.key);
    config.reorder_window = window;
    Fixture {
        endpoint: BlobEndpoint::new(config),
        certs,
        _dir: dir,
    }
}

impl Fixture {
    /// A client trusting only the fixture's CA, resolving `blob.test` to the listener.
    fn client(&self) -> Client {
        client_trusting(&self.certs.ca_pem, self.addr())
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("a device is open")
    }
}

fn client_trusting(ca_pem: &str, addr: SocketAddr) -> Client {
    Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve(HOST, addr)
        .build()
        .unwrap()
}

/// A sink keeping each stream's bytes.
#[derive(Default)]
struct MemorySink {
    streams: Mutex<BTreeMap<String, Vec<u8>>>,
}

struct NoPool;

impl PartBuffers for NoPool {
    fn take_full(&self) -> Vec<u8> {
        vec![0; 1024]
    }
    fn give(&self, _buffer: Vec<u8>) {}
}

#[async_trait]
impl BackupSink for MemorySink {
    async fn write_stream(
        &self,
        name: &str,
        mut reader: Box<dyn AsyncRead + Send + Unpin + 'static>,
    ) -> Result<StreamRecord> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::io(format!("reading {name}: {e}")))?;
        let raw_size = bytes.len() as u64;
        self.streams.lock().unwrap().insert(name.to_owned(), bytes);
        Ok(StreamRecord {
            name: name.to_owned(),
            raw_size,
            stored_size: raw_size,
            blake3: None,
            segments: Vec::new(),
        })
    }

    fn part_channel(&self) -> (PartFeed, PartStream) {
        strata_core::plugin::part_channel(1024, Arc::new(NoPool))
    }

    async fn write_parts(&self, _: &str, _: PartStream, _: StreamDigest) -> Result<StreamRecord> {
        Err(Error::engine("the test sink takes whole streams only"))
    }
}

impl MemorySink {
    fn stream(&self, name: &str) -> Option<Vec<u8>> {
        self.streams.lock().unwrap().get(name).cloned()
    }
}

/// `len` deterministic bytes from `seed`.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// Block `i`'s id: base64 with `+` and `/` in it, as a URL must escape them.
fn block_id(i: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode([0xFB, 0xEF, (i >> 8) as u8, i as u8])
}

fn escaped(text: &str) -> String {
    text.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A block list as SQL Server sends it: UTF-16 little endian with a BOM.
fn utf16_block_list(ids: &[String]) -> Vec<u8> {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-16\"?>\r\n<BlockList>");
    for id in ids {
        xml.push_str(&format!("<Latest>{id}</Latest>"));
    }
    xml.push_str("</BlockList>");
    let mut body = vec![0xFF, 0xFE];
    body.extend(xml.encode_utf16().flat_map(u16::to_le_bytes));
    body
}

/// What SQL Server does with one URL device (its SAS appended to every
/// request when given): Put Blob of 0 bytes, lease acquire, the blocks of
/// `content` put in `put_order` (indexes of `BLOCK`-sized blocks; more than
/// once for a retried block), the block list in index order, lease
/// release. Returns the block list's status.
struct Device<'a> {
    client: &'a Client,
    url: &'a str,
    sas: &'a str,
    lease: String,
}

impl<'a> Device<'a> {
    fn new(client: &'a Client, url: &'a str, sas: &'a str) -> Self {
        Device {
            client,
            url,
            sas,
            lease: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn at(&self, query: &str) -> String {
        match (query.is_empty(), self.sas.is_empty()) {
            (true, true) => self.url.to_owned(),
            (true, false) => format!("{}?{}", self.url, self.sas),
            (false, true) => format!("{}?{query}", self.url),
            (false, false) => format!("{}?{query}&{}", self.url, self.sas),
        }
    }

    async fn create_and_lease(&self) {
        let created = self
            .client
            .put(self.at(""))
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-version", "2019-02-02")
            .body(Vec::new())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        assert_eq!(created.headers()["x-ms-version"], "2019-02-02");
        assert!(created.headers().contains_key("x-ms-request-id"));
        assert!(created.headers().contains_key("date"));
        let leased = self
            .client
            .put(self.at("comp=lease"))
            .header("x-ms-lease-action", "acquire")
            .header("x-ms-lease-duration", "-1")
            .header("x-ms-proposed-lease-id", &self.lease)
            .send()
            .await
            .unwrap();
        assert_eq!(leased.status(), StatusCode::CREATED);
        assert_eq!(leased.headers()["x-ms-lease-id"], self.lease.as_str());
    }

    async fn put_block(&self, id: &str, bytes: &[u8]) -> reqwest::Response {
        self.client
            .put(self.at(&format!("comp=block&blockid={}", escaped(id))))
            .header("x-ms-lease-id", &self.lease)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn put_block_list(&self, ids: &[String]) -> reqwest::Response {
        self.client
            .put(self.at("comp=blocklist"))
            .header("x-ms-lease-id", &self.lease)
            .header("content-type", "application/xml; charset=utf-16")
            .body(utf16_block_list(ids))
            .send()
            .await
            .unwrap()
    }

    async fn release(&self) -> StatusCode {
        self.client
            .put(self.at("comp=lease"))
            .header("x-ms-lease-action", "release")
            .header("x-ms-lease-id", &self.lease)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// The whole sequence; the status of Put Block List.
    async fn write(&self, content: &[u8], put_order: &[usize]) -> StatusCode {
        self.create_and_lease().await;
        let blocks: Vec<&[u8]> = content.chunks(BLOCK).collect();
        for &i in put_order {
            let put = self.put_block(&block_id(i), blocks[i]).await;
            assert_eq!(
                put.status(),
                StatusCode::CREATED,
                "block {i}: {:?}",
                put.text().await
            );
        }
        let ids: Vec<String> = (0..blocks.len()).map(block_id).collect();
        let listed = self.put_block_list(&ids).await.status();
        if listed == StatusCode::CREATED {
            assert_eq!(self.release().await, StatusCode::OK);
        }
        listed
    }
}

/// The URLs of a device's `TO URL = N'..', ...` clause.
fn urls(clause: &str) -> Vec<String> {
    clause
        .split("N'")
        .skip(1)
        .map(|s| s.split('\'').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sql_servers_backup_sequence_on_two_stripes_lands_byte_exact() {
    let fx = fixture(DEFAULT_REORDER_WINDOW);
    let mut device = fx.endpoint.open_backup(2).unwrap();
    let port = fx.addr().port();
    let clause = device.to_clause();
    let urls = urls(&clause);
    assert_eq!(urls.len(), 2);
    assert!(
        clause.starts_with(&format!("TO URL = N'https://{HOST}:{port}/strata/")),
        "{clause}"
    );
    assert!(urls[0].ends_with("/stripe-000.bak") && urls[1].ends_with("/stripe-001.bak"));
    assert_eq!(device.first_device(), urls[0]);
    assert_eq!(
        fx.endpoint.credential_name(),
        format!("https://{HOST}:{port}/strata")
    );
    assert!(urls[0].starts_with(&fx.endpoint.credential_name()));

    let client = fx.client();
    let stripes = [data(1, 10 * BLOCK + 123), data(2, 7 * BLOCK)];
    let sink = MemorySink::default();
    // SQL Server appends its credential's SAS to every request: stripe 0
    // carries one (with parameters the endpoint must not mistake for its
    // own), stripe 1 none.
    let sas = "sv=2020-10-02&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=a%2Bb%2Fc%3D";
    let zero = Device::new(&client, &urls[0], sas);
    let one = Device::new(&client, &urls[1], "");
    let order0: Vec<usize> = (0..11).collect();
    let order1: Vec<usize> = (0..7).collect();
    let (records, listed0, listed1) = tokio::join!(
        device.receive(&sink),
        zero.write(&stripes[0], &order0),
        one.write(&stripes[1], &order1),
    );
    assert_eq!(
        (listed0, listed1),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    let records = records.unwrap();
    assert_eq!(
        records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["stripe-000", "stripe-001"]
    );
    assert_eq!(records[0].raw_size, stripes[0].len() as u64);
    assert!(sink.stream("stripe-000").unwrap() == stripes[0]);
    assert!(sink.stream("stripe-001").unwrap() == stripes[1]);

    // The committed blobs: their size and blocks, as SQL Server may check.
    let head = client.head(&urls[0]).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        stripes[0].len().to_string().as_str()
    );
    assert_eq!(head.headers()["x-ms-blob-type"], "BlockBlob");
    assert_eq!(head.headers()["x-ms-lease-state"], "available");
    let list = client
        .get(format!(
            "{}?comp=blocklist&blocklisttype=all&{sas}",
            urls[1]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let xml = list.text().await.unwrap();
    assert_eq!(xml.matches("<Block>").count(), 7, "{xml}");
    assert!(
        xml.contains(&format!("<Name>{}</Name><Size>{BLOCK}</Size>", block_id(6))),
        "{xml}"
    );
    // A committed stripe takes no more writes.
    let late = one.put_block(&block_id(99), b"late").await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn blocks_out_of_order_within_the_window_are_committed_in_list_order() {
    let fx = fixture(4);
    let mut device = fx.endpoint.open_backup(1).unwrap();
    let url = &urls(&device.to_clause())[0];
    let client = fx.client();
    let content = data(3, 12 * BLOCK);
    let sink = MemorySink::default();
    let sql_server = async {
        let stripe = Device::new(&client, url, "sig=x");
        stripe.create_and_lease().await;
        let blocks: Vec<&[u8]> = content.chunks(BLOCK).collect();
        // Requests in flight finish in any order; block 2 is first sent
        // with wrong bytes and retried.
        assert_eq!(
            stripe.put_block(&block_id(2), b"garbage").await.status(),
            StatusCode::CREATED
        );
        for i in [1, 0, 3, 2, 5, 7, 4, 6, 9, 8, 11, 10] {
            assert_eq!(
                stripe.put_block(&block_id(i), blocks[i]).await.status(),
                StatusCode::CREATED
            );
        }
        let ids: Vec<String> = (0..12).map(block_id).collect();
        let listed = stripe.put_block_list(&ids).await;
        assert_eq!(listed.status(), StatusCode::CREATED);
        assert_eq!(stripe.release().await, StatusCode::OK);
    };
    let (records, ()) = tokio::join!(device.receive(&sink), sql_server);
    assert_eq!(records.unwrap()[0].raw_size, content.len() as u64);
    assert!(sink.stream("stripe-000").unwrap() == content);
}

#[tokio::test]
async fn a_block_list_in_an_order_outside_the_window_fails_the_stripe_by_name() {
    let fx = fixture(8);
    let mut device = fx.endpoint.open_backup(2).unwrap();
    let urls = urls(&device.to_clause());
    let client = fx.client();
    let content = data(4, 10 * BLOCK);
    let sink = MemorySink::default();
    let sql_server = async {
        let first = Device::new(&client, &urls[0], "");
        let second = Device::new(&client, &urls[1], "");
        assert_eq!(
            first.write(&content[..3 * BLOCK], &[0, 1, 2]).await,
            StatusCode::CREATED
        );
        second.create_and_lease().await;
        for (i, block) in content.chunks(BLOCK).enumerate() {
            let put = second.put_block(&block_id(i), block).await;
            assert_eq!(put.status(), StatusCode::CREATED);
        }
        // Two stripes share the 8 blocks: 4 each. Blocks 0 to 5 have left
        // the window in the order they came.
        let ids: Vec<String> = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9]
            .into_iter()
            .map(block_id)
            .collect();
        let listed = second.put_block_list(&ids).await;
        assert_eq!(listed.status(), StatusCode::BAD_REQUEST);
        assert_eq!(listed.headers()["x-ms-error-code"], "InvalidBlockList");
        let body = listed.text().await.unwrap();
        assert!(body.contains("<Code>InvalidBlockList</Code>"), "{body}");
        // The failed stripe takes nothing more.
        let after = second.put_block(&block_id(11), b"x").await;
        assert_eq!(after.status(), StatusCode::INTERNAL_SERVER_ERROR);
    };
    let (received, ()) = tokio::join!(device.receive(&sink), sql_server);
    let err = received.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("stripe-001"), "{text}");
    assert!(text.contains("reorder window of 4 blocks"), "{text}");
    assert!(err.hint_text().unwrap().contains("reorder_window"));
}

#[tokio::test]
async fn a_block_list_naming_a_block_never_put_fails_the_stripe() {
    let fx = fixture(8);
    let mut device = fx.endpoint.open_backup(1).unwrap();
    let url = &urls(&device.to_clause())[0];
    let client = fx.client();
    let sink = MemorySink::default();
    let sql_server = async {
        let stripe = Device::new(&client, url, "");
        stripe.create_and_lease().await;
        stripe.put_block(&block_id(0), b"zero").await;
        let listed = stripe.put_block_list(&[block_id(0), block_id(1)]).await;
        assert_eq!(listed.status(), StatusCode::BAD_REQUEST);
    };
    let (received, ()) = tokio::join!(device.receive(&sink), sql_server);
    let text = received.unwrap_err().to_string();
    assert!(
        text.contains("stripe-000") && text.contains("never put"),
        "{text}"
    );
    // Nothing partial was recorded as a stream.
    assert_eq!(sink.stream("stripe-000"), None);
}

#[tokio::test]
async fn writes_to_a_leased_blob_need_its_lease_id() {
    let fx = fixture(8);
    let mut device = fx.endpoint.open_backup(1).unwrap();
    let url = &urls(&device.to_clause())[0];
    let client = fx.client();
    let sink = MemorySink::default();
    let sql_server = async {
        let stripe = Device::new(&client, url, "");
        stripe.create_and_lease().await;
        let put = |lease: Option<&str>| {
            let mut request = client.put(format!(
                "{url}?comp=block&blockid={}",
                escaped(&block_id(0))
            ));
            if let Some(lease) = lease {
                request = request.header("x-ms-lease-id", lease);
            }
            request.body("zero").send()
        };
        let missing = put(None).await.unwrap();
        assert_eq!(missing.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(missing.headers()["x-ms-error-code"], "LeaseIdMissing");
        assert!(
            missing
                .text()
                .await
                .unwrap()
                .contains("<Code>LeaseIdMissing</Code>")
        );
        let other = uuid::Uuid::new_v4().to_string();
        let wrong = put(Some(&other)).await.unwrap();
        assert_eq!(wrong.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            wrong.headers()["x-ms-error-code"],
            "LeaseIdMismatchWithBlobOperation"
        );
        // A second lease is refused while the first is held.
        let again = client
            .put(format!("{url}?comp=lease"))
            .header("x-ms-lease-action", "acquire")
            .header("x-ms-proposed-lease-id", &other)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert_eq!(again.headers()["x-ms-error-code"], "LeaseAlreadyPresent");
        assert_eq!(
            put(Some(&stripe.lease)).await.unwrap().status(),
            StatusCode::CREATED
        );
        assert_eq!(stripe.release().await, StatusCode::OK);
        // Released: writes need no lease id any more.
        assert_eq!(put(None).await.unwrap().status(), StatusCode::CREATED);
        let list = client
            .put(format!("{url}?comp=blocklist"))
            .body(format!(
                "<BlockList><Latest>{}</Latest></BlockList>",
                block_id(0)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), StatusCode::CREATED);
    };
    let (received, ()) = tokio::join!(device.receive(&sink), sql_server);
    received.unwrap();
    assert_eq!(sink.stream("stripe-000").unwrap(), b"zero");
}

#[tokio::test]
async fn concurrent_jobs_share_one_listener_and_a_dropped_job_is_gone() {
    let fx = fixture(8);
    let mut full = fx.endpoint.open_backup(1).unwrap();
    let mut log = fx.endpoint.open_backup(1).unwrap();
    let full_url = &urls(&full.to_clause())[0];
    let log_url = &urls(&log.to_clause())[0];
    let prefix = |url: &str| url.rsplitn(3, '/').nth(2).unwrap().to_owned();
    assert_eq!(prefix(full_url), prefix(log_url));
    assert_ne!(full_url, log_url);
    let client = fx.client();
    let (full_sink, log_sink) = (MemorySink::default(), MemorySink::default());
    let (full_data, log_data) = (data(5, 9 * BLOCK + 7), data(6, 3 * BLOCK));
    let full_device = Device::new(&client, full_url, "");
    let log_device = Device::new(&client, log_url, "");
    // The log backup starts and ends while the full one is writing.
    let full_job = async {
        full_device.create_and_lease().await;
        let blocks: Vec<&[u8]> = full_data.chunks(BLOCK).collect();
        for (i, block) in blocks.iter().enumerate() {
            full_device.put_block(&block_id(i), block).await;
            tokio::task::yield_now().await;
        }
        let ids: Vec<String> = (0..blocks.len()).map(block_id).collect();
        assert_eq!(
            full_device.put_block_list(&ids).await.status(),
            StatusCode::CREATED
        );
    };
    let log_job = log_device.write(&log_data, &[0, 1, 2]);
    let (full_records, log_records, (), listed) = tokio::join!(
        full.receive(&full_sink),
        log.receive(&log_sink),
        full_job,
        log_job
    );
    assert_eq!(listed, StatusCode::CREATED);
    full_records.unwrap();
    log_records.unwrap();
    assert!(full_sink.stream("stripe-000").unwrap() == full_data);
    assert!(log_sink.stream("stripe-000").unwrap() == log_data);

    let addr = fx.addr();
    drop(log);
    let gone = client.head(log_url).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(gone.headers()["x-ms-error-code"], "BlobNotFound");
    // The listener lives on for the job that still holds it.
    assert_eq!(
        client.head(full_url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(fx.endpoint.local_addr(), Some(addr));
    drop(full);
    assert_eq!(fx.endpoint.local_addr(), None);
}

#[tokio::test]
async fn unknown_tokens_and_blobs_answer_blob_not_found() {
    let fx = fixture(8);
    let device = fx.endpoint.open_backup(1).unwrap();
    let url = &urls(&device.to_clause())[0];
    let client = fx.client();
    let port = fx.addr().port();
    let token_url = url.rsplit_once('/').unwrap().0;
    for wrong in [
        format!("https://{HOST}:{port}/strata/0123456789abcdef/stripe-000.bak"),
        format!("{token_url}/stripe-007.bak"),
        format!("https://{HOST}:{port}/"),
    ] {
        let response = client.put(&wrong).body("x").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{wrong}");
        assert_eq!(response.headers()["x-ms-error-code"], "BlobNotFound");
        let body = response.text().await.unwrap();
        assert!(body.contains("<Error><Code>BlobNotFound</Code>"), "{body}");
    }
    // The job's own blob does not exist before SQL Server creates it.
    assert_eq!(
        client.head(url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

fn restore_fixture() -> (Fixture, MemorySource, Vec<ServedBackup>) {
    let fx = fixture(8);
    let full = BackupId::generate(chrono::Utc::now());
    let log = BackupId::generate(chrono::Utc::now() + chrono::Duration::seconds(1));
    let mut source = MemorySource::default();
    let streams = [
        (&full, "stripe-000", data(7, 700_001)),
        (&full, "stripe-001", data(8, 300_000)),
        (&log, "stripe-000", data(9, 50_000)),
    ];
    let mut served = vec![
        ServedBackup {
            id: full.clone(),
            stripes: Vec::new(),
        },
        ServedBackup {
            id: log.clone(),
            stripes: Vec::new(),
        },
    ];
    for (backup, name, bytes) in streams {
        let index = usize::from(*backup == log);
        served[index]
            .stripes
            .push((name.to_owned(), bytes.len() as u64));
        source.insert(backup, name, bytes);
    }
    (fx, source, served)
}

#[tokio::test]
async fn a_restore_reads_sizes_and_ranges_served_from_the_vault() {
    let (fx, source, served) = restore_fixture();
    let (full, log) = (served[0].id.clone(), served[1].id.clone());
    let device = fx.endpoint.open_restore(served).unwrap();
    let full_urls = urls(&device.from_clause(0));
    let log_urls = urls(&device.from_clause(1));
    assert!(
        device
            .from_clause(0)
            .starts_with("FROM URL = N'https://blob.test:")
    );
    assert_eq!(full_urls.len(), 2);
    assert_eq!(log_urls.len(), 1);
    let client = fx.client();
    let stripe0 = source.get(&full, "stripe-000").unwrap().to_vec();
    let log0 = source.get(&log, "stripe-000").unwrap().to_vec();

    let sql_server = async {
        let head = client.head(&full_urls[0]).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-length"], "700001");
        assert_eq!(head.headers()["x-ms-blob-type"], "BlockBlob");

        // Sequential ranged reads, as SQL Server reads a device.
        let mut read = Vec::new();
        let step = 128 * 1024;
        while read.len() < stripe0.len() {
            let last = (read.len() + step).min(stripe0.len()) - 1;
            let got = client
                .get(format!("{}?sv=x&sig=y", full_urls[0]))
                .header("x-ms-range", format!("bytes={}-{last}", read.len()))
                .send()
                .await
                .unwrap();
            assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(
                got.headers()["content-range"],
                format!("bytes {}-{last}/{}", read.len(), stripe0.len()).as_str()
            );
            read.extend_from_slice(&got.bytes().await.unwrap());
        }
        assert!(read == stripe0);
        assert_eq!(source.reads(), ["stream stripe-000"]);

        // A read elsewhere is one ranged read of the vault.
        let got = client
            .get(&full_urls[0])
            .header("Range", "bytes=12345-13344")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
        assert!(got.bytes().await.unwrap() == stripe0[12345..13345]);
        assert_eq!(
            source.reads().last().unwrap(),
            "range stripe-000 12345 1000"
        );

        // Past the end.
        let past = client
            .get(&full_urls[0])
            .header("x-ms-range", "bytes=700001-800000")
            .send()
            .await
            .unwrap();
        assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(past.headers()["x-ms-error-code"], "InvalidRange");

        // The whole log backup's blob in one GET.
        let whole = client.get(&log_urls[0]).send().await.unwrap();
        assert_eq!(whole.status(), StatusCode::OK);
        assert!(whole.bytes().await.unwrap() == log0);

        // Restore blobs are read-only.
        let write = client.put(&log_urls[0]).body("x").send().await.unwrap();
        assert_eq!(write.status(), StatusCode::FORBIDDEN);
    };
    tokio::select! {
        served = device.serve(&source) => panic!("serve ended: {served:?}"),
        () = sql_server => {}
    }
}

#[tokio::test]
async fn a_failed_vault_read_answers_500_and_ends_serve_with_the_cause() {
    let (fx, mut source, served) = restore_fixture();
    source.broken = Some("stripe-001".to_owned());
    let device = fx.endpoint.open_restore(served).unwrap();
    let url = &urls(&device.from_clause(0))[1];
    let client = fx.client();
    let sql_server = async {
        let got = client
            .get(url)
            .header("x-ms-range", "bytes=0-1023")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(got.text().await.unwrap().contains("CRC-32C"));
    };
    let (served, ()) = tokio::join!(device.serve(&source), sql_server);
    let err = served.unwrap_err();
    assert!(err.to_string().contains("fails its CRC-32C"), "{err}");
    // A second serve takes over the same URLs.
    source.broken = None;
    let sql_server = async {
        let got = client
            .get(url)
            .header("x-ms-range", "bytes=0-9")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
    };
    tokio::select! {
        served = device.serve(&source) => panic!("serve ended: {served:?}"),
        () = sql_server => {}
    }
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_the_handshake() {
    let fx = fixture(8);
    let device = fx.endpoint.open_backup(1).unwrap();
    let url = &urls(&device.to_clause())[0];
    let stranger = tls::generate(HOST).unwrap();
    let refused = client_trusting(&stranger.ca_pem, fx.addr())
        .head(url)
        .send()
        .await;
    let err = refused.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // The endpoint's own CA is trusted.
    let head = fx.client().head(url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

/// The window is a budget per backup: more stripes hold fewer blocks each,
/// never fewer than four.
#[test]
fn the_reorder_window_is_shared_by_the_stripes() {
    use super::stripe_window;
    assert_eq!(stripe_window(8, 1), 8);
    assert_eq!(stripe_window(16, 2), 8);
    assert_eq!(stripe_window(8, 4), 4);
    assert_eq!(stripe_window(8, 64), 4);
    assert_eq!(stripe_window(1, 1), 4);
}

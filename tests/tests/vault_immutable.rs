//! Immutable vaults on S3 Object Lock (moto), and soft delete as an
//! operator uses it.
//!
//! The S3 API is also driven directly, with boto3 from the test
//! environment's virtualenv (`.work/venv`, which `scripts/setup.sh`
//! installs with moto): as an attacker holding the vault's credentials
//! would try to delete, and as an administrator shortens a governance lock
//! so that the test need not wait a day for it to end. moto enforces Object
//! Lock as S3 does (a versioned delete of a locked version is AccessDenied,
//! uploads need a checksum); what it cannot show is said in the README.
//!
//! Needs the S3 emulator (`STRATA_TEST_S3_URL`, `AWS_ENDPOINT`); skipped
//! without it unless `STRATA_REQUIRE_EMULATORS=1`.

use std::path::PathBuf;
use std::process::Command;

use chrono::{Duration, Utc};
use strata_core::catalog::retention::Retention;
use strata_core::lifecycle::Host;
use strata_core::plugin::DatabaseRef;
use strata_core::vault::{Vault, VaultConfig};
use strata_e2e::backends::{Backend, external_base_url};
use strata_e2e::cli::{RunOutput, Strata};
use strata_e2e::data::random_bytes;
use strata_e2e::fixture::TestDir;
use strata_stream::StreamEngine;

/// boto3 against the emulator, as the S3 API's own clients reach it.
fn s3_api(script: &str, args: &[&str]) -> (bool, String) {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.work/venv/bin/python");
    let prelude = "import boto3, datetime, json, os, sys\n\
        s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT'], region_name='us-east-1')\n";
    let output = Command::new(&python)
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup.sh)", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn create_bucket(name: &str, object_lock: bool) {
    let (ok, text) = s3_api(
        "s3.create_bucket(Bucket=sys.argv[1], ObjectLockEnabledForBucket=sys.argv[2] == 'yes')",
        &[name, if object_lock { "yes" } else { "no" }],
    );
    assert!(ok, "creating bucket {name}: {text}");
}

/// Tries to delete every version under `prefix` the way an attacker with
/// the credentials would; returns the error codes S3 answered.
fn delete_versions(bucket: &str, prefix: &str) -> Vec<String> {
    let (ok, text) = s3_api(
        "codes = []\n\
         for v in s3.list_object_versions(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Versions', []):\n\
         \x20   try:\n\
         \x20       s3.delete_object(Bucket=sys.argv[1], Key=v['Key'], VersionId=v['VersionId']); codes.append('Deleted')\n\
         \x20   except Exception as e:\n\
         \x20       codes.append(e.response['Error']['Code'])\n\
         print(json.dumps(codes))",
        &[bucket, prefix],
    );
    assert!(ok, "{text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Deletes the delete markers under `prefix` (their own versions), which
/// brings back what they hid.
fn remove_delete_markers(bucket: &str, prefix: &str) {
    let (ok, text) = s3_api(
        "for m in s3.list_object_versions(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('DeleteMarkers', []):\n\
         \x20   s3.delete_object(Bucket=sys.argv[1], Key=m['Key'], VersionId=m['VersionId'])",
        &[bucket, prefix],
    );
    assert!(ok, "{text}");
}

/// Every version and delete marker under `prefix`.
fn versions(bucket: &str, prefix: &str) -> (usize, usize) {
    let (ok, text) = s3_api(
        "r = s3.list_object_versions(Bucket=sys.argv[1], Prefix=sys.argv[2])\n\
         print(len(r.get('Versions', [])), len(r.get('DeleteMarkers', [])))",
        &[bucket, prefix],
    );
    assert!(ok, "{text}");
    let counts: Vec<usize> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (counts[0], counts[1])
}

/// What an administrator with s3:BypassGovernanceRetention does to end a
/// governance lock early: every version under `prefix` is retained only
/// one more second.
fn end_governance_lock(bucket: &str, prefix: &str) {
    let (ok, text) = s3_api(
        "until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)\n\
         for v in s3.list_object_versions(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Versions', []):\n\
         \x20   s3.put_object_retention(Bucket=sys.argv[1], Key=v['Key'], VersionId=v['VersionId'], BypassGovernanceRetention=True,\n\
         \x20       Retention={'Mode': 'GOVERNANCE', 'RetainUntilDate': until})",
        &[bucket, prefix],
    );
    assert!(ok, "{text}");
    std::thread::sleep(std::time::Duration::from_secs(2));
}

/// Ends the locks of the backups' objects (not of the vault's metadata or
/// lock probes, which must stay locked).
fn end_backup_locks(bucket: &str) {
    for prefix in ["vault/manifests/", "vault/data/", "vault/deleted/"] {
        end_governance_lock(bucket, prefix);
    }
}

fn strata(url: &str, dir: &TestDir) -> Strata {
    Strata::new()
        .arg("--vault")
        .arg(url)
        .arg("--catalog")
        .arg(dir.path("catalog.db"))
}

/// `strata vault gc --json` for data older than a second, judging locks
/// and purge dates at `now` (RFC 3339).
fn gc_at(url: &str, dir: &TestDir, now: &str) -> serde_json::Value {
    strata(url, dir)
        .args(["--json", "vault", "gc", "--older-than", "1s", "--now", now])
        .run()
        .success()
        .json()
}

fn backup(url: &str, dir: &TestDir, name: &str, data: &[u8]) -> String {
    strata(url, dir)
        .args(["--json", "backup", "stream", name])
        .stdin(data.to_vec())
        .run()
        .success()
        .json()["id"]
        .as_str()
        .expect("a backup id")
        .to_owned()
}

fn ids(out: RunOutput) -> Vec<String> {
    out.success()
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn object_lock_vault_refuses_every_delete_until_the_lock_ends() {
    let Some(_) = external_base_url(Backend::S3, "object_lock_vault") else {
        return;
    };
    let unique = format!("{:08x}", rand::random::<u32>());
    let locked = format!("strata-lock-{unique}");
    let plain = format!("strata-plain-{unique}");
    create_bucket(&locked, true);
    create_bucket(&plain, false);
    let dir = TestDir::new("immutable");

    // A bucket without Object Lock cannot hold an immutable vault, and
    // the refused init leaves no vault behind.
    let plain_url = format!("s3://{plain}/vault");
    strata(&plain_url, &dir)
        .args(["vault", "init", "--immutable", "1"])
        .run()
        .failure(3)
        .stderr_contains(&format!(
            "the S3 bucket {plain} does not have Object Lock enabled"
        ))
        .stderr_contains("put-object-lock-configuration");
    strata(&plain_url, &dir)
        .args(["vault", "info"])
        .run()
        .failure(8);

    // moto locks objects uploaded at once but not those uploaded in parts
    // (S3 locks both): the probe sees it, and init refuses, since large
    // segments would not be locked.
    strata(&format!("s3://{locked}/refused"), &dir)
        .args([
            "vault",
            "init",
            "--immutable",
            "1",
            "--lock-mode",
            "governance",
        ])
        .run()
        .failure(3)
        .stderr_contains("locks objects uploaded at once but not objects uploaded in parts");
    // So the rest runs with single-upload probes, and small backups (one
    // part, uploaded at once), which moto does lock.
    let url = format!("s3://{locked}/vault");
    strata(&url, &dir)
        .args([
            "vault",
            "init",
            "--immutable",
            "1",
            "--lock-mode",
            "governance",
            "--lock-probe",
            "simple",
        ])
        .run()
        .success();
    let info = strata(&url, &dir)
        .args(["--json", "vault", "info"])
        .run()
        .success()
        .json();
    let lock = &info["meta"]["immutability"];
    assert_eq!(lock["days"], 1, "{info}");
    assert_eq!(lock["mode"], "governance", "{info}");
    assert_eq!(lock["enforced_by"], "s3-object-lock", "{info}");
    assert_eq!(lock["probe"], "simple", "{info}");
    strata(&url, &dir)
        .args(["vault", "info"])
        .run()
        .success()
        .stdout_contains("segments uploaded in parts may not be");
    let (ok, text) = s3_api(
        "r = s3.get_object_lock_configuration(Bucket=sys.argv[1])['ObjectLockConfiguration']['Rule']['DefaultRetention']\n\
         print(json.dumps({'Mode': r['Mode'], 'Days': r['Days']}))",
        &[&locked],
    );
    assert!(ok, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap(),
        serde_json::json!({"Mode": "GOVERNANCE", "Days": 1}),
        "init set the bucket's default retention"
    );

    let old_data = random_bytes(300_000, 1);
    let new_data = random_bytes(300_000, 2);
    let old = backup(&url, &dir, "nightly", &old_data);
    let new = backup(&url, &dir, "nightly", &new_data);

    // With the vault's credentials, S3's own API cannot delete any version
    // of the committed backup: manifest or data.
    let manifest_prefix = format!("vault/manifests/stream/nightly/{old}");
    let data_prefix = format!("vault/data/stream/nightly/{old}/");
    for prefix in [&manifest_prefix, &data_prefix] {
        let codes = delete_versions(&locked, prefix);
        assert!(!codes.is_empty(), "{prefix} has versions");
        assert!(
            codes.iter().all(|c| c == "AccessDenied"),
            "{prefix}: every versioned delete is refused, got {codes:?}"
        );
    }

    // A plain delete through the S3 API "succeeds" with a delete marker:
    // the backup disappears from Strata, but its locked versions stay, and
    // gc must not take its data for an orphan (it would delete it for good
    // once the lock ends).
    let (ok, text) = s3_api(
        "s3.delete_object(Bucket=sys.argv[1], Key=sys.argv[2])",
        &[
            &locked,
            &format!("vault/manifests/stream/nightly/{new}.json"),
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(
        ids(strata(&url, &dir).args(["--json", "list"]).run()),
        std::slice::from_ref(&old)
    );
    let new_data_prefix = format!("vault/data/stream/nightly/{new}/");
    let stored = versions(&locked, &new_data_prefix).0;
    let in_two_days = (Utc::now() + Duration::days(2)).to_rfc3339();
    let gc = gc_at(&url, &dir, &in_two_days);
    assert_eq!(
        gc["hidden_by_delete_marker"][0]["backup"],
        new.as_str(),
        "{gc}"
    );
    assert_eq!(gc["deleted"], serde_json::json!([]), "{gc}");
    assert_eq!(versions(&locked, &new_data_prefix), (stored, 0));
    // Removing the marker (as the README says) brings the backup back.
    remove_delete_markers(
        &locked,
        &format!("vault/manifests/stream/nightly/{new}.json"),
    );
    assert_eq!(
        ids(strata(&url, &dir).args(["--json", "list"]).run()),
        [old.clone(), new.clone()]
    );
    // A segment hidden the same way: verify names the object and says a
    // delete marker may hide it; removing the marker heals the backup.
    let (ok, text) = s3_api(
        "key = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2])['Contents'][0]['Key']\n\
         s3.delete_object(Bucket=sys.argv[1], Key=key)",
        &[&locked, &new_data_prefix],
    );
    assert!(ok, "{text}");
    strata(&url, &dir)
        .args(["verify", &new])
        .run()
        .failure(6)
        .stdout_contains("the object is missing")
        .stdout_contains("delete marker");
    remove_delete_markers(&locked, &new_data_prefix);
    strata(&url, &dir).args(["verify", &new]).run().success();

    // A vault in a bucket that locks everything must be immutable too, and
    // a lock has S3's limits.
    strata(&format!("s3://{locked}/mutable"), &dir)
        .args(["vault", "init"])
        .run()
        .failure(3)
        .stderr_contains("locks every object for 1 days")
        .stderr_contains("--immutable 1 --lock-mode governance");
    strata(&format!("s3://{locked}/long"), &dir)
        .args(["vault", "init", "--immutable", "100000"])
        .run()
        .failure(2)
        .stderr_contains("--immutable");

    // The data a killed backup left (segments, no manifest) is locked like
    // everything else: gc reports it kept until the lock's end, exit 0.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = VaultConfig::from_url(&url);
    let orphan = "data/stream/nightly/20261201T000000.000Z-0badcafe/data.00000.00000.zst";
    runtime.block_on(async {
        let vault = Vault::open(&config).await.expect("open");
        vault
            .put_create(orphan, b"left by a killed backup".to_vec())
            .await
            .unwrap();
    });
    // Older than gc's grace period.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let gc = strata(&url, &dir)
        .args(["--json", "vault", "gc", "--older-than", "1s"])
        .run()
        .success()
        .json();
    assert_eq!(gc["deleted"], serde_json::json!([]), "{gc}");
    assert_eq!(
        gc["locked"][0]["prefix"], "data/stream/nightly/20261201T000000.000Z-0badcafe",
        "{gc}"
    );
    assert!(gc["locked"][0]["locked_until"].is_string(), "{gc}");
    assert_eq!(versions(&locked, &format!("vault/{orphan}")), (1, 0));

    // Strata itself refuses, naming the lock's end, and sends no delete.
    strata(&url, &dir)
        .args(["delete", &old])
        .run()
        .failure(9)
        .stderr_contains(&format!(
            "backup {old} is locked by the vault's immutability until"
        ));

    // Retention expires the old backup, but the lock keeps it: reported as
    // expected, not as a failure, and nothing is touched.
    let engine = StreamEngine::new("nightly").unwrap();
    let database = DatabaseRef {
        instance: "nightly".to_owned(),
        database: None,
    };
    let keep_one = Retention {
        daily: 1,
        ..Retention::default()
    };
    let expire = |now: chrono::DateTime<Utc>| {
        runtime.block_on(async {
            let host = Host::new(Vault::open(&config).await.expect("open"));
            host.expire(
                &engine,
                &database,
                &keep_one,
                now,
                chrono_tz::Tz::UTC,
                false,
            )
            .await
            .expect("expire")
        })
    };
    let report = expire(Utc::now());
    assert_eq!(report.plan.expire.len(), 1, "{:?}", report.plan);
    assert_eq!(report.deleted_backups, 0);
    assert_eq!(report.locked.len(), 1);
    let (id, until) = &report.locked[0];
    assert_eq!(id.as_str(), old);
    let until = until.expect("the lock's end is known");
    assert!(
        until > Utc::now() + Duration::hours(23) && until < Utc::now() + Duration::hours(25),
        "locked for the vault's day: {until}"
    );
    assert_eq!(versions(&locked, &manifest_prefix), (1, 0));

    // A vault whose bucket no longer locks new objects is refused at open,
    // before anything relies on the lock: here its metadata copied to a
    // bucket without Object Lock (a migration gone wrong; moto refuses to
    // change the default retention of a non-empty bucket, which S3 allows).
    let (ok, text) = s3_api(
        "s3.copy_object(Bucket=sys.argv[2], Key='vault/strata-vault.json', CopySource={'Bucket': sys.argv[1], 'Key': 'vault/strata-vault.json'})",
        &[&locked, &plain],
    );
    assert!(ok, "{text}");
    strata(&plain_url, &dir)
        .args(["vault", "info"])
        .run()
        .failure(3)
        .stderr_contains("its bucket's Object Lock default retention is now off")
        .stderr_contains("put-object-lock-configuration");

    // After the lock's end (an administrator ends it early; the vault's
    // clock is moved past the day), the same pass deletes the backup: the
    // manifest's version is gone, with no delete marker left behind.
    end_backup_locks(&locked);
    let report = expire(Utc::now() + Duration::days(2));
    assert_eq!(report.deleted_backups, 1, "{report:?}");
    assert!(report.locked.is_empty());
    assert_eq!(versions(&locked, &manifest_prefix), (0, 0));
    assert_eq!(
        ids(strata(&url, &dir).args(["--json", "list"]).run()),
        std::slice::from_ref(&new)
    );
    assert_eq!(
        ids(strata(&url, &dir)
            .args(["--json", "list", "--deleted"])
            .run()),
        std::slice::from_ref(&old),
        "soft-deleted: its data stays"
    );

    // Purged by gc after the soft delete period; the segments' versions go.
    end_backup_locks(&locked);
    let later = (Utc::now() + Duration::days(20)).to_rfc3339();
    let gc = gc_at(&url, &dir, &later);
    assert_eq!(versions(&locked, &data_prefix), (0, 0));
    assert_eq!(
        gc["deleted"],
        serde_json::json!(["data/stream/nightly/20261201T000000.000Z-0badcafe"]),
        "the orphan goes once its lock has ended: {gc}"
    );
    assert_eq!(versions(&locked, &format!("vault/{orphan}")), (0, 0));
    assert!(
        ids(strata(&url, &dir)
            .args(["--json", "list", "--deleted"])
            .run())
        .is_empty()
    );
    // The newer backup is untouched and restores.
    let out = dir.path("new.bin");
    strata(&url, &dir)
        .args(["restore", "stream", "nightly", "-o"])
        .arg(&out)
        .run()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), new_data);
}

/// Azurite has no immutability policies: like an Azure container without
/// one, it lets the probe be deleted, so the vault is refused, with the
/// command that sets a policy; nothing is created.
#[test]
fn azure_container_without_a_retention_policy_cannot_hold_an_immutable_vault() {
    let Some(base) = external_base_url(Backend::Azure, "azure_immutable") else {
        return;
    };
    let url = format!("{base}/immutable-{:08x}", rand::random::<u32>());
    let dir = TestDir::new("immutable-azure");
    strata(&url, &dir)
        .args(["vault", "init", "--immutable", "7"])
        .run()
        .failure(3)
        .stderr_contains("does not refuse deletes")
        .stderr_contains("az storage container immutability-policy create")
        .stderr_contains("--period 7");
    strata(&url, &dir).args(["vault", "info"]).run().failure(8);
    // A local directory cannot lock anything.
    let local = dir.file_url("vault");
    std::fs::create_dir_all(dir.path("vault")).unwrap();
    strata(&local, &dir)
        .args(["vault", "init", "--immutable", "7"])
        .run()
        .failure(3)
        .stderr_contains("only an object store locks objects");
}

/// A backup killed in the middle of a segment leaves an S3 multipart upload
/// that no object listing shows, but that S3 keeps (and bills) until it is
/// aborted: `vault gc` finds it once older than the grace period and aborts
/// it; a younger one is left alone.
#[test]
fn gc_aborts_multipart_uploads_that_killed_backups_left_on_s3() {
    let Some(base) = external_base_url(Backend::S3, "gc_multipart") else {
        return;
    };
    let prefix = format!("gc-uploads-{:08x}", rand::random::<u32>());
    let url = format!("{base}/{prefix}");
    let bucket = base.trim_start_matches("s3://").to_owned();
    let dir = TestDir::new("gc-uploads");
    strata(&url, &dir).args(["vault", "init"]).run().success();
    // What a killed writer leaves: an upload begun, one part sent.
    let key =
        format!("{prefix}/data/stream/nightly/20261201T000000.000Z-0badcafe/data.00000.00000.zst");
    let (ok, text) = s3_api(
        "u = s3.create_multipart_upload(Bucket=sys.argv[1], Key=sys.argv[2])\n\
         s3.upload_part(Bucket=sys.argv[1], Key=sys.argv[2], UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1024)",
        &[&bucket, &key],
    );
    assert!(ok, "{text}");
    let uploads = || {
        let (ok, text) = s3_api(
            "print(len(s3.list_multipart_uploads(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Uploads', [])))",
            &[&bucket, &format!("{prefix}/")],
        );
        assert!(ok, "{text}");
        text.trim().parse::<usize>().unwrap()
    };
    assert_eq!(uploads(), 1);

    // Younger than the grace period: a backup may still be writing it.
    let gc = strata(&url, &dir)
        .args(["--json", "vault", "gc", "--older-than", "1h"])
        .run()
        .success()
        .json();
    assert_eq!(gc["unfinished_uploads"], serde_json::json!([]), "{gc}");
    assert_eq!(uploads(), 1);

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dry = strata(&url, &dir)
        .args(["--json", "vault", "gc", "--older-than", "1s", "--dry-run"])
        .run()
        .success()
        .json();
    assert_eq!(
        dry["unfinished_uploads"][0]["path"],
        "data/stream/nightly/20261201T000000.000Z-0badcafe/data.00000.00000.zst",
        "{dry}"
    );
    assert!(
        dry["unfinished_uploads"][0]["upload_id"].is_string(),
        "{dry}"
    );
    assert_eq!(uploads(), 1, "a dry run aborts nothing");

    let gc = strata(&url, &dir)
        .args(["--json", "vault", "gc", "--older-than", "1s"])
        .run()
        .success()
        .json();
    assert_eq!(
        gc["unfinished_uploads_deleted"],
        serde_json::json!([
            "data/stream/nightly/20261201T000000.000Z-0badcafe/data.00000.00000.zst"
        ]),
        "{gc}"
    );
    assert_eq!(uploads(), 0, "the upload is aborted, its parts gone");
}

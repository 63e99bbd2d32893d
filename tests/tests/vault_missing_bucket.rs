//! Pointing Strata at a bucket or container that does not exist: the
//! operator is told which one, and how to fix it, on every cloud backend.

use strata_core::ErrorKind;
use strata_core::vault::{Vault, VaultConfig};
use strata_e2e::backends::{Backend, external_base_url};

async fn missing_bucket_is_named(backend: Backend, scheme: &str) {
    // The same endpoint and credentials as the working bucket.
    if external_base_url(backend, "missing_bucket_is_named").is_none() {
        return;
    }
    let bucket = format!("strata-missing-{:08x}", rand::random::<u32>());
    let config = VaultConfig::from_url(format!("{scheme}://{bucket}/vault"));

    let err = Vault::init(&config, None)
        .await
        .expect_err("init into a missing bucket must fail");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.to_string().contains(&bucket), "names the bucket: {err}");
    assert!(
        err.to_string().contains("does not exist"),
        "says what is wrong: {err}"
    );
    assert!(
        err.hint_text().is_some_and(|h| h.contains("create it")),
        "says what to do: {err:?}"
    );

    let err = Vault::open(&config)
        .await
        .expect_err("there is no vault in a missing bucket");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
}

#[tokio::test]
async fn azure_missing_container_is_named() {
    missing_bucket_is_named(Backend::Azure, "az").await;
}

#[tokio::test]
async fn s3_missing_bucket_is_named() {
    missing_bucket_is_named(Backend::S3, "s3").await;
}

/// A plain-http endpoint (an emulator, a private S3) without permission for
/// http: the HTTP client refuses before connecting and says only "builder
/// error"; the operator is told which setting allows it, and that a retry
/// will not help.
#[tokio::test]
async fn a_plain_http_endpoint_without_allow_http_names_the_setting() {
    let mut config = VaultConfig::from_url("s3://bucket/vault");
    for (key, value) in [
        ("aws_endpoint", "http://127.0.0.1:9"),
        ("aws_allow_http", "false"),
        ("aws_access_key_id", "x"),
        ("aws_secret_access_key", "y"),
        ("aws_region", "us-east-1"),
    ] {
        config.options.insert(key.to_owned(), value.to_owned());
    }
    let err = Vault::open(&config).await.expect_err("http is not allowed");
    assert_eq!(err.kind(), ErrorKind::Storage, "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        err.hint_text()
            .is_some_and(|h| h.contains("AWS_ALLOW_HTTP=true")),
        "names the setting: {err:?}"
    );
}

#[tokio::test]
async fn gcs_missing_bucket_is_named() {
    missing_bucket_is_named(Backend::Gcs, "gs").await;
}

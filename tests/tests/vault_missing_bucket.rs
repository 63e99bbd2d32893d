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

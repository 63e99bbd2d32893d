//! The service's Prometheus metrics, served as text on the loopback address
//! of `[service] metrics` (`metrics` with `metrics-exporter-prometheus`).
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `strata_backup_last_success_timestamp_seconds` | gauge | engine, instance, database, kind | when the newest successful backup of that kind ended (Unix seconds, UTC) |
//! | `strata_backup_duration_seconds` | histogram | engine, instance, database, kind | how long successful backups took |
//! | `strata_backup_raw_bytes_total` | counter | engine, instance, database, kind | bytes read from the engine |
//! | `strata_backup_stored_bytes_total` | counter | engine, instance, database, kind | bytes written to the vault |
//! | `strata_job_failures_total` | counter | engine, instance, database, kind | jobs that failed (after their retries) |
//! | `strata_rpo_seconds` | gauge | engine, instance, database | now minus the newest restorable point, at the last pass |
//! | `strata_rpo_target_seconds` | gauge | engine, instance, database | the policy's RPO target |
//! | `strata_jobs_queued` | gauge | | jobs due that have not started |
//! | `strata_jobs_running` | gauge | | jobs running |
//! | `strata_expired_backups_total` | counter | engine, instance, database | backups retention deleted |
//! | `strata_expired_bytes_total` | counter | engine, instance, database | bytes retention freed (backups and archived log) |
//!
//! `database` is empty for engines protected as a whole (PostgreSQL).
//! `docs/alerts.yml` has alert rules on them.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use strata_core::catalog::index::JobRecord;
use strata_core::{Error, Result};

/// Starts serving metrics on `address`.
pub fn serve(address: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets(&[
            1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
        ])
        .and_then(|b| b.install())
        .map_err(|e| {
            Error::config(format!("metrics cannot be served on {address}: {e}"))
                .hint("pick a free loopback port for [service] metrics")
        })?;
    describe_gauge!(
        "strata_backup_last_success_timestamp_seconds",
        "When the newest successful backup of each kind ended (Unix seconds)"
    );
    describe_histogram!(
        "strata_backup_duration_seconds",
        "How long successful backups took"
    );
    describe_counter!(
        "strata_backup_raw_bytes_total",
        "Bytes read from the engine"
    );
    describe_counter!(
        "strata_backup_stored_bytes_total",
        "Bytes written to the vault"
    );
    describe_counter!(
        "strata_job_failures_total",
        "Jobs that failed after their retries"
    );
    describe_gauge!(
        "strata_rpo_seconds",
        "Seconds from the newest restorable point to the last pass"
    );
    describe_gauge!("strata_rpo_target_seconds", "The policy's RPO target");
    describe_gauge!("strata_jobs_queued", "Jobs due that have not started");
    describe_gauge!("strata_jobs_running", "Jobs running");
    describe_counter!("strata_expired_backups_total", "Backups retention deleted");
    describe_counter!(
        "strata_expired_bytes_total",
        "Bytes retention freed (backups and archived log)"
    );
    Ok(())
}

fn labels(job: &JobRecord) -> [(&'static str, String); 4] {
    [
        ("engine", job.engine.clone()),
        ("instance", job.instance.clone()),
        ("database", job.database.clone().unwrap_or_default()),
        ("kind", job.kind.clone()),
    ]
}

/// Records a finished job.
pub fn job_finished(job: &JobRecord) {
    let labels = labels(job);
    if job.result != "succeeded" {
        counter!("strata_job_failures_total", &labels).increment(1);
        return;
    }
    if job.kind == "expire" {
        let labels = &labels[..3];
        counter!("strata_expired_bytes_total", labels).increment(job.stored_bytes.unwrap_or(0));
        return;
    }
    let ended = job.ended_at.unwrap_or(job.started_at);
    gauge!("strata_backup_last_success_timestamp_seconds", &labels)
        .set(ended.timestamp_millis() as f64 / 1000.0);
    histogram!("strata_backup_duration_seconds", &labels)
        .record((ended - job.started_at).num_milliseconds().max(0) as f64 / 1000.0);
    counter!("strata_backup_raw_bytes_total", &labels).increment(job.raw_bytes.unwrap_or(0));
    counter!("strata_backup_stored_bytes_total", &labels).increment(job.stored_bytes.unwrap_or(0));
}

/// Records the backups retention deleted for one database.
pub fn expired(engine: &str, instance: &str, database: Option<&str>, backups: usize) {
    counter!(
        "strata_expired_backups_total",
        "engine" => engine.to_owned(),
        "instance" => instance.to_owned(),
        "database" => database.unwrap_or_default().to_owned()
    )
    .increment(backups as u64);
}

/// Records one database's RPO and target at the last pass.
pub fn rpo(
    engine: &str,
    instance: &str,
    database: Option<&str>,
    seconds: Option<i64>,
    target: Option<u64>,
) {
    let labels = [
        ("engine", engine.to_owned()),
        ("instance", instance.to_owned()),
        ("database", database.unwrap_or_default().to_owned()),
    ];
    if let Some(seconds) = seconds {
        gauge!("strata_rpo_seconds", &labels).set(seconds as f64);
    }
    if let Some(target) = target {
        gauge!("strata_rpo_target_seconds", &labels).set(target as f64);
    }
}

/// Sets the number of jobs due that have not started.
pub fn queued(jobs: usize) {
    gauge!("strata_jobs_queued").set(jobs as f64);
}

/// A queued job started.
pub fn job_started() {
    gauge!("strata_jobs_queued").decrement(1.0);
    gauge!("strata_jobs_running").increment(1.0);
}

/// A running job ended.
pub fn job_ended() {
    gauge!("strata_jobs_running").decrement(1.0);
}

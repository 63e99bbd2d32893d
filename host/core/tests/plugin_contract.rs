//! The engine contract, held by a tiny engine written only against the
//! public traits: it backs up, lists, plans and restores through the same
//! lifecycle the CLI, `hdbbackint` and the service use, and a plugin that
//! fails or is cancelled mid-backup leaves nothing visible in the vault.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use strata_core::catalog::manifest::{BackupKind, Manifest, Position};
use strata_core::catalog::planner::RestoreTarget;
use strata_core::lifecycle::{BackupResult, Host};
use strata_core::plugin::{
    ArchiveStore, BackupOutcome, BackupRequest, BackupSink, Capabilities, DatabaseRef,
    EnginePlugin, ExpiredLog, KindDecision, RestoreOutcome, RestoreRequest, RestoreSource,
};
use strata_core::vault::{Vault, VaultConfig};
use strata_core::{Error, ErrorKind, Result};
use tokio_util::sync::CancellationToken;

/// A toy database: rows with the time they were written. Its log position
/// is the number of rows; a full backup holds every row, a log backup the
/// rows written since the previous backup.
#[derive(Default)]
struct Toy {
    rows: Mutex<Vec<(DateTime<Utc>, String)>>,
    backed_up: Mutex<usize>,
    restored: Mutex<Vec<String>>,
    /// How many times the host asked the toy to restore.
    restore_calls: AtomicUsize,
    /// Fired once a backup's stream is written (the upload is underway).
    stream_written: tokio::sync::Notify,
    /// Fail after writing the first stream (a crash mid-backup).
    fail_midway: bool,
    /// Never finish writing (to be cancelled).
    hang: bool,
    /// Also take differentials and incrementals.
    layered: bool,
    /// The backups each expiry asked log to be kept for.
    kept_for_log: Mutex<Vec<Vec<String>>>,
    /// Says [`Capabilities::settles_kind`].
    settles: bool,
    /// How the toy settles a requested kind, given the committed backups
    /// (its `settle_kind` answers this whether or not it says it settles).
    settle_rule: Option<fn(BackupKind, &[Manifest]) -> KindDecision>,
    /// The kinds and committed backup ids each `settle_kind` call was given.
    settle_calls: Mutex<Vec<(BackupKind, Vec<String>)>>,
    /// The kind each `backup` call was asked for.
    backup_kinds: Mutex<Vec<BackupKind>>,
}

impl Toy {
    fn insert(&self, row: &str, at: DateTime<Utc>) {
        self.rows.lock().unwrap().push((at, row.to_owned()));
    }
}

fn encode(rows: &[(DateTime<Utc>, String)]) -> Vec<u8> {
    rows.iter()
        .map(|(t, r)| format!("{}\t{r}\n", t.to_rfc3339()))
        .collect::<String>()
        .into_bytes()
}

#[async_trait]
impl EnginePlugin for Toy {
    fn engine(&self) -> &'static str {
        "toy"
    }

    async fn expired_log(
        &self,
        _database: &DatabaseRef,
        kept: &[Manifest],
        _anchor: Option<&Manifest>,
        _archive: Arc<dyn ArchiveStore>,
    ) -> strata_core::Result<Vec<ExpiredLog>> {
        let ids = kept.iter().map(|m| m.id.to_string()).collect();
        self.kept_for_log.lock().unwrap().push(ids);
        Ok(Vec::new())
    }

    fn instance(&self) -> &str {
        "one"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: if self.layered {
                vec![BackupKind::Full, BackupKind::Diff, BackupKind::Incr]
            } else {
                vec![BackupKind::Full, BackupKind::Log]
            },
            point_in_time: true,
            alternate_target: true,
            settles_kind: self.settles,
            ..Capabilities::default()
        }
    }

    async fn settle_kind(
        &self,
        _database: &DatabaseRef,
        kind: BackupKind,
        _options: &serde_json::Value,
        backups: &[Manifest],
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<KindDecision> {
        let ids = backups.iter().map(|m| m.id.to_string()).collect();
        self.settle_calls.lock().unwrap().push((kind, ids));
        Ok(match self.settle_rule {
            Some(rule) => rule(kind, backups),
            None => KindDecision::keep(kind),
        })
    }

    async fn backup(
        &self,
        request: BackupRequest,
        sink: &dyn BackupSink,
        _archive: Arc<dyn ArchiveStore>,
    ) -> Result<BackupOutcome> {
        self.backup_kinds.lock().unwrap().push(request.kind);
        let rows = self.rows.lock().unwrap().clone();
        let from = match request.kind {
            BackupKind::Full => 0,
            _ => *self.backed_up.lock().unwrap(),
        };
        let body = encode(&rows[from..]);
        sink.write_stream("rows", Box::new(std::io::Cursor::new(body)))
            .await?;
        self.stream_written.notify_one();
        if self.fail_midway {
            return Err(Error::engine("the toy engine crashed"));
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        *self.backed_up.lock().unwrap() = rows.len();
        Ok(BackupOutcome {
            fork: "1".into(),
            start: Some(Position(from as u128)),
            end: Some(Position(rows.len() as u128)),
            consistent_at: rows.last().map(|(t, _)| *t),
            ..BackupOutcome::default()
        })
    }

    async fn restore(
        &self,
        request: RestoreRequest,
        source: &dyn RestoreSource,
    ) -> Result<RestoreOutcome> {
        self.restore_calls.fetch_add(1, Ordering::SeqCst);
        let until = match request.target {
            RestoreTarget::Time(t) => Some(t),
            _ => None,
        };
        let mut restored = Vec::new();
        for backup in &request.backups {
            let mut bytes = Vec::new();
            source.read_stream(&backup.id, "rows", &mut bytes).await?;
            for line in String::from_utf8(bytes).unwrap().lines() {
                let (t, row) = line.split_once('\t').unwrap();
                let t: DateTime<Utc> = t.parse().unwrap();
                if until.is_none_or(|u| t <= u) {
                    restored.push(row.to_owned());
                }
            }
        }
        *self.restored.lock().unwrap() = restored.clone();
        Ok(RestoreOutcome {
            summary: format!("{} rows", restored.len()),
            ..RestoreOutcome::default()
        })
    }
}

async fn vault(name: &str) -> Vault {
    Vault::init(&VaultConfig::from_url(format!("memory://{name}")), None)
        .await
        .unwrap()
}

fn whole() -> DatabaseRef {
    DatabaseRef::instance("one")
}

async fn backup(host: &Host, toy: &Toy, kind: BackupKind) -> Result<BackupResult> {
    host.backup(
        toy,
        BackupRequest::new(whole(), kind),
        None,
        CancellationToken::new(),
    )
    .await
}

/// A full and two log backups are listed, make one window, and restore to
/// a time between them and to the latest point; a time before the full is
/// refused by the host, naming the earliest restorable time, without the
/// plugin being asked.
#[tokio::test]
async fn a_toy_engine_backs_up_lists_plans_and_restores_through_the_lifecycle() {
    let host = Host::new(vault("contract-roundtrip").await);
    let toy = Toy::default();
    let t0 = Utc::now() - Duration::minutes(10);
    toy.insert("a", t0);
    toy.insert("b", t0 + Duration::minutes(1));
    let full = backup(&host, &toy, BackupKind::Full).await.unwrap();
    assert!(matches!(full, BackupResult::Committed(_)));
    toy.insert("c", t0 + Duration::minutes(2));
    backup(&host, &toy, BackupKind::Log).await.unwrap();
    toy.insert("d", t0 + Duration::minutes(4));
    backup(&host, &toy, BackupKind::Log).await.unwrap();

    // Listed, oldest first, with the kinds the plugin took.
    let listed = host.backups(&toy, &whole()).await.unwrap();
    let kinds: Vec<BackupKind> = listed.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [BackupKind::Full, BackupKind::Log, BackupKind::Log]);

    // One window, from the full's consistency to the last log's.
    let timeline = host.timeline(&toy, &whole()).await.unwrap();
    assert_eq!(timeline.windows.len(), 1, "{timeline:?}");
    assert_eq!(timeline.windows[0].from_time, t0 + Duration::minutes(1));
    assert_eq!(timeline.windows[0].to_time, t0 + Duration::minutes(4));

    // A time between c and d: the full and the first log, stopped at the time.
    let at = t0 + Duration::minutes(3);
    host.restore(
        &toy,
        whole(),
        RestoreTarget::Time(at),
        serde_json::Value::Null,
        None,
    )
    .await
    .unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b", "c"]);

    host.restore(
        &toy,
        whole(),
        RestoreTarget::Latest,
        serde_json::Value::Null,
        None,
    )
    .await
    .unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b", "c", "d"]);

    // Before the full: refused before the plugin is asked, naming the window.
    let asked_before = toy.restore_calls.load(Ordering::SeqCst);
    assert_eq!(asked_before, 2, "one call per restore so far");
    let err = host
        .restore(
            &toy,
            whole(),
            RestoreTarget::Time(t0 - Duration::minutes(1)),
            serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("earliest restorable time"),
        "{err}"
    );
    assert_eq!(
        toy.restore_calls.load(Ordering::SeqCst),
        asked_before,
        "the toy was asked to restore a time before its first full"
    );
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b", "c", "d"]);
}

/// A plugin that crashes after writing its stream, and one cancelled while
/// its stream is in the vault, both fail (engine error, cancelled) and leave
/// no manifest and no part behind; a kind the engine does not take is
/// refused before anything is written.
#[tokio::test]
async fn a_plugin_that_fails_or_is_cancelled_mid_backup_leaves_nothing() {
    let vault = vault("contract-failures").await;
    let host = Host::new(vault.clone());
    let good = Toy::default();
    good.insert("a", Utc::now());
    backup(&host, &good, BackupKind::Full).await.unwrap();
    let data_before = vault.list_keys("data").await.unwrap();

    let crashing = Toy {
        fail_midway: true,
        ..Toy::default()
    };
    crashing.insert("x", Utc::now());
    let err = backup(&host, &crashing, BackupKind::Full)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Engine);
    assert!(err.to_string().contains("nothing was committed"), "{err}");

    let hanging = Toy {
        hang: true,
        ..Toy::default()
    };
    hanging.insert("y", Utc::now());
    let cancel = CancellationToken::new();
    // Cancelled once the toy's stream is written: its parts are in the
    // vault, so the cancellation has something to clean up.
    let cancel_once_uploaded = async {
        hanging.stream_written.notified().await;
        let written = vault.list_keys("data").await.unwrap();
        assert!(
            written.len() > data_before.len(),
            "the hanging backup wrote no part before it was cancelled: {written:?}"
        );
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(
        host.backup(
            &hanging,
            BackupRequest::new(whole(), BackupKind::Full),
            None,
            cancel.clone(),
        ),
        cancel_once_uploaded,
    );
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(err.to_string().contains("nothing was committed"), "{err}");

    // Only the good backup is visible, and no stream of the others is left.
    assert_eq!(host.backups(&good, &whole()).await.unwrap().len(), 1);
    assert_eq!(vault.list_keys("data").await.unwrap(), data_before);

    // A kind the engine does not take is refused before anything is
    // written, though the engine has a new row to back up.
    good.insert("b", Utc::now());
    let err = backup(&host, &good, BackupKind::Diff).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.hint_text().unwrap().contains("full, log"), "{err:?}");
    assert_eq!(vault.list_keys("data").await.unwrap(), data_before);
    assert_eq!(host.backups(&good, &whole()).await.unwrap().len(), 1);
}

fn base_of(result: BackupResult) -> Option<String> {
    match result {
        BackupResult::Committed(m) => m.base.map(|b| b.to_string()),
        BackupResult::Delegated(_) => panic!("the toy engine delivers nothing elsewhere"),
    }
}

fn id_of(result: &BackupResult) -> String {
    match result {
        BackupResult::Committed(m) => m.id.to_string(),
        BackupResult::Delegated(_) => panic!("the toy engine delivers nothing elsewhere"),
    }
}

/// A differential builds on the newest full, an incremental on the newest
/// backup whose chain of bases still reaches a full: once a backup in the
/// middle of a chain is gone, the backups after it are never a base (an
/// incremental on them could not be restored).
#[tokio::test]
async fn a_new_backup_builds_only_on_a_chain_that_reaches_a_full() {
    let vault = vault("contract-bases").await;
    let host = Host::new(vault.clone());
    let toy = Toy {
        layered: true,
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    let full = id_of(&backup(&host, &toy, BackupKind::Full).await.unwrap());
    let diff = backup(&host, &toy, BackupKind::Diff).await.unwrap();
    let diff_id = id_of(&diff);
    assert_eq!(
        base_of(diff),
        Some(full.clone()),
        "a differential builds on the full"
    );
    let first = backup(&host, &toy, BackupKind::Incr).await.unwrap();
    let first_id = id_of(&first);
    assert_eq!(base_of(first), Some(diff_id.clone()));
    let second = backup(&host, &toy, BackupKind::Incr).await.unwrap();
    assert_eq!(base_of(second), Some(first_id.clone()));
    // The first incremental is deleted (by hand, or a retention bug): the
    // newest backup, the second incremental, is on a broken chain; the
    // newest that still reaches the full is the differential.
    let listed = host.backups(&toy, &whole()).await.unwrap();
    let gone = listed.iter().find(|m| m.id.as_str() == first_id).unwrap();
    vault.delete_backup(gone, "test").await.unwrap();
    let next = backup(&host, &toy, BackupKind::Incr).await.unwrap();
    let next_base = base_of(next).unwrap();
    assert_eq!(next_base, diff_id, "never on a broken chain");
}

/// An expiry pass over the toy's whole instance, in UTC.
async fn expire(
    host: &Host,
    toy: &Toy,
    policy: &strata_core::catalog::retention::Retention,
    now: DateTime<Utc>,
    dry_run: bool,
) -> strata_core::lifecycle::ExpiryReport {
    host.expire(toy, &whole(), policy, now, chrono_tz::Tz::UTC, dry_run)
        .await
        .unwrap()
}

/// The backups whose data an expiry pass purged.
fn purged(report: &strata_core::lifecycle::ExpiryReport) -> Vec<&str> {
    report.purge.purged.iter().map(|i| i.as_str()).collect()
}

/// Retention through the lifecycle: an expiry killed after it removed a
/// manifest but before the segments leaves a tombstone, and the next pass
/// finishes it; every kept backup still restores.
#[tokio::test]
async fn an_interrupted_expiry_is_finished_by_the_next_pass_and_keeps_what_it_keeps() {
    use strata_core::catalog::retention::Retention;
    let vault = vault("contract-expiry").await;
    let host = Host::new(vault.clone());
    let toy = Toy {
        layered: true,
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    let old = id_of(&backup(&host, &toy, BackupKind::Full).await.unwrap());
    toy.insert("b", Utc::now());
    let old_diff = id_of(&backup(&host, &toy, BackupKind::Diff).await.unwrap());
    toy.insert("c", Utc::now());
    let full = id_of(&backup(&host, &toy, BackupKind::Full).await.unwrap());
    toy.insert("d", Utc::now());
    let diff = id_of(&backup(&host, &toy, BackupKind::Diff).await.unwrap());
    // Keep one day's point: the newest differential, and its full.
    let policy = Retention {
        daily: 1,
        ..Retention::default()
    };
    let dry = expire(&host, &toy, &policy, Utc::now(), true).await;
    let expired: Vec<&str> = dry.plan.expire.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(expired, [old_diff.as_str(), old.as_str()], "newest first");
    assert_eq!(
        host.backups(&toy, &whole()).await.unwrap().len(),
        4,
        "a dry run deletes nothing"
    );

    // A crash in the middle of deleting the old differential: its tombstone
    // is written and its manifest gone, its segments still there.
    let listed = host.backups(&toy, &whole()).await.unwrap();
    let victim = listed
        .iter()
        .find(|m| m.id.as_str() == old_diff)
        .unwrap()
        .clone();
    let tombstone = format!("deleted/toy/one/{old_diff}.json");
    vault
        .put_create(
            &tombstone,
            serde_json::to_vec(&serde_json::json!({
                "deleted_at": Utc::now(), "reason": "retention", "manifest": victim,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let manifest_key = format!("manifests/toy/one/{old_diff}.json");
    object_store::ObjectStoreExt::delete(vault.store().as_ref(), &vault.path(&manifest_key))
        .await
        .unwrap();
    let segment = victim.streams[0].segments[0].key.clone();
    assert!(vault.get_bytes(&segment).await.is_ok());

    let report = expire(&host, &toy, &policy, Utc::now(), false).await;
    // The tombstone from before soft delete has no purge date: it is
    // finished at once.
    assert_eq!(purged(&report), [old_diff.as_str()]);
    assert_eq!(report.deleted_backups, 1, "the old full");
    assert!(
        vault.get_bytes(&segment).await.is_err(),
        "the interrupted deletion's segments are gone"
    );
    // The old full is soft-deleted: hidden, its data kept for the period.
    let old_full_segment = format!("data/toy/one/{old}/");
    assert!(
        !vault.list_keys(&old_full_segment).await.unwrap().is_empty(),
        "the expired full's data stays for the soft delete period"
    );
    assert_eq!(
        vault.list_keys("deleted").await.unwrap(),
        [format!("deleted/toy/one/{old}.json")]
    );
    // While soft-deleted, the old full still has its own log kept (an
    // undelete must give back a backup that restores).
    let asked = toy.kept_for_log.lock().unwrap().last().cloned().unwrap();
    assert!(asked.contains(&old), "{asked:?}");
    // A pass after the period purges it.
    let later = Utc::now() + chrono::Duration::days(i64::from(vault.soft_delete_days()) + 1);
    let report = expire(&host, &toy, &policy, later, false).await;
    assert_eq!(purged(&report), [old.as_str()]);
    assert!(vault.list_keys(&old_full_segment).await.unwrap().is_empty());
    let asked = toy.kept_for_log.lock().unwrap().last().cloned().unwrap();
    assert!(!asked.contains(&old), "purged: its log may go: {asked:?}");
    assert!(
        vault.list_keys("deleted").await.unwrap().is_empty(),
        "no tombstone left"
    );
    let left: Vec<String> = host
        .backups(&toy, &whole())
        .await
        .unwrap()
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(left, [full, diff]);
    // The kept differential restores every row.
    host.restore(
        &toy,
        whole(),
        RestoreTarget::Latest,
        serde_json::Value::Null,
        None,
    )
    .await
    .unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b", "c", "d"]);
}

/// Retention of a database with no backup yet (its first full may be
/// running) deletes nothing and is not an error.
#[tokio::test]
async fn expiry_of_a_database_without_backups_is_a_no_op() {
    use strata_core::catalog::retention::Retention;
    let vault = vault("contract-expiry-empty").await;
    let host = Host::new(vault);
    let toy = Toy::default();
    let policy = Retention {
        daily: 1,
        ..Retention::default()
    };
    let report = expire(&host, &toy, &policy, Utc::now(), false).await;
    assert!(report.plan.keep.is_empty() && report.plan.expire.is_empty());
    assert_eq!(report.deleted_backups + report.deleted_log, 0);
}

fn committed(result: BackupResult) -> Manifest {
    match result {
        BackupResult::Committed(m) => *m,
        BackupResult::Delegated(_) => panic!("the toy engine delivers nothing elsewhere"),
    }
}

/// SQL Server's auto-heal, in small: a log backup with no full in the
/// vault to start its chain is taken as a full.
fn log_needs_a_full(kind: BackupKind, backups: &[Manifest]) -> KindDecision {
    if kind == BackupKind::Log && !backups.iter().any(|m| m.kind == BackupKind::Full) {
        KindDecision {
            kind: BackupKind::Full,
            reason: Some("the log chain has no full backup in the vault".into()),
        }
    } else {
        KindDecision::keep(kind)
    }
}

/// An engine that settles kinds turns a log backup with no full before it
/// into a full: the plugin is asked to back up a full, the manifest is a
/// full with labels naming the requested kind and the reason, and the
/// operator's label of the same name does not hide what happened. The next
/// log stays a log, and the engine was shown the committed backups each
/// time.
#[tokio::test]
async fn a_plugin_that_settles_kinds_turns_a_log_without_a_chain_into_a_full() {
    let host = Host::new(vault("contract-settle").await);
    let toy = Toy {
        settles: true,
        settle_rule: Some(log_needs_a_full),
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    let mut request = BackupRequest::new(whole(), BackupKind::Log);
    request.labels.insert("team".into(), "dba".into());
    request
        .labels
        .insert("strata.requested_kind".into(), "whatever".into());
    let full = committed(
        host.backup(&toy, request, None, CancellationToken::new())
            .await
            .unwrap(),
    );
    assert_eq!(full.kind, BackupKind::Full);
    assert_eq!(full.base, None);
    assert_eq!(
        full.labels.get("strata.requested_kind").map(String::as_str),
        Some("log")
    );
    assert_eq!(
        full.labels.get("strata.kind_reason").map(String::as_str),
        Some("the log chain has no full backup in the vault")
    );
    assert_eq!(full.labels.get("team").map(String::as_str), Some("dba"));

    toy.insert("b", Utc::now());
    let log = committed(backup(&host, &toy, BackupKind::Log).await.unwrap());
    assert_eq!(log.kind, BackupKind::Log);
    assert!(
        !log.labels.keys().any(|k| k.starts_with("strata.")),
        "{:?}",
        log.labels
    );

    assert_eq!(
        *toy.backup_kinds.lock().unwrap(),
        [BackupKind::Full, BackupKind::Log]
    );
    assert_eq!(
        *toy.settle_calls.lock().unwrap(),
        [
            (BackupKind::Log, vec![]),
            (BackupKind::Log, vec![full.id.to_string()])
        ]
    );
    // Listed as what they are; both rows restore.
    let kinds: Vec<BackupKind> = host
        .backups(&toy, &whole())
        .await
        .unwrap()
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds, [BackupKind::Full, BackupKind::Log]);
    host.restore(
        &toy,
        whole(),
        RestoreTarget::Latest,
        serde_json::Value::Null,
        None,
    )
    .await
    .unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b"]);
}

/// The kind is settled before a base is chosen: a differential that an
/// engine takes as a full needs no full in the vault.
#[tokio::test]
async fn a_kind_is_settled_before_a_base_is_chosen() {
    let host = Host::new(vault("contract-settle-base").await);
    let toy = Toy {
        layered: true,
        settles: true,
        settle_rule: Some(|kind, backups| {
            if kind == BackupKind::Diff && backups.is_empty() {
                KindDecision {
                    kind: BackupKind::Full,
                    reason: Some("the differential base is not in the vault".into()),
                }
            } else {
                KindDecision::keep(kind)
            }
        }),
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    let full = committed(backup(&host, &toy, BackupKind::Diff).await.unwrap());
    assert_eq!((full.kind, full.base.clone()), (BackupKind::Full, None));
    let diff = committed(backup(&host, &toy, BackupKind::Diff).await.unwrap());
    assert_eq!((diff.kind, diff.base), (BackupKind::Diff, Some(full.id)));
    assert!(!diff.labels.contains_key("strata.requested_kind"));
}

/// An engine that does not say it settles kinds is never asked, whatever
/// its `settle_kind` would answer.
#[tokio::test]
async fn a_plugin_without_the_capability_is_never_asked_to_settle() {
    let host = Host::new(vault("contract-settle-not-asked").await);
    let toy = Toy {
        settles: false,
        settle_rule: Some(|_, _| KindDecision {
            kind: BackupKind::Full,
            reason: Some("always a full".into()),
        }),
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    backup(&host, &toy, BackupKind::Full).await.unwrap();
    let log = committed(backup(&host, &toy, BackupKind::Log).await.unwrap());
    assert_eq!(log.kind, BackupKind::Log);
    assert!(toy.settle_calls.lock().unwrap().is_empty());
    assert!(!log.labels.contains_key("strata.requested_kind"));
}

/// A settled kind the engine does not take is refused as a config error
/// naming it, before the plugin backs up or anything is written.
#[tokio::test]
async fn a_settled_kind_outside_the_engines_kinds_is_refused() {
    let vault = vault("contract-settle-refused").await;
    let host = Host::new(vault.clone());
    let toy = Toy {
        settles: true,
        settle_rule: Some(|_, _| KindDecision {
            kind: BackupKind::Diff,
            reason: None,
        }),
        ..Toy::default()
    };
    toy.insert("a", Utc::now());
    let err = backup(&host, &toy, BackupKind::Full).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("would take the full backup of toy `one` as a `diff` backup"),
        "{err}"
    );
    assert!(err.hint_text().unwrap().contains("full, log"), "{err:?}");
    assert_eq!(toy.settle_calls.lock().unwrap().len(), 1);
    assert!(toy.backup_kinds.lock().unwrap().is_empty());
    assert!(vault.list_keys("data").await.unwrap().is_empty());
    assert!(host.backups(&toy, &whole()).await.unwrap().is_empty());
}

/// A backup the vault cannot vouch for is never planned around (found by
/// the damage campaign): with the newest full's manifest altered, and with
/// it gone behind Strata's back while the host's index knows the backup,
/// a restore of the latest point is refused naming the manifest, where it
/// used to restore the older full's rows without a word. Leaving the
/// backup out (`--skip-backup`) restores from the older full.
#[tokio::test]
async fn a_restore_is_not_planned_around_a_damaged_or_lost_manifest() {
    use object_store::ObjectStoreExt;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault("contract-unreadable").await;
    // A caller that can leave backups out, as `restore pg --skip-backup`.
    let host = Host::new(vault.clone())
        .with_index(Some(dir.path().join("index.db")))
        .skipping(Vec::new());
    let toy = Toy::default();
    let t0 = Utc::now() - Duration::minutes(10);
    toy.insert("a", t0);
    backup(&host, &toy, BackupKind::Full).await.unwrap();
    toy.insert("b", t0 + Duration::minutes(1));
    let newest = committed(backup(&host, &toy, BackupKind::Full).await.unwrap());
    let key = strata_core::vault::layout::manifest_key("toy", "one", &newest.id);
    let sound = vault.get_bytes(&key).await.unwrap();
    let latest = || {
        host.restore(
            &toy,
            whole(),
            RestoreTarget::Latest,
            serde_json::Value::Null,
            None,
        )
    };
    latest().await.unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a", "b"]);

    let altered =
        String::from_utf8(sound.to_vec())
            .unwrap()
            .replacen("\"level\": ", "\"level\": 1", 1);
    vault
        .store()
        .put(&vault.path(&key), altered.into_bytes().into())
        .await
        .unwrap();
    let err = latest().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains(&key), "{err}");
    assert!(
        err.hint_text().is_some_and(|h| h.contains("--skip-backup")),
        "{err}"
    );

    ObjectStoreExt::delete(vault.store().as_ref(), &vault.path(&key))
        .await
        .unwrap();
    let err = latest().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("has lost its manifest {key}")),
        "{err}"
    );
    assert_eq!(
        *toy.restored.lock().unwrap(),
        ["a", "b"],
        "nothing restored since"
    );

    Host::new(vault.clone())
        .with_index(Some(dir.path().join("index.db")))
        .skipping(vec![newest.id.clone()])
        .restore(
            &toy,
            whole(),
            RestoreTarget::Latest,
            serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(*toy.restored.lock().unwrap(), ["a"]);
}

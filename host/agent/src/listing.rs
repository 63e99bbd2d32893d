//! `strata list`, `strata verify` and `strata catalog rebuild`.

use std::collections::{BTreeMap, HashSet};

use clap::{Args, Subcommand};
use serde::Serialize;
use strata_core::catalog::index::{CatalogIndex, ListFilter};
use strata_core::catalog::manifest::{BackupId, Manifest};
use strata_core::catalog::planner::{BackupRecord, DefaultChainRules, Timeline, timeline};
use strata_core::lifecycle::Host;
use strata_core::plugin::DatabaseRef;
use strata_core::vault::{Vault, layout};
use strata_core::{Error, Result};

use crate::context::Context;
use crate::engines;
use crate::output::{Table, human_bytes, print_json};

/// Arguments of `strata list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this engine (`stream`, `postgres`, `sqlserver`, `hana`).
    pub engine: Option<String>,
    /// Only this instance (a stream name, a cluster name, a SID).
    pub instance: Option<String>,
    /// Also show the restorable windows and the gaps between them.
    #[arg(long, conflicts_with = "deleted")]
    pub timeline: bool,
    /// Show the deleted backups whose data is still kept (`strata
    /// undelete` brings them back) instead of the committed ones.
    #[arg(long)]
    pub deleted: bool,
}

/// Arguments of `strata verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup ids to verify; none means every backup (of --engine/--instance if given).
    pub backups: Vec<String>,
    /// Only backups of this engine.
    #[arg(long)]
    pub engine: Option<String>,
    /// Only backups of this instance.
    #[arg(long)]
    pub instance: Option<String>,
}

/// `strata catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Recreate the local index from the vault alone.
    Rebuild,
}

/// Brings the index up to date with the vault: reads the manifests it lacks
/// and forgets the backups that are gone. Listing keys is cheap; only new
/// manifests are fetched.
pub async fn refreshed_index(ctx: &Context, vault: &Vault) -> Result<CatalogIndex> {
    let index = ctx.index()?;
    let vault_id = vault.meta().vault_id.clone();
    if !index.is_synced(&vault_id)? {
        index.rebuild(vault).await?;
        return Ok(index);
    }
    let keys: HashSet<String> = vault
        .list_keys(layout::MANIFESTS)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    let mut known_keys = HashSet::new();
    for manifest in index.list(&vault_id, &ListFilter::default())? {
        let key = layout::manifest_key(&manifest.engine, &manifest.instance, &manifest.id);
        // A manifest removed behind Strata's back (no deletion recorded it,
        // its data is still there) stays known, so that `verify` and
        // restores name it rather than silently lose the backup.
        if !keys.contains(&key) && vault.lost_manifest(&manifest).await?.is_none() {
            index.forget(&vault_id, &manifest.id)?;
        }
        known_keys.insert(key);
    }
    let missing: Vec<String> = keys.difference(&known_keys).cloned().collect();
    let fetched = vault.read_manifest_keys(missing).await?;
    for manifest in &fetched {
        index.record(&vault_id, manifest)?;
    }
    Ok(index)
}

/// The engine a `list`/`verify` filter names, by its vault name (`pg` is
/// `postgres`); a name no engine has is refused, so that a typo in a cron
/// job's `verify --engine` never reports "0 verified" as a success.
fn engine_filter(engine: Option<&str>) -> Result<Option<String>> {
    engine
        .map(|name| engines::engine_name(name).map(str::to_owned))
        .transpose()
}

/// The manifests matching a filter, from the refreshed index, or straight
/// from the vault when the index cannot be used.
pub async fn manifests(ctx: &Context, vault: &Vault, filter: &ListFilter) -> Result<Vec<Manifest>> {
    match refreshed_index(ctx, vault).await {
        Ok(index) => index.list(&vault.meta().vault_id, filter),
        Err(err) => {
            tracing::warn!(error = %err, path = %ctx.index_path().display(), "the local index is unusable; reading the vault directly");
            let mut all = vault.all_manifests().await?;
            all.retain(|m| {
                filter.engine.as_ref().is_none_or(|e| &m.engine == e)
                    && filter.instance.as_ref().is_none_or(|i| &m.instance == i)
                    && filter.kind.is_none_or(|k| m.kind == k)
            });
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        }
    }
}

#[derive(Serialize)]
struct ListedBackup<'a> {
    id: &'a BackupId,
    engine: &'a str,
    instance: &'a str,
    database: Option<&'a str>,
    kind: &'a str,
    /// The backup a diff or incr applies on.
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a BackupId>,
    fork: &'a str,
    started_at: String,
    ended_at: String,
    raw_bytes: u64,
    stored_bytes: u64,
    streams: usize,
    labels: &'a BTreeMap<String, String>,
}

impl<'a> ListedBackup<'a> {
    fn of(m: &'a Manifest) -> Self {
        ListedBackup {
            id: &m.id,
            engine: &m.engine,
            instance: &m.instance,
            database: m.database.as_deref(),
            kind: m.kind.as_str(),
            base: m.base.as_ref(),
            fork: &m.fork,
            started_at: m.started_at.to_rfc3339(),
            ended_at: m.ended_at.to_rfc3339(),
            raw_bytes: m.raw_size(),
            stored_bytes: m.stored_size(),
            streams: m.streams.len(),
            labels: &m.labels,
        }
    }
}

#[derive(Serialize)]
struct ListedTimeline<'a> {
    engine: &'a str,
    instance: &'a str,
    database: Option<&'a str>,
    #[serde(flatten)]
    timeline: Timeline,
}

/// Runs `strata list`.
pub async fn list(args: ListArgs, ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let filter = ListFilter {
        engine: engine_filter(args.engine.as_deref())?,
        instance: args.instance.clone(),
        ..Default::default()
    };
    if args.deleted {
        return list_deleted(&vault, &filter, ctx).await;
    }
    let manifests = manifests(ctx, &vault, &filter).await?;
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<Manifest>> = BTreeMap::new();
    if args.timeline {
        for m in &manifests {
            groups
                .entry((m.engine.clone(), m.instance.clone(), m.database.clone()))
                .or_default()
                .push(m.clone());
        }
    }
    let host = ctx.host().await?;
    let mut timelines: Vec<ListedTimeline> = Vec::new();
    for ((engine, instance, database), backups) in &groups {
        timelines.push(ListedTimeline {
            engine,
            instance,
            database: database.as_deref(),
            timeline: engine_timeline(ctx, &host, engine, instance, database, backups).await?,
        });
    }
    let listed: Vec<ListedBackup> = manifests.iter().map(ListedBackup::of).collect();
    if ctx.json {
        if args.timeline {
            return print_json(&serde_json::json!({ "backups": listed, "timelines": timelines }));
        }
        return print_json(&listed);
    }
    let mut table = Table::new(&[BACKUP_COLUMNS.as_slice(), &["RAW", "STORED"]].concat());
    for m in &manifests {
        let mut row = backup_cells(m);
        row.extend([human_bytes(m.raw_size()), human_bytes(m.stored_size())]);
        table.row(row);
    }
    if table.is_empty() {
        println!("no backups in {}", vault.url());
    } else {
        print!("{}", table.render());
    }
    for t in &timelines {
        println!();
        print!(
            "{}",
            render_timeline(t.engine, t.instance, t.database, &t.timeline)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ListedDeleted<'a> {
    /// The backup, as `strata list --json` shows it.
    #[serde(flatten)]
    backup: ListedBackup<'a>,
    deleted_at: String,
    /// When `vault gc` or retention may purge its data (UTC).
    purge_after: String,
    reason: &'a str,
}

/// `strata list --deleted`: the soft-deleted backups (see
/// `strata_core::vault::deletion`) whose manifests are gone and whose data
/// is not purged yet.
async fn list_deleted(vault: &Vault, filter: &ListFilter, ctx: &Context) -> Result<()> {
    let mut deleted = Vec::new();
    for tombstone in vault.deleted_backups().await? {
        let m = &tombstone.manifest;
        let wanted = filter.engine.as_ref().is_none_or(|e| &m.engine == e)
            && filter.instance.as_ref().is_none_or(|i| &m.instance == i);
        // A manifest that exists again was undeleted (or its deletion was
        // cut short before the manifest went): it is not a deleted backup.
        if wanted && !vault.manifest_exists(&m.engine, &m.instance, &m.id).await? {
            deleted.push(tombstone);
        }
    }
    deleted.sort_by_key(|t| t.deleted_at);
    if ctx.json {
        let listed: Vec<ListedDeleted> = deleted
            .iter()
            .map(|t| ListedDeleted {
                backup: ListedBackup::of(&t.manifest),
                deleted_at: t.deleted_at.to_rfc3339(),
                purge_after: t.purge_after().to_rfc3339(),
                reason: &t.reason,
            })
            .collect();
        return print_json(&listed);
    }
    if deleted.is_empty() {
        println!(
            "no deleted backups are kept in {} (it keeps them {} days)",
            vault.url(),
            vault.deleted_data_days()
        );
        return Ok(());
    }
    let mut table = Table::new(
        &[
            BACKUP_COLUMNS.as_slice(),
            &["DELETED (UTC)", "PURGE AFTER (UTC)", "STORED", "REASON"],
        ]
        .concat(),
    );
    for t in &deleted {
        let mut row = backup_cells(&t.manifest);
        row.extend([
            t.deleted_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            t.purge_after().format("%Y-%m-%d %H:%M:%S").to_string(),
            human_bytes(t.manifest.stored_size()),
            t.reason.clone(),
        ]);
        table.row(row);
    }
    print!("{}", table.render());
    Ok(())
}

/// The columns of [`backup_cells`].
const BACKUP_COLUMNS: [&str; 5] = ["ID", "ENGINE", "INSTANCE", "KIND", "ENDED (UTC)"];

/// The ID, ENGINE, INSTANCE, KIND and ENDED (UTC) cells of a backup's row.
fn backup_cells(m: &Manifest) -> Vec<String> {
    let instance = match &m.database {
        Some(db) => format!("{}/{db}", m.instance),
        None => m.instance.clone(),
    };
    vec![
        m.id.to_string(),
        m.engine.clone(),
        instance,
        kind_label(m),
        m.ended_at.format("%Y-%m-%d %H:%M:%S").to_string(),
    ]
}

/// A backup's kind as the table shows it: `full (empty)` for an empty
/// stream kept on purpose (`--allow-empty`), `diff on <base>` for a backup
/// that applies on another.
fn kind_label(m: &Manifest) -> String {
    if m.labels
        .get(strata_stream::EMPTY_LABEL)
        .is_some_and(|v| v == "true")
    {
        format!("{} (empty)", m.kind)
    } else if let Some(base) = &m.base {
        format!("{} on {base}", m.kind)
    } else {
        m.kind.to_string()
    }
}

/// The restorable windows of one database, from its engine's chain (for
/// PostgreSQL: the backups plus the archived WAL of every timeline). An
/// engine this agent does not know is shown from its manifests alone.
async fn engine_timeline(
    ctx: &Context,
    host: &Host,
    engine: &str,
    instance: &str,
    database: &Option<String>,
    backups: &[Manifest],
) -> Result<Timeline> {
    let Ok(plugin) = engines::plugin(ctx, engine, instance) else {
        let records: Vec<BackupRecord> = backups.iter().map(BackupRecord::from).collect();
        return Ok(timeline(&records, &DefaultChainRules));
    };
    let database = DatabaseRef {
        instance: instance.to_owned(),
        database: database.clone(),
    };
    host.timeline(plugin.as_ref(), &database).await
}

/// Renders the restorable windows and gaps of one database (or of an
/// instance backed up as a whole) for people.
pub fn render_timeline(
    engine: &str,
    instance: &str,
    database: Option<&str>,
    timeline: &Timeline,
) -> String {
    let mut out = match database {
        Some(database) => {
            format!("restorable windows of {engine} {instance}, database {database}:\n")
        }
        None => format!("restorable windows of {engine} {instance}:\n"),
    };
    if timeline.windows.is_empty() {
        out.push_str("  none\n");
    }
    for w in &timeline.windows {
        let fork = if w.fork.is_empty() {
            String::new()
        } else {
            format!(" [fork {}]", w.fork)
        };
        if w.from_time == w.to_time {
            out.push_str(&format!(
                "  {}{fork}  (a single point)\n",
                w.from_time.format("%Y-%m-%d %H:%M:%S%.3f")
            ));
        } else {
            out.push_str(&format!(
                "  {} .. {}{fork}\n",
                w.from_time.format("%Y-%m-%d %H:%M:%S%.3f"),
                w.to_time.format("%Y-%m-%d %H:%M:%S%.3f")
            ));
        }
    }
    for g in &timeline.gaps {
        out.push_str(&format!(
            "  gap {} .. {}: {}\n",
            g.from_time.format("%Y-%m-%d %H:%M:%S"),
            g.to_time.format("%Y-%m-%d %H:%M:%S"),
            g.reason
        ));
    }
    out
}

#[derive(Serialize)]
struct VerifiedBackup {
    id: BackupId,
    engine: String,
    instance: String,
    ok: bool,
    parts: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    problems: Vec<String>,
}

/// Runs `strata verify`: reads every part of the chosen backups and checks
/// checksums, authentication, sizes and digests, and in PostgreSQL backups
/// every file's digest.
pub async fn verify(args: VerifyArgs, ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let filter = ListFilter {
        engine: engine_filter(args.engine.as_deref())?,
        instance: args.instance.clone(),
        ..Default::default()
    };
    let all = manifests(ctx, &vault, &filter).await?;
    let host = ctx.host().await?;
    let chosen: Vec<&Manifest> = if args.backups.is_empty() {
        all.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for wanted in &args.backups {
            let found = all
                .iter()
                .find(|m| m.id.as_str() == wanted)
                .ok_or_else(|| {
                    Error::not_found(format!("backup {wanted} is not in the vault"))
                        .hint("`strata list` shows the committed backups")
                })?;
            chosen.push(found);
        }
        // A differential or incremental restores only with its bases:
        // they are verified with it.
        let mut i = 0;
        while i < chosen.len() {
            if let Some(base) = chosen[i]
                .base
                .as_ref()
                .and_then(|id| all.iter().find(|m| &m.id == id))
                && !chosen.iter().any(|m| m.id == base.id)
            {
                chosen.push(base);
            }
            i += 1;
        }
        chosen
    };
    let total: u64 = chosen.iter().map(|m| m.raw_size()).sum();
    let bar = ctx.progress(Some(total), "verifying");
    let mut results = Vec::new();
    for manifest in &chosen {
        if let Some(key) = vault.lost_manifest(manifest).await? {
            results.push(VerifiedBackup {
                id: manifest.id.clone(),
                engine: manifest.engine.clone(),
                instance: manifest.instance.clone(),
                ok: false,
                parts: 0,
                raw_bytes: 0,
                stored_bytes: 0,
                problems: vec![format!(
                    "manifest {key} is gone from the vault: this host's catalog index knows the backup and its data is still there, but no deletion recorded it (no tombstone); put the object back, or `strata catalog rebuild` to forget the backup"
                )],
            });
            continue;
        }
        let plugin = engines::plugin(ctx, &manifest.engine, &manifest.instance).ok();
        let report = host.verify(plugin.as_deref(), manifest, Some(&bar)).await?;
        results.push(VerifiedBackup {
            id: manifest.id.clone(),
            engine: manifest.engine.clone(),
            instance: manifest.instance.clone(),
            ok: report.is_ok(),
            parts: report.parts,
            raw_bytes: report.raw_bytes,
            stored_bytes: report.stored_bytes,
            problems: report.problems,
        });
    }
    bar.finish();
    if args.backups.is_empty() {
        damaged_manifest_findings(&vault, &filter, &mut results).await?;
        damaged_tombstone_findings(&vault, &filter, &mut results).await?;
    }
    // After the manifest findings: a differential whose base's manifest
    // is damaged cannot be restored either.
    chain_findings(&mut results, &chosen);
    let mut archives = Vec::new();
    if args.backups.is_empty() {
        archive_findings(ctx, &host, &all, &filter, &mut archives).await?;
    }
    let bad = results.iter().filter(|r| !r.ok).count();
    if ctx.json {
        let rows: Vec<VerifiedRow> = results
            .iter()
            .map(VerifiedRow::Backup)
            .chain(archives.iter().map(VerifiedRow::Archive))
            .collect();
        print_json(&rows)?;
    } else {
        for r in &results {
            if r.ok {
                println!(
                    "ok      {} {} {} ({} parts, {})",
                    r.id,
                    r.engine,
                    r.instance,
                    r.parts,
                    human_bytes(r.raw_bytes)
                );
            } else {
                println!("DAMAGED {} {} {}", r.id, r.engine, r.instance);
                for p in &r.problems {
                    println!("        {p}");
                }
            }
        }
        for a in &archives {
            println!(
                "DAMAGED archive {} ({} {})",
                a.archive, a.engine, a.instance
            );
            for p in &a.problems {
                println!("        {p}");
            }
        }
        println!("{} backup(s) verified, {} damaged", results.len(), bad);
        if !archives.is_empty() {
            println!(
                "{} archive(s) with damaged or missing objects",
                archives.len()
            );
        }
    }
    if bad > 0 {
        return Err(Error::integrity(format!("{bad} backup(s) failed verification"))
            .hint("do not rely on the damaged backups; take a new full backup and restore from an older one if needed"));
    }
    if !archives.is_empty() {
        return Err(Error::integrity(format!(
            "{} archive(s) hold damaged or missing objects",
            archives.len()
        ))
        .hint("restores that need them fail; put back sound copies if there are any, and take a new full backup so that restores to later times do not need them"));
    }
    Ok(())
}

/// One row of `verify --json`: a backup, or an engine instance's archive
/// with problems (clean archives add no row).
#[derive(Serialize)]
#[serde(untagged)]
enum VerifiedRow<'a> {
    Backup(&'a VerifiedBackup),
    Archive(&'a VerifiedArchive),
}

/// The problems `verify` found in an engine instance's archive objects
/// (PostgreSQL's WAL, SAP HANA's name markers).
#[derive(Serialize)]
struct VerifiedArchive {
    /// Where the objects live, relative to the vault root.
    archive: String,
    engine: String,
    instance: String,
    ok: bool,
    problems: Vec<String>,
}

/// Checks the archive objects of every engine instance under the filter
/// (those with backups, and the configured PostgreSQL clusters) with the
/// engine's own rules ([`strata_core::plugin::EnginePlugin::verify_archive`]),
/// and adds a row for each archive with problems, every problem naming its
/// object's key.
async fn archive_findings(
    ctx: &Context,
    host: &strata_core::lifecycle::Host,
    all: &[Manifest],
    filter: &ListFilter,
    archives: &mut Vec<VerifiedArchive>,
) -> Result<()> {
    let mut instances: Vec<(String, String)> = all
        .iter()
        .map(|m| (m.engine.clone(), m.instance.clone()))
        .collect();
    if filter
        .engine
        .as_deref()
        .is_none_or(|e| e == strata_postgres::ENGINE)
    {
        instances.extend(
            ctx.config
                .postgres
                .keys()
                .map(|name| (strata_postgres::ENGINE.to_owned(), name.clone())),
        );
    }
    instances.retain(|(_, instance)| filter.instance.as_ref().is_none_or(|i| i == instance));
    instances.sort();
    instances.dedup();
    for (engine, instance) in instances {
        let Ok(plugin) = engines::plugin(ctx, &engine, &instance) else {
            continue;
        };
        let mut backups: Vec<Manifest> = all
            .iter()
            .filter(|m| m.engine == engine && m.instance == instance)
            .cloned()
            .collect();
        backups.sort_by(|a, b| (a.ended_at, &a.id).cmp(&(b.ended_at, &b.id)));
        let prefix = layout::engine_prefix(&engine, &instance);
        let findings = plugin
            .verify_archive(&backups, host.archive(plugin.as_ref()))
            .await?;
        if findings.is_empty() {
            continue;
        }
        let problems = findings
            .into_iter()
            .map(|f| {
                let key = format!("{prefix}/{}", f.key);
                if f.problem.contains(&key) {
                    f.problem
                } else {
                    format!("{key} {}", f.problem)
                }
            })
            .collect();
        archives.push(VerifiedArchive {
            archive: prefix,
            engine,
            instance,
            ok: false,
            problems,
        });
    }
    Ok(())
}

/// Adds a finding for every manifest under the filter that cannot be read
/// (its backup is missing from every listing and restore, so a clean
/// verify would hide it).
async fn damaged_manifest_findings(
    vault: &Vault,
    filter: &ListFilter,
    results: &mut Vec<VerifiedBackup>,
) -> Result<()> {
    let prefix = match (&filter.engine, &filter.instance) {
        (Some(engine), Some(instance)) => layout::manifest_prefix(engine, instance),
        (Some(engine), None) => {
            format!("{}/{}", layout::MANIFESTS, layout::escape_component(engine))
        }
        _ => layout::MANIFESTS.to_owned(),
    };
    let damaged = vault.damaged_manifests(&prefix).await?;
    push_object_findings(
        damaged,
        ("manifests", "manifest"),
        filter,
        results,
        |key, err| {
            format!(
                "manifest {key} cannot be read: {err}; the backup is left out of every listing and restore"
            )
        },
    );
    Ok(())
}

/// Adds a finding for every tombstone under the filter that cannot be
/// read: the deleted backup it holds can no longer be brought back with
/// `strata undelete`, and a purge cannot tell which data is its.
async fn damaged_tombstone_findings(
    vault: &Vault,
    filter: &ListFilter,
    results: &mut Vec<VerifiedBackup>,
) -> Result<()> {
    let prefix = match (&filter.engine, &filter.instance) {
        (Some(engine), Some(instance)) => layout::tombstone_prefix(engine, instance),
        (Some(engine), None) => {
            format!("{}/{}/", layout::DELETED, layout::escape_component(engine))
        }
        _ => format!("{}/", layout::DELETED),
    };
    let damaged = vault.damaged_tombstones(&prefix).await?;
    push_object_findings(
        damaged,
        ("deleted", "tombstone"),
        filter,
        results,
        |_, err| {
            format!(
                "{err}; the deleted backup it records cannot be brought back with `strata undelete`"
            )
        },
    );
    Ok(())
}

/// Turns damaged objects named `<top>/<engine>/<instance>/<id>.json`
/// (manifests, tombstones) into findings of their backups: the instance
/// filter applied to the escaped key component, `problem` the text.
fn push_object_findings(
    damaged: Vec<(String, Error)>,
    (folder, what): (&str, &str),
    filter: &ListFilter,
    results: &mut Vec<VerifiedBackup>,
    problem: impl Fn(&str, &Error) -> String,
) {
    for (key, err) in damaged {
        let mut parts = key.trim_end_matches(".json").rsplit('/');
        let id = parts.next().unwrap_or_default();
        let instance = parts.next().unwrap_or_default();
        let engine = parts.next().unwrap_or_default();
        if filter
            .instance
            .as_deref()
            .is_some_and(|i| layout::escape_component(i) != instance)
        {
            continue;
        }
        let Ok(id) = id.parse::<BackupId>() else {
            tracing::warn!(object = %key, "an object in the {folder} folder is no {what}");
            continue;
        };
        // A backup this host's index still lists (its parts verified by
        // the cached manifest) gets the finding on its own row, so that it
        // is reported once, as damaged, and counted once.
        if let Some(verified) = results.iter_mut().find(|r| {
            r.id == id
                && layout::escape_component(&r.engine) == engine
                && layout::escape_component(&r.instance) == instance
        }) {
            verified.ok = false;
            verified.problems.push(problem(&key, &err));
            continue;
        }
        results.push(VerifiedBackup {
            id,
            engine: engine.to_owned(),
            instance: instance.to_owned(),
            ok: false,
            parts: 0,
            raw_bytes: 0,
            stored_bytes: 0,
            problems: vec![problem(&key, &err)],
        });
    }
}

/// Marks each verified differential or incremental whose chain of bases
/// is broken (a base gone from the vault) or damaged: it cannot be
/// restored, whatever its own parts hold.
fn chain_findings(results: &mut [VerifiedBackup], verified: &[&Manifest]) {
    let by_id: std::collections::HashMap<&BackupId, &Manifest> =
        verified.iter().map(|m| (&m.id, *m)).collect();
    let damaged: std::collections::HashSet<BackupId> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.id.clone())
        .collect();
    for result in results.iter_mut() {
        let mut at = by_id.get(&result.id).and_then(|m| m.base.clone());
        let mut steps = 0;
        while let Some(base) = at {
            steps += 1;
            if steps > verified.len() {
                break;
            }
            match by_id.get(&base) {
                None => {
                    result.ok = false;
                    result.problems.push(format!(
                        "its base backup {base} is not in the vault: it cannot be restored"
                    ));
                    break;
                }
                Some(_) if damaged.contains(&base) => {
                    result.ok = false;
                    result.problems.push(format!(
                        "its base backup {base} is damaged: it cannot be restored"
                    ));
                    break;
                }
                Some(m) => at = m.base.clone(),
            }
        }
    }
}

/// Runs `strata catalog rebuild`.
pub async fn catalog(command: CatalogCommand, ctx: &Context) -> Result<()> {
    match command {
        CatalogCommand::Rebuild => {
            let vault = ctx.vault().await?;
            let index = ctx.index()?;
            let report = index.rebuild(&vault).await?;
            if ctx.json {
                print_json(&serde_json::json!({
                    "index": ctx.index_path(), "vault": vault.url(),
                    "manifests": report.manifests, "added": report.added, "removed": report.removed,
                }))?;
            } else {
                println!(
                    "rebuilt {} from {}: {} backups ({} added, {} removed)",
                    ctx.index_path().display(),
                    vault.url(),
                    report.manifests,
                    report.added,
                    report.removed
                );
            }
            Ok(())
        }
    }
}

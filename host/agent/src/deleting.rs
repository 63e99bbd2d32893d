//! `strata delete` and `strata undelete`: soft delete of backups by hand.

use chrono::Utc;
use clap::Args;
use serde::Serialize;
use strata_core::catalog::index::ListFilter;
use strata_core::catalog::manifest::{BackupId, Manifest};
use strata_core::vault::{Deletion, Tombstone};
use strata_core::{Error, Result};

use crate::context::Context;
use crate::listing::manifests;
use crate::output::print_json;

/// Arguments of `strata delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The ids of the backups to delete (`strata list` shows them).
    #[arg(required = true)]
    pub backups: Vec<String>,
    /// Why, recorded with the deletion (`strata list --deleted` shows it).
    #[arg(long, default_value = "deleted by hand (strata delete)")]
    pub reason: String,
}

/// Arguments of `strata undelete`.
#[derive(Debug, Args)]
pub struct UndeleteArgs {
    /// The ids of the deleted backups to bring back (`strata list
    /// --deleted` shows them).
    #[arg(required = true)]
    pub backups: Vec<String>,
}

#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a BackupId,
    engine: &'a str,
    instance: &'a str,
    kind: &'a str,
    /// When it was deleted (UTC).
    deleted_at: chrono::DateTime<Utc>,
    /// Why.
    reason: &'a str,
    /// When its data is purged at the earliest (UTC).
    purge_after: chrono::DateTime<Utc>,
}

/// The backups `wanted` names (each once), or an error naming the first
/// unknown id, and saying when it is one already deleted.
fn chosen<'a>(
    all: &'a [Manifest],
    deleted: &[Tombstone],
    wanted: &[String],
) -> Result<Vec<&'a Manifest>> {
    let mut chosen: Vec<&Manifest> = Vec::new();
    for id in wanted {
        let id = id.trim();
        let Some(found) = all.iter().find(|m| m.id.as_str() == id) else {
            if let Some(t) = deleted.iter().find(|t| t.manifest.id.as_str() == id) {
                return Err(Error::not_found(format!(
                    "backup {id} is already deleted (at {}: {})",
                    t.deleted_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    t.reason
                ))
                .hint(format!(
                    "`strata undelete {id}` brings it back until {}",
                    t.purge_after().format("%Y-%m-%d %H:%M UTC")
                )));
            }
            return Err(
                Error::not_found(format!("there is no backup {id} in the vault")).hint(
                    "`strata list` shows the backups; `strata list --deleted` the deleted ones",
                ),
            );
        };
        if !chosen.iter().any(|m| m.id == found.id) {
            chosen.push(found);
        }
    }
    Ok(chosen)
}

/// Runs `strata delete`.
pub async fn delete(args: DeleteArgs, ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let all = manifests(ctx, &vault, &ListFilter::default()).await?;
    let deleted = vault.deleted_backups().await?;
    let mut chosen = chosen(&all, &deleted, &args.backups)?;
    // The reason is shown in a table: one line, no control characters.
    let reason: String = args
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for m in &chosen {
        if m.engine == "hana" {
            return Err(Error::config(format!(
                "backup {} is a SAP HANA backup: HANA keeps its own backup catalog",
                m.id
            ))
            .hint("delete it from HANA (BACKUP CATALOG DELETE ... WITH BACKINT, or HANA's retention), which deletes it here through hdbbackint"));
        }
        let dependents: Vec<String> = all
            .iter()
            .filter(|d| d.base.as_ref() == Some(&m.id))
            .filter(|d| !chosen.iter().any(|c| c.id == d.id))
            .map(|d| format!("{} ({})", d.id, d.kind))
            .collect();
        if !dependents.is_empty() {
            return Err(Error::conflict(format!(
                "backup {} is the base of {}: they would not restore without it",
                m.id,
                dependents.join(", ")
            ))
            .hint("delete those too (name them in the same command), or keep this one"));
        }
    }
    // Backups that build on others go first, so that no base is ever
    // deleted while something in the vault still needs it.
    chosen.sort_by_key(|m| std::cmp::Reverse(m.ended_at));
    let index = ctx.index().ok();
    let mut done = Vec::new();
    for m in chosen {
        match vault.delete_backup(m, &reason).await? {
            Deletion::Deleted => {}
            Deletion::Locked { until } => {
                return Err(Error::conflict(format!(
                    "backup {} is locked by the vault's immutability{}",
                    m.id,
                    until
                        .map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                        .unwrap_or_default()
                ))
                .hint("an immutable vault deletes nothing before its lock ends; retention deletes it after that"));
            }
        }
        if let Some(index) = &index
            && let Err(err) = index.forget(&vault.meta().vault_id, &m.id)
        {
            tracing::warn!(backup = %m.id, error = %err, "the backup is deleted but the local index still lists it; `strata catalog rebuild` fixes that");
        }
        done.push(Deleted {
            id: &m.id,
            engine: &m.engine,
            instance: &m.instance,
            kind: m.kind.as_str(),
            deleted_at: Utc::now(),
            reason: &reason,
            purge_after: Utc::now() + chrono::Duration::days(i64::from(vault.deleted_data_days())),
        });
    }
    if ctx.json {
        return print_json(&done);
    }
    for d in &done {
        if vault.deleted_data_days() == 0 {
            println!(
                "deleted {} ({} of {} {}) and its data: the vault keeps no deleted backups",
                d.id, d.kind, d.engine, d.instance
            );
        } else {
            println!(
                "deleted {} ({} of {} {}): its data stays until {} at least; `strata undelete {}` brings it back",
                d.id,
                d.kind,
                d.engine,
                d.instance,
                d.purge_after.format("%Y-%m-%d %H:%M UTC"),
                d.id
            );
        }
    }
    Ok(())
}

/// Runs `strata undelete`.
pub async fn undelete(args: UndeleteArgs, ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let mut wanted: Vec<BackupId> = args
        .backups
        .iter()
        .map(|id| id.trim().parse::<BackupId>())
        .collect::<Result<_>>()?;
    // Bases first: the oldest deletion of a chain is its base.
    let deleted = vault.deleted_backups().await?;
    wanted.sort_by_key(|id| {
        deleted
            .iter()
            .find(|t| &t.manifest.id == id)
            .map(|t| t.manifest.ended_at)
    });
    let index = ctx.index().ok();
    let listed = manifests(ctx, &vault, &ListFilter::default()).await?;
    for id in &wanted {
        if !deleted.iter().any(|t| &t.manifest.id == id) && listed.iter().any(|m| &m.id == id) {
            return Err(Error::conflict(format!(
                "backup {id} is not deleted: it is listed and restorable"
            ))
            .hint("`strata list` shows it"));
        }
    }
    let mut back = Vec::new();
    for id in &wanted {
        // The tombstones were read once above; an id without one gets
        // undelete's own error.
        let manifest = match deleted.iter().find(|t| &t.manifest.id == id) {
            Some(tombstone) => vault.undelete_from(tombstone.clone()).await?,
            None => vault.undelete(id).await?,
        };
        if let Some(index) = &index
            && let Err(err) = index.record(&vault.meta().vault_id, &manifest)
        {
            tracing::warn!(backup = %id, error = %err, "the backup is back in the vault; the local index catches up at the next `strata list`");
        }
        if !ctx.json {
            println!(
                "brought back {} ({} of {} {}): it is listed and restorable again",
                manifest.id, manifest.kind, manifest.engine, manifest.instance
            );
        }
        back.push(manifest.id);
    }
    if ctx.json {
        return print_json(&back);
    }
    Ok(())
}

//! `strata vault init`, `strata vault info` and `strata vault gc`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use strata_core::crypto::VaultKey;
use strata_core::vault::{Deletion, PurgeReport, Vault, VaultConfig, VaultOptions};
use strata_core::{Error, Result};

use crate::context::Context;
use crate::output::{Table, human_bytes, print_json};

/// `strata vault ...`
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create a new vault (refuses to touch an existing one).
    Init {
        /// The vault URL; defaults to --vault or [vault] url.
        url: Option<String>,
        /// Encrypt every backup in this vault. The key is read from --key-file,
        /// or generated into it when the file does not exist yet.
        #[arg(long)]
        encrypt: bool,
        /// Make the vault immutable: the store refuses to delete or
        /// overwrite anything Strata writes for DAYS days (S3 Object Lock,
        /// an Azure container immutability policy, a GCS bucket retention
        /// policy). On S3 the bucket needs Object Lock enabled; Strata sets
        /// its default retention. The store is probed: init fails if it
        /// does not refuse a delete.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=i64::from(strata_core::vault::MAX_DAYS)))]
        immutable: Option<u32>,
        /// S3 Object Lock mode for --immutable: compliance (no one can
        /// shorten the lock) or governance.
        #[arg(long, default_value = "compliance", requires = "immutable")]
        lock_mode: strata_core::vault::immutability::LockMode,
        /// How init and every open check the lock: `multipart` (an upload in
        /// parts, as large segments are written, and at init a single one)
        /// or `simple` (a single upload only; for emulators that do not lock
        /// multipart uploads, such as moto).
        #[arg(long, default_value = "multipart", requires = "immutable", hide = true)]
        lock_probe: strata_core::vault::immutability::ProbeKind,
        /// Days a deleted backup's data stays, restorable with `strata
        /// undelete`, before `vault gc` or retention purges it; 0 purges at
        /// once.
        #[arg(long, value_name = "DAYS", default_value_t = strata_core::vault::DEFAULT_SOFT_DELETE_DAYS, value_parser = clap::value_parser!(u32).range(0..=i64::from(strata_core::vault::MAX_DAYS)))]
        soft_delete_days: u32,
    },
    /// Show the vault's metadata.
    Info,
    /// Purge the data of deleted backups whose soft delete period is over,
    /// and delete the data of backups that were never committed (a backup
    /// whose process was killed leaves its segments behind, invisible to
    /// list and restore), and in a local vault the staging files of uploads
    /// cut off the same way. Committed backups, soft-deleted backups inside
    /// their period, and WAL are never touched; on an immutable vault
    /// nothing still locked is.
    Gc {
        /// Only data whose newest object, and staging files, last written
        /// longer ago than this (`30m`, `6h`, `2d`): a backup or upload still
        /// running has younger data.
        #[arg(long, default_value = "24h", value_parser = parse_age)]
        older_than: Duration,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Judge purge dates and locks as if it were this time (RFC 3339);
        /// for drills and tests with compressed time.
        #[arg(long, hide = true, value_name = "TIME")]
        now: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// Parses an age such as `90s`, `30m`, `6h` or `2d` (the durations the
/// service's configuration reads).
fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    text.trim()
        .parse::<crate::service::policy::Interval>()
        .map(|interval| interval.0)
        .map_err(|_| format!("`{text}` is not an age such as 30m, 6h or 2d"))
}

/// Runs a vault command.
pub async fn run(command: VaultCommand, ctx: &Context) -> Result<()> {
    match command {
        VaultCommand::Init {
            url,
            encrypt,
            immutable,
            lock_mode,
            lock_probe,
            soft_delete_days,
        } => {
            let options = VaultOptions {
                soft_delete_days,
                immutable: immutable.map(|days| (lock_mode, days)),
                probe: lock_probe,
            };
            init(url, encrypt, options, ctx).await
        }
        VaultCommand::Info => info(ctx).await,
        VaultCommand::Gc {
            older_than,
            dry_run,
            now,
        } => gc(older_than, dry_run, now, ctx).await,
    }
}

async fn gc(
    older_than: Duration,
    dry_run: bool,
    now: Option<chrono::DateTime<chrono::Utc>>,
    ctx: &Context,
) -> Result<()> {
    use strata_core::vault::gc::{
        delete_orphan, delete_unfinished_upload, find_orphans, find_unfinished_uploads,
    };
    let mut vault = ctx.vault().await?;
    if let Some(now) = now {
        vault = vault.at(now);
    }
    let purge = vault.purge_deleted(vault.now(), dry_run).await?;
    let orphans = find_orphans(&vault, older_than).await?;
    let uploads = find_unfinished_uploads(&vault, older_than).await?;
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    let mut locked = Vec::new();
    let mut uploads_deleted = Vec::new();
    let mut uploads_kept = Vec::new();
    let mut hidden = Vec::new();
    for orphan in orphans.iter().filter(|o| o.manifest_hidden) {
        hidden.push(orphan);
        tracing::warn!(error = %strata_core::vault::gc::hidden_backup(orphan), "a committed backup is hidden");
    }
    let orphans: Vec<_> = orphans.iter().filter(|o| !o.manifest_hidden).collect();
    if dry_run && let Some(lock) = vault.immutability() {
        // The vault's own rule, as a real run applies it object by object.
        for orphan in &orphans {
            let until = lock.locked_until(orphan.newest);
            if until > vault.now() {
                locked.push((*orphan, Some(until)));
            }
        }
    }
    if !dry_run {
        for orphan in orphans.iter().copied() {
            match delete_orphan(&vault, orphan).await {
                Ok(Deletion::Deleted) => deleted.push(orphan),
                Ok(Deletion::Locked { until }) => locked.push((orphan, until)),
                // Committed meanwhile: it is a backup now, and stays.
                Err(e) if e.kind() == strata_core::ErrorKind::Conflict => kept.push(orphan),
                Err(e) => return Err(e.context(format!("deleting {}", orphan.prefix))),
            }
        }
        for upload in &uploads {
            match delete_unfinished_upload(&vault, upload).await {
                Ok(()) => uploads_deleted.push(upload),
                // Written to meanwhile: an upload is running after all.
                Err(e) if e.kind() == strata_core::ErrorKind::Conflict => uploads_kept.push(upload),
                Err(e) => return Err(e.context(format!("deleting {}", upload.path))),
            }
        }
    }
    let bytes: u64 = orphans.iter().map(|o| o.bytes).sum();
    let hidden_json: Vec<_> = hidden
        .iter()
        .map(|o| serde_json::json!({"backup": o.id, "manifest": o.manifest_key()}))
        .collect();
    let upload_bytes: u64 = uploads.iter().map(|u| u.bytes).sum();
    if ctx.json {
        return print_json(&serde_json::json!({
            "dry_run": dry_run,
            "purge": purge,
            "hidden_by_delete_marker": hidden_json,
            "locked": locked.iter().map(|(o, until)| serde_json::json!({"prefix": o.prefix, "locked_until": until})).collect::<Vec<_>>(),
            "orphans": orphans,
            "deleted": deleted.iter().map(|o| &o.prefix).collect::<Vec<_>>(),
            "committed_meanwhile": kept.iter().map(|o| &o.prefix).collect::<Vec<_>>(),
            "bytes": bytes,
            "unfinished_uploads": uploads,
            "unfinished_uploads_deleted": uploads_deleted.iter().map(|u| &u.path).collect::<Vec<_>>(),
            "unfinished_uploads_running": uploads_kept.iter().map(|u| &u.path).collect::<Vec<_>>(),
            "unfinished_upload_bytes": upload_bytes,
        }));
    }
    print_purge(&purge, vault.deleted_data_days(), dry_run, "");
    for o in &hidden {
        println!(
            "kept {}: a committed backup whose manifest {} is hidden by an S3 delete marker (deleted through the S3 API, not by Strata); remove the marker's version to bring it back",
            o.id,
            o.manifest_key()
        );
    }
    if orphans.is_empty() && uploads.is_empty() {
        println!(
            "no uncommitted backup data older than {} in {}",
            humanize(older_than),
            vault.url()
        );
        return Ok(());
    }
    if !orphans.is_empty() {
        let mut table = Table::new(&[
            "BACKUP",
            "ENGINE",
            "INSTANCE",
            "OBJECTS",
            "SIZE",
            "LAST WRITTEN (UTC)",
        ]);
        for o in orphans.iter() {
            table.row(vec![
                o.id.clone(),
                o.engine.clone(),
                o.instance.clone(),
                o.objects.to_string(),
                human_bytes(o.bytes),
                o.newest.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]);
        }
        print!("{}", table.render());
    }
    if !uploads.is_empty() {
        let mut table = Table::new(&["UNFINISHED UPLOAD", "SIZE", "LAST WRITTEN (UTC)"]);
        for u in &uploads {
            table.row(vec![
                u.path.clone(),
                human_bytes(u.bytes),
                u.modified.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]);
        }
        print!("{}", table.render());
    }
    if dry_run {
        println!(
            "{} uncommitted backup(s), {}; {} unfinished upload(s), {}: nothing deleted (dry run)",
            orphans.len(),
            human_bytes(bytes),
            uploads.len(),
            human_bytes(upload_bytes)
        );
        for (o, until) in &locked {
            println!(
                "{} would be kept: the vault's lock keeps its objects{}",
                o.id,
                until
                    .map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            );
        }
    } else {
        println!(
            "deleted {} uncommitted backup(s), {}; {} unfinished upload(s), {}",
            deleted.len(),
            human_bytes(deleted.iter().map(|o| o.bytes).sum()),
            uploads_deleted.len(),
            human_bytes(uploads_deleted.iter().map(|u| u.bytes).sum())
        );
        for o in kept {
            println!("kept {}: it was committed while this ran", o.id);
        }
        for (o, until) in locked {
            println!(
                "kept {}: the vault's lock keeps its objects{}; a later run deletes them",
                o.id,
                until
                    .map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            );
        }
        for u in uploads_kept {
            println!("kept {}: it was written to while this ran", u.path);
        }
    }
    Ok(())
}

/// Prints what purging soft-deleted backups did.
pub fn print_purge(purge: &PurgeReport, soft_delete_days: u32, dry_run: bool, indent: &str) {
    let verb = if dry_run { "would purge" } else { "purged" };
    if !purge.purged.is_empty() {
        println!(
            "{indent}{verb} {} deleted backup(s) whose {soft_delete_days}-day soft delete period is over, {}",
            purge.purged.len(),
            human_bytes(purge.purged_bytes)
        );
    }
    if !purge.waiting.is_empty() {
        println!(
            "{indent}{} deleted backup(s) are still restorable with `strata undelete` (`strata list --deleted`)",
            purge.waiting.len()
        );
    }
    for (id, until) in &purge.locked {
        println!(
            "{indent}kept deleted backup {id}: the vault's lock keeps it{}",
            until
                .map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default()
        );
    }
}

fn humanize(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn init(
    url: Option<String>,
    encrypt: bool,
    options: VaultOptions,
    ctx: &Context,
) -> Result<()> {
    let mut config: VaultConfig = ctx.config.vault.clone();
    if let Some(url) = url {
        config.url = url;
    }
    if config.url.trim().is_empty() {
        return Err(Error::config("no vault URL given").hint(
            "run `strata vault init file:///var/lib/strata/vault` (or s3://, az://, gs://)",
        ));
    }
    let mut generated: Option<PathBuf> = None;
    let key = match (encrypt, &config.key_file) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::config("--encrypt needs a key file").hint(
                "pass --key-file /etc/strata/vault.key (it is created if it does not exist)",
            ));
        }
        (true, Some(path)) if path.exists() => Some(VaultKey::load(path)?),
        (true, Some(path)) => {
            let key = VaultKey::generate();
            key.save_new(path)?;
            generated = Some(path.clone());
            Some(key)
        }
    };
    let vault = match Vault::init_with(&config, key, options).await {
        Ok(vault) => vault,
        Err(err) => {
            // A key generated for a vault that was not created is useless: remove it.
            if let Some(path) = &generated {
                let _ = std::fs::remove_file(path);
            }
            return Err(err);
        }
    };
    if ctx.json {
        print_json(&serde_json::json!({ "url": vault.url(), "meta": vault.meta() }))?;
    } else {
        println!(
            "created vault {} (id {})",
            vault.url(),
            vault.meta().vault_id
        );
        if let Some(lock) = vault.immutability() {
            println!(
                "immutable: the store ({}) refuses to delete anything Strata writes for {} days ({} mode); the probe was refused as it must be",
                lock.enforced_by, lock.days, lock.mode
            );
        }
        if let Some(path) = &config.key_file.filter(|_| encrypt) {
            println!(
                "encrypted with the key in {}: keep a copy of it somewhere safe, without it no backup in this vault can be restored",
                path.display()
            );
        }
    }
    Ok(())
}

async fn info(ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let meta = vault.meta();
    if ctx.json {
        return print_json(&serde_json::json!({
            "url": vault.url(),
            "meta": meta,
            "soft_delete_days": meta.soft_delete_days,
            "immutability": meta.immutability,
        }));
    }
    println!("vault      {}", vault.url());
    println!("id         {}", meta.vault_id);
    println!("format     {}", meta.format);
    println!(
        "created    {} by {}",
        meta.created_at.to_rfc3339(),
        meta.created_by
    );
    println!(
        "encryption {}",
        meta.encryption
            .as_ref()
            .map(|e| e.algorithm.as_str())
            .unwrap_or("none")
    );
    match (&meta.immutability, meta.soft_delete_days) {
        (Some(lock), _) => println!(
            "deletes    only after each object's lock ends ({} days after it was written); a deleted backup's data then stays {} days (`strata undelete`)",
            lock.days,
            vault.deleted_data_days()
        ),
        (None, 0) => println!("deletes    immediate: a deleted backup's data is purged at once"),
        (None, days) => println!(
            "deletes    soft: a deleted backup's data stays {days} days (`strata undelete`)"
        ),
    }
    match &meta.immutability {
        Some(lock) => println!(
            "immutable  {} days, {} mode, enforced by {} (verified at open; since {})",
            lock.days,
            lock.mode,
            lock.enforced_by,
            lock.since.to_rfc3339()
        ),
        None => println!("immutable  no"),
    }
    if meta
        .immutability
        .as_ref()
        .is_some_and(|l| l.probe == strata_core::vault::immutability::ProbeKind::Simple)
    {
        println!(
            "warning    only single uploads were checked to be locked (--lock-probe simple): segments uploaded in parts may not be"
        );
    }
    Ok(())
}

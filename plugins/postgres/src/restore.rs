//! Restore to an alternate data directory, port and tablespace locations.
//!
//! 1. Refuse before writing anything: a non-empty target (unless `force`),
//!    a running server in it, a tablespace that would land on a non-empty
//!    directory (the source's own, on the same host) without a mapping.
//! 2. Stream the backup's data streams from the vault into the target in
//!    parallel (every file checked against its digest, flushed to disk).
//!    For a differential or incremental, the full's first, then each backup
//!    applied on it in order: its removed entries (what was dropped since
//!    its base), then its streams, whose pages entries patch the files the
//!    base laid down (see [`crate::delta`]). Then the last backup's
//!    `backup_label` and `tablespace_map` (rewritten to the new tablespace
//!    paths): replay starts at that backup's start LSN.
//! 3. Write the recovery settings to `postgresql.auto.conf`:
//!    `restore_command` (Strata's `wal-fetch`), the target (a time before a
//!    transaction end of the planned WAL as `recovery_target_time`; a time
//!    after the last one as `recovery_target_lsn` at that transaction end,
//!    or `recovery_target = 'immediate'` when none ended since the backup,
//!    see [`crate::chain::time_stop`]), `recovery_target_timeline` (the
//!    plan's), `recovery_target_action = 'promote'`,
//!    `archive_mode = 'off'` (the copy has the source's system identifier and
//!    must never write into its archive) and the port; create `recovery.signal`.
//!    Then, last, `global/pg_control`: a restore that stops before it (a
//!    full disk) leaves a directory PostgreSQL refuses to start.
//! 4. Optionally start the copy with `pg_ctl`, wait until recovery has ended
//!    and it accepts connections, and report the time and LSN it reached.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_core::error::pipe_outcome;

use crate::bundle::BundleSummary;
use strata_core::plugin::RestoreSource;
use strata_core::{Error, IoResultExt, Result};

use crate::backup::{BACKUP_LABEL_STREAM, PG_CONTROL_STREAM, TABLESPACE_MAP_STREAM};
use crate::chain::{Plan, Target};
use crate::check::connect_with;
use crate::config::{ClusterConfig, os_user_ids, running_as_root};
use crate::delta::REMOVED_STREAM;

/// Where and how to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The new data directory (created; must be empty unless `force`).
    pub target_dir: PathBuf,
    /// The port the copy listens on.
    pub port: Option<u16>,
    /// Tablespace remapping: old location (or OID) to new location.
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Start the copy and wait until it has finished recovery.
    pub start: bool,
    /// Allow a non-empty target directory (its contents are removed first).
    pub force: bool,
    /// The `restore_command` to write (Strata's `wal-fetch` with `%f` and `%p`).
    pub restore_command: String,
    /// Streams written in parallel.
    pub parallel: usize,
    /// How long to wait for the started copy to finish recovery.
    pub start_timeout: Duration,
}

/// What a restore did and reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The backup laid down last (its label is the restore's).
    pub backup: String,
    /// The backups laid down before it, in order (the full first); empty
    /// when `backup` is a full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_on: Vec<String>,
    /// Files patched with changed pages.
    #[serde(default)]
    pub patched: u64,
    /// Files and directories removed (dropped since a base).
    #[serde(default)]
    pub removed: u64,
    /// The new data directory.
    pub target_dir: PathBuf,
    /// The port of the copy.
    pub port: Option<u16>,
    /// The timeline recovery was told to end on.
    pub recovery_timeline: u32,
    /// The target as written to the recovery settings.
    pub target: String,
    /// Files written whole.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Whether the copy was started.
    pub started: bool,
    /// The timeline the started copy runs on (a new one after promotion).
    pub timeline: Option<u32>,
    /// The LSN the started copy is at.
    pub lsn: Option<String>,
    /// The time of the last transaction replayed.
    pub reached_time: Option<DateTime<Utc>>,
}

/// Whether `path` is an empty directory, or absent.
pub fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io_doing_at("cannot read", path, e)),
    }
}

fn server_running(dir: &Path) -> bool {
    let Ok(pid_file) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
        return false;
    };
    pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Checks everything that can be checked before a byte is written, and
/// returns the tablespace mapping `oid -> new location`.
pub fn preflight(
    cluster: &ClusterConfig,
    plan: &Plan,
    options: &RestoreOptions,
) -> Result<BTreeMap<String, PathBuf>> {
    let target = &options.target_dir;
    if !target.is_absolute() {
        return Err(Error::config(format!(
            "--target-dir {} is not an absolute path",
            target.display()
        ))
        .hint("give the full path of the new data directory"));
    }
    if server_running(target) {
        return Err(Error::conflict(format!(
            "a PostgreSQL server is running in {}",
            target.display()
        ))
        .hint("stop it first (pg_ctl stop -D ...), or restore into another directory"));
    }
    if target == &cluster.data_directory && !options.force {
        return Err(Error::conflict(format!(
            "{} is the source cluster's data directory",
            target.display()
        ))
        .hint(
            "restore into another directory, or stop the source and pass --force to replace it",
        ));
    }
    if !is_empty_dir(target)? && !options.force {
        return Err(Error::conflict(format!(
            "the target directory {} is not empty",
            target.display()
        ))
        .hint("choose an empty or new directory, or pass --force to delete its contents first"));
    }
    // The tablespace locations of the configured cluster while its server
    // runs: never emptied, whatever --force says.
    let live_tablespaces: Vec<PathBuf> = if server_running(&cluster.data_directory) {
        std::fs::read_dir(cluster.data_directory.join("pg_tblspc"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|link| std::fs::read_link(link.path()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut mapping = BTreeMap::new();
    for space in &plan.meta.tablespaces {
        let new = options
            .tablespace_map
            .get(&space.path)
            .or_else(|| options.tablespace_map.get(&space.oid))
            .cloned()
            .unwrap_or_else(|| space.location());
        if !new.is_absolute() {
            // PostgreSQL links pg_tblspc/<oid> to the path as written, and a
            // relative link resolves inside pg_tblspc (pg_basebackup refuses
            // them too).
            return Err(Error::config(format!(
                "tablespace {} would be restored to {}, which is not an absolute path",
                space.oid,
                new.display()
            ))
            .hint(format!(
                "give the full path: --tablespace-map {}",
                shell_word(&format!("{}=/new/location", space.path))
            )));
        }
        if new.starts_with(target) {
            return Err(Error::config(format!(
                "tablespace {} would be restored inside the data directory ({})",
                space.oid,
                new.display()
            ))
            .hint("map it outside the target directory"));
        }
        if options.force && live_tablespaces.iter().any(|live| same_dir(live, &new)) {
            return Err(Error::conflict(format!(
                "tablespace {} would be restored to {}, which the running cluster at {} uses",
                space.oid,
                new.display(),
                cluster.data_directory.display()
            ))
            .hint(format!(
                "--force empties only directories no running server uses; map it to a new location: --tablespace-map {}",
                shell_word(&format!("{}=/new/location", space.path))
            )));
        }
        if !is_empty_dir(&new)? && !options.force {
            return Err(Error::conflict(format!(
                "tablespace {} (at {} in the backup) would be restored to {}, which is not empty here",
                space.oid,
                space.path,
                new.display()
            ))
            .hint(format!(
                "map it to a new location: --tablespace-map {}",
                shell_word(&format!("{}=/new/location", space.path))
            )));
        }
        mapping.insert(space.oid.clone(), new);
    }
    for old in options.tablespace_map.keys() {
        if !plan
            .meta
            .tablespaces
            .iter()
            .any(|s| &s.path == old || &s.oid == old)
        {
            let known: Vec<String> = plan
                .meta
                .tablespaces
                .iter()
                .map(|s| format!("{} ({})", s.path, s.oid))
                .collect();
            return Err(Error::config(format!(
                "--tablespace-map {old}=...: the backup has no such tablespace"
            ))
            .hint(if known.is_empty() {
                "the backup has no tablespaces".to_owned()
            } else {
                format!("its tablespaces are: {}", known.join(", "))
            }));
        }
    }
    Ok(mapping)
}

/// Whether `a` and `b` name the same directory (resolving links), or the same path.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn clear_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let result = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.doing_at("cannot remove", &path)?;
    }
    Ok(())
}

async fn read_small_stream(source: &dyn RestoreSource, plan: &Plan, name: &str) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    source.read_stream(&plan.backup.id, name, &mut out).await?;
    Ok(out)
}

/// Restores `plan` from `source`; see the module docs.
pub async fn restore(
    cluster: &ClusterConfig,
    plan: &Plan,
    source: &dyn RestoreSource,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let mapping = preflight(cluster, plan, options)?;
    let target = options.target_dir.clone();
    if options.force {
        clear_dir(&target)?;
        for dir in mapping.values() {
            clear_dir(dir)?;
        }
    }
    create_private_dir(&target)?;
    let place = {
        let target = target.clone();
        let mapping = mapping.clone();
        std::sync::Arc::new(move |rel: &Path| -> PathBuf {
            if let Ok(rest) = rel.strip_prefix("pg_tblspc") {
                let mut parts = rest.components();
                if let Some(oid) = parts.next().and_then(|c| c.as_os_str().to_str())
                    && let Some(new) = mapping.get(oid)
                {
                    let tail = parts.as_path();
                    return if tail.as_os_str().is_empty() {
                        new.clone()
                    } else {
                        new.join(tail)
                    };
                }
            }
            target.join(rel)
        })
    };
    // Each data backup in order (the full, then what applies on it): its
    // removed entries, then its data streams in parallel, bounded by
    // `parallel`; the last one's pg_control at the end.
    let mut totals = BundleSummary::default();
    let layers = plan
        .applied_on
        .iter()
        .map(|(manifest, meta)| (manifest, meta))
        .chain(std::iter::once((&plan.backup, &plan.meta)));
    for (manifest, meta) in layers {
        let id = &manifest.id;
        if manifest.streams.iter().any(|s| s.name == REMOVED_STREAM) {
            totals += restore_bundle(source, id, REMOVED_STREAM, place.clone()).await?;
        }
        let results: Vec<Result<BundleSummary>> = {
            use futures::StreamExt;
            futures::stream::iter(meta.data_streams.clone().into_iter().map(|name| {
                let place = place.clone();
                async move { restore_bundle(source, id, &name, place).await }
            }))
            .buffer_unordered(options.parallel.max(1))
            .collect()
            .await
        };
        for r in results {
            totals += r?;
        }
    }
    // backup_label byte for byte; tablespace_map with the new locations.
    let label = read_small_stream(source, plan, BACKUP_LABEL_STREAM).await?;
    let label_path = target.join("backup_label");
    write_cluster_file(&label_path, &label)?;
    let spcmap = read_small_stream(source, plan, TABLESPACE_MAP_STREAM).await?;
    if !spcmap.is_empty() {
        let entries = parse_tablespace_map(&spcmap).into_iter().map(|(oid, old)| {
            let new = mapping
                .get(&oid)
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or(old);
            (oid, new)
        });
        let out = format_tablespace_map(entries);
        let map_path = target.join("tablespace_map");
        write_cluster_file(&map_path, &out)?;
        // PostgreSQL recreates the links from tablespace_map; the directory
        // entries written by the bundle must not be in its way.
        for oid in mapping.keys() {
            let link = target.join("pg_tblspc").join(oid);
            if link.is_dir() && !link.is_symlink() {
                let _ = std::fs::remove_dir(&link);
            }
        }
    }
    let target_text = write_recovery_settings(&target, plan, options)?;
    // pg_control last, as pg_basebackup does: a restore that fails before
    // (a full disk, a damaged part) leaves a directory PostgreSQL refuses
    // to start, never one that starts without backup_label or the recovery
    // settings and replays from the wrong checkpoint. A pg_control written
    // in part is removed for the same reason.
    let control = restore_bundle(source, &plan.backup.id, PG_CONTROL_STREAM, place.clone()).await;
    if control.is_err() {
        let _ = std::fs::remove_file(target.join("global").join("pg_control"));
    }
    totals += control?;
    let mut file_systems = vec![target.clone()];
    file_systems.extend(mapping.values().cloned());
    tokio::task::spawn_blocking(move || flush_file_systems(&file_systems))
        .await
        .map_err(|e| Error::from(e).with_message("flushing the restored files"))??;
    if running_as_root() && cluster.os_user != "root" {
        let (uid, gid) = os_user_ids(&cluster.os_user)?;
        chown_tree(&target, uid, gid)?;
        for dir in mapping.values() {
            chown_tree(dir, uid, gid)?;
        }
    }
    let mut report = RestoreReport {
        backup: plan.backup.id.to_string(),
        applied_on: plan
            .applied_on
            .iter()
            .map(|(m, _)| m.id.to_string())
            .collect(),
        patched: totals.patched,
        removed: totals.removed,
        target_dir: target.clone(),
        port: options.port,
        recovery_timeline: plan.timeline,
        target: target_text,
        files: totals.files,
        bytes: totals.bytes,
        started: false,
        timeline: None,
        lsn: None,
        reached_time: None,
    };
    if options.start {
        start_and_wait(cluster, options, &mut report).await?;
        // Recovery that stops at an LSN does not record the time of the
        // transaction it stopped after (`recoveryStopsAfter` returns before
        // `SetLatestXTime`); the archive's scan knows it.
        if report.reached_time.is_none()
            && let Target::AfterCommit { committed_at, .. } = plan.target
        {
            report.reached_time = Some(committed_at);
        }
    }
    Ok(report)
}

/// Writes a file Strata adds to the restored data directory. A new file
/// gets mode 0600, as PostgreSQL creates its own (`pg_file_create_mode`,
/// `src/common/file_perm.c`; the target directory is 0700); an existing one
/// keeps its mode.
fn write_cluster_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .doing_at("writing", path)
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).doing_at("cannot create", path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .doing_at("cannot set the mode of", path)
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .doing_at("cannot change the owner of", &path)?;
        let meta = std::fs::symlink_metadata(&path).at_path(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).at_path(&path)?.flatten() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Makes everything written under `dirs` durable with one `syncfs(2)` per
/// file system, as PostgreSQL's `recovery_init_sync_method = syncfs` does
/// (doc: "Error Handling" settings; `src/common/file_utils.c`): one call
/// whatever the file count, where a list of every restored file to fsync
/// would take memory per file. It also flushes other writers' data on those
/// file systems, the price PostgreSQL documents for the same choice. Since
/// Linux 5.8 `syncfs` reports writeback errors, which fail the restore.
fn flush_file_systems(dirs: &[PathBuf]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::metadata(dir).doing_at("cannot stat", dir)?.dev();
        if !seen.insert(device) {
            continue;
        }
        let handle = std::fs::File::open(dir).doing_at("cannot open", dir)?;
        rustix::fs::syncfs(&handle)
            .map_err(std::io::Error::from)
            .doing_at("flushing the file system of", dir)?;
    }
    Ok(())
}

async fn restore_bundle(
    source: &dyn RestoreSource,
    backup: &strata_core::catalog::manifest::BackupId,
    name: &str,
    place: std::sync::Arc<dyn Fn(&Path) -> PathBuf + Send + Sync>,
) -> Result<BundleSummary> {
    let (mut writer, reader) = tokio::io::duplex(1 << 20);
    let origin = name.to_owned();
    let extract = tokio::task::spawn_blocking(move || {
        let mut input = tokio_util::io::SyncIoBridge::new(reader);
        crate::bundle::extract(&mut input, &|p| place(p), false, &origin)
    });
    let read = async {
        let result = source.read_stream(backup, name, &mut writer).await;
        drop(writer);
        result
    };
    let (read, extracted) = tokio::join!(read, extract);
    let extracted =
        extracted.map_err(|e| Error::from(e).with_message(format!("restoring {name}")))?;
    // A vault read failure is the cause when the extractor then sees a
    // truncated stream; a write failure (a full disk) when the read then
    // meets a closed pipe.
    let read = read.map_err(|e| e.context(format!("reading stream {name}")));
    pipe_outcome(read, extracted).map(|(_, summary)| summary)
}

/// `text` as one word of a POSIX shell command line: as is when it holds
/// only characters no shell interprets, otherwise double-quoted with `\`,
/// `"` and `$` escaped. PostgreSQL runs `restore_command` through `sh -c`.
pub fn shell_word(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=+@%,".contains(&b))
    {
        text.to_owned()
    } else {
        format!(
            "\"{}\"",
            text.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    }
}

/// `value` as a quoted string of `postgresql.auto.conf`: quotes and
/// backslashes doubled, as ALTER SYSTEM writes it (`write_auto_conf_file` in
/// src/backend/utils/misc/guc.c, `escape_single_quotes_ascii`), because the
/// configuration file parser reads backslash escapes inside quoted values
/// (`GUC_scanstr` in src/backend/utils/misc/guc-file.l).
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The entries of a `tablespace_map` file: `(oid, link path)`, the path as
/// bytes with PostgreSQL's escapes removed. Each line is `<oid> <path>`; a
/// backslash makes the next byte literal, so a path may hold a newline
/// (`read_tablespace_map` in src/backend/access/transam/xlogrecovery.c).
pub fn parse_tablespace_map(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut line = Vec::new();
    let mut escaped = false;
    let mut finish = |line: &mut Vec<u8>| {
        if line.is_empty() {
            return;
        }
        let split = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let oid = String::from_utf8_lossy(&line[..split]).into_owned();
        let path = line.get(split + 1..).unwrap_or_default().to_vec();
        entries.push((oid, path));
        line.clear();
    };
    for &b in bytes {
        if !escaped && (b == b'\n' || b == b'\r') {
            finish(&mut line);
        } else if !escaped && b == b'\\' {
            escaped = true;
        } else {
            line.push(b);
            escaped = false;
        }
    }
    finish(&mut line);
    entries
}

/// A `tablespace_map` file of `entries`, each path escaped as PostgreSQL
/// writes it: a backslash before every `\n`, `\r` and `\` (`do_pg_backup_start`
/// in src/backend/access/transam/xlog.c).
pub fn format_tablespace_map(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (oid, path) in entries {
        out.extend_from_slice(oid.as_bytes());
        out.push(b' ');
        for b in path {
            if matches!(b, b'\n' | b'\r' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    out
}

/// Appends the recovery settings and creates `recovery.signal`; returns the target as written.
fn write_recovery_settings(target: &Path, plan: &Plan, options: &RestoreOptions) -> Result<String> {
    let mut conf = String::new();
    conf.push_str(&format!(
        "\n# Recovery settings written by Strata: restore of backup {} at {}\n",
        plan.backup.id,
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    ));
    conf.push_str(&format!(
        "restore_command = {}\n",
        quote(&options.restore_command)
    ));
    let target_text = match plan.target {
        Target::Latest => {
            conf.push_str(&format!("recovery_target_timeline = '{}'\n", plan.timeline));
            "latest".to_owned()
        }
        Target::Time(t) => {
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
            conf.push_str(&format!("recovery_target_time = {}\n", quote(&text)));
            conf.push_str(&format!("recovery_target_timeline = '{}'\n", plan.timeline));
            text
        }
        Target::AfterCommit { time, lsn, .. } => {
            // Inclusive: recovery stops right after the first record that
            // starts at or after the LSN, the transaction end itself
            // (`recoveryStopsAfter` in src/backend/access/transam/xlogrecovery.c),
            // and needs no WAL beyond it.
            conf.push_str(&format!(
                "# {}: no transaction of the archived WAL ended after the last one before it\n",
                time.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
            conf.push_str(&format!("recovery_target_lsn = '{lsn}'\n"));
            conf.push_str("recovery_target_inclusive = on\n");
            conf.push_str(&format!("recovery_target_timeline = '{}'\n", plan.timeline));
            plan.target.to_string()
        }
        Target::Consistent { time } => {
            conf.push_str(&format!(
                "# {}: no transaction ended between the backup and this time\n",
                time.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
            conf.push_str("recovery_target = 'immediate'\n");
            conf.push_str(&format!("recovery_target_timeline = '{}'\n", plan.timeline));
            plan.target.to_string()
        }
        Target::Lsn(l) => {
            conf.push_str(&format!("recovery_target_lsn = '{l}'\n"));
            conf.push_str(&format!("recovery_target_timeline = '{}'\n", plan.timeline));
            l.to_string()
        }
    };
    conf.push_str("recovery_target_action = 'promote'\n");
    conf.push_str("archive_mode = 'off'\n");
    if let Some(port) = options.port {
        conf.push_str(&format!("port = {port}\n"));
    }
    let auto = target.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    let mut existing = without_recovery_settings(&existing);
    existing.push_str(&conf);
    write_cluster_file(&auto, existing.as_bytes())?;
    let signal = target.join("recovery.signal");
    write_cluster_file(&signal, b"")?;
    Ok(target_text)
}

/// The server log `restore --start` writes in the new data directory.
pub const RESTORE_LOG: &str = "strata-restore.log";

/// The settings a restore writes: an earlier value of any of them in the
/// backed-up `postgresql.auto.conf` (the cluster was itself restored by
/// Strata, or by hand) would add a second recovery target, which
/// PostgreSQL refuses ("multiple recovery targets specified"), or stop
/// recovery at the old target.
const RECOVERY_SETTINGS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "archive_mode",
    "port",
];

/// `conf` with every line that sets one of [`RECOVERY_SETTINGS`] commented
/// out (kept, so the operator sees what the source had).
fn without_recovery_settings(conf: &str) -> String {
    let mut out = String::with_capacity(conf.len());
    for line in conf.lines() {
        let key = line
            .trim_start()
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if RECOVERY_SETTINGS.contains(&key.as_str()) {
            out.push_str("# (replaced by Strata's restore) ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A connection configuration for the copy: the source's, on the copy's port.
pub fn copy_connection(
    cluster: &ClusterConfig,
    port: Option<u16>,
) -> Result<tokio_postgres::Config> {
    let source = cluster.pg_config()?;
    let mut config = tokio_postgres::Config::new();
    for host in source.get_hosts() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => {
                config.host(h);
            }
            tokio_postgres::config::Host::Unix(p) => {
                config.host_path(p);
            }
        }
    }
    if let Some(user) = source.get_user() {
        config.user(user);
    }
    if let Some(db) = source.get_dbname() {
        config.dbname(db);
    }
    if let Some(pw) = source.get_password() {
        config.password(pw);
    }
    match port {
        Some(p) => {
            config.port(p);
        }
        None => {
            for p in source.get_ports() {
                config.port(*p);
            }
        }
    }
    config.connect_timeout(Duration::from_secs(10));
    Ok(config)
}

async fn start_and_wait(
    cluster: &ClusterConfig,
    options: &RestoreOptions,
    report: &mut RestoreReport,
) -> Result<()> {
    let log = options.target_dir.join(RESTORE_LOG);
    // A log left by the restore that made the backed-up cluster would put
    // its lines into this start's error messages.
    let _ = std::fs::remove_file(&log);
    let pg_ctl = cluster.program("pg_ctl");
    let mut cmd = cluster.command_as_owner(&pg_ctl);
    cmd.arg("-D")
        .arg(&options.target_dir)
        .arg("-l")
        .arg(&log)
        .arg("-w")
        .arg("-t")
        .arg(options.start_timeout.as_secs().max(1).to_string())
        .arg("start");
    let output = tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(|e| {
            Error::engine(format!("cannot run {}", pg_ctl.display()))
                .in_message("path", pg_ctl.display())
                .with_source(e)
        })?;
    if !output.status.success() {
        return Err(start_failure(
            &log,
            &String::from_utf8_lossy(&output.stderr),
        ));
    }
    let config = copy_connection(cluster, options.port)?;
    let deadline = tokio::time::Instant::now() + options.start_timeout;
    loop {
        if let Ok(server) = connect_with(&config, "the restored cluster").await
            && let Ok(row) = server
                .client
                .query_one(
                    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(), \
                            CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END, \
                            CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
                    &[],
                )
                .await
        {
            let in_recovery: bool = row.get(0);
            if !in_recovery {
                report.started = true;
                report.reached_time = row.get::<_, Option<std::time::SystemTime>>(1).map(DateTime::<Utc>::from);
                report.lsn = row.get::<_, Option<String>>(2);
                report.timeline = row
                    .get::<_, Option<String>>(3)
                    .and_then(|t| u32::from_str_radix(&t, 16).ok());
                return Ok(());
            }
        }
        if !server_running(&options.target_dir) {
            return Err(start_failure(
                &log,
                "the restored server stopped during recovery",
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::engine(format!(
                "the restored cluster in {} did not finish recovery within {}s",
                options.target_dir.display(),
                options.start_timeout.as_secs()
            ))
            .hint(format!(
                "it is still running; follow its log in {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn start_failure(log: &Path, detail: &str) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<String> = text
        .lines()
        .rev()
        .take(8)
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut error = Error::engine(format!(
        "the restored cluster did not start: {}\n{}",
        detail.trim(),
        tail.join("\n")
    ));
    // Replaying WAL writes (the segments restore_command fetches, the
    // pages replay extends): a data directory's disk sized for the backup
    // alone fills during recovery. PostgreSQL's words for it, anywhere in
    // the log, name the cure.
    let data_dir = log.parent().unwrap_or(Path::new("."));
    if text.contains("No space left on device") || text.contains("Check free disk space") {
        error = error.hint(format!(
            "recovery ran out of space: free space on {}'s file system",
            data_dir.display()
        ));
    }
    if text.contains("Read-only file system") {
        error = error.hint(format!(
            "{}'s file system is mounted read-only: remount it read-write",
            data_dir.display()
        ));
    }
    error.hint(format!(
        "the files are in place; see {} for PostgreSQL's reasons",
        log.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_maps_keep_backslashes_and_newlines_as_postgresql_escapes_them() {
        // What PostgreSQL 15 writes for links /srv/new\bs and /srv/two\nlines.
        let written = b"16385 /srv/new\\\\bs\n16386 /srv/two\\\nlines\n";
        let entries = parse_tablespace_map(written);
        assert_eq!(
            entries,
            vec![
                ("16385".to_owned(), b"/srv/new\\bs".to_vec()),
                ("16386".to_owned(), b"/srv/two\nlines".to_vec()),
            ]
        );
        assert_eq!(format_tablespace_map(entries), written.to_vec());
        // Spaces inside a path are not separators; only the first one is.
        let spaced = parse_tablespace_map(b"16387 /srv/with space/x\r\n");
        assert_eq!(
            spaced,
            vec![("16387".to_owned(), b"/srv/with space/x".to_vec())]
        );
    }

    #[test]
    fn earlier_recovery_settings_are_commented_out_and_the_rest_kept() {
        let conf = "# Do not edit\nshared_buffers = '1GB'\nrecovery_target_time = '2026-11-01 00:00:00+00'\n  restore_command='x'\nport = 5433\nrecovery_target_timeline='2'\n";
        let out = without_recovery_settings(conf);
        assert_eq!(
            out,
            "# Do not edit\nshared_buffers = '1GB'\n\
             # (replaced by Strata's restore) recovery_target_time = '2026-11-01 00:00:00+00'\n\
             # (replaced by Strata's restore)   restore_command='x'\n\
             # (replaced by Strata's restore) port = 5433\n\
             # (replaced by Strata's restore) recovery_target_timeline='2'\n"
        );
    }

    /// A copy whose recovery ran out of space (restore_command could not
    /// write the segment, or replay could not extend a file) says where to
    /// free space, whatever line of the log says so.
    #[test]
    fn a_start_that_ran_out_of_space_says_where_to_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(RESTORE_LOG);
        let full = format!("free space on {}'s file system", dir.path().display());
        for text in [
            "error: wal-fetch 000000010000000000000022: writing pg_wal/RECOVERYXLOG: No space left on device (os error 28)\n\
             FATAL:  could not restore file \"000000010000000000000022\" from archive: command not executable\n",
            "FATAL:  could not extend file \"base/5/16384\": wrote only 4096 of 8192 bytes at block 599\n\
             HINT:  Check free disk space.\n\
             CONTEXT:  WAL redo at 0/3000028\n",
        ] {
            std::fs::write(&log, text).unwrap();
            let err = start_failure(&log, "pg_ctl: could not start server");
            assert!(
                err.hints().iter().any(|h| h.ends_with(&full)),
                "{:?}",
                err.hints()
            );
        }
        std::fs::write(
            &log,
            "FATAL:  could not open file \"postmaster.pid\": Read-only file system\n",
        )
        .unwrap();
        let err = start_failure(&log, "pg_ctl: could not start server");
        assert!(
            err.hints()
                .iter()
                .any(|h| h.contains("remount it read-write")),
            "{:?}",
            err.hints()
        );
        // Any other failure: only the log.
        std::fs::write(&log, "FATAL:  invalid value for parameter \"port\"\n").unwrap();
        let err = start_failure(&log, "pg_ctl: could not start server");
        assert_eq!(err.hints().len(), 1, "{:?}", err.hints());
    }

    #[test]
    fn auto_conf_values_double_quotes_and_backslashes() {
        assert_eq!(
            quote(r#"strata pg wal-fetch %f "%p" --config /etc/o'k\x"#),
            r#"'strata pg wal-fetch %f "%p" --config /etc/o''k\\x'"#
        );
    }
}

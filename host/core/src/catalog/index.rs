//! The local catalog index: a SQLite cache of the vault's manifests.
//!
//! The vault is the truth: a backup exists when its manifest is committed
//! there. The index only makes listing and planning fast without reading
//! every manifest from object storage, and it can always be thrown away and
//! recreated with [`CatalogIndex::rebuild`] (`strata catalog rebuild`).
//!
//! # Sharing
//!
//! Several processes open the same index file at once: the service, the
//! PostgreSQL `archive_command` (`strata pg wal-push`) and SAP HANA's
//! `hdbbackint`. The file is therefore opened in WAL journal mode (readers
//! never block the writer) with a 30-second busy timeout, and every write is
//! either a single statement or an `IMMEDIATE` transaction, so a writer waits
//! for the other instead of failing with "database is locked".
//!
//! A new index file is created readable and writable by its owner and
//! group only (0660): give the state directory a group that the service and
//! the engine users share (for example with the setgid bit), and every
//! process can use the index.
//!
//! # Schema
//!
//! Versioned with `PRAGMA user_version`; [`CatalogIndex::open`] applies the
//! missing migrations in order and refuses an index written by a newer
//! Strata. Version 1:
//!
//! - `backups(vault_id, id, engine, instance, database, kind, fork,
//!   started_at, ended_at, manifest)`: one row per committed backup, keyed by
//!   `(vault_id, id)`; `manifest` is the manifest's JSON, the other columns
//!   exist for filtering.
//! - `vaults(vault_id, synced_at, manifests)`: the vaults whose rows were
//!   rebuilt from the vault itself, and when.
//!
//! Version 2 adds the service's job history, which (unlike the rest) is
//! not in the vault: a rebuild keeps it, and a lost index loses it.
//!
//! - `jobs(id, engine, instance, database, kind, trigger, scheduled_for,
//!   started_at, ended_at, result, backup_id, raw_bytes, stored_bytes,
//!   error, hint)`: one row per job ([`JobRecord`]); times are RFC 3339
//!   UTC, `result` is `running`, `succeeded`, `failed` or `cancelled`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::catalog::manifest::{BackupId, BackupKind, Manifest};
use crate::error::{Error, ErrorKind, Result};
use crate::vault::Vault;

/// How long a writer waits for another process holding the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The hint every index failure carries: the index is disposable.
const REBUILD_HINT: &str =
    "the index is only a cache of the vault: move the file away and run `strata catalog rebuild`";

/// The schema migrations, in order; migration `n` (1-based) brings the
/// schema to `user_version = n`. Append only: never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: backups and synced vaults.
    "CREATE TABLE backups (
        vault_id   TEXT NOT NULL,
        id         TEXT NOT NULL,
        engine     TEXT NOT NULL,
        instance   TEXT NOT NULL,
        database   TEXT,
        kind       TEXT NOT NULL,
        fork       TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at   TEXT NOT NULL,
        manifest   TEXT NOT NULL,
        PRIMARY KEY (vault_id, id)
    ) WITHOUT ROWID;
    CREATE INDEX backups_by_item ON backups (vault_id, engine, instance, database, id);
    CREATE TABLE vaults (
        vault_id  TEXT PRIMARY KEY,
        synced_at TEXT NOT NULL,
        manifests INTEGER NOT NULL
    );",
    // 2: job history.
    "CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        engine        TEXT NOT NULL,
        instance      TEXT NOT NULL,
        database      TEXT,
        kind          TEXT NOT NULL,
        trigger       TEXT NOT NULL,
        scheduled_for TEXT,
        started_at    TEXT NOT NULL,
        ended_at      TEXT,
        result        TEXT NOT NULL,
        backup_id     TEXT,
        raw_bytes     INTEGER,
        stored_bytes  INTEGER,
        error         TEXT,
        hint          TEXT
    );
    CREATE INDEX jobs_by_item ON jobs (engine, instance, database, kind, id);",
];

/// The schema version this build writes and the newest it reads.
pub const INDEX_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Which backups [`CatalogIndex::list`] returns; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this engine (`postgres`, `sqlserver`, `hana`, `stream`).
    pub engine: Option<String>,
    /// Only this instance.
    pub instance: Option<String>,
    /// Only this database.
    pub database: Option<String>,
    /// Only this kind of backup.
    pub kind: Option<BackupKind>,
}

/// What [`CatalogIndex::rebuild`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Manifests found in the vault (the rows the index now holds for it).
    pub manifests: usize,
    /// Backups that the index did not know before.
    pub added: usize,
    /// Rows dropped because their backup is no longer in the vault.
    pub removed: usize,
}

/// One job of the service (a backup, or retention), as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// The job's number in this index.
    pub id: i64,
    /// The engine.
    pub engine: String,
    /// The instance.
    pub instance: String,
    /// The database, for engines with several.
    pub database: Option<String>,
    /// `full`, `diff`, `incr`, `log` or `expire`.
    pub kind: String,
    /// What started it: `schedule`, `initial`, `chain-broken`, `retry`,
    /// `manual`.
    pub trigger: String,
    /// The schedule slot it runs for (UTC), when a schedule started it.
    pub scheduled_for: Option<chrono::DateTime<Utc>>,
    /// When it started (UTC).
    pub started_at: chrono::DateTime<Utc>,
    /// When it ended (UTC); `None` while it runs.
    pub ended_at: Option<chrono::DateTime<Utc>>,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub result: String,
    /// The backup it committed.
    pub backup_id: Option<String>,
    /// Raw bytes backed up.
    pub raw_bytes: Option<u64>,
    /// Bytes stored in the vault.
    pub stored_bytes: Option<u64>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What to do about the error.
    pub hint: Option<String>,
}

/// The local catalog index. Cheap to share between threads (`Send + Sync`);
/// calls are serialised on one connection.
pub struct CatalogIndex {
    conn: Mutex<Connection>,
    origin: String,
}

impl std::fmt::Debug for CatalogIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogIndex")
            .field("origin", &self.origin)
            .finish()
    }
}

impl CatalogIndex {
    /// Opens the index file at `path`, creating it (and its parent
    /// directories) if needed, and brings its schema up to date.
    ///
    /// Fails with [`ErrorKind::Catalog`] if the file is not a SQLite
    /// database or was written by a newer Strata; the hint says how to
    /// recreate it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_index_dir(parent).map_err(|e| {
                Error::from(e).context(format!(
                    "creating the directory {} for the catalog index",
                    parent.display()
                ))
            })?;
        }
        let origin = path.display().to_string();
        let created = !path.exists();
        let conn = Connection::open(path).map_err(|e| index_error(&origin, "opening", e))?;
        if created {
            share_with_group(path, &origin)?;
        }
        Self::setup(conn, origin, true)
    }

    /// An index held in memory only (tests, one-shot commands).
    pub fn open_in_memory() -> Result<Self> {
        let origin = "in-memory catalog index".to_owned();
        let conn = Connection::open_in_memory().map_err(|e| index_error(&origin, "opening", e))?;
        Self::setup(conn, origin, false)
    }

    fn setup(mut conn: Connection, origin: String, wal: bool) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| index_error(&origin, "configuring", e))?;
        if wal {
            set_wal(&conn).map_err(|e| index_error(&origin, "opening", e))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| index_error(&origin, "configuring", e))?;
        }
        migrate(&mut conn, &origin)?;
        Ok(CatalogIndex {
            conn: Mutex::new(conn),
            origin,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done write behind
        // (an open transaction rolls back when dropped), so the connection
        // is still good.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records (or replaces) the manifest of a committed backup of vault
    /// `vault_id`, keyed by `(vault_id, manifest.id)`.
    pub fn record(&self, vault_id: &str, manifest: &Manifest) -> Result<()> {
        let json = serde_json::to_string(manifest)?;
        let conn = self.conn();
        insert(&conn, vault_id, manifest, &json)
            .map_err(|e| index_error(&self.origin, "recording a backup in", e))?;
        Ok(())
    }

    /// Removes backup `id` of vault `vault_id` from the index (after it was
    /// deleted from the vault). Forgetting an unknown backup is not an error.
    pub fn forget(&self, vault_id: &str, id: &BackupId) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM backups WHERE vault_id = ?1 AND id = ?2",
                params![vault_id, id.as_str()],
            )
            .map_err(|e| index_error(&self.origin, "removing a backup from", e))?;
        Ok(())
    }

    /// The manifests of vault `vault_id` that match `filter`, ordered by
    /// backup id (that is, by start time).
    pub fn list(&self, vault_id: &str, filter: &ListFilter) -> Result<Vec<Manifest>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, manifest FROM backups
                 WHERE vault_id = ?1
                   AND (?2 IS NULL OR engine = ?2)
                   AND (?3 IS NULL OR instance = ?3)
                   AND (?4 IS NULL OR database = ?4)
                   AND (?5 IS NULL OR kind = ?5)
                 ORDER BY id",
            )
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        let rows = statement
            .query_map(
                params![
                    vault_id,
                    filter.engine,
                    filter.instance,
                    filter.database,
                    filter.kind.map(BackupKind::as_str),
                ],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        let mut manifests = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(|e| index_error(&self.origin, "reading", e))?;
            manifests.push(self.parse(&id, &json)?);
        }
        Ok(manifests)
    }

    /// The manifest of backup `id` of vault `vault_id`, if the index has it.
    pub fn get(&self, vault_id: &str, id: &BackupId) -> Result<Option<Manifest>> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT manifest FROM backups WHERE vault_id = ?1 AND id = ?2",
                params![vault_id, id.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        json.map(|json| self.parse(id.as_str(), &json)).transpose()
    }

    /// Whether the rows of vault `vault_id` were rebuilt from the vault at
    /// least once (so the index can be trusted to know every backup, not
    /// only those this host recorded).
    pub fn is_synced(&self, vault_id: &str) -> Result<bool> {
        let found: Option<i64> = self
            .conn()
            .query_row(
                "SELECT 1 FROM vaults WHERE vault_id = ?1",
                params![vault_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        Ok(found.is_some())
    }

    /// Recreates the rows of `vault` from the manifests committed in it:
    /// reads every manifest, then in one transaction replaces the vault's
    /// rows and marks the vault synced. Rows of backups no longer in the
    /// vault are dropped. Other vaults' rows are untouched.
    ///
    /// A manifest that cannot be read fails the rebuild and leaves the index
    /// as it was.
    pub async fn rebuild(&self, vault: &Vault) -> Result<RebuildReport> {
        let vault_id = vault.meta().vault_id.clone();
        let manifests = vault
            .all_manifests()
            .await
            .map_err(|e| e.context(format!("rebuilding the catalog index from {}", vault.url())))?;
        let mut conn = self.conn();
        replace_vault(&mut conn, &vault_id, &manifests)
            .map_err(|e| index_error(&self.origin, "rebuilding", e))
    }

    fn parse(&self, id: &str, json: &str) -> Result<Manifest> {
        Manifest::from_json(json.as_bytes(), &format!("{id} in {}", self.origin))
            .map_err(|e| e.hint(REBUILD_HINT))
    }
}

const JOB_COLUMNS: &str = "id, engine, instance, database, kind, trigger, scheduled_for, started_at, ended_at, result, backup_id, raw_bytes, stored_bytes, error, hint";

fn job_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let time = |i: usize| -> rusqlite::Result<Option<chrono::DateTime<Utc>>> {
        let text: Option<String> = row.get(i)?;
        Ok(text.and_then(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .ok()
                .map(|t| t.to_utc())
        }))
    };
    let bytes = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|b| b.max(0) as u64))
    };
    Ok(JobRecord {
        id: row.get(0)?,
        engine: row.get(1)?,
        instance: row.get(2)?,
        database: row.get(3)?,
        kind: row.get(4)?,
        trigger: row.get(5)?,
        scheduled_for: time(6)?,
        started_at: time(7)?.unwrap_or_default(),
        ended_at: time(8)?,
        result: row.get(9)?,
        backup_id: row.get(10)?,
        raw_bytes: bytes(11)?,
        stored_bytes: bytes(12)?,
        error: row.get(13)?,
        hint: row.get(14)?,
    })
}

impl CatalogIndex {
    /// Records a job that starts now; returns it with its number.
    pub fn start_job(&self, mut job: JobRecord) -> Result<JobRecord> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO jobs (engine, instance, database, kind, trigger, scheduled_for, started_at, result)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running')",
            params![
                job.engine,
                job.instance,
                job.database,
                job.kind,
                job.trigger,
                job.scheduled_for.map(|t| t.to_rfc3339()),
                job.started_at.to_rfc3339(),
            ],
        )
        .map_err(|e| index_error(&self.origin, "recording a job in", e))?;
        job.id = conn.last_insert_rowid();
        job.result = "running".into();
        Ok(job)
    }

    /// Records how job `job.id` ended, and what it ran as: its `kind` and
    /// `trigger` as they are now (a due log backup the engine took as a
    /// full is recorded as that full, trigger `chain-broken`).
    pub fn finish_job(&self, job: &JobRecord) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE jobs SET ended_at = ?2, result = ?3, backup_id = ?4, raw_bytes = ?5,
             stored_bytes = ?6, error = ?7, hint = ?8, kind = ?9, trigger = ?10 WHERE id = ?1",
            params![
                job.id,
                job.ended_at.map(|t| t.to_rfc3339()),
                job.result,
                job.backup_id,
                job.raw_bytes.map(|b| b as i64),
                job.stored_bytes.map(|b| b as i64),
                job.error,
                job.hint,
                job.kind,
                job.trigger,
            ],
        )
        .map_err(|e| index_error(&self.origin, "recording a job in", e))?;
        Ok(())
    }

    /// The newest `limit` jobs, newest first, of `engine`/`instance` when given.
    pub fn jobs(
        &self,
        engine: Option<&str>,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE (?1 IS NULL OR engine = ?1) AND (?2 IS NULL OR instance = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        let rows = statement
            .query_map(params![engine, instance, limit as i64], job_of_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| index_error(&self.origin, "reading", e))?;
        Ok(rows)
    }

    /// The newest job of `kind` for one database (the latest started), of
    /// any result or, with `succeeded`, the newest that succeeded.
    pub fn last_job(
        &self,
        engine: &str,
        instance: &str,
        database: Option<&str>,
        kind: &str,
        succeeded: bool,
    ) -> Result<Option<JobRecord>> {
        let conn = self.conn();
        conn.query_row(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE engine = ?1 AND instance = ?2 AND database IS ?3 AND kind = ?4
                   AND (?5 = 0 OR result = 'succeeded')
                 ORDER BY id DESC LIMIT 1"
            ),
            params![engine, instance, database, kind, succeeded],
            job_of_row,
        )
        .optional()
        .map_err(|e| index_error(&self.origin, "reading", e))
    }

    /// Marks jobs left `running` by a process that is gone as cancelled
    /// (called by the service at start, holding the service lock).
    pub fn fail_abandoned_jobs(&self, now: chrono::DateTime<Utc>) -> Result<usize> {
        let conn = self.conn();
        conn.execute(
            "UPDATE jobs SET result = 'cancelled', ended_at = ?1,
             error = 'the service stopped while the job ran',
             hint = 'a backup it committed before it stopped is in `strata list`; if there is none, the next pass takes the job again'
             WHERE result = 'running'",
            params![now.to_rfc3339()],
        )
        .map_err(|e| index_error(&self.origin, "recording a job in", e))
    }
}

fn insert(
    conn: &Connection,
    vault_id: &str,
    manifest: &Manifest,
    json: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO backups
            (vault_id, id, engine, instance, database, kind, fork, started_at, ended_at, manifest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (vault_id, id) DO UPDATE SET
            engine = excluded.engine, instance = excluded.instance,
            database = excluded.database, kind = excluded.kind, fork = excluded.fork,
            started_at = excluded.started_at, ended_at = excluded.ended_at,
            manifest = excluded.manifest",
    )?
    .execute(params![
        vault_id,
        manifest.id.as_str(),
        manifest.engine,
        manifest.instance,
        manifest.database,
        manifest.kind.as_str(),
        manifest.fork,
        manifest.started_at.to_rfc3339(),
        manifest.ended_at.to_rfc3339(),
        json,
    ])?;
    Ok(())
}

fn replace_vault(
    conn: &mut Connection,
    vault_id: &str,
    manifests: &[Manifest],
) -> rusqlite::Result<RebuildReport> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let before: BTreeSet<String> = {
        let mut statement = tx.prepare("SELECT id FROM backups WHERE vault_id = ?1")?;
        statement
            .query_map(params![vault_id], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    tx.execute("DELETE FROM backups WHERE vault_id = ?1", params![vault_id])?;
    let mut added = 0;
    let mut now: BTreeSet<&str> = BTreeSet::new();
    for manifest in manifests {
        let json = serde_json::to_string(manifest)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        insert(&tx, vault_id, manifest, &json)?;
        if !before.contains(manifest.id.as_str()) {
            added += 1;
        }
        now.insert(manifest.id.as_str());
    }
    let removed = before
        .iter()
        .filter(|id| !now.contains(id.as_str()))
        .count();
    tx.execute(
        "INSERT INTO vaults (vault_id, synced_at, manifests) VALUES (?1, ?2, ?3)
         ON CONFLICT (vault_id) DO UPDATE SET
            synced_at = excluded.synced_at, manifests = excluded.manifests",
        params![vault_id, Utc::now().to_rfc3339(), manifests.len() as i64],
    )?;
    tx.commit()?;
    Ok(RebuildReport {
        manifests: now.len(),
        added,
        removed,
    })
}

/// Creates the index's directory and its missing parents with mode 0770
/// less the umask (0750 under the usual 022): never open to other users,
/// since the index lists every backup; shared with the group when the
/// umask allows it, as the package's `/var/lib/strata` (2770) is.
fn create_index_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o770);
    builder.create(dir)
}

/// Makes a newly created index file readable and writable by its group
/// (0660), whatever the umask: the service and the engine users (`postgres`,
/// `<sid>adm`) share the index through a common group, and SQLite gives the
/// `-wal` and `-shm` files the database file's permissions.
#[cfg(unix)]
fn share_with_group(path: &Path, origin: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| {
        Error::from(e).context(format!(
            "setting the permissions of the catalog index {origin}"
        ))
    })
}

#[cfg(not(unix))]
fn share_with_group(_path: &Path, _origin: &str) -> Result<()> {
    Ok(())
}

/// Switches the file to WAL journaling. Two processes creating the file at
/// the same moment can see a transient lock here that the busy handler does
/// not cover, so it is retried for as long as the busy timeout.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        {
            Ok(_) => return Ok(()),
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn migrate(conn: &mut Connection, origin: &str) -> Result<()> {
    let version = user_version(conn).map_err(|e| index_error(origin, "opening", e))?;
    if version == INDEX_SCHEMA_VERSION {
        return Ok(());
    }
    if version > INDEX_SCHEMA_VERSION {
        return Err(newer_schema(origin, version));
    }
    // IMMEDIATE: two processes opening a fresh file must not both migrate;
    // the second one waits, then finds the schema current.
    let found = (|| -> rusqlite::Result<u32> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = user_version(&tx)?;
        if version >= INDEX_SCHEMA_VERSION {
            return Ok(version);
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", step as u32 + 1)?;
        }
        tx.commit()?;
        Ok(INDEX_SCHEMA_VERSION)
    })()
    .map_err(|e| index_error(origin, "updating the schema of", e))?;
    if found > INDEX_SCHEMA_VERSION {
        return Err(newer_schema(origin, found));
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn newer_schema(origin: &str, version: u32) -> Error {
    Error::new(
        ErrorKind::Catalog,
        format!(
            "the catalog index at {origin} has schema version {version}, newer than this \
             Strata understands ({INDEX_SCHEMA_VERSION})"
        ),
    )
    .hint(
        "upgrade Strata on this host, or give this Strata its own index file and run `strata catalog rebuild`",
    )
}

/// The file system fault behind a SQLite failure, in the operating
/// system's words: SQLite says only "database or disk is full", "disk I/O
/// error" or "unable to open database file" (it keeps the OS error to
/// itself), so the index's file system is looked at: mounted read-only, or
/// a write failing with (almost) no space left.
fn file_system_fault(origin: &str, err: &rusqlite::Error) -> Option<std::io::Error> {
    use rustix::fs::StatVfsMountFlags;
    let code = err.sqlite_error_code()?;
    let dir = Path::new(origin)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(dir).ok()?;
    let writing = matches!(
        code,
        ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
    );
    if writing && stat.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Some(rustix::io::Errno::ROFS.into());
    }
    // A write of a few pages fails with some space still free.
    let nearly_full = stat.f_bavail.saturating_mul(stat.f_frsize) < 1 << 20;
    if code == ErrorCode::DiskFull || (code == ErrorCode::SystemIoFailure && nearly_full) {
        return Some(rustix::io::Errno::NOSPC.into());
    }
    None
}

/// Wraps a SQLite failure into a catalog error that names the index file and
/// tells the operator how to recover.
fn index_error(origin: &str, doing: &str, err: rusqlite::Error) -> Error {
    if let Some(fault) = file_system_fault(origin, &err) {
        // The hints of a local I/O failure at the index's path: free space
        // there, or remount it read-write. Moving the file away or
        // rebuilding would fail the same way.
        let mut error = Error::new(
            ErrorKind::Catalog,
            format!("{doing} the catalog index at {origin} failed: {fault}"),
        );
        for hint in Error::io_at(origin, fault).hints() {
            error = error.hint(hint.clone());
        }
        return error
            .hint("the index is only a cache of the vault: backups and restores go on without it, and `strata catalog rebuild` brings it up to date")
            .with_source(err);
    }
    let message = match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            format!("the catalog index at {origin} is not a SQLite database (it is corrupted)")
        }
        Some(ErrorCode::DatabaseCorrupt) => format!("the catalog index at {origin} is corrupted"),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            return Error::new(
                ErrorKind::Catalog,
                format!(
                    "the catalog index at {origin} stayed locked by another process for {} s",
                    BUSY_TIMEOUT.as_secs()
                ),
            )
            .hint("check for a hung strata process; the operation can be retried")
            .retryable(crate::error::sqlite_is_retryable(&err))
            .with_source(err);
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            return Error::new(
                ErrorKind::Catalog,
                format!("{doing} the catalog index at {origin} failed"),
            )
            .hint(
                "check that the index file and its directory are readable and writable by this user \
                 (the service, the postgres user and <sid>adm share it)",
            )
            .with_source(err);
        }
        _ => format!("{doing} the catalog index at {origin} failed"),
    };
    Error::new(ErrorKind::Catalog, message)
        .hint(REBUILD_HINT)
        .with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directories made for a new index are never open to other users,
    /// whatever the umask; the index itself is 0660 (its group shares it).
    #[cfg(unix)]
    #[test]
    fn a_new_index_directory_is_closed_to_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/strata/catalog.db");
        CatalogIndex::open(&path).unwrap();
        for made in [dir.path().join("state"), dir.path().join("state/strata")] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o707, 0o700, "{} has mode {mode:o}", made.display());
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{mode:o}");
    }
}

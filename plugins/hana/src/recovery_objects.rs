//! The Backint objects a recovery will ask for, as far as the vault tells.
//!
//! SAP HANA plans its own recovery from its backup catalog, and reads the
//! objects through `hdbbackint` only once the operator has started it. So
//! that a missing object stops `strata restore hana` instead of failing
//! the recovery half way (HANA's `CHECK ACCESS` or the log replay), the
//! plugin names the objects HANA will need and the host checks that each
//! is stored:
//!
//! - the pieces of the data backup: the newest one that ended by the target
//!   time, or the one `--backup-id` names. Pieces of one data backup share
//!   HANA's backup ID (`hdbbackint -s`, one per `BACKUP DATA` statement, the
//!   same for every service's call), and `-c` says how many objects it has;
//!   without an ID (older callers), the pieces stored while the newest one
//!   was (the services send theirs concurrently) under the same name prefix;
//! - the log backups written from the start of that data backup up to the
//!   target, and the first one after it (it holds the target's commit);
//! - the newest version of the backup catalog (`log_backup_0_0_0_0`), which
//!   `USING CATALOG BACKINT` reads first.

use chrono::{DateTime, Utc};
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::{Error, Result};

use crate::backint::ObjectMeta;

/// One backup with its Backint details.
type Object<'a> = (&'a Manifest, ObjectMeta);

/// The objects a recovery of `database` to `limit` reads (see the module
/// docs), out of every backup of the system.
///
/// # Errors
/// [`ErrorKind::NotFound`](strata_core::ErrorKind::NotFound) when the vault
/// has no data backup of `database` that ended by `limit` (or none with
/// `backup_id`), or fewer pieces of it than HANA sent (`-c`).
pub fn recovery_objects<'a>(
    backups: &'a [Manifest],
    sid: &str,
    database: &str,
    limit: DateTime<Utc>,
    backup_id: Option<u64>,
) -> Result<Vec<&'a Manifest>> {
    let of_database: Vec<Object<'a>> = backups
        .iter()
        .filter(|m| m.database.as_deref() == Some(database))
        .filter_map(|m| Some((m, ObjectMeta::of(m)?)))
        .collect();
    let data: Vec<&Object<'a>> = of_database
        .iter()
        .filter(|(_, meta)| meta.object == "data")
        .collect();
    let by_id = |(_, meta): &&Object<'a>| {
        backup_id.is_none_or(|id| meta.hana_backup_id.as_deref() == Some(&id.to_string()))
    };
    let Some(newest) = newest_data_backup(&data, limit, by_id) else {
        let which = match backup_id {
            Some(id) => format!("with HANA backup ID {id}"),
            None => format!("that ended by {limit}"),
        };
        return Err(Error::not_found(format!(
            "the vault has no data backup of {database}@{sid} {which}"
        ))
        .hint(
            "`strata list hana` shows what hdbbackint stored; take one with `strata backup hana`",
        ));
    };
    // A differential builds on the newest full before it, an incremental on
    // the newest data backup of any level before it.
    let data_start = started(&newest);
    let mut chain = vec![newest];
    loop {
        let set = chain.last().expect("the chain starts with the newest");
        let kind = set[0].0.kind;
        if kind == BackupKind::Full {
            break;
        }
        let start = started(set);
        let base = newest_data_backup(&data, start, |(m, _): &&Object<'a>| {
            kind == BackupKind::Incr || m.kind == BackupKind::Full
        });
        let Some(base) = base else {
            return Err(Error::not_found(format!(
                "the {} data backup {} of {database}@{sid} has no full backup before it in the vault",
                kind.as_str(),
                label(set)
            ))
            .hint("recover to a time after a full data backup, or take one with `strata backup hana`"));
        };
        chain.push(base);
    }
    for set in &chain {
        complete(set, database, sid)?;
    }
    let pieces: Vec<&Object<'a>> = chain.into_iter().flatten().collect();
    let mut logs: Vec<&Object<'a>> = of_database
        .iter()
        .filter(|(m, meta)| meta.object == "log" && m.ended_at >= data_start)
        .collect();
    logs.sort_by_key(|(m, _)| m.ended_at);
    let past_limit = logs.iter().position(|(m, _)| m.ended_at > limit);
    logs.truncate(past_limit.map_or(logs.len(), |first_after| first_after + 1));
    let catalog = of_database
        .iter()
        .filter(|(_, meta)| meta.object == "catalog")
        .max_by_key(|(m, _)| m.ended_at);
    Ok(pieces
        .into_iter()
        .chain(logs)
        .chain(catalog)
        .map(|(m, _)| *m)
        .collect())
}

/// The newest data backup (its pieces) that `accept`ed pieces start and
/// whose every piece ended by `limit`.
fn newest_data_backup<'a, 'b>(
    data: &[&'b Object<'a>],
    limit: DateTime<Utc>,
    accept: impl Fn(&&'b Object<'a>) -> bool,
) -> Option<Vec<&'b Object<'a>>> {
    let mut newest_first: Vec<&&'b Object<'a>> = data
        .iter()
        .filter(|(m, _)| m.ended_at <= limit)
        .filter(|piece| accept(piece))
        .collect();
    newest_first.sort_by_key(|(m, _)| std::cmp::Reverse(m.ended_at));
    newest_first
        .into_iter()
        .map(|piece| pieces_of(piece, data))
        .find(|pieces| pieces.iter().all(|(m, _)| m.ended_at <= limit))
}

/// When the first piece of a data backup started.
fn started(set: &[&Object<'_>]) -> DateTime<Utc> {
    set.iter()
        .map(|(m, _)| m.started_at)
        .min()
        .expect("a data backup has a piece")
}

/// A data backup's HANA backup ID, or its first piece's EBID.
fn label(set: &[&Object<'_>]) -> String {
    let (m, meta) = set[0];
    meta.hana_backup_id
        .clone()
        .unwrap_or_else(|| m.id.to_string())
}

/// Fails when the vault holds fewer pieces of a data backup than HANA sent
/// (`-c`, the count of the whole backup across its `hdbbackint` calls).
fn complete(set: &[&Object<'_>], database: &str, sid: &str) -> Result<()> {
    let count = set[0]
        .1
        .count
        .as_deref()
        .and_then(|c| c.trim().parse::<usize>().ok());
    match count {
        Some(count) if set[0].1.hana_backup_id.is_some() && set.len() < count => {
            Err(Error::not_found(format!(
                "data backup {} of {database}@{sid} has {} of its {count} pieces in the vault",
                label(set),
                set.len()
            ))
            .hint("a piece was deleted or never stored: recover to a time before this data backup, or take a new one with `strata backup hana`"))
        }
        _ => Ok(()),
    }
}

/// The pieces of the data backup `piece` belongs to, out of `data`: those
/// with its HANA backup ID, or without one, those stored under the same
/// name prefix while it was.
fn pieces_of<'a, 'b>(piece: &Object<'a>, data: &[&'b Object<'a>]) -> Vec<&'b Object<'a>> {
    let (newest, meta) = piece;
    data.iter()
        .filter(|(m, other)| match &meta.hana_backup_id {
            Some(id) => other.hana_backup_id.as_ref() == Some(id),
            None => {
                other.hana_backup_id.is_none()
                    && name_prefix(&other.name) == name_prefix(&meta.name)
                    && m.started_at <= newest.ended_at
                    && newest.started_at <= m.ended_at
            }
        })
        .copied()
        .collect()
}

/// The part of a data piece's name before HANA's `_databackup_<volume>_<n>`.
fn name_prefix(name: &str) -> &str {
    name.rfind("_databackup_").map_or(name, |at| &name[..at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::catalog::manifest::{BackupId, BackupKind, Compression};

    fn t(minute: i64) -> DateTime<Utc> {
        "2026-11-22T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::minutes(minute)
    }

    /// A Backint object stored from `start` to `end` (minutes).
    fn object(
        name: &str,
        object: &str,
        id: Option<&str>,
        count: Option<&str>,
        start: i64,
        end: i64,
    ) -> Manifest {
        let meta = ObjectMeta {
            name: format!("/usr/sap/HDB/SYS/global/hdb/backint/DB_HDB/{name}"),
            source: "PIPE".into(),
            hana_backup_id: id.map(str::to_owned),
            level: None,
            object: object.into(),
            user: Some("HDB".into()),
            count: count.map(str::to_owned),
            api: Some("1.50".into()),
            created: t(start),
        };
        let kind = if object == "data" {
            BackupKind::Full
        } else {
            BackupKind::Log
        };
        Manifest {
            format: 1,
            id: BackupId::generate(t(start)),
            engine: "hana".into(),
            instance: "HDB".into(),
            database: Some("HDB".into()),
            kind,
            started_at: t(start),
            ended_at: t(end),
            consistent_at: None,
            fork: String::new(),
            start: None,
            end: None,
            base: None,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: None,
            streams: Vec::new(),
            labels: Default::default(),
            engine_meta: meta.to_engine_meta(),
        }
    }

    fn names(objects: &[&Manifest]) -> Vec<String> {
        objects
            .iter()
            .map(|m| {
                ObjectMeta::of(m)
                    .unwrap()
                    .name
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn system() -> Vec<Manifest> {
        vec![
            object("FULL_databackup_0_1", "data", Some("100"), Some("2"), 0, 10),
            object("FULL_databackup_2_1", "data", Some("100"), Some("2"), 0, 12),
            object("log_backup_2_0_1_2", "log", None, None, 20, 21),
            object(
                "FULL_databackup_0_1",
                "data",
                Some("200"),
                Some("2"),
                60,
                70,
            ),
            object(
                "FULL_databackup_2_1",
                "data",
                Some("200"),
                Some("2"),
                60,
                72,
            ),
            object("log_backup_2_0_3_4", "log", None, None, 80, 81),
            object("log_backup_2_0_5_6", "log", None, None, 90, 91),
            object("log_backup_2_0_7_8", "log", None, None, 100, 101),
            object("log_backup_0_0_0_0", "catalog", None, None, 102, 102),
        ]
    }

    #[test]
    fn the_newest_data_backup_its_logs_up_to_the_target_and_the_catalog() {
        let backups = system();
        let objects = recovery_objects(&backups, "HDB", "HDB", t(85), None).unwrap();
        assert_eq!(
            names(&objects),
            [
                "FULL_databackup_0_1",
                "FULL_databackup_2_1",
                "log_backup_2_0_3_4",
                "log_backup_2_0_5_6",
                "log_backup_0_0_0_0"
            ]
        );
        assert!(
            objects[..2].iter().all(|m| m.started_at == t(60)),
            "backup 200's pieces"
        );
        // Before the second data backup ended: the first one, and its logs.
        let objects = recovery_objects(&backups, "HDB", "HDB", t(71), None).unwrap();
        assert_eq!(objects[0].started_at, t(0));
        assert_eq!(
            names(&objects)[2..],
            [
                "log_backup_2_0_1_2",
                "log_backup_2_0_3_4",
                "log_backup_0_0_0_0"
            ]
        );
        // A backup ID picks that data backup.
        let objects = recovery_objects(&backups, "HDB", "HDB", t(200), Some(100)).unwrap();
        assert!(objects[..2].iter().all(|m| m.started_at == t(0)));
    }

    #[test]
    fn a_data_backup_missing_a_piece_or_none_at_all_is_refused() {
        let mut backups = system();
        backups.remove(4);
        let err = recovery_objects(&backups, "HDB", "HDB", t(85), None).unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "data backup 200 of HDB@HDB has 1 of its 2 pieces in the vault"
        );
        let err = recovery_objects(&backups, "HDB", "HDB", t(5), None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the vault has no data backup of HDB@HDB that ended by 2026-11-22 00:05:00"
            ),
            "{err}"
        );
        let err = recovery_objects(&backups, "HDB", "HDB", t(200), Some(300)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the vault has no data backup of HDB@HDB with HANA backup ID 300"
        );
    }

    #[test]
    fn a_differential_needs_the_full_before_it_and_an_incremental_its_chain() {
        let with_kind = |mut m: Manifest, kind| {
            m.kind = kind;
            m
        };
        let mut backups = vec![
            object("FULL_databackup_0_1", "data", Some("100"), Some("1"), 0, 10),
            with_kind(
                object(
                    "DIFF_databackup_0_1",
                    "data",
                    Some("150"),
                    Some("1"),
                    30,
                    35,
                ),
                BackupKind::Diff,
            ),
            with_kind(
                object(
                    "INCR_databackup_0_1",
                    "data",
                    Some("160"),
                    Some("1"),
                    40,
                    42,
                ),
                BackupKind::Incr,
            ),
            object("log_backup_2_0_9_9", "log", None, None, 36, 37),
            object("log_backup_2_0_10_10", "log", None, None, 43, 44),
        ];
        let objects = recovery_objects(&backups, "HDB", "HDB", t(43), None).unwrap();
        assert_eq!(
            names(&objects),
            [
                "INCR_databackup_0_1",
                "DIFF_databackup_0_1",
                "FULL_databackup_0_1",
                "log_backup_2_0_10_10"
            ]
        );
        backups.remove(0);
        let err = recovery_objects(&backups, "HDB", "HDB", t(43), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the diff data backup 150 of HDB@HDB has no full backup before it in the vault"
        );
    }

    #[test]
    fn without_backup_ids_the_pieces_stored_together_form_the_data_backup() {
        let backups = vec![
            object("FULL_databackup_0_1", "data", None, None, 0, 10),
            object("FULL_databackup_0_1", "data", None, None, 60, 70),
            object("FULL_databackup_2_1", "data", None, None, 61, 72),
            object("OTHER_databackup_2_1", "data", None, None, 61, 71),
        ];
        let objects = recovery_objects(&backups, "HDB", "HDB", t(100), None).unwrap();
        assert_eq!(
            names(&objects),
            ["FULL_databackup_0_1", "FULL_databackup_2_1"]
        );
        assert_eq!(objects[0].started_at, t(60));
    }
}

//! PostgreSQL's chain: what the archive holds, as core's planner reads it.
//!
//! The inputs are the committed data backups (their manifests) and the WAL
//! archive's listing; the output is a [`Chain`] for core's planner
//! (`strata_core::catalog::planner`), which alone decides which windows are
//! restorable and which backups and timeline a target needs:
//!
//! - every full, differential and incremental backup is a data record on
//!   its timeline (the fork), from its start LSN to its stop LSN,
//!   consistent at its stop time; it needs the WAL from its own start LSN
//!   ([`PgChainRules::log_needed_from`]). A differential or incremental
//!   names its base (the manifest's `base`), which the planner lays down
//!   first: for a time target it picks the newest data backup consistent
//!   by then, so full + newest differential + the shortest replay;
//! - every run of consecutive archived segments of a timeline is one log
//!   record covering their LSNs, up to the time [`RunCommits::reaches`]
//!   (see below); `.partial` segments are left out, as recovery never asks
//!   for them (`XLogFileReadAnyTLI` in
//!   src/backend/access/transam/xlogrecovery.c reads `<timeline><segment>`
//!   names only), and so are the segments of a timeline that lie before
//!   the segment where it began, which recovery never reads either (it
//!   skips a timeline for segments before its `begin`);
//! - timeline `N`'s history file lists its ancestors and the LSN where each
//!   was left: the fork origin of `N` is its last line, and recovery reads a
//!   segment from the newest timeline on that path that had begun by then
//!   (as PostgreSQL's `XLogFileReadAnyTLI` does), which is how the planner
//!   follows forks. A timeline began (in time) when its history file was
//!   written, at promotion: a time target is restored on a timeline that
//!   existed at that time, so "10:45" means what the cluster looked like at
//!   10:45, even if it was later rewound and branched.
//!
//! # The time a run of WAL reaches
//!
//! A point-in-time restore must stop exactly where PostgreSQL's
//! `recovery_target_time` would stop with all the WAL ever written: before
//! the first commit or abort record whose time is past the target. Within
//! the archived WAL that is only possible while such a record exists in
//! it; after the last transaction end of the archive PostgreSQL would
//! replay to the end and fail ("recovery ended before configured recovery
//! target was reached"). The catalog therefore reads what each segment's
//! records say (its commit attributes, [`crate::wal::SegmentCommits`]) and
//! gives each run:
//!
//! - the newest `xact_time` it holds and its last transaction end (in LSN
//!   order, whole within the run: a record crossing into a segment that is
//!   not archived is not replayable);
//! - the time it reaches: its last segment's `mtime` (PostgreSQL closed the
//!   segment then, so a transaction that ended before then is in the run),
//!   but never as late as the time of a commit that started in the run and
//!   ends beyond it, and never later than the newest known commit when the
//!   record crossing out of a segment after it could not be read; and at
//!   least the newest commit it holds (`mtime` has the file system's
//!   coarser clock).
//!
//! A run without any transaction end restores, for every time it reaches,
//! the state after the last transaction end before it: the restore then
//! stops at that record's LSN ([`time_stop`]). So every time of a window
//! restores, and lands exactly on the state at that time: with
//! `recovery_target_time` when a transaction of the planned WAL ended
//! after it, and otherwise with `recovery_target_lsn` at the last
//! transaction end before it (or at consistency, when none ended between
//! the backup and the target).
//!
//! Reading the commit attributes costs one small ranged read per segment.
//! A run is read from its last segment backwards, sixteen segments at a
//! time (and up to four runs at once), until a segment with a transaction
//! end the run holds whole is found: a busy cluster costs one batch of
//! sixteen reads per run, whatever the archive's size; a long idle stretch
//! at the end of a run costs a read per idle segment. Segments archived by an
//! older Strata have no commit attributes; a run with such a segment is
//! timed by its last `mtime` alone, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest, Position};
use strata_core::catalog::planner::{BackupRecord, ChainRules, ForkOrigin};
use strata_core::plugin::{ArchiveEntry, ArchiveFinding, ArchiveStore, Chain, ExpiredLog};
use strata_core::{Error, Result};

use crate::backup::BackupMeta;
use crate::wal::{CommitPoint, WalArchive, WalFileInfo};
use crate::walname::{Lsn, WalFileKind, WalFileName, segno_of};

/// Segments whose attributes are read at once while timing a run.
const READ_BATCH: usize = 16;

/// A timeline's history: the ancestors and where each was left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineHistory {
    /// The timeline.
    pub timeline: u32,
    /// `(ancestor, switch LSN)`, oldest first.
    pub parents: Vec<(u32, Lsn)>,
    /// When the timeline began (its history file's modification time).
    pub created_at: Option<DateTime<Utc>>,
}

impl TimelineHistory {
    /// Parses a `.history` file of `timeline`.
    pub fn parse(timeline: u32, text: &str) -> Result<TimelineHistory> {
        let mut parents = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
                return Err(Error::integrity(format!(
                    "timeline {timeline}'s history has a malformed line `{line}`"
                )));
            };
            let tli: u32 = tli.parse().map_err(|_| {
                Error::integrity(format!(
                    "timeline {timeline}'s history names timeline `{tli}`"
                ))
            })?;
            parents.push((tli, lsn.parse()?));
        }
        Ok(TimelineHistory {
            timeline,
            parents,
            created_at: None,
        })
    }
}

/// What a restore should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// The end of the archived WAL on the newest timeline.
    Latest,
    /// A point in time, before a transaction end of the planned WAL
    /// (`recovery_target_time`).
    Time(DateTime<Utc>),
    /// A point in time after every transaction end of the planned WAL:
    /// right after the last one, which starts at `lsn`
    /// (`recovery_target_lsn`, inclusive).
    AfterCommit {
        /// The time asked for.
        time: DateTime<Utc>,
        /// Where the last transaction end before it starts.
        lsn: Lsn,
        /// When that transaction ended (the newest `xact_time` of its
        /// segment).
        committed_at: DateTime<Utc>,
    },
    /// A point in time when no transaction ended between the backup and
    /// it: the backup's consistent state (`recovery_target = 'immediate'`).
    Consistent {
        /// The time asked for.
        time: DateTime<Utc>,
    },
    /// An LSN.
    Lsn(Lsn),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
        match self {
            Target::Latest => f.write_str("the latest point"),
            Target::Time(t) => f.write_str(&time(t)),
            Target::AfterCommit { time: t, lsn, .. } => write!(
                f,
                "{} (after the last transaction before it, at LSN {lsn})",
                time(t)
            ),
            Target::Consistent { time: t } => write!(
                f,
                "{} (the backup's consistent state: no transaction ended since)",
                time(t)
            ),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

/// What the archived WAL of one run of segments holds, for planning and
/// restoring (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunCommits {
    /// The newest time a restore may stop at with this run.
    pub reaches: DateTime<Utc>,
    /// Whether the run's segments were scanned for their transaction ends
    /// (else it is timed by its last segment's `mtime` alone).
    pub scanned: bool,
    /// The newest `xact_time` of the transaction ends the run holds whole.
    pub newest: Option<DateTime<Utc>>,
    /// The last transaction end (in LSN order) the run holds whole.
    pub last: Option<CommitPoint>,
}

impl RunCommits {
    /// Times a run from the attributes of a suffix of its segments, in
    /// order, ending with the run's last segment; `run_end` is the LSN
    /// right after the run. The suffix must reach back to a segment with a
    /// transaction end, or to the run's first segment.
    pub fn of_segments(segments: &[WalFileInfo], run_end: Lsn) -> Option<RunCommits> {
        let last_segment = segments.last()?;
        let mut reaches = last_segment.mtime;
        let unscanned = RunCommits {
            reaches,
            scanned: false,
            newest: None,
            last: None,
        };
        let mut last: Option<CommitPoint> = None;
        let mut newest: Option<DateTime<Utc>> = None;
        // A record after the last known transaction end whose kind could
        // not be read: it may be a transaction end, of a time no earlier
        // than the ones before it.
        let mut unreadable_after_last = false;
        let mut crossing_out: Option<DateTime<Utc>> = None;
        for info in segments.iter().rev() {
            let Some(commits) = &info.commits else {
                return Some(unscanned);
            };
            if last.is_none() && !commits.complete {
                unreadable_after_last = true;
            }
            if let Some(crossing) = commits.crossing {
                if crossing.end_lsn <= run_end {
                    newest = newest.max(Some(crossing.time));
                    last = last.or(Some(crossing));
                } else {
                    crossing_out =
                        Some(crossing_out.map_or(crossing.time, |c| c.min(crossing.time)));
                }
            }
            newest = newest.max(commits.last_time);
            last = last.or(commits.last);
        }
        if let Some(t) = crossing_out {
            // A transaction ended then, in WAL that is not archived yet.
            reaches = reaches.min(t - chrono::Duration::microseconds(1));
        }
        if unreadable_after_last && let Some(n) = newest {
            reaches = reaches.min(n);
        }
        if let Some(n) = newest {
            reaches = reaches.max(n);
        }
        Some(RunCommits {
            reaches,
            scanned: true,
            newest,
            last,
        })
    }

    /// Whether a segment with these attributes ends the backwards reading
    /// of a run that ends at `run_end`: it holds a transaction end the run
    /// holds whole, or was not scanned.
    fn ends_reading(info: &WalFileInfo, run_end: Lsn) -> bool {
        info.commits
            .as_ref()
            .is_none_or(|c| c.last.is_some() || c.crossing.is_some_and(|x| x.end_lsn <= run_end))
    }
}

/// How a restore to time `t` stops, from the runs of WAL the plan replays
/// (in order) and the backup's stop LSN: before the first transaction end
/// after `t` when the planned WAL holds one, else right after the last one
/// (PostgreSQL would otherwise replay to the end of the WAL and fail), or
/// at the backup's consistent state when no transaction ended after the
/// backup. Runs that were not scanned leave it to PostgreSQL's
/// `recovery_target_time`.
pub fn time_stop(t: DateTime<Utc>, runs: &[RunCommits], backup_stop: Lsn) -> Target {
    if runs.iter().any(|r| !r.scanned) || runs.iter().any(|r| r.newest.is_some_and(|n| n > t)) {
        return Target::Time(t);
    }
    match runs.iter().rev().find_map(|r| r.last) {
        Some(last) if last.lsn >= backup_stop => Target::AfterCommit {
            time: t,
            lsn: last.lsn,
            committed_at: last.time,
        },
        _ => Target::Consistent { time: t },
    }
}

/// The chosen backups and timeline for a target.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The data backups laid down before [`backup`](Self::backup), in
    /// order: the full, then any differential or incremental before the
    /// last (empty when `backup` is a full).
    pub applied_on: Vec<(Manifest, BackupMeta)>,
    /// The data backup laid down last (a full, or the differential or
    /// incremental applied on `applied_on`): its `backup_label`,
    /// `pg_control` and tablespaces are the restore's, and WAL replay
    /// starts at its start LSN.
    pub backup: Manifest,
    /// Its PostgreSQL details.
    pub meta: BackupMeta,
    /// The timeline recovery should end on.
    pub timeline: u32,
    /// The target.
    pub target: Target,
}

/// The committed full backups and the WAL archive of one cluster (one system identifier).
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The system identifier.
    pub system_id: u64,
    /// The WAL segment size.
    pub seg_size: u64,
    /// The data backups (full, differential, incremental) of this system,
    /// oldest first.
    pub backups: Vec<(Manifest, BackupMeta)>,
    /// Archived segment numbers per timeline.
    pub segments: BTreeMap<u32, BTreeSet<u64>>,
    /// Timeline histories (timeline 1 has none).
    pub histories: BTreeMap<u32, TimelineHistory>,
    /// What every run of consecutive segments of a timeline holds, by
    /// `(timeline, last segment)`.
    run_commits: BTreeMap<(u32, u64), RunCommits>,
    /// Where this system's WAL lives, to name files in messages
    /// ([`WalArchive::location`]).
    location: String,
}

impl Catalog {
    /// Loads the catalog of cluster `instance` from its committed
    /// `manifests` (any kinds, any order; the data backups are used) and
    /// its WAL archive. With several system identifiers (a cluster
    /// re-created under the same name), the newest backup's system is used
    /// unless `system_id` names one.
    pub async fn load(
        manifests: Vec<Manifest>,
        archive: &WalArchive<'_>,
        instance: &str,
        system_id: Option<u64>,
    ) -> Result<Catalog> {
        let mut data_backups: Vec<(Manifest, BackupMeta)> = manifests
            .into_iter()
            .filter(|m| m.kind.is_data())
            .filter_map(|m| BackupMeta::from_manifest(&m).ok().map(|meta| (m, meta)))
            .collect();
        data_backups.sort_by_key(|(_, meta)| meta.stop_time);
        let system_id = match system_id {
            Some(id) => id,
            None => match data_backups.last() {
                Some((_, meta)) => meta.system_id(),
                None => {
                    let ids = archive.system_ids().await?;
                    match ids.as_slice() {
                        [id] => *id,
                        [] => {
                            return Err(Error::not_found(format!(
                                "there is no backup and no WAL of PostgreSQL cluster `{instance}` in the vault"
                            ))
                            .hint(format!("take one with `strata backup pg {instance} --kind full`")));
                        }
                        _ => {
                            return Err(Error::config(format!(
                                "the vault holds WAL of several systems for `{instance}`: {ids:?}"
                            ))
                            .hint("name one with --system-id"));
                        }
                    }
                }
            },
        };
        data_backups.retain(|(_, meta)| meta.system_id() == system_id);
        let seg_size = data_backups
            .last()
            .map(|(_, m)| m.wal_segment_size)
            .unwrap_or(16 * 1024 * 1024);
        let listed = archive.list(system_id).await?;
        let mut segments: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut histories = BTreeMap::new();
        for (tli, names) in listed {
            for name in names {
                match name.kind {
                    WalFileKind::Segment => {
                        segments
                            .entry(tli)
                            .or_default()
                            .insert(name.segno(seg_size));
                    }
                    WalFileKind::History => {
                        if let Some(bytes) = archive.read(system_id, &name).await? {
                            let text = String::from_utf8_lossy(&bytes);
                            let mut history = TimelineHistory::parse(tli, &text)?;
                            history.created_at =
                                archive.header(system_id, &name).await?.map(|h| h.mtime);
                            histories.insert(tli, history);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Recovery never reads a timeline's segments before the one where
        // it began (`XLogFileReadAnyTLI` skips the timeline for them).
        for (tli, history) in &histories {
            if let (Some(segs), Some((_, switch))) = (segments.get_mut(tli), history.parents.last())
            {
                let begin = segno_of(*switch, seg_size);
                segs.retain(|&s| s >= begin);
            }
        }
        segments.retain(|_, segs| !segs.is_empty());
        let mut catalog = Catalog {
            system_id,
            seg_size,
            backups: data_backups,
            segments,
            histories,
            run_commits: BTreeMap::new(),
            location: archive.location(system_id),
        };
        let runs: Vec<(u32, u64, u64)> = catalog.runs().collect();
        let timed: Vec<Option<((u32, u64), RunCommits)>> = futures::stream::iter(runs)
            .map(|(tli, first, last)| async move {
                let commits = time_run(archive, system_id, tli, first, last, seg_size).await?;
                Ok::<_, Error>(commits.map(|c| ((tli, last), c)))
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        catalog.run_commits.extend(timed.into_iter().flatten());
        Ok(catalog)
    }

    /// Every timeline with WAL or a history file.
    pub fn timelines(&self) -> Vec<u32> {
        let mut all: BTreeSet<u32> = self.segments.keys().copied().collect();
        all.extend(self.histories.keys().copied());
        all.into_iter().collect()
    }

    /// Every run of consecutive archived segments: `(timeline, first, last)`.
    pub fn runs(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.segments.iter().flat_map(|(&tli, segs)| {
            let mut runs: Vec<(u32, u64, u64)> = Vec::new();
            for &seg in segs {
                match runs.last_mut() {
                    Some(run) if run.2 + 1 == seg => run.2 = seg,
                    _ => runs.push((tli, seg, seg)),
                }
            }
            runs
        })
    }

    /// The name of the segment that holds the byte before `end` on `timeline`.
    pub fn last_segment(&self, timeline: u32, end: Lsn) -> WalFileName {
        WalFileName::segment(
            timeline,
            segno_of(Lsn(end.0.saturating_sub(1)), self.seg_size),
            self.seg_size,
        )
    }

    /// The log record id of run `(timeline, first, last)`: named by its
    /// first and last segment, so that a gap the planner reports reads as
    /// PostgreSQL's own file names.
    fn run_id(&self, tli: u32, first: u64, last: u64) -> BackupId {
        format!(
            "wal.{}-{}",
            WalFileName::segment(tli, first, self.seg_size),
            WalFileName::segment(tli, last, self.seg_size)
        )
        .parse()
        .expect("WAL run ids are valid backup ids")
    }

    /// What every run of WAL holds, by the id of its log record in
    /// [`chain`](Self::chain).
    pub fn runs_by_id(&self) -> BTreeMap<BackupId, RunCommits> {
        self.runs()
            .filter_map(|(tli, first, last)| {
                let commits = self.run_commits.get(&(tli, last))?;
                Some((self.run_id(tli, first, last), commits.clone()))
            })
            .collect()
    }

    /// The chain for core's planner; see the [module docs](self).
    pub fn chain(&self) -> Chain {
        let mut records: Vec<BackupRecord> = self
            .backups
            .iter()
            .map(|(manifest, meta)| BackupRecord {
                id: manifest.id.clone(),
                kind: manifest.kind,
                fork: meta.timeline.to_string(),
                start: Some(position(meta.start())),
                end: Some(position(meta.stop())),
                started_at: meta.start_time,
                ended_at: meta.stop_time,
                consistent_at: Some(meta.stop_time),
                base: manifest.base.clone(),
            })
            .collect();
        for (tli, first, last) in self.runs() {
            let Some(commits) = self.run_commits.get(&(tli, last)) else {
                // A segment listed but gone by the time its header was read.
                continue;
            };
            let time = commits.reaches;
            records.push(BackupRecord {
                id: self.run_id(tli, first, last),
                kind: BackupKind::Log,
                fork: tli.to_string(),
                start: Some(position(Lsn(first * self.seg_size))),
                end: Some(position(Lsn((last + 1) * self.seg_size))),
                started_at: time,
                ended_at: time,
                consistent_at: Some(time),
                base: None,
            });
        }
        Chain {
            records,
            rules: Arc::new(PgChainRules {
                histories: self.histories.clone(),
                seg_size: self.seg_size,
                timelines: self.segments.keys().copied().collect(),
                location: self.location.clone(),
            }),
        }
    }
}

/// Times run `first..=last` of timeline `tli` from its segments'
/// attributes, read backwards [`READ_BATCH`] at a time until a segment with
/// a transaction end (see [`RunCommits::of_segments`]). `None` when its last
/// segment is gone.
async fn time_run(
    archive: &WalArchive<'_>,
    system_id: u64,
    tli: u32,
    first: u64,
    last: u64,
    seg_size: u64,
) -> Result<Option<RunCommits>> {
    let run_end = Lsn((last + 1) * seg_size);
    let mut suffix: Vec<WalFileInfo> = Vec::new();
    let mut next = last + 1;
    while next > first {
        let from = next.saturating_sub(READ_BATCH as u64).max(first);
        let batch: Vec<Option<WalFileInfo>> = futures::stream::iter(from..next)
            .map(|seg| {
                let name = WalFileName::segment(tli, seg, seg_size);
                async move { archive.header(system_id, &name).await }
            })
            .buffered(READ_BATCH)
            .try_collect()
            .await?;
        let found = batch
            .iter()
            .flatten()
            .any(|info| RunCommits::ends_reading(info, run_end));
        let Some(mut batch) = batch.into_iter().collect::<Option<Vec<WalFileInfo>>>() else {
            // A segment gone since the listing: what the run holds is not
            // known, and recovery will not get through it anyway.
            return Ok(suffix.last().map(|info| RunCommits {
                reaches: info.mtime,
                scanned: false,
                newest: None,
                last: None,
            }));
        };
        batch.append(&mut suffix);
        suffix = batch;
        next = from;
        if found {
            break;
        }
    }
    Ok(RunCommits::of_segments(&suffix, run_end))
}

/// PostgreSQL's rules for core's planner: timeline histories are the fork
/// origins, and a data backup needs the WAL from its start LSN (the backup
/// is restorable only with the WAL written while it ran, PostgreSQL's
/// "backup_label" rule); for a differential that is its own start, not its
/// full's: replay begins at the last backup laid down.
#[derive(Debug, Clone)]
pub struct PgChainRules {
    histories: BTreeMap<u32, TimelineHistory>,
    /// The WAL segment size, to name the segments of a gap.
    seg_size: u64,
    /// The timelines with archived segments.
    timelines: BTreeSet<u32>,
    /// Where the system's WAL lives ([`WalArchive::location`]).
    location: String,
}

impl PgChainRules {
    /// Where archived file `name` lives, for messages.
    fn location_of(&self, name: &WalFileName) -> String {
        format!("{}/{:08X}/{name}", self.location, name.timeline)
    }
}

impl ChainRules for PgChainRules {
    fn fork_origin(&self, fork: &str) -> Option<ForkOrigin> {
        let timeline: u32 = fork.parse().ok()?;
        let (parent, switch) = self.histories.get(&timeline)?.parents.last()?;
        Some(ForkOrigin {
            parent: parent.to_string(),
            at: position(*switch),
        })
    }

    fn fork_began_at(&self, fork: &str) -> Option<DateTime<Utc>> {
        let timeline: u32 = fork.parse().ok()?;
        self.histories.get(&timeline)?.created_at
    }

    fn log_needed_from(&self, data: &BackupRecord) -> Option<Position> {
        data.kind.is_data().then_some(data.start).flatten()
    }
    fn position_text(&self, position: Position) -> String {
        lsn_of(position).map_or_else(|_| position.to_string(), |lsn| lsn.to_string())
    }

    /// `--latest` restores to the end of the archived WAL on the newest
    /// timeline: a segment or history file missing on the way there makes
    /// it fail, naming what is missing, rather than stop earlier.
    fn latest_is_end_of_archive(&self) -> bool {
        true
    }

    /// The WAL segments a gap in coverage lacks, by name (what `wal-fetch`
    /// would be asked for and the archive does not hold).
    fn missing_log_text(&self, fork: &str, from: Position, to: Position) -> Option<String> {
        let timeline: u32 = fork.parse().ok()?;
        let (from, to) = (lsn_of(from).ok()?, lsn_of(to).ok()?);
        if to.0 <= from.0 || self.seg_size == 0 {
            return None;
        }
        let first = WalFileName::segment(timeline, segno_of(from, self.seg_size), self.seg_size);
        let last = WalFileName::segment(
            timeline,
            segno_of(Lsn(to.0 - 1), self.seg_size),
            self.seg_size,
        );
        Some(if first == last {
            format!(
                "WAL segment {first} is missing from the archive ({})",
                self.location_of(&first)
            )
        } else {
            format!(
                "WAL segments {first} to {last} are missing from the archive ({} to {})",
                self.location_of(&first),
                self.location_of(&last)
            )
        })
    }

    /// A timeline above 1 with archived WAL but no history file: recovery
    /// cannot tell where it branched, so nothing restorable reaches it.
    fn fork_problem(&self, fork: &str) -> Option<String> {
        let timeline: u32 = fork.parse().ok()?;
        (timeline > 1 && self.timelines.contains(&timeline) && !self.histories.contains_key(&timeline))
            .then(|| {
                let history = WalFileName::history(timeline);
                format!(
                    "timeline {timeline}'s history file {history} is missing from the WAL archive ({}), so where it branched is unknown",
                    self.location_of(&history)
                )
            })
    }
}

/// The WAL archive's findings for `strata verify`
/// ([`EnginePlugin::verify_archive`](strata_core::plugin::EnginePlugin::verify_archive)):
///
/// - every archived file is read whole (its header's checksum and name,
///   the AEAD tag, size and BLAKE3): a damaged one is named;
/// - every timeline above 1 with segments has its history file, without
///   which recovery cannot follow it;
/// - the segments restores need are there: each data backup's own, from
///   its start to its stop (it is not consistent without them), and from
///   the newest backup's start on, every segment up to the end of the
///   archive on its timeline and on every later one. Retention never
///   deletes those, and PostgreSQL archives every segment in order, so one
///   missing there was lost. (Older gaps can be retention's doing:
///   between two kept backups only their own WAL stays.)
///
/// `.backup` files are read when present; a missing one is no finding:
/// neither recovery nor Strata reads them.
pub async fn verify_wal(
    backups: &[Manifest],
    archive: &dyn ArchiveStore,
) -> Result<Vec<ArchiveFinding>> {
    let entries = archive.list("wal").await?;
    let mut findings = Vec::new();
    let keys: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
    let mut reads: Vec<(String, Result<bool>)> = Vec::with_capacity(keys.len());
    for batch in keys.chunks(4) {
        let read = futures::future::join_all(batch.iter().map(|key| archive.get(key))).await;
        reads.extend(
            batch
                .iter()
                .cloned()
                .zip(read.into_iter().map(|r| r.map(|o| o.is_some()))),
        );
    }
    for (key, read) in reads {
        match read {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    strata_core::ErrorKind::Integrity | strata_core::ErrorKind::Crypto
                ) =>
            {
                findings.push(ArchiveFinding {
                    key,
                    problem: format!("{e}; restores that replay through it fail"),
                });
            }
            Err(e) => return Err(e.context(format!("verifying archived WAL {key}"))),
        }
    }
    let metas: Vec<(&BackupId, BackupMeta)> = backups
        .iter()
        .filter(|m| m.kind.is_data())
        .filter_map(|m| BackupMeta::from_manifest(m).ok().map(|meta| (&m.id, meta)))
        .collect();
    // (system, timeline) -> segment numbers, and the timelines with history.
    let mut files: BTreeMap<(u64, u32), Vec<WalFileName>> = BTreeMap::new();
    let mut histories: BTreeSet<(u64, u32)> = BTreeSet::new();
    for entry in &entries {
        let mut parts = entry.key.split('/').skip(1);
        let (Some(system), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(system), Ok(name)) = (system.parse::<u64>(), WalFileName::parse(name)) else {
            continue;
        };
        match name.kind {
            WalFileKind::Segment => files.entry((system, name.timeline)).or_default().push(name),
            WalFileKind::History => {
                histories.insert((system, name.timeline));
            }
            _ => {}
        }
    }
    let key =
        |system: u64, name: &WalFileName| format!("wal/{system}/{:08X}/{name}", name.timeline);
    for (&(system, timeline), names) in &files {
        if timeline > 1 && !histories.contains(&(system, timeline)) {
            let history = WalFileName::history(timeline);
            findings.push(ArchiveFinding {
                key: key(system, &history),
                problem: format!(
                    "is missing from the archive: timeline {timeline} has {} archived segment(s), which recovery cannot follow from its parent without it",
                    names.len()
                ),
            });
        }
    }
    let seg_size_of = |system: u64| {
        metas
            .iter()
            .filter(|(_, m)| m.system_id() == system)
            .max_by_key(|(_, m)| m.stop_time)
            .map_or(16 << 20, |(_, m)| m.wal_segment_size)
    };
    let segnos = |system: u64, timeline: u32| -> BTreeSet<u64> {
        let seg_size = seg_size_of(system);
        files
            .get(&(system, timeline))
            .map(|names| names.iter().map(|n| n.segno(seg_size)).collect())
            .unwrap_or_default()
    };
    let mut missing: BTreeMap<(u64, u32, u64), String> = BTreeMap::new();
    for (id, meta) in &metas {
        let (Ok(start), Ok(stop)) = (meta.start_lsn.parse::<Lsn>(), meta.stop_lsn.parse::<Lsn>())
        else {
            continue;
        };
        let seg_size = meta.wal_segment_size;
        let have = segnos(meta.system_id(), meta.timeline);
        for segno in segno_of(start, seg_size)..=segno_of(stop, seg_size) {
            if !have.contains(&segno) {
                missing.entry((meta.system_id(), meta.timeline, segno)).or_insert(format!(
                    "backup {} cannot be made consistent without it (its WAL runs from {} to {})",
                    id,
                    meta.start_lsn,
                    meta.stop_lsn
                ));
            }
        }
    }
    let mut systems: Vec<u64> = metas.iter().map(|(_, m)| m.system_id()).collect();
    systems.sort_unstable();
    systems.dedup();
    for system in systems {
        let Some((newest_id, newest)) = metas
            .iter()
            .filter(|(_, m)| m.system_id() == system)
            .max_by_key(|(_, m)| m.stop_time)
        else {
            continue;
        };
        let Ok(start) = newest.start_lsn.parse::<Lsn>() else {
            continue;
        };
        let seg_size = newest.wal_segment_size;
        for (&(s, timeline), _) in files.range((system, newest.timeline)..=(system, u32::MAX)) {
            let have = segnos(s, timeline);
            let from = if timeline == newest.timeline {
                segno_of(start, seg_size)
            } else {
                have.first().copied().unwrap_or(0)
            };
            let Some(&to) = have.last() else { continue };
            for segno in from..to {
                if !have.contains(&segno) {
                    missing.entry((system, timeline, segno)).or_insert(format!(
                        "point-in-time restores after backup {} replay through it, and the archive holds WAL after it",
                        newest_id
                    ));
                }
            }
        }
    }
    for ((system, timeline, segno), why) in missing {
        let seg_size = seg_size_of(system);
        let name = WalFileName::segment(timeline, segno, seg_size);
        findings.push(ArchiveFinding {
            key: key(system, &name),
            problem: format!("is missing from the archive: {why}"),
        });
    }
    Ok(findings)
}

/// An LSN as a planner position.
pub fn position(lsn: Lsn) -> Position {
    Position(u128::from(lsn.0))
}

/// A planner position as an LSN; positions of PostgreSQL chains are LSNs.
pub fn lsn_of(position: Position) -> Result<Lsn> {
    u64::try_from(position.0)
        .map(Lsn)
        .map_err(|_| Error::config(format!("position {position} is not a PostgreSQL LSN")))
}

/// The archived WAL no kept backup needs, for retention
/// ([`EnginePlugin::expired_log`](strata_core::plugin::EnginePlugin::expired_log)),
/// following pgBackRest's archive expiry: `entries` is the archive listing
/// (keys `wal/<system-id>/<TLI>/<file>`), `kept` the kept data backups,
/// `from` the backup point-in-time restores replay from (the window's
/// anchor, or the newest kept backup).
///
/// - Every segment (and `.partial`) of `from`'s system from `from`'s start
///   segment on, on every timeline, stays: it is the point-in-time window
///   and what carries the cluster past its newest backup.
/// - Before that, a segment stays when it lies between a kept backup's
///   start and stop segments on that backup's timeline: a backup is
///   consistent only once that WAL is replayed.
/// - History files and `.backup` files always stay: they are tiny, and a
///   timeline's history is needed to follow forks.
/// - The WAL of another system identifier (a cluster initialised again)
///   stays while a kept backup is of that system; with none, it goes once
///   its newest file is older than the oldest kept backup's start, so the
///   first backup of a new cluster, still running, keeps its WAL.
pub fn expired_wal(
    kept: &[BackupMeta],
    from: Option<&BackupMeta>,
    entries: &[ArchiveEntry],
) -> Vec<ExpiredLog> {
    struct Need {
        timeline: u32,
        first: u64,
        last: u64,
    }
    let mut needs: BTreeMap<u64, Vec<Need>> = BTreeMap::new();
    for meta in kept {
        let (Ok(start), Ok(stop)) = (meta.start_lsn.parse::<Lsn>(), meta.stop_lsn.parse::<Lsn>())
        else {
            continue;
        };
        needs.entry(meta.system_id()).or_default().push(Need {
            timeline: meta.timeline,
            first: segno_of(start, meta.wal_segment_size),
            last: segno_of(stop, meta.wal_segment_size),
        });
    }
    let window = from.and_then(|m| {
        let start = m.start_lsn.parse::<Lsn>().ok()?;
        Some((
            m.system_id(),
            segno_of(start, m.wal_segment_size),
            m.wal_segment_size,
        ))
    });
    let oldest_kept = kept.iter().map(|m| m.start_time).min();
    // The newest file of each system, for systems without kept backups.
    let mut newest_of: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    let parse = |key: &str| -> Option<(u64, WalFileName)> {
        let mut parts = key.split('/');
        (parts.next()? == "wal").then_some(())?;
        let system: u64 = parts.next()?.parse().ok()?;
        let _timeline = parts.next()?;
        let name = WalFileName::parse(parts.next()?).ok()?;
        Some((system, name))
    };
    for entry in entries {
        if let Some((system, _)) = parse(&entry.key) {
            let newest = newest_of.entry(system).or_insert(entry.stored_at);
            *newest = (*newest).max(entry.stored_at);
        }
    }
    let mut out = Vec::new();
    for entry in entries {
        let Some((system, name)) = parse(&entry.key) else {
            continue;
        };
        if !matches!(name.kind, WalFileKind::Segment | WalFileKind::Partial) {
            continue;
        }
        let reason = match needs.get(&system) {
            None => {
                let abandoned = match (oldest_kept, newest_of.get(&system)) {
                    (Some(oldest), Some(newest)) => *newest < oldest,
                    _ => false,
                };
                if !abandoned {
                    continue;
                }
                format!("WAL of system {system}, of which no backup is kept")
            }
            Some(needs) => {
                let Some((from_system, from_segno, seg_size)) = window else {
                    continue;
                };
                let segno = name.segno(seg_size);
                if system == from_system && segno >= from_segno {
                    continue;
                }
                let needed = needs
                    .iter()
                    .any(|n| n.timeline == name.timeline && (n.first..=n.last).contains(&segno));
                if needed {
                    continue;
                }
                "older than the point-in-time window and outside every kept backup's WAL range"
                    .to_owned()
            }
        };
        out.push(ExpiredLog {
            key: entry.key.clone(),
            stored_bytes: entry.stored_bytes,
            reason,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::catalog::manifest::{BackupId, Compression, MANIFEST_FORMAT};
    use strata_core::catalog::planner::{RestorePlan, RestoreTarget, plan, timeline};

    const SEG: u64 = 16 * 1024 * 1024;

    fn backup(tli: u32, start_seg: u64, stop_seg: u64, stop_time: &str) -> (Manifest, BackupMeta) {
        backup_at(
            tli,
            Lsn(start_seg * SEG + 40),
            Lsn(stop_seg * SEG + 100),
            stop_time,
            SEG,
        )
    }

    fn backup_at(
        tli: u32,
        start: Lsn,
        stop: Lsn,
        stop_time: &str,
        seg_size: u64,
    ) -> (Manifest, BackupMeta) {
        let stop_time: DateTime<Utc> = stop_time.parse().unwrap();
        let meta = BackupMeta {
            system_id: "42".into(),
            server_version_num: 150000,
            server_version: "15".into(),
            timeline: tli,
            start_lsn: start.to_string(),
            stop_lsn: stop.to_string(),
            start_time: stop_time,
            stop_time,
            wal_segment_size: seg_size,
            data_checksums: true,
            wal_log_hints: None,
            backup_label: String::new(),
            tablespace_map: String::new(),
            tablespaces: vec![],
            data_streams: vec![],
            file_count: 0,
            files: vec![],
            page_check: None,
            databases: vec![],
            delta: None,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: BackupId::generate(stop_time),
            engine: "postgres".into(),
            instance: "main".into(),
            database: None,
            kind: BackupKind::Full,
            started_at: stop_time,
            ended_at: stop_time,
            consistent_at: Some(stop_time),
            fork: tli.to_string(),
            start: None,
            end: None,
            base: None,
            compression: Compression {
                algorithm: "zstd".into(),
                level: 1,
            },
            encryption: None,
            streams: vec![],
            labels: Default::default(),
            engine_meta: serde_json::to_value(&meta).unwrap(),
        };
        (manifest, meta)
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn retention_keeps_the_window_and_each_kept_backups_own_wal() {
        // A weekly full kept (segments 2..3 on timeline 1), the window's
        // anchor starting in segment 9; a failover to timeline 2 at 10.
        let (_, weekly) = backup(1, 2, 3, "2026-11-01T02:00:00Z");
        let (_, anchor) = backup(1, 9, 9, "2026-11-28T02:00:00Z");
        let entry = |key: String, at: &str| ArchiveEntry {
            key,
            stored_bytes: 1000,
            stored_at: t(at),
        };
        let mut entries = Vec::new();
        for segno in 1..=12 {
            let name = WalFileName::segment(1, segno, SEG);
            entries.push(entry(
                format!("wal/42/00000001/{name}"),
                "2026-11-28T00:00:00Z",
            ));
        }
        for segno in 10..=12 {
            let name = WalFileName::segment(2, segno, SEG);
            entries.push(entry(
                format!("wal/42/00000002/{name}"),
                "2026-11-28T00:00:00Z",
            ));
        }
        entries.push(entry(
            "wal/42/00000002/00000002.history".into(),
            "2026-11-28T00:00:00Z",
        ));
        entries.push(entry(
            "wal/42/00000001/000000010000000000000005.00000028.backup".into(),
            "2026-11-28T00:00:00Z",
        ));
        // An earlier cluster (system 7) with no kept backup, and a new one
        // (system 8) whose first backup is still running.
        entries.push(entry(
            "wal/7/00000001/000000010000000000000001".into(),
            "2026-10-01T00:00:00Z",
        ));
        entries.push(entry(
            "wal/8/00000001/000000010000000000000001".into(),
            "2026-12-01T00:00:00Z",
        ));
        let expired = expired_wal(&[weekly.clone(), anchor.clone()], Some(&anchor), &entries);
        let keys: Vec<&str> = expired.iter().map(|e| e.key.as_str()).collect();
        let tl1 = |segno| format!("wal/42/00000001/{}", WalFileName::segment(1, segno, SEG));
        let mut expected: Vec<String> = [1, 4, 5, 6, 7, 8].into_iter().map(tl1).collect();
        expected.push("wal/7/00000001/000000010000000000000001".into());
        expected.sort();
        assert_eq!(keys, expected);
        assert!(expired[0].reason.contains("outside every kept backup"));
        // With the weekly full as the only kept backup, everything from its
        // start stays.
        let expired = expired_wal(std::slice::from_ref(&weekly), Some(&weekly), &entries);
        let keys: Vec<&str> = expired.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [tl1(1).as_str(), "wal/7/00000001/000000010000000000000001"]
        );
        // Without a starting point, no WAL of a kept system goes.
        let expired = expired_wal(std::slice::from_ref(&weekly), None, &entries);
        assert!(
            expired.iter().all(|e| e.key.starts_with("wal/7/")),
            "{expired:?}"
        );
    }

    fn catalog(
        segs: &[(u32, u64, &str)],
        histories: Vec<TimelineHistory>,
        backups: Vec<(Manifest, BackupMeta)>,
    ) -> Catalog {
        let mut segments: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut times = BTreeMap::new();
        for (tli, seg, time) in segs {
            segments.entry(*tli).or_default().insert(*seg);
            times.insert((*tli, *seg), t(time));
        }
        let mut catalog = Catalog {
            system_id: 42,
            seg_size: SEG,
            backups,
            segments,
            histories: histories.into_iter().map(|h| (h.timeline, h)).collect(),
            run_commits: BTreeMap::new(),
            location: "wal/42".into(),
        };
        let runs: Vec<(u32, u64, u64)> = catalog.runs().collect();
        for (tli, _, last) in runs {
            let info = WalFileInfo {
                system_id: 42,
                mtime: times[&(tli, last)],
                commits: None,
            };
            let commits = RunCommits::of_segments(&[info], Lsn((last + 1) * SEG)).unwrap();
            catalog.run_commits.insert((tli, last), commits);
        }
        catalog
    }

    #[test]
    fn history_files_parse() {
        let h = TimelineHistory::parse(3, "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A8\tbefore 2026-11-22 01:00:00+00\n").unwrap();
        assert_eq!(h.parents, vec![(1, Lsn(0x300_0000)), (2, Lsn(0x50_00A8))]);
        assert!(TimelineHistory::parse(2, "garbage").is_err());
    }

    fn plan_of(cat: &Catalog, target: RestoreTarget) -> Result<RestorePlan> {
        let chain = cat.chain();
        plan(&chain.records, chain.rules.as_ref(), &target)
    }

    /// `--latest` is the end of the archived WAL on the newest timeline: a
    /// segment missing on the way there, or the newest timeline's history
    /// file, makes it fail naming the file, where it used to restore an
    /// earlier point without a word (found by the damage campaign).
    #[test]
    fn latest_is_refused_naming_a_missing_segment_or_history_file() {
        let b1 = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let whole = [
            (1, 2, "2026-11-22T01:00:00Z"),
            (1, 3, "2026-11-22T01:01:00Z"),
            (1, 4, "2026-11-22T01:02:00Z"),
            (1, 5, "2026-11-22T01:03:00Z"),
        ];
        let plan = plan_of(
            &catalog(&whole, vec![], vec![b1.clone()]),
            RestoreTarget::Latest,
        )
        .unwrap();
        assert_eq!(plan.reaches_position, Some(position(Lsn(6 * SEG))));

        let gap: Vec<_> = whole.iter().copied().filter(|s| s.1 != 4).collect();
        let err = plan_of(
            &catalog(&gap, vec![], vec![b1.clone()]),
            RestoreTarget::Latest,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), strata_core::ErrorKind::NotFound, "{text}");
        assert!(
            text.contains(
                "WAL segment 000000010000000000000004 is missing from the archive \
                 (wal/42/00000001/000000010000000000000004)"
            ),
            "{text}"
        );

        // Timeline 2's WAL, without and with its history file.
        let forked = [
            (1, 2, "2026-11-22T01:00:00Z"),
            (1, 3, "2026-11-22T01:01:00Z"),
            (2, 4, "2026-11-22T01:02:00Z"),
            (2, 5, "2026-11-22T01:03:00Z"),
        ];
        let err = plan_of(
            &catalog(&forked, vec![], vec![b1.clone()]),
            RestoreTarget::Latest,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "timeline 2's history file 00000002.history is missing from the WAL archive \
                 (wal/42/00000002/00000002.history)"
            ),
            "{err}"
        );
        let history = TimelineHistory {
            timeline: 2,
            parents: vec![(1, Lsn(4 * SEG))],
            created_at: None,
        };
        let plan = plan_of(
            &catalog(&forked, vec![history], vec![b1]),
            RestoreTarget::Latest,
        )
        .unwrap();
        assert_eq!(plan.fork, "2");
        assert_eq!(plan.reaches_position, Some(position(Lsn(6 * SEG))));
    }

    #[test]
    fn a_gap_splits_windows_and_targets_in_it_are_refused() {
        let segs = [
            (1, 2, "2026-11-22T01:00:00Z"),
            (1, 3, "2026-11-22T01:01:00Z"),
            (1, 4, "2026-11-22T01:02:00Z"),
            // segment 5 is missing
            (1, 6, "2026-11-22T01:04:00Z"),
            (1, 7, "2026-11-22T01:05:00Z"),
            (1, 8, "2026-11-22T01:06:00Z"),
        ];
        let b1 = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let b2 = backup(1, 6, 7, "2026-11-22T01:04:30Z");
        let id2 = b2.0.id.clone();
        let cat = catalog(&segs, vec![], vec![b1, b2]);
        let chain = cat.chain();
        let windows = timeline(&chain.records, chain.rules.as_ref()).windows;
        assert_eq!(windows.len(), 2, "{windows:?}");
        assert_eq!(windows[0].to_time, t("2026-11-22T01:02:00Z"));
        assert_eq!(windows[1].from_time, t("2026-11-22T01:04:30Z"));

        let plan = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:05:30Z"))).unwrap();
        assert_eq!(plan.base.id, id2);
        let plan = plan_of(&cat, RestoreTarget::Latest).unwrap();
        assert_eq!(
            cat.last_segment(1, lsn_of(plan.reaches_position.unwrap()).unwrap())
                .to_string(),
            "000000010000000000000008"
        );

        let err = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:03:00Z"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("is not restorable"), "{text}");
        assert!(text.contains("2026-11-22T01:02:00Z (before)"), "{text}");
        assert!(text.contains("2026-11-22T01:04:30Z (after)"), "{text}");
        // Positions read as LSNs: the hole is segment 5, 0/5000000..0/6000000.
        assert!(
            text.contains("no log backup covers positions 0/5000000..0/6000000"),
            "{text}"
        );
    }

    /// `backup` of `kind` applying on `base`.
    fn applied_on(
        base: &(Manifest, BackupMeta),
        kind: BackupKind,
        (manifest, meta): (Manifest, BackupMeta),
    ) -> (Manifest, BackupMeta) {
        let manifest = Manifest {
            kind,
            base: Some(base.0.id.clone()),
            ..manifest
        };
        (manifest, meta)
    }

    #[test]
    fn a_differential_replays_from_its_own_start_and_is_chosen_once_consistent() {
        let segs: Vec<(u32, u64, &str)> = vec![
            (1, 2, "2026-11-22T01:00:00Z"),
            (1, 3, "2026-11-22T01:01:00Z"),
            (1, 4, "2026-11-22T01:02:00Z"),
            (1, 5, "2026-11-22T01:03:00Z"),
            (1, 6, "2026-11-22T01:04:00Z"),
            (1, 7, "2026-11-22T01:05:00Z"),
        ];
        let full = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let diff = applied_on(
            &full,
            BackupKind::Diff,
            backup(1, 5, 6, "2026-11-22T01:03:30Z"),
        );
        let (full_id, diff_id) = (full.0.id.clone(), diff.0.id.clone());
        let cat = catalog(&segs, vec![], vec![full.clone(), diff.clone()]);

        // After the differential: full + differential + WAL.
        let plan = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:04:30Z"))).unwrap();
        assert_eq!(plan.base.id, full_id);
        assert_eq!(
            plan.diffs.iter().map(|d| &d.id).collect::<Vec<_>>(),
            [&diff_id]
        );
        // Before it: the full and its WAL.
        let plan = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:02:30Z"))).unwrap();
        assert_eq!(plan.base.id, full_id);
        assert!(plan.diffs.is_empty());

        // The differential needs only its own WAL: with the segments before
        // it gone, the full is no longer restorable but the differential is.
        let later: Vec<(u32, u64, &str)> = segs.iter().copied().filter(|s| s.1 >= 5).collect();
        let cat = catalog(&later, vec![], vec![full.clone(), diff.clone()]);
        let plan = plan_of(&cat, RestoreTarget::Latest).unwrap();
        assert_eq!(plan.diffs.len(), 1);
        let chain = cat.chain();
        let windows = timeline(&chain.records, chain.rules.as_ref()).windows;
        assert_eq!(windows.len(), 1, "{windows:?}");
        assert_eq!(windows[0].from_time, t("2026-11-22T01:03:30Z"));

        // Without its full, a differential restores nothing.
        let cat = catalog(&segs, vec![], vec![diff]);
        let err = plan_of(&cat, RestoreTarget::Latest).unwrap_err();
        assert_eq!(err.kind(), strata_core::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn restores_follow_timeline_switches() {
        // Timeline 2 branched from 1 at segment 4; the backup is on timeline 1.
        let segs = [
            (1, 2, "2026-11-22T01:00:00Z"),
            (1, 3, "2026-11-22T01:01:00Z"),
            (1, 4, "2026-11-22T01:02:00Z"),
            (1, 5, "2026-11-22T01:03:00Z"),
            (2, 4, "2026-11-22T01:10:00Z"),
            (2, 5, "2026-11-22T01:11:00Z"),
        ];
        let mut h2 =
            TimelineHistory::parse(2, &format!("1\t{}\tbefore x\n", Lsn(4 * SEG + 500))).unwrap();
        h2.created_at = Some(t("2026-11-22T01:09:00Z"));
        let b = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let cat = catalog(&segs, vec![h2], vec![b]);
        let latest = plan_of(&cat, RestoreTarget::Latest).unwrap();
        assert_eq!(latest.fork, "2");
        assert_eq!(
            cat.last_segment(2, lsn_of(latest.reaches_position.unwrap()).unwrap())
                .to_string(),
            "000000020000000000000005"
        );
        // Before timeline 2 existed, a time is restored on timeline 1.
        let old = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:02:30Z"))).unwrap();
        assert_eq!(old.fork, "1");
        let new = plan_of(&cat, RestoreTarget::Time(t("2026-11-22T01:10:30Z"))).unwrap();
        assert_eq!(new.fork, "2");
    }

    #[test]
    fn a_backup_without_its_wal_is_not_restorable() {
        let segs = [(1, 2, "2026-11-22T01:00:00Z")];
        let b = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let cat = catalog(&segs, vec![], vec![b]);
        let chain = cat.chain();
        assert!(
            timeline(&chain.records, chain.rules.as_ref())
                .windows
                .is_empty()
        );
        let err = plan_of(&cat, RestoreTarget::Latest).unwrap_err();
        assert!(err.to_string().contains("is not restorable"), "{err}");
    }

    fn point(time: &str, lsn: u64, end: u64) -> CommitPoint {
        CommitPoint {
            time: t(time),
            lsn: Lsn(lsn),
            end_lsn: Lsn(end),
        }
    }

    fn segment(mtime: &str, commits: Option<SegmentCommits>) -> WalFileInfo {
        WalFileInfo {
            system_id: 42,
            mtime: t(mtime),
            commits,
        }
    }

    fn scanned(last: Option<CommitPoint>, crossing: Option<CommitPoint>) -> SegmentCommits {
        SegmentCommits {
            complete: true,
            first_time: last.map(|l| l.time),
            last_time: last.map(|l| l.time),
            last,
            crossing,
        }
    }

    use crate::wal::SegmentCommits;

    #[test]
    fn a_run_reaches_its_last_mtime_but_not_past_a_commit_it_does_not_hold() {
        let end = Lsn(3 * SEG);
        // An idle tail: the run reaches the time its last segment was closed.
        let c1 = point("2026-11-22T01:00:00Z", SEG + 100, SEG + 150);
        let idle = RunCommits::of_segments(
            &[
                segment("2026-11-22T01:00:01Z", Some(scanned(Some(c1), None))),
                segment("2026-11-22T01:00:06Z", Some(scanned(None, None))),
            ],
            end,
        )
        .unwrap();
        assert_eq!(idle.reaches, t("2026-11-22T01:00:06Z"));
        assert_eq!((idle.newest, idle.last), (Some(c1.time), Some(c1)));
        assert!(idle.scanned);

        // A commit that starts in the run and ends after it: the run
        // reaches just before it, and its last whole commit is the earlier one.
        let out = point("2026-11-22T01:00:04Z", 3 * SEG - 16, 3 * SEG + 40);
        let cut = RunCommits::of_segments(
            &[
                segment("2026-11-22T01:00:01Z", Some(scanned(Some(c1), None))),
                segment("2026-11-22T01:00:06Z", Some(scanned(None, Some(out)))),
            ],
            end,
        )
        .unwrap();
        assert_eq!(cut.reaches, t("2026-11-22T01:00:03.999999Z"));
        assert_eq!(cut.last, Some(c1));

        // The same commit crossing into a segment of the run is its last.
        let within = point("2026-11-22T01:00:04Z", 2 * SEG - 16, 2 * SEG + 40);
        let whole = RunCommits::of_segments(
            &[
                segment(
                    "2026-11-22T01:00:05Z",
                    Some(scanned(Some(c1), Some(within))),
                ),
                segment("2026-11-22T01:00:06Z", Some(scanned(None, None))),
            ],
            end,
        )
        .unwrap();
        assert_eq!(whole.last, Some(within));
        assert_eq!(whole.newest, Some(within.time));
        assert_eq!(whole.reaches, t("2026-11-22T01:00:06Z"));

        // A record after the last commit that could not be read may be a
        // commit: the run reaches no further than the last known one.
        let mut unknown = scanned(None, None);
        unknown.complete = false;
        let uncertain = RunCommits::of_segments(
            &[
                segment("2026-11-22T01:00:01Z", Some(scanned(Some(c1), None))),
                segment("2026-11-22T01:00:06Z", Some(unknown)),
            ],
            end,
        )
        .unwrap();
        assert_eq!(uncertain.reaches, c1.time);

        // The file system's coarser clock: never less than the newest commit.
        let late = point("2026-11-22T01:00:06.002Z", 2 * SEG + 100, 2 * SEG + 140);
        let coarse = RunCommits::of_segments(
            &[segment(
                "2026-11-22T01:00:06Z",
                Some(scanned(Some(late), None)),
            )],
            end,
        )
        .unwrap();
        assert_eq!(coarse.reaches, late.time);

        // Segments archived by an older Strata: timed by mtime alone.
        let old = RunCommits::of_segments(
            &[
                segment("2026-11-22T01:00:01Z", None),
                segment("2026-11-22T01:00:06Z", Some(scanned(Some(c1), None))),
            ],
            end,
        )
        .unwrap();
        assert!(!old.scanned);
        assert_eq!(old.reaches, t("2026-11-22T01:00:06Z"));
    }

    #[test]
    fn a_time_after_the_last_transaction_of_the_plan_stops_at_it() {
        let run = |newest: Option<&str>, last: Option<CommitPoint>| RunCommits {
            reaches: t("2026-11-22T02:00:00Z"),
            scanned: true,
            newest: newest.map(t),
            last,
        };
        let stop = Lsn(SEG + 500);
        let c1 = point("2026-11-22T01:00:00Z", SEG + 1000, SEG + 1040);
        let c2 = point("2026-11-22T01:10:00Z", 2 * SEG + 100, 2 * SEG + 140);
        let runs = [
            run(Some("2026-11-22T01:00:00Z"), Some(c1)),
            run(Some("2026-11-22T01:10:00Z"), Some(c2)),
        ];
        // Before a transaction end of the plan: PostgreSQL stops before it.
        assert_eq!(
            time_stop(t("2026-11-22T01:05:00Z"), &runs, stop),
            Target::Time(t("2026-11-22T01:05:00Z"))
        );
        // After the last one: right after it, by LSN.
        assert_eq!(
            time_stop(t("2026-11-22T01:30:00Z"), &runs, stop),
            Target::AfterCommit {
                time: t("2026-11-22T01:30:00Z"),
                lsn: c2.lsn,
                committed_at: c2.time,
            }
        );
        // A last run without a transaction end: the one before it.
        let idle = [runs[0].clone(), run(None, None)];
        assert!(matches!(
            time_stop(t("2026-11-22T01:30:00Z"), &idle, stop),
            Target::AfterCommit { lsn, .. } if lsn == c1.lsn
        ));
        // Nothing ended since the backup: its consistent state.
        let before_stop = [run(
            Some("2026-11-22T00:59:00Z"),
            Some(point("2026-11-22T00:59:00Z", SEG + 100, SEG + 140)),
        )];
        assert_eq!(
            time_stop(t("2026-11-22T01:30:00Z"), &before_stop, stop),
            Target::Consistent {
                time: t("2026-11-22T01:30:00Z")
            }
        );
        // WAL that was not scanned: PostgreSQL's own time target.
        let mut unscanned = runs.clone();
        unscanned[0].scanned = false;
        assert_eq!(
            time_stop(t("2026-11-22T01:30:00Z"), &unscanned, stop),
            Target::Time(t("2026-11-22T01:30:00Z"))
        );
    }

    /// A vault archive and a data directory of system 42 to push from.
    struct FakeCluster {
        _dir: tempfile::TempDir,
        store: strata_core::vault::VaultArchive,
        pgdata: std::path::PathBuf,
    }

    impl FakeCluster {
        async fn new() -> FakeCluster {
            use strata_core::vault::{Vault, VaultArchive, VaultConfig};
            let dir = tempfile::tempdir().unwrap();
            let url = format!("file://{}/vault", dir.path().display());
            let vault = Vault::init(&VaultConfig::from_url(&url), None)
                .await
                .unwrap();
            let store = VaultArchive::new(vault, crate::ENGINE, "main");
            let pgdata = dir.path().join("pgdata");
            std::fs::create_dir_all(pgdata.join("global")).unwrap();
            std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
            let mut control = vec![0u8; 512];
            control[..8].copy_from_slice(&42u64.to_le_bytes());
            std::fs::write(pgdata.join("global/pg_control"), control).unwrap();
            FakeCluster {
                _dir: dir,
                store,
                pgdata,
            }
        }

        /// Writes `name` into pg_wal, modified at `mtime`.
        fn write(&self, name: WalFileName, bytes: Vec<u8>, mtime: &str) -> std::path::PathBuf {
            let path = self.pgdata.join("pg_wal").join(name.to_string());
            std::fs::write(&path, bytes).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(t(mtime).into()).unwrap();
            path
        }
    }

    /// `verify` reads every archived WAL file and names what a restore
    /// would miss: a damaged segment, one missing from the WAL after the
    /// newest backup, and the history file of a timeline with segments
    /// (found by the damage campaign: verify checked none of it).
    #[tokio::test]
    async fn verify_names_damaged_and_missing_wal_files() {
        use crate::walrecords::tests::{SEG as SMALL, WalWriter, heap};
        let seg = SMALL as u64;
        let cluster = FakeCluster::new().await;
        let archive = WalArchive::new(&cluster.store);
        let mut w = WalWriter::new(seg);
        for _ in 1..8 {
            w.append(&heap(20));
            w.pad_segment();
        }
        for i in 0..6 {
            let name = WalFileName::segment(1, 1 + i as u64, seg);
            let path = cluster.write(name, w.segment(i).to_vec(), "2026-11-22T01:00:40Z");
            archive.push(&path, &cluster.pgdata).await.unwrap();
        }
        let (newest, _) = backup_at(
            1,
            Lsn(2 * seg + 40),
            Lsn(2 * seg + 100),
            "2026-11-22T01:00:30Z",
            seg,
        );
        let backups = [newest];
        assert_eq!(verify_wal(&backups, &cluster.store).await.unwrap(), []);

        let key = |tli: u32, segno: u64| {
            format!("wal/42/{tli:08X}/{}", WalFileName::segment(tli, segno, seg))
        };
        let full = |key: &str| cluster.store.vault_key(key).unwrap();
        // Segment 4 gone, segment 5 damaged, timeline 2 without history.
        cluster.store.delete(&key(1, 4)).await.unwrap();
        let file = cluster._dir.path().join("vault").join(full(&key(1, 5)));
        let mut damaged = std::fs::read(&file).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x10;
        std::fs::write(&file, damaged).unwrap();
        let name = WalFileName::segment(2, 7, seg);
        let path = cluster.write(name, w.segment(6).to_vec(), "2026-11-22T01:01:00Z");
        archive.push(&path, &cluster.pgdata).await.unwrap();

        let findings = verify_wal(&backups, &cluster.store).await.unwrap();
        let keys: Vec<&str> = findings.iter().map(|f| f.key.as_str()).collect();
        assert!(keys.contains(&key(1, 4).as_str()), "{findings:?}");
        assert!(keys.contains(&key(1, 5).as_str()), "{findings:?}");
        assert!(
            keys.contains(&"wal/42/00000002/00000002.history"),
            "{findings:?}"
        );
        assert_eq!(findings.len(), 3, "{findings:?}");
        let damaged = findings.iter().find(|f| f.key == key(1, 5)).unwrap();
        assert!(damaged.problem.contains(&full(&key(1, 5))), "{damaged:?}");
        let missing = findings.iter().find(|f| f.key == key(1, 4)).unwrap();
        assert!(missing.problem.contains("is missing"), "{missing:?}");
    }

    #[tokio::test]
    async fn a_run_is_read_backwards_to_its_last_whole_commit() {
        use crate::walrecords::tests::{SEG as SMALL, WalWriter, commit, heap};
        let seg = SMALL as u64;
        let cluster = FakeCluster::new().await;
        let archive = WalArchive::new(&cluster.store);
        // 20 segments: a commit in the first, then idle ones, and a commit
        // starting in the last that ends after it (not archived).
        let mut w = WalWriter::new(seg);
        let (c1, _) = w.append(&commit("2026-11-22T01:00:01Z", 0));
        w.pad_segment();
        for _ in 2..20 {
            w.append(&heap(20));
            w.pad_segment();
        }
        w.fill_to(20 * SMALL - 400);
        w.append(&commit("2026-11-22T01:00:30Z", 1000));
        for i in 0..20 {
            let name = WalFileName::segment(1, 1 + i as u64, seg);
            let path = cluster.write(name, w.segment(i).to_vec(), "2026-11-22T01:00:40Z");
            archive.push(&path, &cluster.pgdata).await.unwrap();
        }
        let b = backup_at(
            1,
            Lsn(seg + 100),
            Lsn(seg + 200),
            "2026-11-22T01:00:00Z",
            seg,
        );
        let cat = Catalog::load(vec![b.0], &archive, "main", None)
            .await
            .unwrap();
        let runs = cat.runs_by_id();
        let run = runs.values().next().unwrap();
        assert_eq!(run.last.map(|c| c.lsn), Some(c1), "{run:?}");
        assert_eq!(run.reaches, t("2026-11-22T01:00:29.999999Z"), "{run:?}");
    }

    #[tokio::test]
    async fn the_catalog_times_runs_by_their_commits_and_reads_timelines_as_recovery_does() {
        use crate::walrecords::tests::{SEG as SMALL, WalWriter, commit, heap};
        let seg = SMALL as u64;
        let cluster = FakeCluster::new().await;
        let archive = WalArchive::new(&cluster.store);
        let pgdata = &cluster.pgdata;
        let push =
            |name: WalFileName, bytes: Vec<u8>, mtime: &str| cluster.write(name, bytes, mtime);

        // Timeline 1: segments 1 to 3; a commit in 2, an idle 3.
        let mut w = WalWriter::new(seg);
        w.append(&heap(20));
        w.pad_segment();
        let (c1, _) = w.append(&commit("2026-11-22T01:00:10Z", 0));
        w.append(&heap(20));
        w.pad_segment();
        w.append(&heap(30));
        w.pad_segment();
        for (i, mtime) in [
            "2026-11-22T01:00:05Z",
            "2026-11-22T01:00:11Z",
            "2026-11-22T01:00:20Z",
        ]
        .into_iter()
        .enumerate()
        {
            let name = WalFileName::segment(1, 1 + i as u64, seg);
            let path = push(name, w.segment(i).to_vec(), mtime);
            archive.push(&path, pgdata).await.unwrap();
        }
        // Timeline 2 began in segment 3 (after c1), with a commit; a
        // segment 2 of timeline 2 (before it began) is never read by
        // recovery, and the .partial of timeline 1 neither.
        let switch = Lsn(3 * seg + 200);
        let history = format!("1\t{switch}\tno recovery target specified\n");
        push(
            WalFileName::history(2),
            history.into_bytes(),
            "2026-11-22T01:00:25Z",
        );
        let mut w2 = WalWriter::new(3 * seg);
        w2.append(&heap(30));
        let (c2, _) = w2.append(&commit("2026-11-22T01:00:40Z", 0));
        w2.pad_segment();
        let path = push(
            WalFileName::segment(2, 3, seg),
            w2.segment(0).to_vec(),
            "2026-11-22T01:00:50Z",
        );
        archive.push(&path, pgdata).await.unwrap();
        let stray = push(
            WalFileName::segment(2, 2, seg),
            w.segment(1).to_vec(),
            "2026-11-22T01:00:51Z",
        );
        archive.push(&stray, pgdata).await.unwrap();
        let partial = pgdata.join("pg_wal/000000010000000000000004.partial");
        std::fs::write(&partial, w.segment(2)).unwrap();
        archive.push(&partial, pgdata).await.unwrap();

        let b = backup_at(
            1,
            Lsn(seg + 40),
            Lsn(seg + 100),
            "2026-11-22T01:00:06Z",
            seg,
        );
        let cat = Catalog::load(vec![b.0.clone()], &archive, "main", None)
            .await
            .unwrap();
        assert_eq!(
            cat.segments[&2],
            BTreeSet::from([3]),
            "timeline 2's segment 2 is left out"
        );
        let runs = cat.runs_by_id();
        let tl1 = &runs[&"wal.000000010000000000000001-000000010000000000000003"
            .parse::<BackupId>()
            .unwrap()];
        assert_eq!(
            tl1.reaches,
            t("2026-11-22T01:00:20Z"),
            "the idle tail reaches the last mtime"
        );
        assert_eq!(tl1.last.map(|c| c.lsn), Some(c1));
        let tl2 = &runs[&"wal.000000020000000000000003-000000020000000000000003"
            .parse::<BackupId>()
            .unwrap()];
        assert_eq!(tl2.last.map(|c| c.lsn), Some(c2));

        let chain = cat.chain();
        let windows = timeline(&chain.records, chain.rules.as_ref()).windows;
        assert_eq!(windows.len(), 2, "{windows:?}");
        // In timeline 1's idle tail: after c1, by LSN, on timeline 1.
        let target = t("2026-11-22T01:00:15Z");
        let plan = plan_of(&cat, RestoreTarget::Time(target)).unwrap();
        assert_eq!(plan.fork, "1");
        let planned: Vec<RunCommits> = plan.logs.iter().map(|l| runs[&l.id].clone()).collect();
        assert!(matches!(
            time_stop(target, &planned, b.1.stop()),
            Target::AfterCommit { lsn, .. } if lsn == c1
        ));
        // After timeline 2's commit: after it, on timeline 2.
        let target = t("2026-11-22T01:00:45Z");
        let plan = plan_of(&cat, RestoreTarget::Time(target)).unwrap();
        assert_eq!(plan.fork, "2");
        let planned: Vec<RunCommits> = plan.logs.iter().map(|l| runs[&l.id].clone()).collect();
        assert!(matches!(
            time_stop(target, &planned, b.1.stop()),
            Target::AfterCommit { lsn, .. } if lsn == c2
        ));
        // Between the switch and timeline 2's commit: a time target on 2.
        let target = t("2026-11-22T01:00:30Z");
        let plan = plan_of(&cat, RestoreTarget::Time(target)).unwrap();
        let planned: Vec<RunCommits> = plan.logs.iter().map(|l| runs[&l.id].clone()).collect();
        assert_eq!(
            time_stop(target, &planned, b.1.stop()),
            Target::Time(target)
        );
    }
}

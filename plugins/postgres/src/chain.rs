//! PostgreSQL's chain rules: timelines, recoverable windows, and the choice
//! of the full backup and timeline for a restore target.
//!
//! The inputs are the committed full backups (their manifests) and the WAL
//! archive's listing. A full backup taken on timeline `b` between LSNs
//! `start` and `stop` restores every point from `stop` (the end of backup,
//! when its `pg_backup_stop` returned) to the end of the WAL that follows it
//! without a gap. WAL after a timeline switch comes from the newer timeline:
//! timeline `N`'s history file lists its ancestors and the LSN where each one
//! was left, and recovery reads a segment from the newest timeline on that
//! path that had begun by then (as PostgreSQL's `XLogFileReadAnyTLI` does).
//!
//! Times: a window ends at the modification time of its last segment (no
//! commit in the archived WAL is newer, see [`crate::wal`]); it starts at the
//! backup's stop time. A timeline starts (in time) when its history file was
//! written, at promotion. A time target is restored on the newest timeline
//! that existed at that time, so "10:45" means what the cluster looked like at
//! 10:45, even if it was later rewound and branched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use strata_core::catalog::manifest::{BackupId, BackupKind, Manifest};
use strata_core::{Error, Result};

use crate::backup::FullBackupMeta;
use crate::wal::WalArchive;
use crate::walname::{Lsn, WalFileKind, WalFileName, segno_of};

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

/// A backup and the WAL after it that is restorable without a gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The timeline a restore in this window ends on.
    pub timeline: u32,
    /// The full backup it starts from.
    pub backup: BackupId,
    /// The first restorable LSN (the backup's stop LSN).
    pub start_lsn: Lsn,
    /// The end of the archived WAL without a gap.
    pub end_lsn: Lsn,
    /// The first restorable time (the backup's stop time).
    pub start_time: DateTime<Utc>,
    /// The last restorable time (the last segment's modification time).
    pub end_time: DateTime<Utc>,
    /// The last segment of the window.
    pub last_segment: String,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timeline {}: {} .. {} (LSN {} .. {}, from backup {})",
            self.timeline,
            self.start_time.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            self.end_time.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            self.start_lsn,
            self.end_lsn,
            self.backup
        )
    }
}

/// What a restore should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// The end of the archived WAL on the newest timeline.
    Latest,
    /// A point in time.
    Time(DateTime<Utc>),
    /// An LSN.
    Lsn(Lsn),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("the latest point"),
            Target::Time(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

/// The chosen backup and timeline for a target.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The full backup to lay down.
    pub backup: Manifest,
    /// Its PostgreSQL details.
    pub meta: FullBackupMeta,
    /// The timeline recovery should end on.
    pub timeline: u32,
    /// The target.
    pub target: Target,
    /// The window the target lies in.
    pub window: Window,
}

/// The committed full backups and the WAL archive of one cluster (one system identifier).
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The system identifier.
    pub system_id: u64,
    /// The WAL segment size.
    pub seg_size: u64,
    /// The full backups of this system, oldest first.
    pub backups: Vec<(Manifest, FullBackupMeta)>,
    /// Archived segment numbers per timeline.
    pub segments: BTreeMap<u32, BTreeSet<u64>>,
    /// Timeline histories (timeline 1 has none).
    pub histories: BTreeMap<u32, TimelineHistory>,
    /// Modification times of the segments that end windows.
    segment_times: BTreeMap<(u32, u64), DateTime<Utc>>,
}

impl Catalog {
    /// Loads the catalog of cluster `instance` from its committed
    /// `manifests` (any kinds, any order; the full backups are used) and
    /// its WAL archive. With several system identifiers (a cluster
    /// re-created under the same name), the newest backup's system is used
    /// unless `system_id` names one.
    pub async fn load(
        manifests: Vec<Manifest>,
        archive: &WalArchive<'_>,
        instance: &str,
        system_id: Option<u64>,
    ) -> Result<Catalog> {
        let mut fulls: Vec<(Manifest, FullBackupMeta)> = manifests
            .into_iter()
            .filter(|m| m.kind == BackupKind::Full)
            .filter_map(|m| FullBackupMeta::from_manifest(&m).ok().map(|meta| (m, meta)))
            .collect();
        fulls.sort_by_key(|(_, meta)| meta.stop_time);
        let system_id = match system_id {
            Some(id) => id,
            None => match fulls.last() {
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
        fulls.retain(|(_, meta)| meta.system_id() == system_id);
        let seg_size = fulls
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
        let mut catalog = Catalog {
            system_id,
            seg_size,
            backups: fulls,
            segments,
            histories,
            segment_times: BTreeMap::new(),
        };
        // The modification times of the segments that end windows.
        let mut ends = BTreeSet::new();
        for tli in catalog.timelines() {
            for (_, meta) in &catalog.backups {
                if let Some((end_tli, end_seg)) = catalog.reach_segment(meta, tli) {
                    ends.insert((end_tli, end_seg));
                }
            }
        }
        for (tli, seg) in ends {
            let name = WalFileName::segment(tli, seg, seg_size);
            if let Some(header) = archive.header(system_id, &name).await? {
                catalog.segment_times.insert((tli, seg), header.mtime);
            }
        }
        Ok(catalog)
    }

    /// Every timeline with WAL or a history file.
    pub fn timelines(&self) -> Vec<u32> {
        let mut all: BTreeSet<u32> = self.segments.keys().copied().collect();
        all.extend(self.histories.keys().copied());
        all.into_iter().collect()
    }

    /// The path to timeline `tli`: `(timeline, first segment read from it)`, oldest first.
    fn path(&self, tli: u32) -> Vec<(u32, u64)> {
        let mut path = Vec::new();
        let parents = self
            .histories
            .get(&tli)
            .map(|h| h.parents.clone())
            .unwrap_or_default();
        let mut begin = 0u64;
        for (parent, switch) in parents {
            path.push((parent, begin));
            begin = segno_of(switch, self.seg_size);
        }
        path.push((tli, begin));
        path
    }

    /// The switch LSN where `tli`'s history leaves timeline `of`, if it does.
    fn leaves_at(&self, tli: u32, of: u32) -> Option<Lsn> {
        self.histories
            .get(&tli)?
            .parents
            .iter()
            .find(|(p, _)| *p == of)
            .map(|(_, lsn)| *lsn)
    }

    /// The last segment `(timeline, segno)` restorable from backup `meta`
    /// toward timeline `tli` without a gap, if the backup reaches its stop LSN.
    fn reach_segment(&self, meta: &FullBackupMeta, tli: u32) -> Option<(u32, u64)> {
        if meta.timeline != tli {
            // The backup must lie on tli's path, before tli's history leaves its timeline.
            let left = self.leaves_at(tli, meta.timeline)?;
            if left < meta.stop() {
                return None;
            }
        }
        let path = self.path(tli);
        let first = segno_of(meta.start(), self.seg_size);
        let needed_last = segno_of(Lsn(meta.stop().0.saturating_sub(1)), self.seg_size);
        let mut last: Option<(u32, u64)> = None;
        let mut seg = first;
        loop {
            let on = path
                .iter()
                .rev()
                .find(|(_, begin)| *begin <= seg)
                .map(|(t, _)| *t)?;
            if on < meta.timeline {
                return None;
            }
            if !self.segments.get(&on).is_some_and(|s| s.contains(&seg)) {
                break;
            }
            last = Some((on, seg));
            seg += 1;
        }
        let (end_tli, end_seg) = last?;
        (end_seg >= needed_last).then_some((end_tli, end_seg))
    }

    /// The window of backup `meta` toward timeline `tli`.
    pub fn window(&self, manifest: &Manifest, meta: &FullBackupMeta, tli: u32) -> Option<Window> {
        let (end_tli, end_seg) = self.reach_segment(meta, tli)?;
        // A window on tli ends on tli itself; WAL that stops on an ancestor belongs to the ancestor.
        if end_tli != tli {
            return None;
        }
        let end_time = *self.segment_times.get(&(end_tli, end_seg))?;
        Some(Window {
            timeline: tli,
            backup: manifest.id.clone(),
            start_lsn: meta.stop(),
            end_lsn: Lsn((end_seg + 1) * self.seg_size),
            start_time: meta.stop_time,
            end_time: end_time.max(meta.stop_time),
            last_segment: WalFileName::segment(end_tli, end_seg, self.seg_size).to_string(),
        })
    }

    /// Every window, by timeline, then by start.
    pub fn windows(&self) -> Vec<Window> {
        let mut out = Vec::new();
        for tli in self.timelines() {
            for (manifest, meta) in &self.backups {
                if let Some(w) = self.window(manifest, meta, tli) {
                    out.push(w);
                }
            }
        }
        out
    }

    /// The windows with overlapping ranges of the same timeline merged: what
    /// `strata list pg` shows as the recoverable windows.
    pub fn merged_windows(&self) -> Vec<Window> {
        let mut merged: Vec<Window> = Vec::new();
        for w in self.windows() {
            match merged.last_mut() {
                Some(last) if last.timeline == w.timeline && w.start_lsn <= last.end_lsn => {
                    if w.end_lsn > last.end_lsn {
                        last.end_lsn = w.end_lsn;
                        last.end_time = w.end_time;
                        last.last_segment = w.last_segment.clone();
                    }
                }
                _ => merged.push(w),
            }
        }
        merged
    }

    /// The recoverable windows in the engine-neutral form `strata list
    /// --timeline` shows for every engine: one fork per PostgreSQL timeline,
    /// positions are LSNs, and a gap is named between two windows of one
    /// timeline that no archived WAL joins.
    pub fn neutral_timeline(&self) -> strata_core::catalog::planner::Timeline {
        use strata_core::catalog::manifest::Position;
        use strata_core::catalog::planner::{Gap, RecoverableWindow, Timeline};
        let merged = self.merged_windows();
        let windows = merged
            .iter()
            .map(|w| RecoverableWindow {
                fork: w.timeline.to_string(),
                from_time: w.start_time,
                to_time: w.end_time,
                from_position: Some(Position(u128::from(w.start_lsn.0))),
                to_position: Some(Position(u128::from(w.end_lsn.0))),
            })
            .collect();
        let gaps = merged
            .windows(2)
            .filter(|pair| pair[0].timeline == pair[1].timeline)
            .map(|pair| Gap {
                fork: pair[0].timeline.to_string(),
                from_time: pair[0].end_time,
                to_time: pair[1].start_time,
                from_position: Some(Position(u128::from(pair[0].end_lsn.0))),
                to_position: Some(Position(u128::from(pair[1].start_lsn.0))),
                reason: format!(
                    "the archived WAL of timeline {} stops after {}; the next restorable point is the end of backup {}",
                    pair[0].timeline, pair[0].last_segment, pair[1].backup
                ),
            })
            .collect();
        Timeline { windows, gaps }
    }

    /// The timeline a time target belongs to: the newest that had begun by then.
    fn timeline_at(&self, time: DateTime<Utc>) -> u32 {
        self.timelines()
            .into_iter()
            .filter(|tli| match self.histories.get(tli) {
                Some(h) => h.created_at.is_none_or(|c| c <= time),
                None => true,
            })
            .max()
            .unwrap_or(1)
    }

    /// Chooses the backup and timeline for `target`, or explains why it
    /// cannot be reached, naming the nearest restorable points.
    pub fn plan(&self, target: Target) -> Result<Plan> {
        let windows = self.windows();
        if windows.is_empty() {
            return Err(Error::not_found(format!(
                "system {} has no restorable backup: no full backup with its WAL is in the vault",
                self.system_id
            ))
            .hint("take a full backup with `strata backup pg <cluster> --kind full`; check archiving with `strata pg check <cluster>`"));
        }
        let newest = windows.iter().map(|w| w.timeline).max().expect("non-empty");
        let candidates: Vec<&Window> = match target {
            Target::Latest => windows.iter().filter(|w| w.timeline == newest).collect(),
            Target::Time(t) => {
                let tli = self.timeline_at(t);
                windows
                    .iter()
                    .filter(|w| w.timeline == tli && w.start_time <= t && t <= w.end_time)
                    .collect()
            }
            Target::Lsn(l) => windows
                .iter()
                .filter(|w| w.start_lsn <= l && l <= w.end_lsn)
                .filter(|w| w.timeline == newest || self.segments.contains_key(&w.timeline))
                .collect(),
        };
        // The newest backup that reaches the target: the least WAL to replay.
        let chosen = match target {
            Target::Latest => candidates.iter().max_by_key(|w| (w.end_lsn, w.start_time)),
            Target::Lsn(_) => candidates.iter().max_by_key(|w| (w.timeline, w.start_lsn)),
            Target::Time(_) => candidates.iter().max_by_key(|w| w.start_time),
        };
        let Some(window) = chosen else {
            return Err(self.unreachable(target, &windows));
        };
        let (manifest, meta) = self
            .backups
            .iter()
            .find(|(m, _)| m.id == window.backup)
            .expect("windows come from backups");
        Ok(Plan {
            backup: manifest.clone(),
            meta: meta.clone(),
            timeline: window.timeline,
            target,
            window: (*window).clone(),
        })
    }

    fn unreachable(&self, target: Target, windows: &[Window]) -> Error {
        let merged = self.merged_windows();
        let list = merged
            .iter()
            .map(|w| format!("  {w}"))
            .collect::<Vec<_>>()
            .join("\n");
        let nearest = match target {
            Target::Time(t) => {
                let mut before: Option<DateTime<Utc>> = None;
                let mut after: Option<DateTime<Utc>> = None;
                for w in windows {
                    if w.end_time <= t {
                        before = before.max(Some(w.end_time));
                    }
                    if w.start_time >= t {
                        after = Some(
                            after.map_or(w.start_time, |a: DateTime<Utc>| a.min(w.start_time)),
                        );
                    }
                }
                let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
                match (before, after) {
                    (Some(b), Some(a)) => format!(
                        "; the nearest restorable times are {} (before) and {} (after)",
                        fmt(b),
                        fmt(a)
                    ),
                    (Some(b), None) => {
                        format!("; the nearest restorable time is {} (before)", fmt(b))
                    }
                    (None, Some(a)) => {
                        format!("; the nearest restorable time is {} (after)", fmt(a))
                    }
                    (None, None) => String::new(),
                }
            }
            _ => String::new(),
        };
        Error::not_found(format!(
            "{target} is outside the recoverable windows of system {}{nearest}. Recoverable windows:\n{list}",
            self.system_id
        ))
        .hint("choose a target inside a window; nothing was written")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::catalog::manifest::{Compression, MANIFEST_FORMAT};

    const SEG: u64 = 16 * 1024 * 1024;

    fn backup(
        tli: u32,
        start_seg: u64,
        stop_seg: u64,
        stop_time: &str,
    ) -> (Manifest, FullBackupMeta) {
        let stop_time: DateTime<Utc> = stop_time.parse().unwrap();
        let meta = FullBackupMeta {
            system_id: "42".into(),
            server_version_num: 150000,
            server_version: "15".into(),
            timeline: tli,
            start_lsn: Lsn(start_seg * SEG + 40).to_string(),
            stop_lsn: Lsn(stop_seg * SEG + 100).to_string(),
            start_time: stop_time,
            stop_time,
            wal_segment_size: SEG,
            data_checksums: true,
            backup_label: String::new(),
            tablespace_map: String::new(),
            tablespaces: vec![],
            data_streams: vec![],
            files: vec![],
            page_check: None,
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

    fn catalog(
        segs: &[(u32, u64, &str)],
        histories: Vec<TimelineHistory>,
        backups: Vec<(Manifest, FullBackupMeta)>,
    ) -> Catalog {
        let mut segments: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut times = BTreeMap::new();
        for (tli, seg, time) in segs {
            segments.entry(*tli).or_default().insert(*seg);
            times.insert((*tli, *seg), t(time));
        }
        Catalog {
            system_id: 42,
            seg_size: SEG,
            backups,
            segments,
            histories: histories.into_iter().map(|h| (h.timeline, h)).collect(),
            segment_times: times,
        }
    }

    #[test]
    fn history_files_parse() {
        let h = TimelineHistory::parse(3, "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A8\tbefore 2026-11-22 01:00:00+00\n").unwrap();
        assert_eq!(h.parents, vec![(1, Lsn(0x300_0000)), (2, Lsn(0x50_00A8))]);
        assert!(TimelineHistory::parse(2, "garbage").is_err());
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
        let merged = cat.merged_windows();
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0].end_time, t("2026-11-22T01:02:00Z"));
        assert_eq!(merged[1].start_time, t("2026-11-22T01:04:30Z"));

        let plan = cat.plan(Target::Time(t("2026-11-22T01:05:30Z"))).unwrap();
        assert_eq!(plan.backup.id, id2);
        let plan = cat.plan(Target::Latest).unwrap();
        assert_eq!(plan.window.last_segment, "000000010000000000000008");

        let err = cat
            .plan(Target::Time(t("2026-11-22T01:03:00Z")))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("outside the recoverable windows"), "{text}");
        assert!(
            text.contains("2026-11-22 01:02:00.000 UTC (before)"),
            "{text}"
        );
        assert!(
            text.contains("2026-11-22 01:04:30.000 UTC (after)"),
            "{text}"
        );
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
        let latest = cat.plan(Target::Latest).unwrap();
        assert_eq!(latest.timeline, 2);
        assert_eq!(latest.window.last_segment, "000000020000000000000005");
        // Before timeline 2 existed, a time is restored on timeline 1.
        let old = cat.plan(Target::Time(t("2026-11-22T01:02:30Z"))).unwrap();
        assert_eq!(old.timeline, 1);
        let new = cat.plan(Target::Time(t("2026-11-22T01:10:30Z"))).unwrap();
        assert_eq!(new.timeline, 2);
    }

    #[test]
    fn a_backup_without_its_wal_is_not_restorable() {
        let segs = [(1, 2, "2026-11-22T01:00:00Z")];
        let b = backup(1, 2, 3, "2026-11-22T01:00:30Z");
        let cat = catalog(&segs, vec![], vec![b]);
        assert!(cat.windows().is_empty());
        let err = cat.plan(Target::Latest).unwrap_err();
        assert!(err.to_string().contains("no restorable backup"), "{err}");
    }
}

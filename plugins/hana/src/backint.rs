//! HANA's Backint objects: how an object name maps onto Strata, and how one
//! pushed object is stored (`store_object`, what `hdbbackint` runs for
//! each `#PIPE` or `#FILE` through the host's lifecycle).
//!
//! Every version of a Backint object (one `#PIPE` of one backup call) is one
//! Strata backup: engine `hana`, instance = the SID, database = the tenant
//! (`SYSTEMDB` or the name after `DB_`), one stream named after the object's
//! base name. Its **EBID is the backup id**, and its manifest's
//! `engine_meta.backint` ([`ObjectMeta`]) keeps the HANA object name, HANA's
//! backup id (`-s`), the level and the creation time.
//!
//! The SID and database come from the object **name**
//! (`/usr/sap/<SID>/SYS/global/hdb/backint/<DB_TENANT|SYSTEMDB>/...`), not
//! from `-u`, so a system copy (restore under another SID) finds the
//! source's objects.
//!
//! To find the versions of a name without reading every manifest, each
//! version also has a small **name marker** in the SID's archive store, at
//! [`marker_key`]: `objects/<escaped name component>/.../<ebid>`. It is
//! written before the manifest, and a version counts only once its manifest
//! exists, so a marker left by a failed upload is never listed or restored.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_core::catalog::manifest::{BackupKind, Manifest};
use strata_core::plugin::{
    ArchiveFinding, ArchiveStore, Attributes, BackupOutcome, BackupRequest, BackupSink,
    escape_key_component,
};
use strata_core::{Error, Result};

/// What the manifest of a Backint object version records about it
/// (`engine_meta.backint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The object name exactly as HANA sent it.
    pub name: String,
    /// The Backint keyword it came from: `PIPE` or `FILE`.
    pub source: String,
    /// HANA's backup id (`-s`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hana_backup_id: Option<String>,
    /// The level (`-l`) as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `data`, `log` or `catalog`.
    pub object: String,
    /// `-u` as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `-c` as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
    /// The Backint version HANA spoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// When the object version was created (the start of its upload).
    pub created: DateTime<Utc>,
}

impl ObjectMeta {
    /// Reads the Backint details from a manifest, if it has them.
    pub fn of(manifest: &Manifest) -> Option<ObjectMeta> {
        serde_json::from_value(manifest.engine_meta.get("backint")?.clone()).ok()
    }

    /// Wraps the details as a manifest's `engine_meta`.
    pub fn to_engine_meta(&self) -> serde_json::Value {
        serde_json::json!({ "backint": self })
    }
}

/// The SID and database a HANA object name belongs to, read from its path
/// (`.../usr/sap/<SID>/SYS/global/hdb/backint/<DB>/...`). The path may sit
/// under another root (a test directory); both parts are `None` when the
/// name has no such shape.
pub fn name_location(name: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = name.split('/').collect();
    let mut sid = None;
    let mut database = None;
    for (i, window) in parts.windows(3).enumerate() {
        if window[0] == "usr" && window[1] == "sap" && !window[2].is_empty() {
            sid = Some(window[2].to_owned());
            let rest = &parts[i + 3..];
            if let Some(pos) = rest.iter().position(|p| *p == "backint")
                && let Some(db) = rest.get(pos + 1).filter(|_| pos + 2 < rest.len())
            {
                database = match db.strip_prefix("DB_") {
                    Some(tenant) if !tenant.is_empty() => Some(tenant.to_owned()),
                    _ => Some((*db).to_owned()),
                };
            }
        }
    }
    (sid, database)
}

/// The base name of an object (the text after the last `/`).
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Whether the object is a log backup (or the catalog, `log_backup_0_0_0_0`):
/// these are restored strictly one after the other.
pub fn is_log_object(name: &str) -> bool {
    base_name(name).starts_with("log_backup")
}

/// Whether the object is HANA's backup catalog.
pub fn is_catalog_object(name: &str) -> bool {
    base_name(name) == "log_backup_0_0_0_0"
}

/// The Strata backup kind of an object: from the level when HANA gives a
/// known one, otherwise from the name.
pub fn kind_of(level: Option<&str>, name: &str) -> BackupKind {
    match level.map(|l| l.trim().to_ascii_uppercase()).as_deref() {
        Some("COMPLETE" | "FULL" | "DATA") => BackupKind::Full,
        Some("DIFFERENTIAL" | "DIFF") => BackupKind::Diff,
        Some("INCREMENTAL" | "INCR") => BackupKind::Incr,
        Some("LOG") => BackupKind::Log,
        _ if is_log_object(name) => BackupKind::Log,
        _ => BackupKind::Full,
    }
}

/// The creation time encoded in an EBID (a `BackupId` starts with its UTC
/// start time, `20261122T001500.123Z-...`).
pub fn ebid_time(ebid: &str) -> Option<DateTime<Utc>> {
    let stamp = ebid.split('-').next()?.strip_suffix('Z')?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3f")
        .ok()
        .map(|t| t.and_utc())
}

/// The longest marker prefix kept component by component, in bytes; a
/// local vault's paths must stay under the 4,096-byte `PATH_MAX`.
const MAX_MARKER_PREFIX: usize = 1024;

/// The archive key prefix under which the markers of object `name` live:
/// `objects/` and one escaped component per `/`-separated component of the
/// name. A name whose prefix would exceed 1,024 bytes gets
/// `objects/_h<64 hex digits of the name's BLAKE3>` instead, a component
/// escaping never writes, so every name is stored whatever its length.
pub fn marker_prefix(name: &str) -> String {
    let mut key = "objects".to_owned();
    for component in name.split('/') {
        key.push('/');
        key.push_str(&escape_key_component(component));
    }
    if key.len() > MAX_MARKER_PREFIX {
        key = format!("objects/_h{}", blake3::hash(name.as_bytes()).to_hex());
    }
    key
}

/// The archive key of the marker of version `ebid` of object `name`.
pub fn marker_key(name: &str, ebid: &str) -> String {
    format!("{}/{ebid}", marker_prefix(name))
}

/// The name markers' findings for `strata verify`: every committed version
/// (every manifest of `backups` that records a Backint object) must have
/// its marker. Only the markers' keys are ever read, so a marker's body may
/// hold anything; a missing marker hides its version from the lookups of
/// the newest version of a name (`#NULL`, how a recovery asks for HANA's
/// backup catalog).
pub async fn verify_markers(
    backups: &[Manifest],
    archive: &dyn ArchiveStore,
) -> Result<Vec<ArchiveFinding>> {
    let listed: std::collections::HashSet<String> = archive
        .list("objects")
        .await?
        .into_iter()
        .map(|entry| entry.key)
        .collect();
    Ok(backups
        .iter()
        .filter_map(|manifest| {
            let meta = ObjectMeta::of(manifest)?;
            let key = marker_key(&meta.name, manifest.id.as_str());
            (!listed.contains(&key)).then(|| ArchiveFinding {
                key,
                problem: format!(
                    "is missing: the name marker of version {} of Backint object {} is gone, so lookups of the newest version of that name do not see it",
                    manifest.id, meta.name
                ),
            })
        })
        .collect())
}

/// What `hdbbackint` knows of one pushed object (the JSON form of
/// `BackupRequest::options` for a HANA backup with input).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackintObject {
    /// The object name exactly as HANA sent it.
    pub name: String,
    /// The Backint keyword it came from: `PIPE` or `FILE`.
    pub source: String,
    /// HANA's backup id (`-s`), if given.
    #[serde(default)]
    pub hana_backup_id: Option<String>,
    /// The level (`-l`) as given.
    #[serde(default)]
    pub level: Option<String>,
    /// `-u` as given.
    #[serde(default)]
    pub user: Option<String>,
    /// `-c` as given.
    #[serde(default)]
    pub count: Option<String>,
    /// The Backint version HANA spoke.
    #[serde(default)]
    pub api: Option<String>,
}

/// Stores one pushed Backint object of system `sid`: its bytes as one
/// stream, then its name marker; returns what the manifest records.
pub(crate) async fn store_object(
    sid: &str,
    request: BackupRequest,
    sink: &dyn BackupSink,
    archive: &dyn ArchiveStore,
) -> Result<BackupOutcome> {
    let object: BackintObject =
        strata_core::plugin::parse_options(&request.options, "Backint object options")?;
    let input = request
        .input
        .ok_or_else(|| Error::engine("a Backint object arrived without its bytes"))?;
    let created = Utc::now();
    let stream = match base_name(&object.name) {
        "" => "object",
        base => base,
    };
    sink.write_stream(stream, input.reader).await?;
    let kind = if is_catalog_object(&object.name) {
        "catalog"
    } else if is_log_object(&object.name) {
        "log"
    } else {
        "data"
    };
    let meta = ObjectMeta {
        name: object.name.clone(),
        source: object.source,
        hana_backup_id: object.hana_backup_id.clone(),
        level: object.level,
        object: kind.to_owned(),
        user: object.user,
        count: object.count,
        api: object.api,
        created,
    };
    let ebid = request.id.to_string();
    let marker = serde_json::to_vec(&serde_json::json!({
        "name": meta.name, "ebid": ebid, "created": meta.created,
    }))?;
    archive
        .put_once(
            &marker_key(&meta.name, &ebid),
            marker.into(),
            Attributes::new(),
        )
        .await
        .map_err(|e| e.context(format!("recording the name of {ebid} (system {sid})")))?;
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("backint_name".to_owned(), object.name);
    if let Some(id) = object.hana_backup_id {
        labels.insert("hana_backup_id".to_owned(), id);
    }
    Ok(BackupOutcome {
        consistent_at: (kind == "data").then(Utc::now),
        labels,
        engine_meta: meta.to_engine_meta(),
        ..BackupOutcome::default()
    })
}

#[cfg(test)]
mod tests {
    use strata_core::catalog::manifest::BackupId;

    use super::*;

    #[test]
    fn names_locate_sid_and_database() {
        assert_eq!(
            name_location(
                "/usr/sap/HDB/SYS/global/hdb/backint/SYSTEMDB/FULL_BACKUP_databackup_0_1"
            ),
            (Some("HDB".into()), Some("SYSTEMDB".into()))
        );
        assert_eq!(
            name_location("/tmp/x y/usr/sap/QAS/SYS/global/hdb/backint/DB_SRC/log_backup_0_0_0_0"),
            (Some("QAS".into()), Some("SRC".into()))
        );
        assert_eq!(name_location("/var/tmp/pipe"), (None, None));
        assert_eq!(
            name_location("/usr/sap/HDB/SYS/global/hdb/backint/MY_PREFIX"),
            (Some("HDB".into()), None)
        );
    }

    #[test]
    fn kinds_come_from_level_then_name() {
        assert_eq!(
            kind_of(Some("COMPLETE"), "/x/a_databackup_0_1"),
            BackupKind::Full
        );
        assert_eq!(kind_of(Some("differential"), "/x/a"), BackupKind::Diff);
        assert_eq!(kind_of(Some("INCREMENTAL"), "/x/a"), BackupKind::Incr);
        assert_eq!(kind_of(Some("LOG"), "/x/a"), BackupKind::Log);
        assert_eq!(
            kind_of(Some("SOMETHING_NEW"), "/x/log_backup_1_0_5_9"),
            BackupKind::Log
        );
        assert_eq!(kind_of(None, "/x/log_backup_0_0_0_0"), BackupKind::Log);
        assert_eq!(kind_of(None, "/x/data"), BackupKind::Full);
        assert!(is_catalog_object("/a/log_backup_0_0_0_0"));
        assert!(!is_catalog_object("/a/log_backup_1_0_0_0"));
    }

    #[test]
    fn ebids_carry_their_time() {
        let at: DateTime<Utc> = "2026-11-22T00:15:00.120Z".parse().unwrap();
        let id = BackupId::generate(at);
        assert_eq!(ebid_time(id.as_str()), Some(at));
        assert_eq!(ebid_time("1707397841371"), None);
    }
}

//! `strata sqlserver plan --history FILE.json` end to end: the restore chain
//! a DBA gets from an export of `msdb.dbo.backupset`, with no server and no
//! vault.
//!
//! The history files are written here in the shapes DBAs export them:
//!
//! - `SELECT ... FROM msdb.dbo.backupset FOR JSON PATH`: an array of
//!   objects, LSNs (`numeric(25,0)`) as JSON numbers of 17 to 25 digits,
//!   `datetime` as `2026-11-30T10:00:00`, bits as `true`/`false`, GUIDs in
//!   upper case, NULL columns left out;
//! - `Invoke-DbaQuery ... | ConvertTo-Json` with the LSNs selected as text
//!   (`CAST(first_lsn AS varchar(25))`): LSNs and dates as strings, NULLs as
//!   `null`, and the DataRow properties PowerShell adds;
//! - an old export without `differential_base_guid`, the recovery fork
//!   GUIDs and `time_zone`.
//!
//! The last test takes real backups through the emulator (or a real server)
//! and checks that `plan --history` on the server's own history picks the
//! backups `strata restore sqlserver --files-only` restores: the two
//! planners agree.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use strata_e2e::cli::{RunOutput, Strata};
use strata_e2e::fixture::TestDir;
use strata_e2e::sqlserver::fixture::{FixtureOptions, SqlServerFixture};

/// The decimal LSN SQL Server stores for (VLF sequence number, log block,
/// slot): `vlf × 10^15 + block × 10^5 + slot`.
fn lsn(vlf: u128, block: u128) -> u128 {
    vlf * 1_000_000_000_000_000 + block * 100_000 + 1
}

/// A 17-digit LSN of VLF 34.
fn short(block: u128) -> u128 {
    lsn(34, block)
}

/// A 25-digit LSN (VLF 4294967295): beyond what a double holds exactly.
fn long(block: u128) -> u128 {
    lsn(4_294_967_295, block)
}

/// A `uniqueidentifier` as SQL Server prints it (upper case).
fn guid(n: u32) -> String {
    format!("6F9619FF-8B86-D011-B42D-{n:012X}")
}

/// The same GUID as Strata prints it (lower case).
fn uuid(n: u32) -> String {
    guid(n).to_lowercase()
}

/// One backup set, the columns the exports below write.
#[derive(Clone, Debug)]
struct Set {
    n: u32,
    ty: &'static str,
    copy_only: bool,
    first: u128,
    last: u128,
    checkpoint: u128,
    database_backup: u128,
    /// A differential's base: the full's number and checkpoint LSN.
    base: Option<(u32, u128)>,
    /// `first_recovery_fork_guid` and `last_recovery_fork_guid` numbers.
    forks: (u32, u32),
    fork_point: Option<u128>,
    database_guid: u32,
    /// `HH:MM:SS` on 2026-11-30, server local time.
    start: String,
    finish: String,
    time_zone: i16,
    database: &'static str,
}

const FORK_A: u32 = 0xA1;
const FORK_B: u32 = 0xB2;
const DB_GUID: u32 = 0xD1;
const FAMILY: u32 = 0xFA;

impl Set {
    fn new(n: u32, ty: &'static str, lsns: (u128, u128), start: &str) -> Set {
        Set {
            n,
            ty,
            copy_only: false,
            first: lsns.0,
            last: lsns.1,
            checkpoint: lsns.0,
            database_backup: 0,
            base: None,
            forks: (FORK_A, FORK_A),
            fork_point: None,
            database_guid: DB_GUID,
            start: start.to_owned(),
            finish: start.to_owned(),
            time_zone: 0,
            database: "sales",
        }
    }

    /// A full database backup (type D).
    fn full(n: u32, lsns: (u128, u128), checkpoint: u128, times: (&str, &str)) -> Set {
        Set {
            checkpoint,
            finish: times.1.to_owned(),
            ..Set::new(n, "D", lsns, times.0)
        }
    }

    /// A copy-only full: `database_backup_lsn` still names the last regular full.
    fn copy_only(mut self, last_full: &Set) -> Set {
        self.copy_only = true;
        self.database_backup = last_full.checkpoint;
        self
    }

    /// A differential on `base` (type I).
    fn diff(n: u32, base: &Set, lsns: (u128, u128), checkpoint: u128, times: (&str, &str)) -> Set {
        Set {
            checkpoint,
            database_backup: base.checkpoint,
            base: Some((base.n, base.checkpoint)),
            finish: times.1.to_owned(),
            ..Set::new(n, "I", lsns, times.0)
        }
    }

    /// A log backup (type L) that starts at `start` and takes 20 seconds.
    fn log(n: u32, lsns: (u128, u128), start: &str, full: &Set) -> Set {
        Set {
            checkpoint: full.checkpoint,
            database_backup: full.checkpoint,
            finish: plus_20s(start),
            ..Set::new(n, "L", lsns, start)
        }
    }

    fn at(mut self, time_zone: i16) -> Set {
        self.time_zone = time_zone;
        self
    }
}

fn plus_20s(hms: &str) -> String {
    let t = chrono::NaiveTime::parse_from_str(hms, "%H:%M:%S").unwrap();
    (t + chrono::Duration::seconds(20))
        .format("%H:%M:%S")
        .to_string()
}

/// `SELECT ... FROM msdb.dbo.backupset FOR JSON PATH`: LSNs as numbers,
/// NULL columns left out, plus columns Strata does not use.
fn for_json_path(sets: &[Set]) -> String {
    let rows: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut row = vec![
                format!("\"backup_set_id\":{}", 1000 + i),
                format!("\"backup_set_uuid\":\"{}\"", guid(s.n)),
                format!("\"media_set_id\":{}", 2000 + i),
                format!("\"name\":\"{} backup {}\"", s.database, s.n),
                format!("\"type\":\"{}\"", s.ty),
                format!("\"is_copy_only\":{}", s.copy_only),
                format!("\"first_lsn\":{}", s.first),
                format!("\"last_lsn\":{}", s.last),
                format!("\"checkpoint_lsn\":{}", s.checkpoint),
                format!("\"database_backup_lsn\":{}", s.database_backup),
                format!("\"first_recovery_fork_guid\":\"{}\"", guid(s.forks.0)),
                format!("\"last_recovery_fork_guid\":\"{}\"", guid(s.forks.1)),
                format!("\"database_guid\":\"{}\"", guid(s.database_guid)),
                format!("\"family_guid\":\"{}\"", guid(FAMILY)),
                format!("\"backup_start_date\":\"2026-11-30T{}\"", s.start),
                format!("\"backup_finish_date\":\"2026-11-30T{}\"", s.finish),
                format!("\"time_zone\":{}", s.time_zone),
                "\"recovery_model\":\"FULL\"".to_owned(),
                format!("\"begins_log_chain\":{}", s.ty == "L" && s.n == 2),
                "\"has_bulk_logged_data\":false".to_owned(),
                "\"has_backup_checksums\":true".to_owned(),
                "\"is_damaged\":false".to_owned(),
                "\"backup_size\":4206592".to_owned(),
                "\"compressed_backup_size\":1022301".to_owned(),
                "\"compatibility_level\":160".to_owned(),
                format!("\"database_name\":\"{}\"", s.database),
                "\"server_name\":\"SQL01\\\\PROD\"".to_owned(),
            ];
            if let Some((base, base_lsn)) = s.base {
                row.push(format!("\"differential_base_guid\":\"{}\"", guid(base)));
                row.push(format!("\"differential_base_lsn\":{base_lsn}"));
            }
            if let Some(point) = s.fork_point {
                row.push(format!("\"fork_point_lsn\":{point}"));
            }
            format!("{{{}}}", row.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// `Invoke-DbaQuery -Query "SELECT CAST(first_lsn AS varchar(25)) AS
/// first_lsn, ..., CONVERT(varchar(23), backup_start_date, 121) AS
/// backup_start_date, ..." | ConvertTo-Json`: LSNs and dates as strings,
/// NULLs as `null`, and the properties PowerShell adds to a DataRow.
/// `old`: an export from a server or a script that has no
/// `differential_base_guid`, recovery fork GUIDs or `time_zone`.
fn convert_to_json(sets: &[Set], old: bool) -> String {
    let text = |v: Option<String>| v.map_or("null".to_owned(), |v| format!("\"{v}\""));
    let rows: Vec<String> = sets
        .iter()
        .map(|s| {
            let mut row = vec![
                format!("\"backup_set_uuid\":\"{}\"", guid(s.n)),
                format!("\"type\":\"{}\"", s.ty),
                format!("\"is_copy_only\":{}", s.copy_only),
                format!("\"first_lsn\":\"{}\"", s.first),
                format!("\"last_lsn\":\"{}\"", s.last),
                format!("\"checkpoint_lsn\":\"{}\"", s.checkpoint),
                format!("\"database_backup_lsn\":\"{}\"", s.database_backup),
                format!("\"database_guid\":\"{}\"", guid(s.database_guid)),
                format!("\"family_guid\":\"{}\"", guid(FAMILY)),
                format!("\"backup_start_date\":\"2026-11-30 {}.000\"", s.start),
                format!("\"backup_finish_date\":\"2026-11-30 {}.000\"", s.finish),
                "\"recovery_model\":\"FULL\"".to_owned(),
                format!("\"begins_log_chain\":{}", s.ty == "L" && s.n == 2),
                "\"has_bulk_logged_data\":false".to_owned(),
                "\"is_damaged\":false".to_owned(),
                format!("\"database_name\":\"{}\"", s.database),
                "\"server_name\":\"SQL01\"".to_owned(),
                "\"RowError\":\"\"".to_owned(),
                "\"RowState\":1".to_owned(),
                "\"HasErrors\":false".to_owned(),
            ];
            if !old {
                row.extend([
                    format!(
                        "\"differential_base_guid\":{}",
                        text(s.base.map(|(b, _)| guid(b)))
                    ),
                    format!(
                        "\"differential_base_lsn\":{}",
                        text(s.base.map(|(_, l)| l.to_string()))
                    ),
                    format!("\"first_recovery_fork_guid\":\"{}\"", guid(s.forks.0)),
                    format!("\"last_recovery_fork_guid\":\"{}\"", guid(s.forks.1)),
                    format!(
                        "\"fork_point_lsn\":{}",
                        text(s.fork_point.map(|p| p.to_string()))
                    ),
                    format!("\"time_zone\":{}", s.time_zone),
                ]);
            }
            format!("{{\n    {}\n}}", row.join(",\n    "))
        })
        .collect();
    format!("[\n{}\n]\n", rows.join(",\n"))
}

/// `strata [--json] sqlserver plan --history FILE ARGS`: no configuration
/// file, no vault, no server.
fn plan(history: &Path, args: &[&str], json: bool) -> RunOutput {
    let mut cmd = Strata::new();
    if json {
        cmd = cmd.arg("--json");
    }
    cmd.args(["sqlserver", "plan", "--history"])
        .arg(history)
        .args(args)
        .run()
}

/// The plan's backup sets, in apply order.
fn steps(plan: &serde_json::Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {plan}"))
        .iter()
        .map(|s| s["backup_set_uuid"].as_str().unwrap().to_owned())
        .collect()
}

fn uuids(ns: &[u32]) -> Vec<String> {
    ns.iter().map(|n| uuid(*n)).collect()
}

/// The numbered step lines of the text plan (`  1. full (D): ...`), each
/// with the backup set line under it.
fn step_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            l.split_once(". ")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Full 1, log 2, copy-only full 3, log 4, differential 5 (on full 1), log 6,
/// copy-only full 7, log 8; the server at UTC+1 (`time_zone` 4). 17-digit
/// LSNs as JSON numbers.
fn with_copy_only_fulls() -> Vec<Set> {
    let f1 = Set::full(
        1,
        (short(100), short(200)),
        short(120),
        ("10:00:00", "10:05:00"),
    );
    let sets = vec![
        f1.clone(),
        Set::log(2, (short(100), short(300)), "10:15:00", &f1),
        Set::full(
            3,
            (short(280), short(320)),
            short(290),
            ("10:20:00", "10:25:00"),
        )
        .copy_only(&f1),
        Set::log(4, (short(300), short(400)), "10:30:00", &f1),
        Set::diff(
            5,
            &f1,
            (short(380), short(420)),
            short(390),
            ("10:35:00", "10:37:00"),
        ),
        Set::log(6, (short(400), short(500)), "10:45:00", &f1),
        Set::full(
            7,
            (short(480), short(520)),
            short(490),
            ("10:50:00", "10:55:00"),
        )
        .copy_only(&f1),
        Set::log(8, (short(500), short(600)), "11:00:00", &f1),
    ];
    sets.into_iter().map(|s| s.at(4)).collect()
}

/// Copy-only fulls start a restore of their own, but a differential never
/// applies on one: to 10:48 server time the chain is full 1, differential 5
/// and the logs after it, with STOPAT in the server's local time on the last
/// log; right after copy-only full 3 the chain starts with it.
#[test]
fn copy_only_fulls_start_restores_but_are_never_a_differential_base() {
    let h = TestDir::new("sqlserver-plan-copy-only");
    let file = h.write("backupset.json", for_json_path(&with_copy_only_fulls()));

    // 10:48 at UTC+1 is 09:48Z.
    let out = plan(&file, &["--to-time", "2026-11-30T09:48:00Z"], true).success();
    let p = out.json();
    assert_eq!(steps(&p), uuids(&[1, 5, 6, 8]), "{p:#}");
    assert_eq!(p["database"], "sales");
    assert_eq!(p["fork"], uuid(FORK_A));
    assert!(
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["copy_only"] == false),
        "{p:#}"
    );
    assert_eq!(p["steps"][3]["first_lsn"], short(500).to_string());
    assert_eq!(p["stop"]["time"]["local"], "2026-11-30T10:48:00");
    assert_eq!(p["stop"]["time"]["utc"], "2026-11-30T09:48:00Z");

    // What the DBA reads: the chain in apply order, the STOPAT under the
    // last log, in the server's local time.
    let text = plan(&file, &["--to-time", "2026-11-30T09:48:00Z"], false)
        .success()
        .stdout_text();
    assert_eq!(
        step_lines(&text),
        [
            format!(
                "1. full (D): 2026-11-30T10:00:00 to 2026-11-30T10:05:00 local, 2026-11-30T09:00:00Z to 2026-11-30T09:05:00Z; LSN {} to {}",
                short(100),
                short(200)
            ),
            format!(
                "2. diff (I): 2026-11-30T10:35:00 to 2026-11-30T10:37:00 local, 2026-11-30T09:35:00Z to 2026-11-30T09:37:00Z; LSN {} to {}",
                short(380),
                short(420)
            ),
            format!(
                "3. log (L): 2026-11-30T10:45:00 to 2026-11-30T10:45:20 local, 2026-11-30T09:45:00Z to 2026-11-30T09:45:20Z; LSN {} to {}",
                short(400),
                short(500)
            ),
            format!(
                "4. log (L): 2026-11-30T11:00:00 to 2026-11-30T11:00:20 local, 2026-11-30T10:00:00Z to 2026-11-30T10:00:20Z; LSN {} to {}",
                short(500),
                short(600)
            ),
        ],
        "{text}"
    );
    let stop = "STOPAT 2026-11-30T10:48:00 server local time (2026-11-30T09:48:00Z)";
    let after_last = text
        .split_once(&format!("backup set {}", uuid(8)))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("log 8 is not in the plan:\n{text}"));
    assert!(after_last.trim_start().starts_with(stop), "{text}");
    assert_eq!(text.matches("STOPAT").count(), 1, "{text}");

    // Right after copy-only full 3 (10:27 local), the chain starts with it.
    let p = plan(&file, &["--to-time", "2026-11-30T09:27:00Z"], true)
        .success()
        .json();
    assert_eq!(steps(&p), uuids(&[3, 4]), "{p:#}");
    assert_eq!(p["steps"][0]["copy_only"], true);
    let text = plan(&file, &["--to-time", "2026-11-30T09:27:00Z"], false)
        .success()
        .stdout_text();
    assert!(
        text.contains("1. full (D, copy-only): 2026-11-30T10:20:00"),
        "{text}"
    );
}

/// A differential taken after a copy-only full applies on the regular full
/// before it (its `differential_base_guid`), whatever is newer: an
/// `Invoke-DbaQuery | ConvertTo-Json` export with 25-digit LSNs as strings,
/// the server at UTC-5.
#[test]
fn a_differential_after_a_copy_only_full_bases_on_the_earlier_regular_full() {
    let f1 = Set::full(
        1,
        (long(100), long(200)),
        long(120),
        ("09:00:00", "09:02:00"),
    );
    let sets: Vec<Set> = vec![
        f1.clone(),
        Set::full(
            2,
            (long(300), long(340)),
            long(310),
            ("09:30:00", "09:32:00"),
        )
        .copy_only(&f1),
        Set::diff(
            3,
            &f1,
            (long(400), long(440)),
            long(410),
            ("09:45:00", "09:46:30"),
        ),
        Set::log(4, (long(100), long(500)), "10:00:00", &f1),
    ]
    .into_iter()
    .map(|s| s.at(-20))
    .collect();
    let h = TestDir::new("sqlserver-plan-diff-after-copy");
    let file = h.write("dbatools.json", convert_to_json(&sets, false));

    // 09:50 at UTC-5 is 14:50Z.
    let p = plan(&file, &["--to-time", "2026-11-30T14:50:00Z"], true)
        .success()
        .json();
    assert_eq!(steps(&p), uuids(&[1, 3, 4]), "{p:#}");
    assert_eq!(p["steps"][1]["first_lsn"], long(400).to_string());
    assert_eq!(p["steps"][2]["last_lsn"], long(500).to_string());
    assert_eq!(p["stop"]["time"]["local"], "2026-11-30T09:50:00");
    let text = plan(&file, &["--to-time", "2026-11-30T14:50:00Z"], false)
        .success()
        .stdout_text();
    assert!(
        text.contains("STOPAT 2026-11-30T09:50:00 server local time (2026-11-30T14:50:00Z)"),
        "{text}"
    );
    assert!(
        !text.contains(&uuid(2)),
        "the copy-only full is not in the chain:\n{text}"
    );
}

/// An old export without `differential_base_guid`, fork GUIDs and
/// `time_zone`: differentials find their full by `database_backup_lsn` =
/// the full's `checkpoint_lsn`, and the server's offset comes from
/// `--utc-offset` (without it the plan is refused, exit 3).
#[test]
fn an_old_export_plans_by_the_lsn_relations_with_an_explicit_utc_offset() {
    let f1 = Set::full(
        1,
        (short(100), short(200)),
        short(120),
        ("08:00:00", "08:05:00"),
    );
    let f5 = Set {
        database_backup: short(120),
        ..Set::full(
            5,
            (short(380), short(420)),
            short(390),
            ("09:00:00", "09:05:00"),
        )
    };
    let sets = vec![
        f1.clone(),
        Set::log(2, (short(100), short(300)), "08:15:00", &f1),
        Set::diff(
            3,
            &f1,
            (short(280), short(320)),
            short(290),
            ("08:30:00", "08:32:00"),
        ),
        Set::log(4, (short(300), short(400)), "08:45:00", &f1),
        f5.clone(),
        Set::log(6, (short(400), short(500)), "09:15:00", &f5),
        Set::diff(
            7,
            &f5,
            (short(480), short(520)),
            short(490),
            ("09:30:00", "09:32:00"),
        ),
        Set::log(8, (short(500), short(600)), "09:45:00", &f5),
    ];
    let h = TestDir::new("sqlserver-plan-old-export");
    let export = convert_to_json(&sets, true);
    for column in ["differential_base_guid", "recovery_fork_guid", "time_zone"] {
        assert!(!export.contains(column), "{column} is in the export");
    }
    let file = h.write("old.json", export);

    // Local times cannot be placed in UTC without the server's offset.
    let out = plan(&file, &["--to-time", "2026-11-30T03:10:00Z"], false).failure(3);
    let err = out.stderr_text();
    assert!(err.contains("time_zone is unknown"), "{err}");
    assert!(err.contains("--utc-offset"), "{err}");

    // At UTC+05:30, 08:40 local is 03:10Z: full 1, differential 3 (its
    // database_backup_lsn is full 1's checkpoint), log 4.
    let early = [
        "--to-time",
        "2026-11-30T03:10:00Z",
        "--utc-offset",
        "+05:30",
    ];
    let p = plan(&file, &early, true).success().json();
    assert_eq!(steps(&p), uuids(&[1, 3, 4]), "{p:#}");
    assert_eq!(p["stop"]["time"]["local"], "2026-11-30T08:40:00");
    assert_eq!(p["steps"][0]["start_utc"], "2026-11-30T02:30:00Z");
    let text = plan(&file, &early, false).success().stdout_text();
    assert!(
        text.contains("STOPAT 2026-11-30T08:40:00 server local time (2026-11-30T03:10:00Z)"),
        "{text}"
    );
    // 09:40 local: full 5 and its own differential 7.
    let p = plan(
        &file,
        &[
            "--to-time",
            "2026-11-30T04:10:00Z",
            "--utc-offset",
            "+05:30",
        ],
        true,
    )
    .success()
    .json();
    assert_eq!(steps(&p), uuids(&[5, 7, 8]), "{p:#}");
}

/// Fork A: full 1, logs 2, 3, 4. Then the database was restored in place
/// to an LSN inside log 2 and recovered: fork B (and a new database_guid).
/// Log 5 runs from fork A into B, log 6 continues B. 25-digit LSNs as JSON
/// numbers, the server at UTC.
fn with_recovery_fork() -> Vec<Set> {
    let f1 = Set::full(
        1,
        (long(100), long(200)),
        long(120),
        ("10:00:00", "10:05:00"),
    );
    let on_b = |mut s: Set, first_fork: u32| {
        s.forks = (first_fork, FORK_B);
        s.database_guid = 0xD2;
        s
    };
    let mut spanning = on_b(Set::log(5, (long(240), long(320)), "11:15:00", &f1), FORK_A);
    spanning.fork_point = Some(long(250));
    vec![
        f1.clone(),
        Set::log(2, (long(150), long(300)), "10:15:00", &f1),
        Set::log(3, (long(300), long(400)), "10:30:00", &f1),
        Set::log(4, (long(400), long(500)), "10:45:00", &f1),
        spanning,
        on_b(Set::log(6, (long(320), long(380)), "11:30:00", &f1), FORK_B),
    ]
}

/// After the restore the plan follows fork B (fork A's history up to the
/// fork point, then fork B's logs); before it, fork A.
#[test]
fn a_recovery_fork_is_followed_after_the_restore_and_not_before() {
    let h = TestDir::new("sqlserver-plan-fork");
    let file = h.write("backupset.json", for_json_path(&with_recovery_fork()));

    let p = plan(&file, &["--to-time", "2026-11-30T11:20:00Z"], true)
        .success()
        .json();
    assert_eq!(p["fork"], uuid(FORK_B), "{p:#}");
    assert_eq!(steps(&p), uuids(&[1, 2, 5, 6]), "{p:#}");
    assert_eq!(p["steps"][2]["first_lsn"], long(240).to_string());
    let latest = plan(&file, &[], true).success().json();
    assert_eq!(steps(&latest), uuids(&[1, 2, 5, 6]), "{latest:#}");
    assert_eq!(latest["stop"], serde_json::Value::Null);

    let p = plan(&file, &["--to-time", "2026-11-30T10:40:00Z"], true)
        .success()
        .json();
    assert_eq!(p["fork"], uuid(FORK_A), "{p:#}");
    assert_eq!(steps(&p), uuids(&[1, 2, 3, 4]), "{p:#}");

    let text = plan(&file, &["--to-time", "2026-11-30T11:20:00Z"], false)
        .success()
        .stdout_text();
    assert_eq!(
        text.lines().next(),
        Some(
            format!(
                "Restore of database sales to time 2026-11-30T11:20:00Z (recovery fork {}):",
                uuid(FORK_B)
            )
            .as_str()
        ),
        "{text}"
    );
    // The recoverable windows name both forks.
    assert!(text.contains(&format!("fork {}", uuid(FORK_A))), "{text}");
    assert!(text.contains(&format!("fork {}", uuid(FORK_B))), "{text}");
}

/// A missing log backup: a target after it is refused (exit 8) naming the
/// missing LSN range and the nearest restorable times; a target before it
/// plans, and the plan lists the gap.
#[test]
fn a_missing_log_refuses_targets_after_it_naming_the_lsns_and_the_nearest_times() {
    let f1 = Set::full(
        1,
        (short(100), short(200)),
        short(120),
        ("10:00:00", "10:05:00"),
    );
    let sets: Vec<Set> = vec![
        f1.clone(),
        Set::log(2, (short(150), short(300)), "10:15:00", &f1),
        // The log of 10:30 (LSN 300 to 400) is not in the export.
        Set::log(4, (short(400), short(500)), "10:45:00", &f1),
        Set::log(5, (short(500), short(600)), "11:00:00", &f1),
    ]
    .into_iter()
    .map(|s| s.at(8))
    .collect();
    let h = TestDir::new("sqlserver-plan-gap");
    let file = h.write("gap.json", convert_to_json(&sets, false));

    // 10:50 at UTC+2 is 08:50Z.
    let out = plan(&file, &["--to-time", "2026-11-30T08:50:00Z"], false).failure(8);
    let err = out.stderr_text();
    assert!(err.contains("database sales"), "{err}");
    assert!(
        err.contains(&format!("{}..{}", short(300), short(400))),
        "the message names the missing LSN range: {err}"
    );
    // The nearest restorable time before the gap: log 2's start.
    assert!(err.contains("2026-11-30T08:15:00Z"), "{err}");
    assert!(out.stdout.is_empty(), "{}", out.stdout_text());
    let out = plan(&file, &["--to-time", "2026-11-30T08:50:00Z"], true).failure(8);
    let err: serde_json::Value = serde_json::from_str(out.stderr_text().trim()).unwrap();
    assert_eq!(err["error"]["kind"], "not-found", "{err}");

    let p = plan(&file, &["--to-time", "2026-11-30T08:10:00Z"], true)
        .success()
        .json();
    assert_eq!(steps(&p), uuids(&[1, 2]), "{p:#}");
    let gaps = p["timeline"]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{p:#}");
    assert!(
        gaps[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{}..{}", short(300), short(400))),
        "{p:#}"
    );
}

/// An export of several databases needs `--database` (exit 3, listing them);
/// with it, only that database's backups are planned.
#[test]
fn several_databases_without_a_name_are_refused_listing_them() {
    let f1 = Set::full(
        1,
        (short(100), short(200)),
        short(120),
        ("10:00:00", "10:05:00"),
    );
    let hr = |s: Set| Set {
        database: "hr",
        database_guid: 0xD9,
        ..s
    };
    let f11 = hr(Set::full(
        11,
        (short(900), short(950)),
        short(910),
        ("10:01:00", "10:02:00"),
    ));
    let sets = vec![
        f1.clone(),
        f11.clone(),
        Set::log(2, (short(150), short(300)), "10:15:00", &f1),
        hr(Set::log(12, (short(900), short(990)), "10:16:00", &f11)),
    ];
    let h = TestDir::new("sqlserver-plan-databases");
    let file = h.write("all.json", for_json_path(&sets));

    let out = plan(&file, &[], false).failure(3);
    let err = out.stderr_text();
    assert!(err.contains("several databases (hr, sales)"), "{err}");
    assert!(err.contains("--database"), "{err}");

    let p = plan(&file, &["--database", "hr"], true).success().json();
    assert_eq!(p["database"], "hr");
    assert_eq!(steps(&p), uuids(&[11, 12]), "{p:#}");
    let out = plan(&file, &["--database", "crm"], false).failure(8);
    assert!(
        out.stderr_text().contains("hr, sales"),
        "{}",
        out.stderr_text()
    );
}

/// A malformed export is refused with exit 3, naming the file and the row
/// and column: an LSN that went through a double, a `/Date(...)/` of
/// Windows PowerShell 5.1, and a file that is not JSON.
#[test]
fn a_malformed_export_is_refused_naming_the_file_row_and_column() {
    let h = TestDir::new("sqlserver-plan-malformed");
    let good = for_json_path(&with_copy_only_fulls());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&good).unwrap();
    assert_eq!(rows.len(), 8);

    // Row 3's last_lsn exported through a double.
    let last = format!("\"last_lsn\":{}", short(320));
    assert_eq!(good.matches(&last).count(), 1);
    let file = h.write(
        "float.json",
        good.replace(&last, "\"last_lsn\":3.4000000032E16"),
    );
    let out = plan(&file, &[], false).failure(3);
    let err = out.stderr_text();
    assert!(
        err.contains(&format!("{}: row 3 of 8: column last_lsn", file.display())),
        "{err}"
    );
    assert!(
        err.contains("varchar(25)"),
        "the hint says how to export: {err}"
    );

    let start = "\"backup_start_date\":\"2026-11-30T10:45:00\"";
    let file = h.write(
        "ps51.json",
        good.replace(start, "\"backup_start_date\":\"\\/Date(1796035500000)\\/\""),
    );
    let out = plan(&file, &[], false).failure(3);
    let err = out.stderr_text();
    assert!(
        err.contains(&format!(
            "{}: row 6 of 8: column backup_start_date",
            file.display()
        )),
        "{err}"
    );

    let file = h.write("truncated.json", &good[..good.len() / 2]);
    let out = plan(&file, &[], false).failure(3);
    let err = out.stderr_text();
    assert!(
        err.contains(&format!("{} is not a JSON backup history", file.display())),
        "{err}"
    );

    let missing = h.path("missing.json");
    let out = plan(&missing, &[], false).failure(10);
    assert!(
        out.stderr_text().contains("missing.json"),
        "{}",
        out.stderr_text()
    );
}

/// Real backups (full, copy-only full, differential, logs) through the
/// plugin; the server's own `msdb.dbo.backupset` exported as JSON from the
/// rows read over T-SQL; `plan --history` on it picks the same backup sets
/// as `strata restore sqlserver --files-only` for the same time.
#[tokio::test(flavor = "multi_thread")]
async fn plan_history_and_restore_files_only_pick_the_same_backups() {
    let fx = SqlServerFixture::start("sqlserver-plan-agree", FixtureOptions::default(), |c| {
        c.utc_offset_minutes = -300;
    })
    .await;
    // A name of this run only: a real server keeps other runs' history.
    let dir = fx.dir.root().file_name().unwrap().to_string_lossy();
    let db = format!("sales_{}", dir.rsplit('-').next().unwrap());
    let mut sql = fx.client().await;
    sql.exec(&format!("CREATE DATABASE [{db}]")).await;
    sql.exec(&format!(
        "CREATE TABLE [{db}].[dbo].[t] (id int NOT NULL, note nvarchar(200) NULL)"
    ))
    .await;
    let mut backup_sets: BTreeMap<String, String> = BTreeMap::new();
    let mut backup = |kind: &str| {
        let out = fx
            .strata([
                "--json",
                "backup",
                "sqlserver",
                "main",
                "--database",
                &db,
                "--kind",
                kind,
            ])
            .success()
            .json();
        let set = out["backup_set"]["backup_set_uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("no backup set: {out}"))
            .to_owned();
        backup_sets.insert(out["id"].as_str().unwrap().to_owned(), set.clone());
        set
    };
    let insert =
        |id: i32| format!("INSERT INTO [{db}].[dbo].[t] (id, note) VALUES ({id}, N'row {id}')");
    sql.exec(&insert(1)).await;
    let full = backup("full");
    sql.exec(&insert(2)).await;
    backup("log");
    sql.exec(&insert(3)).await;
    let copy = backup("copy-only");
    sql.exec(&insert(4)).await;
    let diff = backup("diff");
    sql.exec(&insert(5)).await;
    let log_after_diff = backup("log");
    sql.exec(&insert(6)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target = sql.now().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sql.exec(&insert(7)).await;
    let last_log = backup("log");

    // The DBA's export: the server's history rows, as FOR JSON PATH writes
    // them (LSNs as exact numbers, NULL columns left out).
    let exported = sql
        .rows(&format!(
            "SELECT backup_set_uuid, type, is_copy_only, first_lsn, last_lsn, checkpoint_lsn, \
             database_backup_lsn, differential_base_lsn, differential_base_guid, \
             first_recovery_fork_guid, last_recovery_fork_guid, fork_point_lsn, database_guid, \
             family_guid, backup_start_date, backup_finish_date, time_zone, recovery_model, \
             begins_log_chain, has_bulk_logged_data, has_backup_checksums, database_name, \
             server_name FROM msdb.dbo.backupset WHERE database_name = N'{db}' ORDER BY backup_set_id"
        ))
        .await;
    assert_eq!(exported.len(), 6, "six backups of {db} in msdb");
    let json = export_rows(&exported);
    let file = fx.dir.write("msdb-backupset.json", &json);

    let target_text = format!("{}Z", target.format("%Y-%m-%dT%H:%M:%S%.3f"));
    let planned = Strata::new()
        .args(["--json", "sqlserver", "plan", "--history"])
        .arg(&file)
        .args(["--to-time", &target_text])
        .run()
        .success()
        .json();
    let planned_sets = steps(&planned);
    assert_eq!(
        planned_sets,
        [
            full.clone(),
            diff.clone(),
            log_after_diff.clone(),
            last_log.clone()
        ],
        "full, the differential (not the copy-only full), the logs after it: {planned:#}"
    );
    assert!(!planned_sets.contains(&copy));

    let out_dir = fx.dir.path("files");
    let restored = fx
        .command([
            "--json",
            "restore",
            "sqlserver",
            "main",
            "--database",
            &db,
            "--to-time",
            &target_text,
            "--files-only",
        ])
        .arg(&out_dir)
        .run()
        .success();
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("restore.json")).unwrap())
            .unwrap_or_else(|e| panic!("restore.json: {e}\n{}", restored.stdout_text()));
    let mut restored_sets: Vec<String> = Vec::new();
    for file in listing["files"].as_array().unwrap() {
        let set = &backup_sets[file["backup_id"].as_str().unwrap()];
        if restored_sets.last() != Some(set) {
            restored_sets.push(set.clone());
        }
    }
    assert_eq!(restored_sets, planned_sets, "{listing:#}\n{planned:#}");
    // Both stop at the same server-local time.
    assert_eq!(
        listing["stopat"]
            .as_str()
            .map(|s| s.trim_end_matches(".000")),
        planned["stop"]["time"]["local"]
            .as_str()
            .map(|s| s.trim_end_matches(".000")),
        "{listing:#}\n{planned:#}"
    );
}

/// The rows as `FOR JSON PATH` writes them: NULLs left out, LSNs and sizes
/// as exact numbers, dates as `YYYY-MM-DDTHH:MM:SS.fff`, GUIDs in upper case.
fn export_rows(rows: &[tiberius::Row]) -> String {
    use tiberius::ColumnData;
    let objects: Vec<String> = rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = row
                .cells()
                .filter_map(|(column, data)| {
                    let value = match data {
                        ColumnData::U8(Some(v)) => v.to_string(),
                        ColumnData::I16(Some(v)) => v.to_string(),
                        ColumnData::I32(Some(v)) => v.to_string(),
                        ColumnData::I64(Some(v)) => v.to_string(),
                        ColumnData::Bit(Some(v)) => v.to_string(),
                        ColumnData::Numeric(Some(v)) => {
                            assert_eq!(v.scale(), 0, "{} is numeric(25,0)", column.name());
                            v.value().to_string()
                        }
                        ColumnData::Guid(Some(v)) => {
                            format!("\"{}\"", v.to_string().to_uppercase())
                        }
                        ColumnData::String(Some(v)) => serde_json::to_string(v.as_ref()).unwrap(),
                        ColumnData::DateTime(Some(_)) | ColumnData::DateTime2(Some(_)) => {
                            let t: chrono::NaiveDateTime =
                                row.get(column.name()).expect("a datetime");
                            format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3f"))
                        }
                        _ => return None,
                    };
                    Some(format!("\"{}\":{value}", column.name()))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]", objects.join(","))
}

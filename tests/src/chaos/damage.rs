//! The `damage` campaign: damage at rest. Every kind of object a vault
//! stores gets each kind of damage, one object and one damage per run, on
//! a copy of a vault holding real backups; then `strata verify` and the
//! restore that needs the object run on it.
//!
//! | object | what it is | the restore that needs it |
//! |---|---|---|
//! | `stream/segment-{first,middle,last}` | a segment object (`data/...`) of a stream backup: the first, a middle and the last of its parts | `restore stream` of the newest backup |
//! | `encrypted/segment-{first,middle,last}` | the same in an encrypted vault (sealed parts) | the same |
//! | `pg/segment-{first,middle,last}` | a segment of a PostgreSQL backup's data stream | `restore pg --latest --start` |
//! | `backint/segment-{first,middle,last}` | a segment of a Backint object (a HANA data backup piece) | `hdbbackint -f restore` by EBID |
//! | `stream/manifest`, `encrypted/manifest`, `pg/manifest`, `backint/manifest` | a manifest (`manifests/...`), the commit point | as its segments |
//! | `wal/segment` | an archived WAL segment (`engines/postgres/<cluster>/wal/...`) between the newest backup and the end of the archive | `restore pg --latest --start` |
//! | `wal/history` | the `.history` file of the newest timeline | the same |
//! | `wal/backup-history` | the `.backup` file of the newest backup | the same |
//! | `backint/marker` | the name marker (`engines/hana/<SID>/objects/...`) of the newest version of HANA's backup catalog | `hdbbackint -f restore` of the newest version (`#NULL`), as a recovery asks for the catalog |
//! | `vault-meta`, `encrypted/vault-meta` | `strata-vault.json` | `restore stream` |
//! | `tombstone` | a soft-deleted backup's tombstone (`deleted/...`) | `strata undelete`, then `restore stream` |
//!
//! The damage kinds ([`harm::Damage`]): one bit flipped (seeded), a
//! truncation to a seeded shorter length (a quarter of them to 0 bytes),
//! deletion, and replacement by another backup's object of the same kind
//! (the same segment number of the previous backup, the previous backup's
//! manifest, the previous WAL segment, the previous timeline's history,
//! another vault's metadata, another deleted backup's tombstone).
//!
//! What each run must see, unless the object kind is documented as
//! harmless for that damage ([`expectation`] says which, and why):
//! `verify` fails with exit 6 (integrity) and its output names the
//! object's key; the restore fails with its documented exit code, naming
//! the object; and no command ever exits 0 having restored other bytes or
//! rows than were backed up. A damage that goes unnoticed, or a wrong
//! restore, is a loss; a detection that does not name the object, or
//! exits with an undocumented code, is a failure.
//!
//! Each fixture (stream vaults, a PostgreSQL cluster with WAL archiving and
//! three timelines, a Backint vault) is built once; every run damages a
//! fresh `cp -a` of its vault, index and configuration. The CI scale runs
//! every cell of the matrix once; the large scale runs each with several
//! seeds (different bits, lengths). The vaults are `file://`: the objects
//! and their keys are the same on every store.

mod backint;
mod harm;
mod postgres;
mod streams;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rand::rngs::StdRng;

pub use harm::Damage;

use super::{Options, Scale, Summary, SummaryBuilder, WorkDir, panic_message};
use crate::cli::{RunOutput, Strata};

/// Where an object sits in a backup's data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The first segment.
    First,
    /// A segment in the middle.
    Middle,
    /// The last segment.
    Last,
}

impl Part {
    /// The three positions.
    pub const ALL: [Part; 3] = [Part::First, Part::Middle, Part::Last];

    /// The index of this position among `count` segments.
    pub fn index(self, count: usize) -> usize {
        match self {
            Part::First => 0,
            Part::Middle => count / 2,
            Part::Last => count.saturating_sub(1),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Part::First => "first",
            Part::Middle => "middle",
            Part::Last => "last",
        }
    }
}

/// A kind of stored object (the rows of the matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Object {
    /// A segment of a stream backup.
    StreamSegment(Part),
    /// A segment of a stream backup in an encrypted vault.
    EncryptedSegment(Part),
    /// A stream backup's manifest.
    StreamManifest,
    /// A stream backup's manifest in an encrypted vault.
    EncryptedManifest,
    /// `strata-vault.json`.
    VaultMeta,
    /// `strata-vault.json` of an encrypted vault.
    EncryptedVaultMeta,
    /// A soft-deleted backup's tombstone.
    Tombstone,
    /// A segment of a PostgreSQL backup's data stream.
    PgSegment(Part),
    /// A PostgreSQL backup's manifest.
    PgManifest,
    /// An archived WAL segment.
    WalSegment,
    /// An archived timeline history file.
    WalHistory,
    /// An archived backup history file (`.backup`).
    WalBackupHistory,
    /// A segment of a Backint object version.
    BackintSegment(Part),
    /// A Backint object version's manifest.
    BackintManifest,
    /// A Backint name marker.
    BackintMarker,
}

impl Object {
    /// Every object kind, in the order of the report.
    pub fn all() -> Vec<Object> {
        let mut all = Vec::new();
        all.extend(Part::ALL.map(Object::StreamSegment));
        all.extend(Part::ALL.map(Object::EncryptedSegment));
        all.extend([
            Object::StreamManifest,
            Object::EncryptedManifest,
            Object::VaultMeta,
            Object::EncryptedVaultMeta,
            Object::Tombstone,
        ]);
        all.extend(Part::ALL.map(Object::PgSegment));
        all.extend([
            Object::PgManifest,
            Object::WalSegment,
            Object::WalHistory,
            Object::WalBackupHistory,
        ]);
        all.extend(Part::ALL.map(Object::BackintSegment));
        all.extend([Object::BackintManifest, Object::BackintMarker]);
        all
    }

    /// The name in case lines and `--only`.
    pub fn name(self) -> String {
        match self {
            Object::StreamSegment(p) => format!("stream/segment-{}", p.name()),
            Object::EncryptedSegment(p) => format!("encrypted/segment-{}", p.name()),
            Object::StreamManifest => "stream/manifest".into(),
            Object::EncryptedManifest => "encrypted/manifest".into(),
            Object::VaultMeta => "vault-meta".into(),
            Object::EncryptedVaultMeta => "encrypted/vault-meta".into(),
            Object::Tombstone => "tombstone".into(),
            Object::PgSegment(p) => format!("pg/segment-{}", p.name()),
            Object::PgManifest => "pg/manifest".into(),
            Object::WalSegment => "wal/segment".into(),
            Object::WalHistory => "wal/history".into(),
            Object::WalBackupHistory => "wal/backup-history".into(),
            Object::BackintSegment(p) => format!("backint/segment-{}", p.name()),
            Object::BackintManifest => "backint/manifest".into(),
            Object::BackintMarker => "backint/marker".into(),
        }
    }

    fn fixture(self) -> FixtureKind {
        match self {
            Object::StreamSegment(_)
            | Object::EncryptedSegment(_)
            | Object::StreamManifest
            | Object::EncryptedManifest
            | Object::VaultMeta
            | Object::EncryptedVaultMeta
            | Object::Tombstone => FixtureKind::Streams,
            Object::PgSegment(_)
            | Object::PgManifest
            | Object::WalSegment
            | Object::WalHistory
            | Object::WalBackupHistory => FixtureKind::Postgres,
            Object::BackintSegment(_) | Object::BackintManifest | Object::BackintMarker => {
                FixtureKind::Backint
            }
        }
    }
}

/// What the campaign expects of one command on a damaged vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It fails with one of these exit codes and names the object.
    Detects(&'static [i32]),
    /// The damage is harmless to it (documented in [`expectation`]): it
    /// succeeds, and a restore gives back exactly what was backed up.
    Harmless,
}

/// `strata` exit codes (README, "Errors"), and `hdbbackint`'s.
mod code {
    pub const ENGINE: i32 = 5;
    pub const INTEGRITY: i32 = 6;
    pub const CRYPTO: i32 = 7;
    pub const NOT_FOUND: i32 = 8;
    /// `hdbbackint`: an `#ERROR` was written (docs/hana.md).
    pub const BACKINT_ERROR: i32 = 1;
    /// `hdbbackint`: exit 0 with `#NOTFOUND` (the object is not in the
    /// vault), which fails HANA's recovery naming the object.
    pub const BACKINT_NOT_FOUND: i32 = 0;
}

/// What `verify` and the restore must do after `damage` to `object`.
///
/// The rule is detection: verify exits 6 naming the object, the restore
/// fails naming it. The exceptions are objects whose damage does not
/// change what any restore gives back, by design:
/// - a Backint name marker's body is never read (only its key is: it
///   says that a version of a name exists), so a flipped, cut or
///   replaced body changes nothing; a deleted marker hides the version
///   from `#NULL` (newest) lookups, which verify reports and the restore
///   of the newest version must refuse rather than give an older one;
/// - a `.backup` file is PostgreSQL's record of a backup that neither
///   recovery nor Strata reads: damage to its content is reported by
///   verify (every archived object is checked whole), a deleted one
///   leaves nothing to check, and restores never need it;
/// - `strata-vault.json` replaced by the metadata of another vault with
///   the same settings (both plain) only changes the vault's id, which
///   the local index treats as a new vault and rebuilds itself from;
///   between two encrypted vaults the key check tells the key does not
///   belong (exit 7);
/// - a deleted tombstone leaves nothing to check (a deleted backup is not
///   verified); `undelete` must say the tombstone is gone.
///
/// And how two kinds of damage are seen at all:
/// - a deleted manifest is a backup that vanished: it is told apart from
///   one never taken by the catalog index of a host that knew it (the
///   fixtures verify their vaults once, so their indexes know every
///   backup), whose verify and restores then name the manifest. For
///   Backint, HANA's own catalog knows the EBID: the restore answers
///   `#NOTFOUND` (exit 0, how HANA learns an object is gone) and the
///   agent's log names the manifest it looked for;
/// - a flipped bit in an archived WAL file's compressed body may leave a
///   zstd frame that decodes to the very same bytes; [`one_run`] decodes
///   the object before and after, and such a run expects nothing to
///   notice (the content every read checks with BLAKE3 is intact).
pub fn expectation(object: Object, damage: Damage) -> (Expect, Expect) {
    use Damage::*;
    use Expect::*;
    use code::*;
    match (object, damage) {
        (Object::StreamSegment(_) | Object::EncryptedSegment(_) | Object::PgSegment(_), Delete) => {
            (Detects(&[INTEGRITY]), Detects(&[NOT_FOUND]))
        }
        (Object::StreamSegment(_) | Object::EncryptedSegment(_) | Object::PgSegment(_), _) => {
            (Detects(&[INTEGRITY]), Detects(&[INTEGRITY]))
        }
        (Object::StreamManifest | Object::EncryptedManifest | Object::PgManifest, Delete) => {
            (Detects(&[INTEGRITY]), Detects(&[INTEGRITY, NOT_FOUND]))
        }
        (Object::StreamManifest | Object::EncryptedManifest | Object::PgManifest, _) => {
            (Detects(&[INTEGRITY]), Detects(&[INTEGRITY]))
        }
        (Object::VaultMeta | Object::EncryptedVaultMeta, Delete) => {
            (Detects(&[NOT_FOUND]), Detects(&[NOT_FOUND]))
        }
        (Object::VaultMeta, Replace) => (Harmless, Harmless),
        (Object::EncryptedVaultMeta, Replace) => (Detects(&[CRYPTO]), Detects(&[CRYPTO])),
        (Object::VaultMeta | Object::EncryptedVaultMeta, _) => {
            (Detects(&[INTEGRITY]), Detects(&[INTEGRITY]))
        }
        (Object::Tombstone, Delete) => (Harmless, Detects(&[NOT_FOUND])),
        (Object::Tombstone, _) => (Detects(&[INTEGRITY]), Detects(&[INTEGRITY])),
        (Object::WalSegment, Delete) => (Detects(&[INTEGRITY]), Detects(&[NOT_FOUND])),
        (Object::WalSegment | Object::WalHistory, _) => (
            Detects(&[INTEGRITY]),
            Detects(&[INTEGRITY, ENGINE, NOT_FOUND]),
        ),
        (Object::WalBackupHistory, Delete) => (Harmless, Harmless),
        (Object::WalBackupHistory, _) => (Detects(&[INTEGRITY]), Harmless),
        (Object::BackintManifest, Delete) => (
            Detects(&[INTEGRITY]),
            Detects(&[BACKINT_ERROR, BACKINT_NOT_FOUND]),
        ),
        (Object::BackintSegment(_) | Object::BackintManifest, _) => {
            (Detects(&[INTEGRITY]), Detects(&[BACKINT_ERROR]))
        }
        (Object::BackintMarker, Delete) => (Detects(&[INTEGRITY]), Detects(&[BACKINT_ERROR])),
        (Object::BackintMarker, _) => (Harmless, Harmless),
    }
}

/// The object a run damages, in a fixture's vault.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its key, relative to the vault root.
    pub key: String,
    /// Another backup's object of the same kind, relative to the vault
    /// root, or an absolute path (another vault's metadata).
    pub other: String,
    /// What names the object in a message: its key.
    pub names: Vec<String>,
}

impl Target {
    fn new(key: impl Into<String>, other: impl Into<String>) -> Target {
        let key = key.into();
        Target {
            names: vec![key.clone()],
            key,
            other: other.into(),
        }
    }
}

/// One damaged copy of a fixture: its directory, its vault and its
/// configuration.
#[derive(Debug, Clone)]
pub struct Copy {
    /// The run's directory.
    pub dir: PathBuf,
    /// The vault directory inside it.
    pub vault: PathBuf,
    /// The `strata` configuration naming that vault (and the run's index).
    pub config: PathBuf,
}

/// What a command did on a damaged vault.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command, for findings.
    pub command: String,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it said (stdout, stderr, and logs it wrote).
    pub text: String,
    /// For a restore that exited 0: whether it gave back exactly what was
    /// backed up.
    pub correct: Option<bool>,
    /// The command exited 0 but refused, restoring nothing: Backint's
    /// `#NOTFOUND`, how HANA learns that an object it asks for is gone.
    pub refused: bool,
}

impl Outcome {
    /// The outcome of a `strata` run, with no restored data to judge.
    pub fn of(out: &RunOutput) -> Outcome {
        Outcome {
            command: out.command.clone(),
            code: out.code(),
            text: format!("{}\n{}", out.stdout_text(), out.stderr_text()),
            correct: None,
            refused: false,
        }
    }
}

/// A fixture: vaults with real backups that runs copy and damage.
pub trait Fixture: Sync {
    /// The object of `object`'s kind that runs damage.
    fn target(&self, object: Object) -> Target;
    /// Copies the vault `object` lives in, its index and configuration
    /// into `dir`.
    fn copy(&self, object: Object, dir: &Path) -> Copy;
    /// Runs `strata verify` on the copy.
    fn verify(&self, object: Object, copy: &Copy) -> Outcome;
    /// Runs the restore that needs `object` on the copy and judges what it
    /// gave back.
    fn restore(&self, object: Object, copy: &Copy) -> Outcome;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FixtureKind {
    Streams,
    Postgres,
    Backint,
}

/// `strata --config <config>` with `args`, run on a copy.
pub fn strata(config: &Path, args: &[&str]) -> RunOutput {
    Strata::new().arg("--config").arg(config).args(args).run()
}

/// `cp -a from to`.
///
/// # Panics
/// When the copy fails.
pub fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// The verdict on one command of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Failed as expected, naming the object.
    Detected(i32),
    /// Harmless as documented: succeeded with the right result.
    Harmless,
    /// Acknowledged data restored wrong, or damage that went unnoticed.
    Lost(String),
    /// Noticed, but with an undocumented exit code or without naming the
    /// object; or harmless damage that made the command fail.
    Failed(String),
}

fn judge(step: &str, expect: Expect, outcome: &Outcome, target: &Target) -> Verdict {
    let said = || {
        let text = outcome.text.trim();
        let mut end = text.len().min(1500);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("`{}` said: {}", outcome.command, &text[..end])
    };
    if outcome.code == Some(0) && !outcome.refused {
        return match (expect, outcome.correct) {
            (_, Some(false)) => Verdict::Lost(format!(
                "{step} exited 0 and gave back other data than was backed up; {}",
                said()
            )),
            (Expect::Harmless, _) => Verdict::Harmless,
            (Expect::Detects(_), _) => Verdict::Lost(format!(
                "{step} did not notice the damage (exit 0); {}",
                said()
            )),
        };
    }
    let Some(code) = outcome.code else {
        return Verdict::Failed(format!("{step} was killed by a signal; {}", said()));
    };
    match expect {
        Expect::Harmless => Verdict::Failed(format!(
            "{step} failed (exit {code}{}) on damage that is documented as harmless to it; {}",
            if outcome.refused { ", refused" } else { "" },
            said()
        )),
        Expect::Detects(codes) if !codes.contains(&code) => {
            Verdict::Failed(format!("{step} exited {code}, not {codes:?}; {}", said()))
        }
        Expect::Detects(_) if !target.names.iter().any(|n| outcome.text.contains(n)) => {
            Verdict::Failed(format!(
                "{step} failed (exit {code}) without naming the object {}; {}",
                target.names.join(" or "),
                said()
            ))
        }
        Expect::Detects(_) => Verdict::Detected(code),
    }
}

/// One run of one cell, judged.
struct RunResult {
    cell: usize,
    detail: String,
    verify: Verdict,
    restore: Verdict,
    dir: PathBuf,
}

/// Runs the campaign.
pub fn run(options: &Options) -> Summary {
    let mut summary = Summary::start("damage", options.seed);
    let cells: Vec<(Object, Damage)> = Object::all()
        .into_iter()
        .flat_map(|o| Damage::ALL.map(|d| (o, d)))
        .filter(|(o, d)| options.selects(&cell_name(*o, *d)))
        .collect();
    if cells.is_empty() {
        return summary.finish();
    }
    let rounds = match options.runs {
        Some(runs) => runs.div_ceil(cells.len()).max(1),
        None => match options.scale {
            Scale::Ci => 1,
            Scale::Large => 5,
        },
    };
    let work = match WorkDir::new(options, "damage") {
        Ok(work) => work,
        Err(why) => {
            summary.failed(why);
            return summary.finish();
        }
    };
    eprintln!(
        "damage: seed {}, {} cells x {rounds} seed(s), work directory {}",
        options.seed,
        cells.len(),
        work.root.display()
    );
    let started = Instant::now();
    let needs = |kind: FixtureKind| cells.iter().any(|(o, _)| o.fixture() == kind);
    let streams = needs(FixtureKind::Streams)
        .then(|| {
            timed(&mut summary, "stream vaults", || {
                streams::StreamVaults::build(&work.root.join("streams"))
            })
        })
        .flatten();
    let postgres = if needs(FixtureKind::Postgres) {
        if crate::pg::postgres_installed() {
            timed(&mut summary, "PostgreSQL cluster", || {
                postgres::PgFixture::build(&work.root.join("postgres"))
            })
        } else {
            crate::skip::skipped(
                "chaos damage: PostgreSQL objects",
                "PostgreSQL is not installed (scripts/setup.sh installs it, or set STRATA_PG_BIN)",
            );
            None
        }
    } else {
        None
    };
    let backint = needs(FixtureKind::Backint)
        .then(|| {
            timed(&mut summary, "Backint vault", || {
                backint::BackintFixture::build(&work.root.join("backint"))
            })
        })
        .flatten();
    eprintln!(
        "damage: fixtures ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let fixture = |kind: FixtureKind| -> Option<&dyn Fixture> {
        match kind {
            FixtureKind::Streams => streams.as_ref().map(|f| f as &dyn Fixture),
            FixtureKind::Postgres => postgres.as_ref().map(|f| f as &dyn Fixture),
            FixtureKind::Backint => backint.as_ref().map(|f| f as &dyn Fixture),
        }
    };
    let jobs: Vec<(usize, usize)> = (0..rounds)
        .flat_map(|round| (0..cells.len()).map(move |cell| (cell, round)))
        .filter(|(cell, _)| fixture(cells[*cell].0.fixture()).is_some())
        .collect();
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers() {
            scope.spawn(|| {
                loop {
                    let job = {
                        let mut next = next.lock().unwrap();
                        let job = jobs.get(*next).copied();
                        *next += 1;
                        job
                    };
                    let Some((cell, round)) = job else { break };
                    let (object, damage) = cells[cell];
                    let fixture = fixture(object.fixture()).expect("the job's fixture is built");
                    let dir = work.root.join("runs").join(format!(
                        "{}-{}-{round}",
                        object.name().replace('/', "-"),
                        damage.name()
                    ));
                    let mut rng =
                        options.rng(0x6461_6d61_6765 ^ ((cell as u64) << 16) ^ round as u64);
                    let started = Instant::now();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        one_run(fixture, object, damage, &dir, &mut rng)
                    }));
                    let result = match result {
                        Ok((detail, verify, restore)) => RunResult {
                            cell,
                            detail,
                            verify,
                            restore,
                            dir,
                        },
                        Err(panic) => RunResult {
                            cell,
                            detail: String::new(),
                            verify: Verdict::Failed(format!(
                                "the run stopped early: {}",
                                panic_message(&*panic)
                            )),
                            restore: Verdict::Failed("not run".into()),
                            dir,
                        },
                    };
                    if options.verbose {
                        eprintln!(
                            "damage: {} round {round} ({:.1} s): {}: verify {:?}, restore {:?}",
                            cell_name(object, damage),
                            started.elapsed().as_secs_f64(),
                            result.detail,
                            result.verify,
                            result.restore
                        );
                    }
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.cell);
    for (index, (object, damage)) in cells.iter().enumerate() {
        let name = cell_name(*object, *damage);
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.cell == index).collect();
        if mine.is_empty() {
            continue;
        }
        for result in &mine {
            summary.run(1);
            let mut keep = false;
            for (step, verdict) in [("verify", &result.verify), ("restore", &result.restore)] {
                let at = format!(
                    "{name} (seed {}, {}; {}): {step}",
                    options.seed,
                    result.detail,
                    result.dir.display()
                );
                match verdict {
                    Verdict::Lost(what) => {
                        summary.lost(format!("{at}: {what}"));
                        keep = true;
                    }
                    Verdict::Failed(what) => {
                        summary.failed(format!("{at}: {what}"));
                        keep = true;
                    }
                    Verdict::Detected(_) | Verdict::Harmless => {}
                }
            }
            if !keep {
                let _ = std::fs::remove_dir_all(&result.dir);
            }
        }
        summary.case(
            name,
            format!(
                "{} run(s): verify {}; restore {}",
                mine.len(),
                tally(mine.iter().map(|r| &r.verify)),
                tally(mine.iter().map(|r| &r.restore))
            ),
        );
    }
    drop(streams);
    drop(postgres);
    drop(backint);
    let summary = summary.finish();
    if summary.runs == 0 {
        let mut again = Summary::start("damage", options.seed);
        again.failed("no run was made: the campaign tested nothing");
        let mut failed = again.finish();
        failed.failures += summary.failures;
        failed.findings.extend(summary.findings);
        failed.cases = summary.cases;
        failed.elapsed = summary.elapsed;
        work.finish(false);
        return failed;
    }
    work.finish(summary.is_clean());
    summary
}

/// Damages one object of a fresh copy and runs verify and the restore.
fn one_run(
    fixture: &dyn Fixture,
    object: Object,
    damage: Damage,
    dir: &Path,
    rng: &mut StdRng,
) -> (String, Verdict, Verdict) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let target = fixture.target(object);
    let copy = fixture.copy(object, dir);
    let path = copy.vault.join(&target.key);
    let other = if Path::new(&target.other).is_absolute() {
        PathBuf::from(&target.other)
    } else {
        copy.vault.join(&target.other)
    };
    let before = std::fs::read(&path).unwrap_or_default();
    let mut detail = format!(
        "{}: {}",
        target.key,
        harm::apply(damage, &path, &other, rng)
    );
    let (mut verify_expect, mut restore_expect) = expectation(object, damage);
    if damage == Damage::BitFlip && content_unchanged(object, &target.key, &before, &path) {
        // zstd's encoding has a few bits that do not matter: the object
        // still decodes, header checked, to the very bytes PostgreSQL wrote
        // (BLAKE3), so nothing any restore reads changed.
        detail.push_str(" (decodes to the same content)");
        (verify_expect, restore_expect) = (Expect::Harmless, Expect::Harmless);
    }
    let verify = judge(
        "verify",
        verify_expect,
        &fixture.verify(object, &copy),
        &target,
    );
    let restore = judge(
        "restore",
        restore_expect,
        &fixture.restore(object, &copy),
        &target,
    );
    (detail, verify, restore)
}

/// Whether the archive object `key` (a WAL file), damaged at `path`,
/// still decodes exactly as it did before (`before`): its header intact
/// and its content the same bytes.
fn content_unchanged(object: Object, key: &str, before: &[u8], path: &Path) -> bool {
    if !matches!(
        object,
        Object::WalSegment | Object::WalHistory | Object::WalBackupHistory
    ) {
        return false;
    }
    let decode = |bytes: &[u8]| strata_core::vault::archive::decode_object(bytes, key, None).ok();
    let after = std::fs::read(path).unwrap_or_default();
    matches!((decode(before), decode(&after)), (Some(a), Some(b)) if a == b)
}

fn cell_name(object: Object, damage: Damage) -> String {
    format!("{} x {}", object.name(), damage.name())
}

/// `detected+named 2/2 (exit 6)`, `harmless 1/1`, `LOST 1/2`...
fn tally<'a>(verdicts: impl Iterator<Item = &'a Verdict>) -> String {
    let verdicts: Vec<&Verdict> = verdicts.collect();
    let total = verdicts.len();
    let mut codes: Vec<i32> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Detected(code) => Some(*code),
            _ => None,
        })
        .collect();
    codes.sort_unstable();
    codes.dedup();
    let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|v| f(v)).count();
    let mut parts = Vec::new();
    let detected = count(|v| matches!(v, Verdict::Detected(_)));
    if detected > 0 {
        parts.push(format!(
            "detected+named {detected}/{total} (exit {})",
            codes
                .iter()
                // Backint's `#NOTFOUND` exits 0 (see `code::BACKINT_NOT_FOUND`).
                .map(|c| if *c == 0 {
                    "0 #NOTFOUND".to_owned()
                } else {
                    c.to_string()
                })
                .collect::<Vec<_>>()
                .join("/")
        ));
    }
    let harmless = count(|v| matches!(v, Verdict::Harmless));
    if harmless > 0 {
        parts.push(format!("harmless as documented {harmless}/{total}"));
    }
    let lost = count(|v| matches!(v, Verdict::Lost(_)));
    if lost > 0 {
        parts.push(format!("LOST {lost}/{total}"));
    }
    let failed = count(|v| matches!(v, Verdict::Failed(_)));
    if failed > 0 {
        parts.push(format!("FAILED {failed}/{total}"));
    }
    parts.join(", ")
}

/// Two runs at a time: each is a handful of short commands (and for
/// PostgreSQL a cluster that starts), and the machine has two cores.
fn workers() -> usize {
    2
}

/// Builds a fixture, saying how long it took; a fixture that cannot be
/// built is a failure of the campaign (its cells are not run).
fn timed<T>(summary: &mut SummaryBuilder, what: &str, build: impl FnOnce() -> T) -> Option<T> {
    let started = Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
        Ok(built) => {
            eprintln!(
                "damage: {what} built in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Some(built)
        }
        Err(panic) => {
            summary.failed(format!(
                "the {what} could not be built, its cells did not run: {}",
                panic_message(&*panic)
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::new("data/s/a/1/00000.00001.zst", "data/s/a/0/00000.00001.zst")
    }

    fn outcome(code: i32, text: &str, correct: Option<bool>) -> Outcome {
        Outcome {
            command: "strata".into(),
            code: Some(code),
            text: text.into(),
            correct,
            refused: false,
        }
    }

    #[test]
    fn verdicts_tell_loss_from_unclear_detection() {
        let detects = Expect::Detects(&[6]);
        let named = "part 1 in object data/s/a/1/00000.00001.zst: CRC-32C mismatch";
        assert_eq!(
            judge("verify", detects, &outcome(6, named, None), &target()),
            Verdict::Detected(6)
        );
        assert!(matches!(
            judge("verify", detects, &outcome(6, "1 damaged", None), &target()),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            judge("verify", detects, &outcome(3, named, None), &target()),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            judge("verify", detects, &outcome(0, "ok", None), &target()),
            Verdict::Lost(_)
        ));
        assert!(matches!(
            judge(
                "restore",
                Expect::Harmless,
                &outcome(0, "", Some(false)),
                &target()
            ),
            Verdict::Lost(_)
        ));
        assert_eq!(
            judge(
                "restore",
                Expect::Harmless,
                &outcome(0, "", Some(true)),
                &target()
            ),
            Verdict::Harmless
        );
        assert!(matches!(
            judge(
                "restore",
                Expect::Harmless,
                &outcome(6, named, None),
                &target()
            ),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn every_cell_has_a_name_of_its_own() {
        let names: std::collections::HashSet<String> = Object::all()
            .into_iter()
            .flat_map(|o| Damage::ALL.map(|d| cell_name(o, d)))
            .collect();
        assert_eq!(names.len(), Object::all().len() * Damage::ALL.len());
    }
}

//! The PostgreSQL fixture: a cluster (1 MiB WAL segments) archiving into a
//! `file://` vault through `strata pg wal-push`, two full backups (1 MiB
//! parts and segments, so that a backup's data stream has first,
//! middle and last segments), rows committed after them, and two
//! point-in-time recoveries promoted in turn as the cluster `main`, so the
//! archive holds timelines 1 to 3 and their `.history` files. A restore of
//! `--latest` then needs the newest backup, the WAL after it on timeline
//! 1, both history files and the WAL of timelines 2 and 3, and holds the
//! markers `1,2,3,20,30`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Copy, Fixture, Object, Outcome, Part, Target, copy_tree};
use crate::cli::Strata;
use crate::pg::{PgCluster, PgStrata, give_to_postgres};

/// How long the archiver may take for a segment.
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);

/// The markers a restore of `--latest` holds.
const LATEST_MARKERS: &str = "1,2,3,20,30";

/// The PostgreSQL fixture (see the module docs).
pub struct PgFixture {
    env: PgStrata,
    /// The two full backups, oldest first: their manifests.
    backups: [serde_json::Value; 2],
    /// The archive prefix of the cluster's system: `engines/postgres/main/wal/<id>`.
    wal: String,
    /// A timeline 1 segment between the newest backup and the fork, and
    /// the one after it.
    segment: (String, String),
    /// The `.backup` files of the two backups, oldest first.
    backup_histories: [String; 2],
}

impl PgFixture {
    /// Builds the cluster, the backups and the timelines under the
    /// system's temporary directory (the cluster's own), stopped at the end.
    ///
    /// # Panics
    /// When a step fails.
    pub fn build(_dir: &Path) -> PgFixture {
        let env = PgStrata::with_initdb("chaos-damage-pg", None, &["--wal-segsize=1"]);
        let config = std::fs::read_to_string(&env.config).expect("the configuration");
        std::fs::write(
            &env.config,
            config.replace(
                "part_size = \"4MiB\"",
                "part_size = \"1MiB\"\nsegment_size = \"1MiB\"",
            ),
        )
        .expect("the configuration");
        let pg = &env.cluster;
        let system_id = pg.psql("SELECT system_identifier FROM pg_control_system()");
        pg.psql("CREATE TABLE markers (id int PRIMARY KEY)");
        // Some data, so that a backup's data stream spans several segments.
        pg.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 60000) g");
        let full = |env: &PgStrata| -> serde_json::Value {
            let report = env
                .strata(&["--json", "backup", "pg", "main", "--kind", "full"])
                .success()
                .json();
            let id = report["id"].as_str().expect("a backup id").to_owned();
            read_json(
                &env.vault_dir
                    .join(format!("manifests/postgres/main/{id}.json")),
            )
        };
        let first = full(&env);
        pg.psql("INSERT INTO markers VALUES (1)");
        pg.switch_and_wait_archived(ARCHIVE_WAIT);
        let second = full(&env);
        pg.psql("INSERT INTO markers VALUES (2)");
        let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        pg.switch_and_wait_archived(ARCHIVE_WAIT);
        pg.psql("INSERT INTO markers VALUES (3)");
        let next = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        pg.switch_and_wait_archived(ARCHIVE_WAIT);
        pg.stop();

        // Timelines 2 and 3: the latest state restored and promoted as the
        // cluster `main`, a row on each.
        let mut previous: Option<PgCluster> = None;
        for (name, marker) in [("timeline2", 20), ("timeline3", 30)] {
            if let Some(cluster) = previous.take() {
                cluster.stop();
            }
            let (dir, port) = env.restore_target(name);
            env.strata(&[
                "restore",
                "pg",
                "main",
                "--latest",
                "--target-dir",
                dir.to_str().expect("a UTF-8 path"),
                "--port",
                &port.to_string(),
                "--start",
            ])
            .success();
            let copy = PgCluster::adopt(dir.clone(), port, env.cluster.socket_dir.clone());
            env.promote_copy_as_main(&copy);
            // The history file was written at promotion, while the restore
            // had archiving off: archive it as archive_command would (the
            // archiver may not pick it up by itself).
            let timeline = marker / 10;
            env.strata_as_postgres(
                &dir,
                &[
                    "pg",
                    "wal-push",
                    &format!("pg_wal/{timeline:08X}.history"),
                    "--cluster",
                    "main",
                ],
            )
            .success();
            copy.psql(&format!("INSERT INTO markers VALUES ({marker})"));
            copy.switch_and_wait_archived(ARCHIVE_WAIT);
            previous = Some(copy);
        }
        drop(previous);
        let wal = format!("engines/postgres/main/wal/{system_id}");
        let histories: Vec<String> = {
            let mut names: Vec<String> =
                std::fs::read_dir(env.vault_dir.join(&wal).join("00000001"))
                    .expect("timeline 1 is archived")
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".backup"))
                    .collect();
            names.sort();
            names
        };
        assert_eq!(
            histories.len(),
            2,
            "a .backup file per backup: {histories:?}"
        );
        for timeline in ["00000002/00000002.history", "00000003/00000003.history"] {
            assert!(
                env.vault_dir.join(&wal).join(timeline).is_file(),
                "{timeline} is archived"
            );
        }
        // The sound vault verifies clean, and its index knows every backup.
        env.strata(&["verify"]).success();
        PgFixture {
            backups: [first, second],
            wal,
            segment: (segment, next),
            backup_histories: [histories[0].clone(), histories[1].clone()],
            env,
        }
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The key of the segment at `part` of the data stream with the most
/// segments in `manifest`, and the stream's name.
fn segment_of(manifest: &serde_json::Value, part: Part) -> (String, usize, String) {
    let streams = manifest["streams"].as_array().expect("streams");
    let stream = streams
        .iter()
        .max_by_key(|s| s["segments"].as_array().map_or(0, Vec::len))
        .expect("a stream");
    let segments = stream["segments"].as_array().expect("segments");
    assert!(
        segments.len() >= 3,
        "a data stream with first, middle and last segments, not {} in {}",
        segments.len(),
        manifest["id"]
    );
    let index = part.index(segments.len());
    (
        segments[index]["key"].as_str().expect("a key").to_owned(),
        index,
        stream["name"].as_str().expect("a name").to_owned(),
    )
}

impl Fixture for PgFixture {
    fn target(&self, object: Object) -> Target {
        let [old, new] = &self.backups;
        let id = |m: &serde_json::Value| m["id"].as_str().expect("an id").to_owned();
        let wal = |name: &str| {
            let timeline = &name[..8];
            format!("{}/{timeline}/{name}", self.wal)
        };
        match object {
            Object::PgSegment(part) => {
                let (key, index, stream) = segment_of(new, part);
                // The older backup's segment of the same stream and number,
                // or the nearest one of it that differs: files that did not
                // change between the backups give identical segments, and
                // swapping those changes nothing.
                let others: Vec<String> = old["streams"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["name"] == stream.as_str()))
                    .and_then(|s| s["segments"].as_array())
                    .expect("the older backup has the same stream")
                    .iter()
                    .filter_map(|s| s["key"].as_str().map(str::to_owned))
                    .collect();
                let own = std::fs::read(self.env.vault_dir.join(&key)).expect("the segment");
                let mut order: Vec<usize> = (0..others.len()).collect();
                order.sort_by_key(|&i| i.abs_diff(index));
                let other = order
                    .into_iter()
                    .map(|i| &others[i])
                    .find(|k| std::fs::read(self.env.vault_dir.join(k)).ok().as_ref() != Some(&own))
                    .expect("a segment of the older backup that differs")
                    .clone();
                Target::new(key, other)
            }
            Object::PgManifest => Target::new(
                format!("manifests/postgres/main/{}.json", id(new)),
                format!("manifests/postgres/main/{}.json", id(old)),
            ),
            Object::WalSegment => Target::new(wal(&self.segment.0), wal(&self.segment.1)),
            Object::WalHistory => Target::new(
                format!("{}/00000003/00000003.history", self.wal),
                format!("{}/00000002/00000002.history", self.wal),
            ),
            Object::WalBackupHistory => Target::new(
                wal(&self.backup_histories[1]),
                wal(&self.backup_histories[0]),
            ),
            other => panic!("{other:?} is not a PostgreSQL fixture object"),
        }
    }

    fn copy(&self, _object: Object, dir: &Path) -> Copy {
        let vault = dir.join("vault");
        copy_tree(&self.env.vault_dir, &vault);
        let index = self.env.dir.path("catalog.db");
        let copied_index = dir.join("catalog.db");
        if index.exists() {
            copy_tree(&index, &copied_index);
        }
        let config = dir.join("strata.toml");
        let text = std::fs::read_to_string(&self.env.config).expect("the configuration");
        std::fs::write(
            &config,
            text.replace(&self.env.vault_url, &format!("file://{}", vault.display()))
                .replace(
                    &index.display().to_string(),
                    &copied_index.display().to_string(),
                ),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        // PostgreSQL's restore_command runs `strata` as the postgres user.
        give_to_postgres(dir);
        Copy {
            dir: dir.to_path_buf(),
            vault,
            config,
        }
    }

    fn verify(&self, _object: Object, copy: &Copy) -> Outcome {
        Outcome::of(&super::strata(&copy.config, &["--json", "verify"]))
    }

    fn restore(&self, _object: Object, copy: &Copy) -> Outcome {
        let target: PathBuf = copy.dir.join("restored");
        let port = crate::net::free_port();
        let out = Strata::new()
            .arg("--config")
            .arg(&copy.config)
            .args([
                "restore",
                "pg",
                "main",
                "--latest",
                "--target-dir",
                target.to_str().expect("a UTF-8 path"),
                "--port",
                &port.to_string(),
                "--start",
                "--start-timeout",
                "60",
            ])
            .run();
        let copy_cluster = PgCluster::adopt(target, port, self.env.cluster.socket_dir.clone());
        let mut outcome = Outcome::of(&out);
        if out.code() == Some(0) {
            let markers = copy_cluster
                .try_psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM markers")
                .unwrap_or_else(|e| format!("(cannot query: {e})"));
            outcome.correct = Some(markers == LATEST_MARKERS);
            if markers != LATEST_MARKERS {
                outcome.text.push_str(&format!(
                    "\nthe restored cluster holds markers {markers}, not {LATEST_MARKERS}"
                ));
            }
        }
        drop(copy_cluster);
        outcome
    }
}

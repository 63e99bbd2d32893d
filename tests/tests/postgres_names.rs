//! What PostgreSQL stored comes back: a Strata restore holds the same
//! entries (names as bytes, kinds, modes, link targets) as `pg_basebackup
//! -Fp` of the same cluster at rest, including names that are not UTF-8,
//! odd characters, a tablespace, and a configuration file read through
//! `include_dir` whose name is not UTF-8.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_e2e::pg::{PgCluster, PgStrata, as_postgres, give_to_postgres, run_checked};

/// One entry of a directory tree: its kind, mode and, for a link, its target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, u64),
    Link(PathBuf),
}

/// Every entry under `root`, by relative path (as bytes), links not followed.
fn entries(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for item in std::fs::read_dir(root.join(&rel)).unwrap() {
            let item = item.unwrap();
            let rel = rel.join(item.file_name());
            let meta = std::fs::symlink_metadata(item.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                Entry::Link(std::fs::read_link(item.path()).unwrap())
            } else if meta.is_dir() {
                stack.push(rel.clone());
                Entry::Dir(mode)
            } else {
                Entry::File(mode, meta.len())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn bytes_name(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[test]
fn a_restore_holds_what_pg_basebackup_copies_names_as_bytes_included() {
    let env = PgStrata::new("pg_names");
    let pg = &env.cluster;
    let data = &pg.data;

    // A configuration file whose name is Latin-1 (`réglages.conf`), read through include_dir.
    let conf_d = data.join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let reglages = conf_d.join(bytes_name(b"r\xe9glages.conf"));
    std::fs::write(&reglages, "work_mem = '7MB'\n").unwrap();
    pg.append_conf("include_dir = 'conf.d'\n");
    // A directory that is not UTF-8, odd names, a nested file.
    let archive_dir = data.join(bytes_name(b"archiv\xe9"));
    std::fs::create_dir(&archive_dir).unwrap();
    let odd: Vec<(PathBuf, Vec<u8>)> = vec![
        (archive_dir.join("note"), b"kept".to_vec()),
        (archive_dir.join(bytes_name(b"\xff\xfe raw")), vec![0, 1, 2]),
        (data.join("with space and 'quote'"), b"a".to_vec()),
        (data.join("données \\ back"), b"b".to_vec()),
        (data.join("tab\there"), b"c".to_vec()),
    ];
    for (path, bytes) in &odd {
        std::fs::write(path, bytes).unwrap();
    }
    for dir in [&conf_d, &archive_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for path in odd.iter().map(|(p, _)| p).chain([&reglages]) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    give_to_postgres(data);
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pg.psql("SHOW work_mem"), "7MB");

    // A tablespace with a table in it.
    let space = env.dir.mkdir("space1");
    give_to_postgres(&space);
    pg.psql(&format!(
        "CREATE TABLESPACE space1 LOCATION '{}'",
        space.display()
    ));
    pg.psql("CREATE TABLE far TABLESPACE space1 AS SELECT g FROM generate_series(1, 1000) g");
    pg.psql("CHECKPOINT");

    // pg_basebackup, then Strata, of the cluster at rest.
    let basebackup = env.dir.path("basebackup");
    let basebackup_space = env.dir.path("space-bb");
    let mut cmd = as_postgres(pg.bin.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(&basebackup)
        .args(["-Fp", "-X", "none", "-c", "fast", "-U", "postgres", "-h"])
        .arg(&pg.socket_dir)
        .arg("-p")
        .arg(pg.port.to_string())
        .arg("-T")
        .arg(format!(
            "{}={}",
            space.display(),
            basebackup_space.display()
        ));
    run_checked(cmd, "pg_basebackup");
    env.strata(&["backup", "pg", "main"]).success();
    pg.switch_and_wait_archived(Duration::from_secs(90));

    let (restored, port) = env.restore_target("restored");
    let restored_space = env.dir.path("space-strata");
    env.strata(&[
        "restore",
        "pg",
        "main",
        "--latest",
        "--target-dir",
        restored.to_str().unwrap(),
        "--tablespace-map",
        &format!("{}={}", space.display(), restored_space.display()),
        "--port",
        &port.to_string(),
    ])
    .success();

    // The same entries, but for what each tool adds by design: pg_basebackup
    // its backup_manifest; Strata recovery.signal and tablespace_map, from
    // which PostgreSQL makes the pg_tblspc links at start-up.
    let mut theirs = entries(&basebackup);
    let mut ours = entries(&restored);
    theirs.remove(Path::new("backup_manifest"));
    ours.remove(Path::new("recovery.signal"));
    let map = std::fs::read_to_string(restored.join("tablespace_map")).unwrap();
    ours.remove(Path::new("tablespace_map"));
    for line in map.lines() {
        let (oid, location) = line.split_once(' ').unwrap();
        assert_eq!(location, restored_space.to_str().unwrap());
        ours.insert(
            Path::new("pg_tblspc").join(oid),
            Entry::Link(basebackup_space.clone()),
        );
    }
    let only_theirs: Vec<_> = theirs
        .iter()
        .filter(|(k, v)| ours.get(*k) != Some(v))
        .collect();
    let only_ours: Vec<_> = ours
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .collect();
    // Sizes of files PostgreSQL writes between the two copies may differ;
    // names, kinds, modes and link targets may not.
    let differs = |a: &[(&PathBuf, &Entry)], b: &BTreeMap<PathBuf, Entry>| -> Vec<String> {
        a.iter()
            .filter(|(k, v)| !matches!((v, b.get(*k)), (Entry::File(m, _), Some(Entry::File(n, _))) if m == n))
            .map(|(k, v)| format!("{:?} {v:?}", k.as_os_str()))
            .collect()
    };
    assert!(
        differs(&only_theirs, &ours).is_empty() && differs(&only_ours, &theirs).is_empty(),
        "only in pg_basebackup's copy: {:?}\nonly in Strata's: {:?}",
        differs(&only_theirs, &ours),
        differs(&only_ours, &theirs)
    );
    assert_eq!(
        entries(&basebackup_space).len(),
        entries(&restored_space).len()
    );
    for (path, bytes) in &odd {
        let rel = path.strip_prefix(data).unwrap();
        assert_eq!(
            &std::fs::read(restored.join(rel)).unwrap(),
            bytes,
            "{rel:?}"
        );
    }
    assert!(
        restored
            .join("conf.d")
            .join(bytes_name(b"r\xe9glages.conf"))
            .as_os_str()
            .as_bytes()
            .ends_with(b"r\xe9glages.conf")
    );

    // The restored server runs with the settings it had.
    let copy = PgCluster::adopt(restored.clone(), port, pg.socket_dir.clone());
    give_to_postgres(env.dir.root());
    copy.start();
    assert_eq!(copy.psql("SHOW work_mem"), "7MB");
    assert_eq!(copy.psql("SELECT count(*) FROM far"), "1000");
}

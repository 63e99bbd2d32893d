//! `strata-chaos`'s and `scripts/fuzz.sh`'s command lines: help, wrong
//! arguments and an `--only` that selects nothing end clearly (exit 2),
//! before any campaign or build starts.

use std::process::{Command, Output};

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-chaos"))
        .args(args)
        .output()
        .expect("strata-chaos runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_lists_the_campaigns_on_stdout_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = chaos(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        for word in ["kill", "outage", "damage", "disk", "--seed", "--only"] {
            assert!(
                help.contains(word),
                "{flag} does not mention {word}: {help}"
            );
        }
    }
}

#[test]
fn wrong_arguments_exit_2_naming_the_argument() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let below_a_file = file.path().join("dir");
    let below_a_file = below_a_file.to_str().unwrap();
    for (args, names) in [
        (vec![], "name a campaign"),
        (vec!["everything"], "unknown campaign `everything`"),
        (vec!["kill", "--runs", "0"], "--runs 0"),
        (vec!["kill", "--runs", "-1"], "--runs -1"),
        (vec!["kill", "--seed", "abc"], "--seed abc"),
        (vec!["kill", "--scale", "huge"], "--scale huge"),
        (vec!["kill", "--runs"], "--runs needs a value"),
        (vec!["kill", "--bogus"], "unknown option `--bogus`"),
        (vec!["damage", "--work-dir", below_a_file], "--work-dir"),
    ] {
        let out = chaos(&args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains(names),
            "{args:?} does not name {names}: {said}"
        );
        assert!(!said.contains("panicked"), "{args:?}: {said}");
    }
}

#[test]
fn an_only_that_selects_no_case_is_refused_not_passed() {
    // A typo in --only used to run nothing and report a clean campaign.
    // Neither campaign builds anything before it selects its cases.
    for campaign in ["kill", "damage"] {
        let out = chaos(&[campaign, "--only", "no-such-case"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{campaign}: {said}");
        assert!(
            said.contains("--only `no-such-case` selects no case"),
            "{campaign}: {said}"
        );
    }
}

#[test]
fn fuzz_script_wrong_arguments_exit_2_naming_the_argument() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz.sh");
    for (args, names) in [
        (vec!["--seconds"], "--seconds needs a number"),
        (vec!["--jobs"], "--jobs needs a number"),
        (vec!["--seconds", "0"], "--seconds takes a whole number"),
        (vec!["--seconds", "abc"], "--seconds takes a whole number"),
        (vec!["--jobs", "0"], "--jobs takes a whole number"),
        (vec!["--bogus"], "unknown option --bogus"),
        (vec!["no_such_target"], "there is no target no_such_target"),
    ] {
        let out = Command::new("bash")
            .arg(&script)
            .args(&args)
            .output()
            .expect("bash runs");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains(names),
            "{args:?} does not name {names}: {said}"
        );
    }
    let out = Command::new("bash")
        .arg(&script)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--seconds N"));
}

/// Ctrl-C (SIGINT) of a campaign whose PostgreSQL cluster runs (a new
/// user's trial found clusters and hundreds of MB left behind): the
/// campaign exits 130, stops the cluster, deletes its temporary work
/// directory, and no process below it is left running.
#[test]
fn an_interrupted_campaign_leaves_nothing_running_or_on_disk() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    if !strata_e2e::pg::postgres_installed() {
        strata_e2e::skip::skipped("chaos_cli", "PostgreSQL 15 is not installed");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-chaos"))
        .args(["kill", "--only", "restore pg", "--runs", "3", "--seed", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strata-chaos starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let work = std::path::PathBuf::from(
        first
            .trim()
            .split("work directory ")
            .nth(1)
            .unwrap_or_else(|| panic!("the work directory is printed first: {first}")),
    );
    // Wait for a cluster below the work directory that accepts
    // connections: its postmaster.pid says `ready` on line 8 (initdb's
    // standalone backend writes one too, without it).
    let started = Instant::now();
    let postmaster = loop {
        let found = strata_e2e::fixture::files_below(&work)
            .into_iter()
            .find(|p| {
                p.file_name().is_some_and(|n| n == "postmaster.pid")
                    && std::fs::read_to_string(p)
                        .is_ok_and(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no cluster started below {}",
            work.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = std::fs::read_to_string(&postmaster).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("stopped PostgreSQL"), "{said}");
    assert!(!work.exists(), "{} is left: {said}", work.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} still runs: {said}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

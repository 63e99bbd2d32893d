//! What goes wrong around hdbbackint, played as HANA would: pipes never
//! opened, a reader that goes away, a HANA service killed mid-stream, a
//! backup cancelled by HANA, an unreachable vault, broken parameter and input
//! files. Each gives `#SOFTWAREID`, a result line per object, the right exit
//! code and one clear line on stderr, and never a committed partial object.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use strata_e2e::hana::{
    AGENT_TIMEOUT, BackintCall, HanaHost, Pattern, TestVault, drain_pipe, feed_pipe, is_fifo,
    mkfifo, open_for_reading, q,
};

const OPEN: Duration = Duration::from_secs(60);

fn one_stderr_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one line on stderr expected, got:\n{stderr}"
    );
    lines[0]
}

/// A pipe HANA never opens fails once `open_timeout` (2 s here) has
/// passed, not sooner and not at the default of 60 s, with a message that
/// names the pipe and the timeout; the other pipes of the call are served,
/// and the unopened one stays a FIFO.
#[test]
fn a_pipe_hana_never_opens_fails_within_the_timeout_and_stays_a_pipe() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "open_timeout = 2");
    let never = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    let written = dir.join("COMPLETE_DATA_BACKUP_databackup_3_1");
    let missing = dir.join("COMPLETE_DATA_BACKUP_databackup_4_1");
    mkfifo(&never);
    mkfifo(&written);
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .backup_id("1")
        .count(3)
        .level("COMPLETE")
        .pipe(&never)
        .pipe(&written)
        .pipe(&missing)
        .spawn(&host);
    let feeder = feed_pipe(&written, 100_000, 9, OPEN);
    let result = agent.finish(Duration::from_secs(30));
    result.assert_exit(1);
    feeder.join().unwrap().unwrap();
    let errors = result.with("#ERROR");
    assert!(
        errors.contains(&vec![never.display().to_string()]),
        "{}",
        result.describe()
    );
    assert!(
        errors.contains(&vec![missing.display().to_string()]),
        "{}",
        result.describe()
    );
    assert_eq!(result.saved(&written).1, 100_000);
    assert!(
        result.text.contains(&format!(
            "HANA did not open {} for writing within 2 s",
            never.display()
        )),
        "{}",
        result.describe()
    );
    // The agent waited the configured timeout for the pipe, and no longer
    // than it takes to serve the others after it (the default is 60 s).
    assert!(
        result.elapsed >= Duration::from_secs(2) && result.elapsed < Duration::from_secs(15),
        "the agent gave up after {:?}, with open_timeout = 2: {}",
        result.elapsed,
        result.describe()
    );
    assert!(
        result
            .text
            .contains(&format!("the pipe {} does not exist", missing.display())),
        "{}",
        result.describe()
    );
    assert!(is_fifo(&never), "the unopened pipe must stay a FIFO");
    assert!(
        !missing.exists(),
        "the agent must never create a missing pipe"
    );
    assert_eq!(vault.manifests().len(), 1);
    // The one line HANA shows names a failure, not only the log file.
    let line = one_stderr_line(&result.stderr);
    assert!(
        line.contains("does not exist") || line.contains("HANA did not open"),
        "{line}"
    );
}

#[test]
fn a_restore_pipe_nobody_reads_and_a_reader_gone_early_are_errors() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "open_timeout = 2");
    let big = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    let small = dir.join("COMPLETE_DATA_BACKUP_databackup_3_1");
    mkfifo(&big);
    mkfifo(&small);
    let len = 4 << 20;
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .pipe(&big)
        .pipe(&small)
        .spawn(&host);
    let f1 = feed_pipe(&big, len, 31, OPEN);
    let f2 = feed_pipe(&small, 5000, 32, OPEN);
    let saved = agent.finish(AGENT_TIMEOUT);
    f1.join().unwrap().unwrap();
    f2.join().unwrap().unwrap();
    saved.assert_exit(0);
    let (big_ebid, _) = saved.saved(&big);
    let (small_ebid, _) = saved.saved(&small);

    // HANA reads 100 KiB of the big piece and goes away; the next piece is
    // still served; a third pipe is never opened at all.
    let unread = dir.join("never_read");
    mkfifo(&unread);
    let agent = BackintCall::new("restore", "HDB")
        .params(&par)
        .ebid(&big_ebid, &big)
        .ebid(&small_ebid, &small)
        .ebid_to(&small_ebid, &small, &unread)
        .spawn(&host);
    let mut reader = open_for_reading(&big, OPEN).unwrap();
    let mut head = vec![0u8; 100 << 10];
    reader.read_exact(&mut head).unwrap();
    drop(reader);
    let got = drain_pipe(&small, OPEN).unwrap();
    assert_eq!(got.blake3, Pattern::digest(5000, 32));
    let result = agent.finish(Duration::from_secs(30));
    result.assert_exit(1);
    let errors = result.with("#ERROR");
    assert!(
        errors.contains(&vec![big.display().to_string()]),
        "{}",
        result.describe()
    );
    assert!(
        !result
            .with("#RESTORED")
            .iter()
            .any(|f| f[1] == big.display().to_string()),
        "a reader gone early must never be reported #RESTORED:\n{}",
        result.describe()
    );
    // The small piece: one #RESTORED (into its own pipe) and one #ERROR (never opened).
    assert_eq!(
        result.with("#RESTORED"),
        vec![vec![small_ebid, small.display().to_string()]]
    );
    assert_eq!(errors.len(), 2, "{}", result.describe());
    assert!(is_fifo(&unread));
    one_stderr_line(&result.stderr);
}

fn wait_for_output(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hana_service_killed_mid_stream_leaves_no_version() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let pipe = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    mkfifo(&pipe);
    // A shell stands in for the HANA service: it starts the agent as its
    // child; killing it is HANA dying while it writes the pipe.
    let mut service = BackintCall::new("backup", "HDB")
        .params(&par)
        .backup_id("77")
        .count(1)
        .level("COMPLETE")
        .pipe(&pipe)
        .spawn_with(&host, Path::new("sh"), &["-c", "\"$0\" \"$@\" & wait"]);
    let mut writer = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
    let mut pattern = Pattern::new(300_000, 5);
    let mut buf = vec![0u8; 300_000];
    pattern.fill(&mut buf);
    writer.write_all(&buf).unwrap();
    service.kill();
    std::thread::sleep(Duration::from_millis(100));
    drop(writer);
    let text = wait_for_output(service.output_path(), "#ERROR", Duration::from_secs(30));
    assert!(
        text.contains(&format!("#ERROR {}", q(&pipe.display().to_string()))),
        "the agent must not save a stream whose writer died:\n{text}"
    );
    assert!(!text.contains("#SAVED"), "{text}");
    let _ = service.finish(AGENT_TIMEOUT);
    // Nothing is listed or restorable under that name.
    let result = BackintCall::new("inquire", "HDB")
        .params(&par)
        .null(&pipe)
        .run(&host);
    assert_eq!(
        result.with("#NOTFOUND"),
        vec![vec![pipe.display().to_string()]]
    );
    assert!(vault.manifests().is_empty());
}

#[test]
fn a_backup_hana_cancels_is_not_kept() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let pipe = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    mkfifo(&pipe);
    let agent = BackintCall::new("backup", "HDB")
        .params(&par)
        .pipe(&pipe)
        .spawn(&host);
    let mut writer = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
    writer.write_all(&vec![7u8; 200_000]).unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(agent.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let result = agent.finish(Duration::from_secs(30));
    drop(writer);
    result.assert_exit(1);
    assert_eq!(
        result.with("#ERROR"),
        vec![vec![pipe.display().to_string()]]
    );
    assert!(result.with("#SAVED").is_empty());
    assert!(vault.manifests().is_empty());
    // No data objects are left behind either.
    let leftovers: Vec<_> = walk(&vault.path().join("data"));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn an_unreachable_vault_fails_every_object_with_one_stderr_line() {
    let host = HanaHost::new();
    let dir = host.backint_dir("HDB", "SYSTEMDB");
    let par = host.standard_params("HDB", "data.utl", "file:///nonexistent/strata/vault", "");
    let pipes = [
        dir.join("FULL_BACKUP_databackup_0_1"),
        dir.join("FULL_BACKUP_databackup_1_1"),
    ];
    for p in &pipes {
        mkfifo(p);
    }
    let mut call = BackintCall::new("backup", "HDB")
        .api(Some("1.04"))
        .params(&par);
    for p in &pipes {
        call = call.pipe(p);
    }
    let result = call.run(&host);
    result.assert_exit(1);
    assert!(
        result
            .text
            .starts_with("#SOFTWAREID \"backint 1.04\" \"Strata hdbbackint"),
        "{}",
        result.text
    );
    let errors = result.with("#ERROR");
    assert_eq!(
        errors,
        pipes
            .iter()
            .map(|p| vec![p.display().to_string()])
            .collect::<Vec<_>>()
    );
    let line = one_stderr_line(&result.stderr);
    assert!(line.contains("/nonexistent/strata/vault"), "{line}");
    for p in &pipes {
        assert!(is_fifo(p));
    }
    // The log file named in the parameter file has the detail.
    let log = std::fs::read_to_string(host.root().join("usr/sap/HDB/strata-backint.log")).unwrap();
    assert!(log.contains("opening the vault failed"), "{log}");
    assert!(log.contains("-f backup"), "{log}");
    // Restore, inquire and delete fail the same way.
    for function in ["restore", "inquire", "delete"] {
        let result = BackintCall::new(function, "HDB")
            .params(&par)
            .ebid("20261122T000000.000Z-00000000", &pipes[0])
            .run(&host);
        result.assert_exit(1);
        assert_eq!(
            result.with("#ERROR").len(),
            1,
            "{function}: {}",
            result.describe()
        );
        one_stderr_line(&result.stderr);
    }
}

#[test]
fn a_malformed_parameter_file_is_exit_2_with_an_error_per_object() {
    let host = HanaHost::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let pipes = [
        dir.join("a_databackup_2_1"),
        dir.join("a b \"c\"_databackup_3_1"),
    ];
    for p in &pipes {
        mkfifo(p);
    }
    for (text, expect) in [
        ("vault file:///x\n", "line 1"),
        ("vault = file:///x\npart_sise = 1MiB\n", "part_sise"),
        ("compression_level = 3\n", "names no vault"),
    ] {
        let par = host.param_file("HDB", "broken.utl", text);
        let mut call = BackintCall::new("backup", "HDB").params(&par);
        for p in &pipes {
            call = call.pipe(p);
        }
        let result = call.run(&host);
        result.assert_exit(2);
        assert_eq!(
            result.with("#ERROR"),
            pipes
                .iter()
                .map(|p| vec![p.display().to_string()])
                .collect::<Vec<_>>(),
            "{}",
            result.describe()
        );
        let line = one_stderr_line(&result.stderr);
        assert!(line.contains(expect), "{line}");
        assert!(line.contains("broken.utl"), "{line}");
    }
    // A parameter file that does not exist.
    let result = BackintCall::new("backup", "HDB")
        .params(&dir.join("missing.utl"))
        .pipe(&pipes[0])
        .run(&host);
    result.assert_exit(2);
    assert!(one_stderr_line(&result.stderr).contains("missing.utl"));
    for p in &pipes {
        assert!(is_fifo(p));
    }
}

#[test]
fn malformed_input_lines_fail_alone_and_the_rest_is_tolerated() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let good = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    let sized = dir.join("COMPLETE_DATA_BACKUP_databackup_3_1");
    mkfifo(&good);
    mkfifo(&sized);
    let agent = BackintCall::new("backup", "HDB")
        .api(Some("1.50.2"))
        .params(&par)
        .level("SOMETHING_NEWER")
        .arg("-x")
        .arg("unknown-value")
        .arg("--trace")
        .line("this is a comment a tool wrote")
        .line("")
        .line("#TOOLOPTION \"PARAMETER_FILE=/elsewhere.cfg\"")
        .line("#FUTURE_KEYWORD \"ignored\"")
        .line(format!(
            "#PIPE {} 12.5",
            q(&dir.join("bad_size").display().to_string())
        ))
        .line(format!("#PIPE \"{}", dir.join("unterminated").display()))
        .line(format!("#PIPE {} 1048576", q(&sized.display().to_string())))
        .pipe(&good)
        .spawn(&host);
    let f1 = feed_pipe(&good, 1234, 1, OPEN);
    let f2 = feed_pipe(&sized, 4321, 2, OPEN);
    let result = agent.finish(AGENT_TIMEOUT);
    f1.join().unwrap().unwrap();
    f2.join().unwrap().unwrap();
    result.assert_exit(1);
    assert!(
        result.text.starts_with("#SOFTWAREID \"backint 1.50.2\""),
        "{}",
        result.text
    );
    assert_eq!(result.saved(&good).1, 1234);
    assert_eq!(result.saved(&sized).1, 4321);
    let errors = result.with("#ERROR");
    assert!(
        errors.contains(&vec![dir.join("bad_size").display().to_string()]),
        "{}",
        result.describe()
    );
    assert_eq!(errors.len(), 2, "{}", result.describe());
    assert!(!dir.join("bad_size").exists() && !dir.join("unterminated").exists());
}

#[test]
fn version_and_unknown_function() {
    let host = HanaHost::new();
    let out = std::process::Command::new(strata_e2e::hana::hdbbackint_bin())
        .arg("-v")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("#SOFTWAREID \"backint 1.50.2\" \"Strata hdbbackint "),
        "{text}"
    );

    let par = host.param_file("HDB", "p.utl", "vault = file:///x\n");
    let result = BackintCall::new("diagnose", "HDB")
        .params(&par)
        .line("#NULL")
        .run(&host);
    result.assert_exit(2);
    assert!(one_stderr_line(&result.stderr).contains("unknown function"));
}

#[test]
fn lines_that_do_not_belong_to_the_function_are_errors_that_say_why() {
    let host = HanaHost::new();
    let vault = TestVault::new();
    let dir = host.backint_dir("HDB", "DB_HDB");
    let par = host.standard_params("HDB", "data.utl", vault.url(), "");
    let pipe = dir.join("COMPLETE_DATA_BACKUP_databackup_2_1");
    let result = BackintCall::new("restore", "HDB")
        .params(&par)
        .pipe(&pipe)
        .line("#NULL")
        .ebid("20261122T000000.000Z-00000000", &pipe)
        .run(&host);
    result.assert_exit(1);
    assert_eq!(result.with("#ERROR").len(), 2, "{}", result.describe());
    assert_eq!(
        result.with("#NOTFOUND"),
        vec![vec![pipe.display().to_string()]]
    );
    assert!(
        result.text.contains("#PIPE is not valid for -f restore"),
        "{}",
        result.describe()
    );
    assert!(!pipe.exists());
}

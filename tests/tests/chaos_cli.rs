//! `strata-chaos`'s command line: help, wrong arguments and an `--only`
//! that selects nothing end clearly, before any campaign work starts.

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

//! What every faulted run checks: that the error is clear, and that the
//! vault holds nothing of a backup that was not committed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The file system is full (`ENOSPC`).
    Full,
    /// The file system is mounted read-only (`EROFS`).
    ReadOnly,
}

impl Fault {
    /// The operating system's words for it, which the error must carry.
    pub fn os_text(self) -> &'static str {
        match self {
            Fault::Full => "No space left on device",
            Fault::ReadOnly => "Read-only file system",
        }
    }
}

/// Checks that `said` (what a command wrote: its standard error, or a
/// Backint output file) is a clear error about `fault` on the file system
/// mounted at `place`:
///
/// - the exit code is `expected` (the documented one);
/// - it says what happened in the operating system's words;
/// - it names a path on that file system;
/// - it says what to do: a hint to free space on that file system (a full
///   disk) or to remount it read-write (a read-only one);
/// - it is no crash: no panic, no backtrace; and it does not blame a
///   broken pipe (the echo of the failure, not its cause).
pub fn clear_error(
    said: &str,
    code: Option<i32>,
    expected: i32,
    fault: Fault,
    place: &Path,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if code != Some(expected) {
        problems.push(format!("exit code {code:?}, not the documented {expected}"));
    }
    if !said.contains(fault.os_text()) {
        problems.push(format!("does not say `{}`", fault.os_text()));
    }
    let place_text = place.display().to_string();
    if !said.contains(&place_text) {
        problems.push(format!("does not name a path under {place_text}"));
    }
    let advice = match fault {
        Fault::Full => said.contains(&format!("free space on {place_text}")),
        Fault::ReadOnly => said.contains("remount") && said.contains("read-write"),
    };
    if !advice {
        problems.push(match fault {
            Fault::Full => format!("no hint to free space on {place_text}"),
            Fault::ReadOnly => "no hint to remount the file system read-write".to_owned(),
        });
    }
    for crash in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        if said.contains(crash) {
            problems.push(format!("it crashed (`{crash}`)"));
        }
    }
    if said.to_lowercase().contains("broken pipe") {
        problems.push("it blames a broken pipe".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "unclear error ({}):\n{}",
            problems.join("; "),
            indent(said)
        ))
    }
}

/// The lines of `said` an operator reads for the error: `error:` and
/// `hint:` lines of the CLI, `strata:` comment lines of a Backint output
/// file, `hdbbackint:` lines, and the ERROR/FATAL lines PostgreSQL logged.
pub fn error_lines(said: &str) -> String {
    said.lines()
        .map(str::trim)
        .filter(|line| {
            line.starts_with("error:")
                || line.starts_with("hint:")
                || line.starts_with("strata:")
                || line.starts_with("hdbbackint:")
                || line.contains("FATAL:")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `text` with the run-specific parts replaced: the small file system's
/// path by `<disk>`, other temporary directories by `<tmp>/…`, backup ids
/// by `<id>`, WAL file names by `<wal>`, numbers of four digits or more
/// (OIDs, system identifiers, byte counts, process ids) by `<n>`, so that
/// the same error in two runs reads the same.
pub fn normalise(text: &str, place: &Path) -> String {
    let text = replace_backup_ids(&text.replace(&place.display().to_string(), "<disk>"));
    let mut out = String::with_capacity(text.len());
    for word in split_keep(&text) {
        if word.starts_with(&format!("{}/strata-", std::env::temp_dir().display())) {
            out.push_str("<tmp>/…");
        } else {
            out.push_str(&replace_numbers(word));
        }
    }
    out
}

/// `word` with each run of 24 hexadecimal digits (a WAL file name) replaced
/// by `<wal>` and each run of four or more decimal digits by `<n>`.
fn replace_numbers(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() == 24 {
            out.push_str("<wal>");
        } else {
            // Not a WAL name: only its decimal runs are numbers.
            let mut digits = String::new();
            for c in run.chars() {
                if c.is_ascii_digit() {
                    digits.push(c);
                } else {
                    out.push_str(if digits.len() >= 4 { "<n>" } else { &digits });
                    digits.clear();
                    out.push(c);
                }
            }
            out.push_str(if digits.len() >= 4 { "<n>" } else { &digits });
        }
        run.clear();
    };
    for c in word.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Splits `text` into words and the separators between them, both kept.
fn split_keep(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let separator = |c: char| c.is_whitespace() || "(),:;`'\"=[]{}".contains(c);
    let mut in_word = None;
    for (i, c) in text.char_indices() {
        let sep = separator(c);
        match in_word {
            Some(true) if sep => {
                parts.push(&text[start..i]);
                start = i;
            }
            Some(false) if !sep => {
                parts.push(&text[start..i]);
                start = i;
            }
            _ => {}
        }
        in_word = Some(!sep);
    }
    parts.push(&text[start..]);
    parts
}

/// `text` with every backup id (`20261201T224351.978Z-6270938b`) replaced
/// by `<id>`, wherever it stands (in a key, a path).
fn replace_backup_ids(text: &str) -> String {
    const SHAPE: &[u8] = b"ddddddddTdddddd.dddZ-hhhhhhhh";
    let fits = |window: &[u8]| {
        window.iter().zip(SHAPE).all(|(b, s)| match s {
            b'd' => b.is_ascii_digit(),
            b'h' => b.is_ascii_hexdigit(),
            _ => b == s,
        })
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut copied = 0;
    while at + SHAPE.len() <= bytes.len() {
        if fits(&bytes[at..at + SHAPE.len()]) {
            out.push_str(&text[copied..at]);
            out.push_str("<id>");
            at += SHAPE.len();
            copied = at;
        } else {
            at += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a failed backup left in the local vault at `vault`: data of a
/// backup that has neither a manifest nor a tombstone, and staging files
/// (`<object>#<digits>`) of uploads that never completed.
pub fn leftovers(vault: &Path) -> Vec<PathBuf> {
    let mut known = BTreeSet::new();
    for top in ["manifests", "deleted"] {
        for file in crate::fixture::relative_files_below(&vault.join(top)) {
            if let Some(id) = file.file_stem() {
                known.insert(id.to_string_lossy().into_owned());
            }
        }
    }
    let mut left = Vec::new();
    for file in crate::fixture::relative_files_below(vault) {
        let text = file.to_string_lossy();
        let staging = text.rsplit_once('#').is_some_and(|(_, digits)| {
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        });
        // data/<engine>/<instance>/<backup id>/<segment>
        let parts: Vec<_> = file.components().collect();
        let orphan = parts.len() >= 5
            && parts[0].as_os_str() == "data"
            && !known.contains(&*parts[3].as_os_str().to_string_lossy());
        if staging || orphan {
            left.push(file);
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_error_names_the_fault_the_path_and_the_remedy() {
        let place = Path::new("/srv/small");
        let said = "error: writing /srv/small/out.partial: No space left on device (os error 28)\n\
                    hint: free space on /srv/small/out.partial's file system\n";
        assert_eq!(clear_error(said, Some(10), 10, Fault::Full, place), Ok(()));
        let err = clear_error(said, Some(1), 10, Fault::Full, place).unwrap_err();
        assert!(err.contains("exit code"), "{err}");
        let vague = "error: I/O error: No space left on device\nhint: free space on the file system being written\n";
        let err = clear_error(vague, Some(10), 10, Fault::Full, place).unwrap_err();
        assert!(err.contains("does not name a path"), "{err}");
        assert!(err.contains("no hint to free space"), "{err}");
        let ro = "error: cannot create /srv/small/x: Read-only file system (os error 30)\n\
                  hint: /srv/small/x is on a read-only file system: remount it read-write, or write elsewhere\n";
        assert_eq!(
            clear_error(ro, Some(10), 10, Fault::ReadOnly, place),
            Ok(())
        );
        let err = clear_error(ro, Some(10), 10, Fault::Full, place).unwrap_err();
        assert!(err.contains("No space left on device"), "{err}");
        let crash = format!("{said}thread 'main' panicked at src/main.rs:1:1\n");
        assert!(clear_error(&crash, Some(10), 10, Fault::Full, place).is_err());
    }

    #[test]
    fn messages_compare_across_runs() {
        let place = Path::new("/w/disk-1/target");
        let a = normalise(
            "error: backup 20261201T224351.978Z-6270938b, writing /w/disk-1/target/x: No space",
            place,
        );
        assert_eq!(a, "error: backup <id>, writing <disk>/x: No space");
        assert_eq!(
            normalise(
                "writing data/hana/HDB/20261201T230118.466Z-30458f22/00000.00000.zst",
                place
            ),
            "writing data/hana/HDB/<id>/<n>.<n>.zst"
        );
        assert_eq!(
            normalise(
                "fetching 000000010000000000000003 after 123456 bytes",
                place
            ),
            "fetching <wal> after <n> bytes"
        );
        assert_eq!(
            normalise(
                "writing /w/disk-1/target/copy/base/5/2603_fsm and wal/7714482210807087307/00000001/00000001000000000000004A (os error 28)",
                place
            ),
            "writing <disk>/copy/base/5/<n>_fsm and wal/<n>/<n>/<wal> (os error 28)"
        );
    }

    #[test]
    fn leftovers_are_data_without_a_manifest_and_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path();
        let write = |rel: &str| {
            let path = vault.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        };
        write("manifests/stream/a/20261201T224351.978Z-00000001.json");
        write("data/stream/a/20261201T224351.978Z-00000001/00000.00000.zst");
        write("deleted/stream/a/20261201T224351.978Z-00000002.json");
        write("data/stream/a/20261201T224351.978Z-00000002/00000.00000.zst");
        assert!(leftovers(vault).is_empty());
        write("data/stream/a/20261201T224351.978Z-00000003/00000.00000.zst");
        write("engines/postgres/main/wal/1/00000001/000000010000000000000001#123000001");
        assert_eq!(leftovers(vault).len(), 2, "{:?}", leftovers(vault));
    }
}

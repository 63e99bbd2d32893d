//! Backint input files (`InputFile::parse`, `parse_line`, `tokenize`): line
//! numbers point at the lines, every object line written back as HANA
//! writes it parses to the same line, and every parameter quoted comes back
//! byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_backint::protocol::{InputFile, InputLine, parse_line, quote, tokenize};
use strata_fuzz::text;

/// `line` as HANA would write it, when the Backint rules can express it:
/// a quoted parameter followed by another cannot end in a backslash.
fn written(line: &InputLine) -> Option<String> {
    let params: Vec<String> = match line {
        InputLine::Pipe { name, size } | InputLine::File { name, size } => {
            let mut p = vec![quote(name)];
            p.extend(size.map(|s| s.to_string()));
            p
        }
        InputLine::Ebid { ebid, name, dest } => {
            let mut p = vec![quote(ebid)];
            if name.is_some() || dest.is_some() {
                p.push(quote(name.as_deref().unwrap_or("")));
            }
            p.extend(dest.as_deref().map(quote));
            p
        }
        InputLine::Null { name, dest } => {
            let mut p: Vec<String> = Vec::new();
            if name.is_some() || dest.is_some() {
                p.push(quote(name.as_deref().unwrap_or("")));
            }
            p.extend(dest.as_deref().map(quote));
            p
        }
        _ => return None,
    };
    let quoted =
        params.len() - usize::from(matches!(params.last(), Some(p) if !p.starts_with('"')));
    if params[..quoted.saturating_sub(1)]
        .iter()
        .any(|p| p.ends_with("\\\""))
    {
        return None;
    }
    Some(format!("{} {}", line.keyword(), params.join(" ")))
}

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    let file = InputFile::parse(text);
    let lines = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .count();
    let mut last = 0;
    for (number, entry) in &file.entries {
        assert!(
            *number > last && *number <= lines,
            "entry line {number} of {lines}"
        );
        last = *number;
        if let Ok(line) = entry {
            assert!(line.is_object(), "{line:?} kept as an entry");
            if let Some(again) = written(line) {
                assert_eq!(
                    parse_line(&again).as_ref(),
                    Ok(line),
                    "written back as {again:?}"
                );
            }
        }
    }
    for (number, line) in &file.ignored {
        assert!(*number >= 1 && *number <= lines);
        assert!(!line.trim().is_empty());
    }
    for line in text.lines() {
        if let Ok(tokens) = tokenize(line) {
            for token in tokens {
                assert_eq!(
                    tokenize(&quote(&token)),
                    Ok(vec![token.clone()]),
                    "{token:?}"
                );
            }
        }
    }
});

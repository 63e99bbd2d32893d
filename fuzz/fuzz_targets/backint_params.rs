//! Backint parameter files (`Params::parse`): accepted settings are in
//! their documented ranges and usable by the writer, a refusal is a
//! configuration error naming the file, and the settings written back as
//! `key = value` lines parse to the same settings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_backint::params::Params;
use strata_core::ErrorKind;
use strata_fuzz::text;

/// `params` as a parameter file, when every value can be written quoted.
fn written(params: &Params) -> Option<String> {
    let mut lines = vec![format!("vault = \"{}\"", params.vault.url)];
    for (key, value) in &params.vault.options {
        lines.push(format!("vault.{key} = \"{value}\""));
    }
    let path = |p: &std::path::Path| p.to_str().map(str::to_owned);
    if let Some(key_file) = &params.vault.key_file {
        lines.push(format!("key_file = \"{}\"", path(key_file)?));
    }
    let w = &params.writer;
    lines.extend(
        w.compression_level
            .map(|v| format!("compression_level = {v}")),
    );
    lines.extend(w.part_size.map(|v| format!("part_size = {v}")));
    lines.extend(w.segment_size.map(|v| format!("segment_size = {v}")));
    lines.extend(w.parts_in_flight.map(|v| format!("parts_in_flight = {v}")));
    lines.extend(w.workers.map(|v| format!("workers = {v}")));
    lines.push(format!("max_channels = {}", params.max_channels));
    lines.push(format!("open_timeout = {}", params.open_timeout.as_secs()));
    if let Some(log_file) = &params.log_file {
        lines.push(format!("log_file = \"{}\"", path(log_file)?));
    }
    if let Some(catalog) = &params.catalog {
        lines.push(format!("catalog = \"{}\"", path(catalog)?));
    }
    let text = lines.join("\n");
    // A quote or a `#` inside a value, or a line break in a key, has no
    // way to be written in this format.
    let writable = text.lines().count() == lines.len()
        && lines
            .iter()
            .all(|l| l.matches('"').count() == 2 && !l.contains('#'));
    writable.then_some(text)
}

/// Whether `line` sets `config` (its key, before any comment outside quotes).
fn names_config(line: &str) -> bool {
    let mut in_quotes = false;
    let end = line
        .char_indices()
        .find(|&(_, c)| {
            in_quotes ^= c == '"';
            c == '#' && !in_quotes
        })
        .map_or(line.len(), |(i, _)| i);
    line[..end]
        .split_once('=')
        .is_some_and(|(key, _)| key.trim().eq_ignore_ascii_case("config"))
}

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else {
        return;
    };
    // `config = PATH` reads another file: the file system, not this parser
    // (the config target fuzzes what it reads).
    if text.lines().any(names_config) {
        return;
    }
    let params = match Params::parse(text, "fuzz.utl") {
        Ok(params) => params,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(err.to_string().starts_with("fuzz.utl"), "{err}");
            return;
        }
    };
    assert!(!params.vault.url.trim().is_empty());
    let w = &params.writer;
    assert!(w.compression_level.is_none_or(|l| (1..=22).contains(&l)));
    assert!(w.part_size.is_none_or(|s| s.0 > 0));
    assert!(w.segment_size.is_none_or(|s| s.0 > 0));
    assert!(w.parts_in_flight.is_none_or(|n| (1..=1024).contains(&n)));
    assert!((1..=1024).contains(&params.max_channels));
    assert!(!params.open_timeout.is_zero());
    let _ = params.writer_config();
    if let Some(again) = written(&params) {
        let reread = Params::parse(&again, "again.utl")
            .unwrap_or_else(|e| panic!("{again:?} written back does not parse: {e}"));
        assert_eq!(reread.vault.url, params.vault.url);
        assert_eq!(reread.vault.options, params.vault.options);
        assert_eq!(reread.vault.key_file, params.vault.key_file);
        assert_eq!(reread.writer, params.writer);
        assert_eq!(reread.max_channels, params.max_channels);
        assert_eq!(reread.open_timeout, params.open_timeout);
        assert_eq!(reread.log_file, params.log_file);
        assert_eq!(reread.catalog, params.catalog);
    }
});

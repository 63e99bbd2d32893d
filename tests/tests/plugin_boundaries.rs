//! Plugins never talk to object storage: the engine plugins build
//! strata-core without its `vault` feature, so neither `object_store` nor
//! the SQLite index is in their dependency trees, and their code outside
//! tests names neither the vault nor object storage.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: [(&str, &str); 2] = [
    ("strata-postgres", "plugins/postgres"),
    ("strata-hana", "plugins/hana"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `cargo tree -p <package> -e normal`, as text.
fn normal_tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree", "--locked", "-p", package, "-e", "normal", "--prefix", "none",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

#[test]
fn plugins_build_without_object_storage() {
    for (package, _) in PLUGINS {
        let tree = normal_tree(package);
        let crates: Vec<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert!(
            crates.contains(&"strata-core"),
            "{package} depends on strata-core:\n{tree}"
        );
        for forbidden in ["object_store", "rusqlite"] {
            assert!(
                !crates.contains(&forbidden),
                "{forbidden} is in the dependency tree of {package}; \
                 depend on strata-core without its `vault` feature:\n{tree}"
            );
        }
    }
}

/// The code of `file` before its first `#[cfg(test)]` (unit tests may use a
/// real vault through the dev-dependency); nothing of a `tests.rs` that its
/// folder's `mod.rs` declares as `#[cfg(test)] mod tests;`.
fn code_outside_tests(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        let parent = std::fs::read_to_string(file.with_file_name("mod.rs")).unwrap_or_default();
        if parent.contains("#[cfg(test)]\nmod tests;") {
            return String::new();
        }
    }
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn plugin_code_names_neither_the_vault_nor_object_storage() {
    let mut offenders = Vec::new();
    for (_, dir) in PLUGINS {
        let mut files = Vec::new();
        rust_files(&workspace_root().join(dir).join("src"), &mut files);
        assert!(!files.is_empty(), "{dir} has sources");
        for file in files {
            for (n, line) in code_outside_tests(&file).lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("strata_core::vault") || code.contains("object_store") {
                    offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "plugins reach storage only through strata_core::plugin:\n{}",
        offenders.join("\n")
    );
}

//! Plugins never talk to object storage: the engine plugins build
//! strata-core without its `vault` feature, so neither `object_store` nor
//! the SQLite index is in their dependency trees, and their code outside
//! tests names neither the vault nor object storage.
//!
//! Every crate under `plugins/` is checked; the list is read from the
//! folder, so a new plugin cannot be left out. The code check parses each
//! module the crate compiles outside tests (from `src/lib.rs` through its
//! `mod` declarations, leaving out items under `#[cfg(test)]`) and looks at
//! every path, including grouped imports (`use strata_core::{vault::X}`).

use std::path::{Path, PathBuf};
use std::process::Command;

use syn::visit::Visit;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every crate under `plugins/`: (package name, folder).
fn plugins() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(workspace_root().join("plugins")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{} has a package name", dir.display()));
        found.push((name, dir));
    }
    found.sort();
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "strata-hana",
        "strata-postgres",
        "strata-sqlserver",
        "strata-stream",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    found
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
    for (package, _) in plugins() {
        let tree = normal_tree(&package);
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

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// Whether a path (as its segments) reaches storage.
fn reaches_storage(segments: &[String]) -> bool {
    segments.iter().any(|s| s == "object_store")
        || segments
            .windows(2)
            .any(|w| w[0] == "strata_core" && w[1] == "vault")
}

/// Collects the storage paths of one file's code outside tests, and the
/// files of the modules it declares.
struct Scan<'a> {
    file: &'a Path,
    offenders: Vec<String>,
    modules: Vec<String>,
}

impl Scan<'_> {
    fn check(&mut self, segments: Vec<String>) {
        if reaches_storage(&segments) {
            self.offenders
                .push(format!("{}: {}", self.file.display(), segments.join("::")));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                path.push(n.ident.to_string());
                self.check(path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                self.check(path);
            }
            syn::UseTree::Glob(_) => self.check(prefix.clone()),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Scan<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            syn::Item::ExternCrate(e) => &e.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_cfg_test(attrs) {
            return;
        }
        match item {
            syn::Item::Mod(m) if m.content.is_none() => self.modules.push(m.ident.to_string()),
            syn::Item::Use(u) => self.use_tree(&mut Vec::new(), &u.tree),
            syn::Item::ExternCrate(e) => self.check(vec![e.ident.to_string()]),
            _ => {}
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.check(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The storage paths named by the module in `file` and the modules it
/// declares outside tests (`dir` holds their files), recursively.
fn scan_module(file: &Path, dir: &Path, scanned: &mut Vec<PathBuf>) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    scanned.push(file.to_path_buf());
    let mut scan = Scan {
        file,
        offenders: Vec::new(),
        modules: Vec::new(),
    };
    scan.visit_file(&syntax);
    let mut offenders = scan.offenders;
    for module in scan.modules {
        let flat = dir.join(format!("{module}.rs"));
        let (child, child_dir) = if flat.exists() {
            (flat, dir.join(&module))
        } else {
            (dir.join(&module).join("mod.rs"), dir.join(&module))
        };
        offenders.extend(scan_module(&child, &child_dir, scanned));
    }
    offenders
}

/// The storage paths a crate's code outside tests names, and the files read.
fn scan_crate(src: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let mut scanned = Vec::new();
    let mut offenders = Vec::new();
    for root in ["lib.rs", "main.rs"] {
        if src.join(root).exists() {
            offenders.extend(scan_module(&src.join(root), src, &mut scanned));
        }
    }
    (offenders, scanned)
}

#[test]
fn plugin_code_names_neither_the_vault_nor_object_storage() {
    let mut offenders = Vec::new();
    for (package, dir) in plugins() {
        let (found, scanned) = scan_crate(&dir.join("src"));
        assert!(!scanned.is_empty(), "{package} has sources");
        offenders.extend(found);
    }
    assert!(
        offenders.is_empty(),
        "plugins reach storage only through strata_core::plugin:\n{}",
        offenders.join("\n")
    );
}

/// The scan sees what the first version of this check missed: code after a
/// `#[cfg(test)] mod tests;` declaration, grouped imports and paths in
/// expressions; it leaves out test modules, inline or in their own file.
#[test]
fn the_scan_finds_storage_paths_anywhere_outside_tests() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(
        src.join("lib.rs"),
        "mod inner;\n#[cfg(test)]\nmod tests;\n\
         use strata_core::{plugin::Sink, vault::Vault};\n\
         fn f() { let _ = object_store::path::Path::from(\"x\"); }\n\
         #[cfg(test)]\nmod inline { use strata_core::vault::Reader; }\n",
    )
    .unwrap();
    std::fs::write(src.join("inner.rs"), "use strata_core::vault as v;\n").unwrap();
    std::fs::write(
        src.join("tests.rs"),
        "use object_store::memory::InMemory;\n",
    )
    .unwrap();
    let (found, scanned) = scan_crate(src);
    assert_eq!(
        scanned.len(),
        2,
        "lib.rs and inner.rs, not tests.rs: {scanned:?}"
    );
    let named: Vec<&str> = found
        .iter()
        .map(|f| f.rsplit(": ").next().unwrap())
        .collect();
    assert_eq!(
        named,
        [
            "strata_core::vault::Vault",
            "object_store::path::Path::from",
            "strata_core::vault"
        ],
        "{found:?}"
    );
}

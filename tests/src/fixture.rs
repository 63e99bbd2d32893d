//! A temporary directory per test, and the files below a directory.

use std::path::{Path, PathBuf};

/// Every file below `dir`, recursively: anything but a directory
/// (symbolic links are not followed), sorted; none when `dir` does not
/// exist.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                Ok(_) => found.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

/// [`files_below`], relative to `dir`.
pub fn relative_files_below(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter_map(|path| path.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect()
}

/// A temporary directory, deleted (with everything in it) when dropped.
///
/// Set `STRATA_KEEP_TEST_DIRS=1` to keep it for a post-mortem: its path is
/// then printed when the directory is dropped.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A new empty directory under the system's temporary directory, its
    /// name starting with `strata-<label>-`.
    ///
    /// # Panics
    /// When the directory cannot be created (a full or read-only disk).
    pub fn new(label: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-{label}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory (not created).
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the subdirectory `name` (and its parents) and returns its path.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn mkdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// Writes `contents` to the file `name` and returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// A `file://` URL of `name` inside the directory.
    pub fn file_url(&self, name: impl AsRef<Path>) -> String {
        format!("file://{}", self.path(name).display())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("STRATA_KEEP_TEST_DIRS").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("kept test directory {}", kept.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_live_inside_and_vanish_on_drop() {
        let dir = TestDir::new("fixture");
        let file = dir.write("a/b.txt", "hello");
        assert!(file.starts_with(dir.root()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello");
        assert_eq!(
            dir.file_url("v"),
            format!("file://{}/v", dir.root().display())
        );
        let root = dir.root().to_path_buf();
        drop(dir);
        assert!(!root.exists(), "{} still exists", root.display());
    }
}

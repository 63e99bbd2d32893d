//! Small tmpfs file systems that the campaign fills up or turns read-only.
//!
//! A tmpfs counts the pages its files hold against its `size`; remounting
//! with another `size` (never below what is used) or with `ro`/`rw` changes
//! it in place, files kept. Sizes are rounded up to whole pages by the
//! kernel. Every mount is undone when its [`SmallDisk`] is dropped, also
//! when a run panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The page size tmpfs counts in.
pub const PAGE: u64 = 4096;

/// A tmpfs mounted at a directory for the life of the value.
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes (at least a page) at `dir`, created
    /// if missing; its root directory has mode 0755.
    pub fn mount(dir: &Path, size: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={},mode=0755", size.max(PAGE)))
            .arg("tmpfs")
            .arg(dir))?;
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Whether a tmpfs can be mounted here: mounts one at `dir` and unmounts it.
    pub fn probe(dir: &Path) -> Result<(), String> {
        let disk = SmallDisk::mount(dir, PAGE)?;
        drop(disk);
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `rel` on this file system.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// Bytes in use (whole pages).
    pub fn used(&self) -> Result<u64, String> {
        let out = Command::new("stat")
            .args(["-f", "-c", "%b %f %S"])
            .arg(&self.dir)
            .output()
            .map_err(|e| format!("stat -f {}: {e}", self.dir.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<u64> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match numbers.as_slice() {
            [blocks, free, size] => Ok(blocks.saturating_sub(*free) * size),
            _ => Err(format!("stat -f {} said {text:?}", self.dir.display())),
        }
    }

    /// Sets the size to `size` bytes (at least a page, and never below what
    /// is used: the kernel refuses that).
    pub fn resize(&self, size: u64) -> Result<(), String> {
        self.remount(&format!("size={}", size.max(PAGE)))
    }

    /// Leaves `free` bytes (rounded up to whole pages) free: what a later
    /// write can still take before the disk is full.
    pub fn leave_free(&self, free: u64) -> Result<(), String> {
        let used = self.used()?;
        self.resize(used + free.div_ceil(PAGE) * PAGE)
    }

    /// Remounts read-only.
    pub fn read_only(&self) -> Result<(), String> {
        self.remount("ro")
    }

    /// Remounts read-write.
    pub fn read_write(&self) -> Result<(), String> {
        self.remount("rw")
    }

    fn remount(&self, options: &str) -> Result<(), String> {
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,{options}"))
            .arg(&self.dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.dir)).is_err() {
            // Busy (a server that did not stop in time): detach it now, the
            // kernel frees it once the last user is gone.
            if let Err(why) = run(Command::new("umount").arg("-l").arg(&self.dir)) {
                eprintln!("disk: cannot unmount {}: {why}", self.dir.display());
            }
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tmpfs fills at its size, grows, turns read-only and back, and is
    /// gone once dropped.
    #[test]
    fn fills_grows_and_turns_read_only() {
        if !crate::pg::running_as_root() {
            crate::skip::skipped(
                "tmpfs::fills_grows_and_turns_read_only",
                "mounting needs root",
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("small");
        let disk = SmallDisk::mount(&at, 8 * PAGE).unwrap();
        let too_big = vec![7u8; 9 * PAGE as usize];
        let err = std::fs::write(disk.join("a"), &too_big).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        disk.leave_free(too_big.len() as u64).unwrap();
        std::fs::write(disk.join("a"), &too_big).unwrap();
        assert!(disk.used().unwrap() >= too_big.len() as u64);
        disk.read_only().unwrap();
        let err = std::fs::write(disk.join("b"), b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
        disk.read_write().unwrap();
        std::fs::write(disk.join("b"), b"x").unwrap();
        std::fs::remove_file(disk.join("a")).unwrap();
        std::fs::remove_file(disk.join("b")).unwrap();
        assert_eq!(disk.used().unwrap(), 0);
        drop(disk);
        assert!(std::fs::read_dir(&at).unwrap().next().is_none());
    }
}

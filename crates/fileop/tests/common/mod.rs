//! Shared helpers for the integration tests: a temp dir with a source root and a destination root.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub struct Roots {
    _tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
    /// A directory beside both roots, standing for "the host outside the root".
    pub outside: PathBuf,
}

pub fn roots() -> Roots {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let outside = tmp.path().join("outside");
    for dir in [&src, &dst, &outside] {
        fs::create_dir(dir).unwrap();
    }
    Roots {
        _tmp: tmp,
        src,
        dst,
        outside,
    }
}

/// Writes `content` to `root/rel`, creating parents.
pub fn write(root: &Path, rel: &str, content: &str) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    path
}

pub fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode(root: &Path, rel: &str) -> u32 {
    fs::symlink_metadata(root.join(rel)).unwrap().mode() & 0o7777
}

pub fn owner(root: &Path, rel: &str) -> (u32, u32) {
    let meta = fs::symlink_metadata(root.join(rel)).unwrap();
    (meta.uid(), meta.gid())
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

pub fn is_dir(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel))
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

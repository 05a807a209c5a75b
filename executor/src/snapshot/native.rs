//! The copying snapshotter, for hosts without overlayfs.
//!
//! `prepare` copies the layers' merged view into `scratch/rootfs` (bottom layer first; an overlay
//! whiteout removes the path, an opaque dir empties its copy first), creates the mount stubs, and then
//! records a *base record*: for every path its device, inode, birth time and ctime. The sandbox
//! bind-mounts the rootfs read-write.
//!
//! `diff` compares the rootfs against that record and writes the changes to `scratch/diff` in overlay
//! upper-dir form. The comparison is by (inode, ctime) rather than by content: the kernel bumps ctime on
//! every write, chmod, chown, xattr change, link and rename, and nobody can set it back, so an
//! untouched entry is exactly one whose stamp is unchanged — as exact as overlay's copy-up, without
//! reading any content. A directory that is a different inode where one existed (new number, or the
//! same number with a new birth time: filesystems reuse freed inodes) was replaced (`rm -rf d; mkdir
//! d`) and becomes opaque; a recorded path that is gone, under a parent that still is the same dir,
//! becomes a char 0/0 whiteout.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    MountStub, RootMount, Snapshot, SnapshotError, Snapshotter, check_layers, create_stubs, io_err,
    make_dir,
};
use crate::fsutil::{
    HardlinkMap, OPAQUE_XATTR, clear_dir, copy_dir_node, copy_leaf, copy_metadata, copy_times,
    is_opaque, is_whiteout, make_whiteout, remove_any,
};

/// Snapshots by copying. Slower than overlay, same results.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeSnapshotter;

/// What identifies an entry of the base: if any of it changed, the entry changed. The birth time tells
/// a recreated entry from the original even when the filesystem reuses the freed inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    born: Option<std::time::SystemTime>,
    ctime: i64,
    ctime_nsec: i64,
    is_dir: bool,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            born: meta.created().ok(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            is_dir: meta.is_dir(),
        }
    }

    /// Same inode (not merely the same number).
    fn same_entry(&self, other: &Stamp) -> bool {
        (self.dev, self.ino, self.born) == (other.dev, other.ino, other.born)
    }
}

/// The rootfs as it was handed to the sandbox: relative path → stamp.
#[derive(Debug, Default)]
pub(super) struct BaseRecord {
    entries: HashMap<PathBuf, Stamp>,
}

impl Snapshotter for NativeSnapshotter {
    fn name(&self) -> &'static str {
        "native"
    }

    fn prepare(
        &self,
        layers: &[PathBuf],
        scratch: &Path,
        stubs: &[MountStub],
    ) -> Result<Snapshot, SnapshotError> {
        check_layers(layers)?;
        let rootfs = scratch.join("rootfs");
        make_dir(&rootfs)?;
        for layer in layers {
            let meta = fs::symlink_metadata(layer).map_err(io_err("stat layer", layer))?;
            apply_layer_dir(layer, &rootfs, &mut HardlinkMap::new())?;
            copy_metadata(layer, &meta, &rootfs).map_err(io_err("copy metadata to", &rootfs))?;
        }
        create_stubs(&rootfs, stubs)?;
        let mut base = BaseRecord::default();
        record_base(&rootfs, Path::new(""), &mut base)?;
        Ok(Snapshot {
            mount: RootMount::Bind { source: rootfs },
            scratch: scratch.to_path_buf(),
            native_base: Some(base),
        })
    }

    fn diff(&self, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError> {
        let (RootMount::Bind { source: rootfs }, Some(base)) =
            (&snapshot.mount, &snapshot.native_base)
        else {
            return Err(SnapshotError::WrongSnapshotter(
                snapshot.scratch.clone(),
                "native",
            ));
        };
        let out = snapshot.scratch.join("diff");
        remove_any(&out).map_err(io_err("remove old diff", &out))?;
        make_dir(&out)?;
        let mut writer = DiffWriter {
            rootfs,
            out: &out,
            base,
            links: HardlinkMap::new(),
            made_dirs: Vec::new(),
        };
        writer.walk(Path::new(""))?;
        writer.whiteouts()?;
        // Children were added after each dir's mtime was copied: set dir times last, deepest first.
        for dir in writer.made_dirs.iter().rev() {
            let source = rootfs.join(dir);
            let meta = fs::symlink_metadata(&source).map_err(io_err("stat", &source))?;
            let target = out.join(dir);
            copy_times(&meta, &target).map_err(io_err("set times on", &target))?;
        }
        Ok(out)
    }
}

/// Applies one overlay-form layer dir onto `dst` (a dir of the merged copy).
fn apply_layer_dir(src: &Path, dst: &Path, links: &mut HardlinkMap) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(src).map_err(io_err("read layer dir", src))? {
        let entry = entry.map_err(io_err("read layer dir", src))?;
        let source = entry.path();
        let target = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&source).map_err(io_err("stat", &source))?;
        if is_whiteout(&meta) {
            remove_any(&target).map_err(io_err("apply whiteout at", &target))?;
            continue;
        }
        if meta.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(existing) if existing.is_dir() => {
                    if is_opaque(&source).map_err(io_err("read xattr", &source))? {
                        clear_dir(&target).map_err(io_err("empty opaque dir", &target))?;
                    }
                }
                Ok(_) => remove_any(&target).map_err(io_err("replace", &target))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SnapshotError::Io {
                        action: "stat",
                        path: target,
                        source: e,
                    });
                }
            }
            copy_dir_node(&source, &meta, &target).map_err(io_err("copy dir", &target))?;
            apply_layer_dir(&source, &target, links)?;
            copy_times(&meta, &target).map_err(io_err("set times on", &target))?;
        } else {
            remove_any(&target).map_err(io_err("replace", &target))?;
            copy_leaf(&source, &meta, &target, links).map_err(io_err("copy", &target))?;
        }
    }
    Ok(())
}

fn record_base(root: &Path, relative: &Path, base: &mut BaseRecord) -> Result<(), SnapshotError> {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
        let entry = entry.map_err(io_err("read dir", &dir))?;
        let path = relative.join(entry.file_name());
        let meta = fs::symlink_metadata(entry.path()).map_err(io_err("stat", &entry.path()))?;
        base.entries.insert(path.clone(), Stamp::of(&meta));
        if meta.is_dir() {
            record_base(root, &path, base)?;
        }
    }
    Ok(())
}

struct DiffWriter<'a> {
    rootfs: &'a Path,
    out: &'a Path,
    base: &'a BaseRecord,
    links: HardlinkMap,
    /// Dirs created in `out`, parents before children.
    made_dirs: Vec<PathBuf>,
}

impl DiffWriter<'_> {
    fn walk(&mut self, relative: &Path) -> Result<(), SnapshotError> {
        let dir = self.rootfs.join(relative);
        for entry in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let entry = entry.map_err(io_err("read dir", &dir))?;
            let path = relative.join(entry.file_name());
            let source = entry.path();
            let meta = fs::symlink_metadata(&source).map_err(io_err("stat", &source))?;
            let now = Stamp::of(&meta);
            let old = self.base.entries.get(&path);
            if old == Some(&now) {
                if meta.is_dir() {
                    self.walk(&path)?;
                }
                continue;
            }
            self.ensure_parents(&path)?;
            let target = self.out.join(&path);
            if meta.is_dir() {
                copy_dir_node(&source, &meta, &target).map_err(io_err("copy dir", &target))?;
                self.made_dirs.push(path.clone());
                let replaced = old.is_some_and(|old| !old.same_entry(&now));
                if replaced {
                    xattr::set(&target, OPAQUE_XATTR, b"y")
                        .map_err(io_err("mark opaque", &target))?;
                }
                self.walk(&path)?;
            } else {
                copy_leaf(&source, &meta, &target, &mut self.links)
                    .map_err(io_err("copy", &target))?;
            }
        }
        Ok(())
    }

    /// Whiteouts for recorded paths that are gone, unless their parent dir was itself removed or
    /// replaced (then the parent's whiteout or opacity already hides them).
    fn whiteouts(&mut self) -> Result<(), SnapshotError> {
        let mut gone: Vec<&PathBuf> = Vec::new();
        for path in self.base.entries.keys() {
            match fs::symlink_metadata(self.rootfs.join(path)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => gone.push(path),
                Err(e) => {
                    return Err(SnapshotError::Io {
                        action: "stat",
                        path: path.clone(),
                        source: e,
                    });
                }
            }
        }
        gone.sort();
        for path in gone {
            let parent_same = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                None => true,
                Some(parent) => match (
                    self.base.entries.get(parent),
                    fs::symlink_metadata(self.rootfs.join(parent)),
                ) {
                    (Some(old), Ok(meta)) => meta.is_dir() && old.same_entry(&Stamp::of(&meta)),
                    _ => false,
                },
            };
            if parent_same {
                self.ensure_parents(path)?;
                let target = self.out.join(path);
                make_whiteout(&target).map_err(io_err("create whiteout", &target))?;
            }
        }
        Ok(())
    }

    /// Creates `path`'s ancestors in `out` with the rootfs dirs' metadata (overlay's dir copy-up).
    fn ensure_parents(&mut self, path: &Path) -> Result<(), SnapshotError> {
        let mut ancestors: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        ancestors.reverse();
        for ancestor in ancestors {
            let target = self.out.join(ancestor);
            if fs::symlink_metadata(&target).is_ok() {
                continue;
            }
            let source = self.rootfs.join(ancestor);
            let meta = fs::symlink_metadata(&source).map_err(io_err("stat", &source))?;
            copy_dir_node(&source, &meta, &target).map_err(io_err("copy dir", &target))?;
            self.made_dirs.push(ancestor.to_path_buf());
        }
        Ok(())
    }
}

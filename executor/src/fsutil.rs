//! Filesystem helpers for the copying snapshotter: copy one entry with everything a layer cares about
//! (type, content, mode, owner, xattrs, mtime, hardlinks), recognise overlay-form whiteouts and opaque
//! directories, and remove trees. Overlay bookkeeping xattrs (`trusted.overlay.*`) are never copied: they
//! only mean something to overlayfs, and the native snapshotter writes the ones it means itself.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

/// The xattr overlayfs uses to mark a directory that hides everything below it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Tracks files already copied by (device, inode) so hardlinks stay hardlinks.
pub type HardlinkMap = HashMap<(u64, u64), PathBuf>;

/// True when `meta` is an overlay whiteout: a character device 0/0.
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// True when the directory at `path` carries `trusted.overlay.opaque=y`.
pub fn is_opaque(path: &Path) -> io::Result<bool> {
    Ok(xattr::get(path, OPAQUE_XATTR)?.is_some_and(|v| v == b"y"))
}

/// Creates an overlay whiteout (char 0/0) at `path`.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

/// Removes whatever is at `path` (a tree, a file, nothing).
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes every entry inside the directory `dir`, keeping `dir` itself.
pub fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        remove_any(&entry?.path())?;
    }
    Ok(())
}

/// Copies owner, mode, xattrs (except `trusted.overlay.*`) and mtime from `meta`/`src` onto `dst`.
/// Directories get their mtime set here too; callers that then add children must call
/// [`copy_times`] again afterwards.
pub fn copy_metadata(src: &Path, meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        // After chown: chown clears setuid/setgid bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    for name in xattr::list(src)? {
        if name.to_string_lossy().starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(src, &name)? {
            xattr::set(dst, &name, &value)?;
        }
    }
    copy_times(meta, dst)
}

/// Sets `dst`'s atime/mtime from `meta` without following symlinks.
pub fn copy_times(meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Creates `dst` as a copy of the non-directory `src` (regular file, symlink, device, fifo), or a
/// hardlink to an earlier copy of the same inode. `dst` must not exist. Sockets are skipped, as
/// layer tars cannot hold them.
pub fn copy_leaf(
    src: &Path,
    meta: &fs::Metadata,
    dst: &Path,
    links: &mut HardlinkMap,
) -> io::Result<()> {
    let key = (meta.dev(), meta.ino());
    if meta.nlink() > 1 && !meta.is_dir() {
        if let Some(first) = links.get(&key) {
            return fs::hard_link(first, dst);
        }
    }
    let file_type = meta.file_type();
    if file_type.is_file() {
        fs::copy(src, dst)?;
    } else if file_type.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else if file_type.is_char_device() || file_type.is_block_device() || file_type.is_fifo() {
        let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        mknod(
            dst,
            kind,
            Mode::from_bits_truncate(meta.mode() & 0o7777),
            meta.rdev(),
        )
        .map_err(io::Error::from)?;
    } else {
        return Ok(());
    }
    copy_metadata(src, meta, dst)?;
    if meta.nlink() > 1 {
        links.insert(key, dst.to_path_buf());
    }
    Ok(())
}

/// Creates the directory `dst` (if missing) with `src`'s metadata.
pub fn copy_dir_node(src: &Path, meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    match fs::create_dir(dst) {
        Ok(()) => {}
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists && fs::symlink_metadata(dst)?.is_dir() => {}
        Err(e) => return Err(e),
    }
    copy_metadata(src, meta, dst)
}

/// Joins a path relative to a root, refusing `..` and absolute components.
pub fn join_inside(root: &Path, relative: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for component in relative.components() {
        if let std::path::Component::Normal(part) = component {
            out.push(part);
        }
    }
    out
}

//! The small file actions, with BuildKit's semantics (`solver/llbsolver/file/backend.go`):
//! `mkdir` (WORKDIR, `RUN --mount` targets), `mkfile` (heredoc files) and `rm`. Paths are resolved
//! inside the destination root following the image's symlinks; `rm` removes the named entry itself
//! (a symlink, not what it points at). On an overlay mount a removal becomes a whiteout by itself.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, futimens, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use crate::copy::{read_dir_sorted, to_timespec};
use crate::error::{FileOpError, Result, io_err, sys_err};
use crate::owner::Chown;
use crate::pattern::has_wildcards;
use crate::root::{Root, clean_rel, display, file_type, join_rel, set_metadata_at};

/// Creates directory `path` in `dest_root` with `mode`. With `make_parents`, missing parents are
/// created too, each with `mode`, `owner` and `mtime` (as BuildKit's `MkdirAll`); an existing
/// directory is left as it is. Without it, the parent must exist and an existing entry is accepted.
///
/// # Errors
/// [`FileOpError::NotADirectory`] when a component is a file, [`FileOpError::Io`] when the parent is
/// missing (without `make_parents`) or the system refuses, owner lookup errors for `owner`.
pub fn mkdir(
    dest_root: &Path,
    path: &str,
    mode: u32,
    make_parents: bool,
    owner: Option<&Chown>,
    mtime: Option<SystemTime>,
) -> Result<()> {
    let op = "mkdir";
    let root = Root::open(dest_root, op)?;
    let owner = owner.map(|c| c.resolve(op, &root)).transpose()?;
    let mtime = mtime.map(to_timespec);
    let rel = root
        .resolve_follow(path)
        .map_err(|e| sys_err(op, "resolve", path, e))?;
    if make_parents {
        root.mkdir_all(op, &rel, mode & 0o7777, owner, mtime, &mut Vec::new())?;
        return Ok(());
    }
    if rel.is_empty() {
        return Ok(());
    }
    let (parent, _, name) = root
        .parent_of(&rel)
        .map_err(|e| sys_err(op, "resolve parent of", &rel, e))?;
    match mkdirat(
        parent.as_fd(),
        name.as_os_str(),
        Mode::from_bits_truncate(0o700),
    ) {
        Err(Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(sys_err(op, "create directory", &rel, e)),
        Ok(()) => {}
    }
    set_metadata_at(
        op,
        parent.as_fd(),
        &name,
        &rel,
        owner,
        Some(mode & 0o7777),
        mtime,
        false,
    )
}

/// Distinguishes temporary names of concurrent `mkfile`s in one process.
static MKFILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to file `path` in `dest_root` with `mode`, `owner` and `mtime`, replacing what was
/// there (the new file is written beside it and renamed into place, so a device node or fifo left
/// at the path is replaced, never written through). The parent directory must exist.
///
/// # Errors
/// [`FileOpError::InvalidPath`] for the root itself, [`FileOpError::Io`] when the parent is missing
/// or the system refuses, owner lookup errors for `owner`.
pub fn mkfile(
    dest_root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    owner: Option<&Chown>,
    mtime: Option<SystemTime>,
) -> Result<()> {
    let op = "mkfile";
    let root = Root::open(dest_root, op)?;
    let owner = owner.map(|c| c.resolve(op, &root)).transpose()?;
    let rel = root
        .resolve_follow(path)
        .map_err(|e| sys_err(op, "resolve", path, e))?;
    if rel.is_empty() {
        return Err(FileOpError::InvalidPath {
            op: op.to_string(),
            path: path.to_string(),
            reason: "it is the root directory",
        });
    }
    let (parent, _, name) = root
        .parent_of(&rel)
        .map_err(|e| sys_err(op, "resolve parent of", &rel, e))?;
    let temp = format!(
        ".kiln-mkfile-{}-{}",
        std::process::id(),
        MKFILE_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let written = write_new_file(
        op,
        parent.as_fd(),
        &temp,
        &rel,
        data,
        mode,
        owner,
        mtime.map(to_timespec),
    )
    .and_then(|()| {
        renameat(
            parent.as_fd(),
            temp.as_str(),
            parent.as_fd(),
            name.as_os_str(),
        )
        .map_err(|e| sys_err(op, "replace", &rel, e))
    });
    if written.is_err() {
        // Best effort: the temporary file must not end up in the layer.
        let _ = unlinkat(parent.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

#[allow(clippy::too_many_arguments)]
fn write_new_file(
    op: &str,
    parent: BorrowedFd<'_>,
    temp: &str,
    rel: &str,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<nix::sys::time::TimeSpec>,
) -> Result<()> {
    let fd = openat(
        parent,
        temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| sys_err(op, "create", rel, e))?;
    let mut file = File::from(fd);
    file.write_all(data)
        .map_err(|e| io_err(op, "write", rel, e))?;
    if let Some((uid, gid)) = owner {
        fchown(
            file.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| sys_err(op, "chown", rel, e))?;
    }
    fchmod(file.as_fd(), Mode::from_bits_truncate(mode & 0o7777))
        .map_err(|e| sys_err(op, "chmod", rel, e))?;
    if let Some(time) = mtime {
        futimens(file.as_fd(), &time, &time).map_err(|e| sys_err(op, "set times of", rel, e))?;
    }
    Ok(())
}

/// Removes `path` (recursively for a directory) from `dest_root`. With `allow_wildcard`, `path` may
/// match several entries (or none). A missing path is an error unless `allow_not_found`.
///
/// # Errors
/// [`FileOpError::InvalidPath`] for the root itself, [`FileOpError::Io`] (not found, or refused).
pub fn rm(dest_root: &Path, path: &str, allow_not_found: bool, allow_wildcard: bool) -> Result<()> {
    let op = "rm";
    let root = Root::open(dest_root, op)?;
    let rel = clean_rel(path);
    if allow_wildcard && has_wildcards(&rel) {
        for (full, _) in crate::copy::resolve_wildcards(&root, op, &rel)? {
            rm_path(&root, op, &full, allow_not_found)?;
        }
        return Ok(());
    }
    rm_path(&root, op, Path::new(&rel), allow_not_found)
}

fn rm_path(root: &Root, op: &str, rel: &Path, allow_not_found: bool) -> Result<()> {
    let rel_shown = rel.to_string_lossy();
    if rel.file_name().is_none() {
        return Err(FileOpError::InvalidPath {
            op: op.to_string(),
            path: display(&rel_shown),
            reason: "cannot remove the root directory",
        });
    }
    let (parent, name) = match root.parent_dir_of(rel) {
        Ok(found) => found,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) if allow_not_found => return Ok(()),
        Err(e) => return Err(sys_err(op, "remove", &rel_shown, e)),
    };
    let parent_real = root
        .rel_path_of(parent.as_fd())
        .map_err(|e| sys_err(op, "resolve", &rel_shown, e))?;
    let shown = parent_real.join(&name).to_string_lossy().into_owned();
    if !allow_not_found {
        // BuildKit stats the path (following a final link) before removing it.
        if let Err(e) = fstatat(parent.as_fd(), name.as_os_str(), AtFlags::empty()) {
            return Err(sys_err(op, "remove", &shown, e));
        }
    }
    remove_all_at(op, parent.as_fd(), &name, &shown)
}

/// Removes `name` in `dir`, recursively if it is a directory; a missing entry is fine. Symlinks are
/// removed, never followed.
pub(crate) fn remove_all_at(
    op: &str,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &str,
) -> Result<()> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(sys_err(op, "stat", shown, e)),
        Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
            let child = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| sys_err(op, "open", shown, e))?;
            for entry in read_dir_sorted(op, child.as_fd(), shown)? {
                remove_all_at(
                    op,
                    child.as_fd(),
                    &entry,
                    &join_rel(shown, &entry.to_string_lossy()),
                )?;
            }
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| sys_err(op, "remove", shown, e))
        }
        Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| sys_err(op, "remove", shown, e)),
    }
}

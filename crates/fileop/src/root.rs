//! Confined path resolution inside a root directory (a build context or a mounted root filesystem).
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT)`: `..` stops at the root and symlinks —
//! absolute ones included — are resolved as if the root were `/`, so a path can never leave it,
//! whatever the image or context contains. Entries are then created and changed with `*at` calls
//! on the resolved parent directory's descriptor, never by host path. Paths inside a root are kept
//! as `/`-separated strings without a leading `/` (`""` is the root itself).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, mkdirat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};

use crate::error::{FileOpError, Result, io_err, sys_err};

/// Most symlinks followed while resolving one path by hand (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// A directory that paths are confined to.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    /// The root's canonical host path, used to turn `/proc/self/fd` links back into root paths.
    real: PathBuf,
}

impl Root {
    /// Opens `path` as a root. `op` names the operation for error messages.
    pub(crate) fn open(path: &Path, op: &str) -> Result<Root> {
        let shown = path.display().to_string();
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys_err(op, "open root directory", &shown, e))?;
        let real = std::fs::canonicalize(path)
            .map_err(|e| io_err(op, "resolve root directory", &shown, e))?;
        Ok(Root { fd, real })
    }

    /// Opens `rel` with `flags`, resolving every component (and the leaf, unless `O_NOFOLLOW`)
    /// inside the root.
    pub(crate) fn open_in(&self, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.open_in_path(Path::new(rel), flags)
    }

    /// [`Root::open_in`] for paths that need not be UTF-8 (entries found while walking).
    pub(crate) fn open_in_path(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(self.fd.as_fd(), path, how) {
                // openat2 asks for a retry when a rename raced with the lookup.
                Err(Errno::EAGAIN) => continue,
                other => return other,
            }
        }
    }

    /// The root-relative path of a descriptor that was opened inside this root.
    pub(crate) fn rel_of(&self, fd: BorrowedFd<'_>) -> nix::Result<String> {
        Ok(self.rel_path_of(fd)?.to_string_lossy().into_owned())
    }

    /// [`Root::rel_of`] without the lossy conversion to UTF-8.
    pub(crate) fn rel_path_of(&self, fd: BorrowedFd<'_>) -> nix::Result<PathBuf> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let rel = link.strip_prefix(&self.real).map_err(|_| Errno::EXDEV)?;
        Ok(rel.to_path_buf())
    }

    /// The parent directory (resolved inside the root) and final name of a real, clean path.
    pub(crate) fn parent_dir_of(&self, rel: &Path) -> nix::Result<(OwnedFd, OsString)> {
        let name = rel.file_name().ok_or(Errno::EINVAL)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.open_in_path(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok((fd, name.to_os_string()))
    }

    /// Resolves the parent directory of `rel` inside the root (following symlinks) and returns its
    /// descriptor, its real root-relative path and the final name, which is not followed.
    /// `rel` must name an entry, not the root itself.
    pub(crate) fn parent_of(&self, rel: &str) -> nix::Result<(OwnedFd, String, OsString)> {
        let (parent, name) = split_parent(rel).ok_or(Errno::EINVAL)?;
        let fd = self.open_in(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let parent_real = self.rel_of(fd.as_fd())?;
        Ok((fd, parent_real, OsString::from(name)))
    }

    /// Resolves `rel` inside the root following symlinks in every component including the last,
    /// and returns the real root-relative path it names. The path need not exist; when its parent
    /// does not exist either, the lexical path is returned (creating it follows links anyway).
    pub(crate) fn resolve_follow(&self, rel: &str) -> nix::Result<String> {
        Ok(self
            .resolve_follow_path(Path::new(rel))?
            .to_string_lossy()
            .into_owned())
    }

    /// [`Root::resolve_follow`] for paths that need not be UTF-8.
    pub(crate) fn resolve_follow_path(&self, rel: &Path) -> nix::Result<PathBuf> {
        let mut current = clean_path(rel);
        for _ in 0..MAX_SYMLINK_HOPS {
            if current.as_os_str().is_empty() {
                return Ok(current);
            }
            let (parent_fd, name) = match self.parent_dir_of(&current) {
                Ok(found) => found,
                // Whoever uses the path reports the missing or non-directory component.
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(current),
                Err(e) => return Err(e),
            };
            let parent_real = self.rel_path_of(parent_fd.as_fd())?;
            match fstatat(
                parent_fd.as_fd(),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(parent_fd.as_fd(), name.as_os_str())?;
                    let target = Path::new(&target);
                    current = if target.is_absolute() {
                        clean_path(target)
                    } else {
                        clean_path(&parent_real.join(target))
                    };
                }
                Ok(_) | Err(Errno::ENOENT) => return Ok(parent_real.join(name)),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ELOOP)
    }

    /// Creates `rel` and any missing parents (like `mkdir -p`), following existing symlinks inside
    /// the root. New directories get `mode`, `owner` (when given) and `mtime` (when given); their
    /// paths are appended to `created`. Returns the directory's descriptor (`O_PATH`).
    pub(crate) fn mkdir_all(
        &self,
        op: &str,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: Option<TimeSpec>,
        created: &mut Vec<String>,
    ) -> Result<OwnedFd> {
        let first_new = created.len();
        let fd = self.mkdir_all_inner(op, rel, mode, owner, created, 0)?;
        if let Some(time) = mtime {
            // Deepest first: creating a child bumps its parent's times.
            for dir in created[first_new..].iter().rev() {
                self.set_times(op, dir, time)?;
            }
        }
        Ok(fd)
    }

    /// Sets both times of `rel` (not following a final symlink).
    pub(crate) fn set_times(&self, op: &str, rel: &str, time: TimeSpec) -> Result<()> {
        let (parent, _, name) = match split_parent(rel) {
            Some(_) => self
                .parent_of(rel)
                .map_err(|e| sys_err(op, "resolve", rel, e))?,
            None => (
                self.open_in("", OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| sys_err(op, "open", "/", e))?,
                String::new(),
                ".".into(),
            ),
        };
        utimensat(
            parent.as_fd(),
            name.as_os_str(),
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| sys_err(op, "set times of", rel, e))
    }

    fn mkdir_all_inner(
        &self,
        op: &str,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        created: &mut Vec<String>,
        depth: usize,
    ) -> Result<OwnedFd> {
        if depth > MAX_SYMLINK_HOPS {
            return Err(sys_err(op, "resolve", rel, Errno::ELOOP));
        }
        let rel = clean_rel(rel);
        match self.open_in(&rel, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR) => return Err(self.first_non_dir(op, &rel)),
            Err(e) => return Err(sys_err(op, "resolve", &rel, e)),
        }
        let mut current = self
            .open_in("", OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| sys_err(op, "open", "/", e))?;
        let mut current_rel = String::new();
        let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        for (i, component) in components.iter().copied().enumerate() {
            let next_rel = join_rel(&current_rel, component);
            match fstatat(current.as_fd(), component, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                    current = openat(current.as_fd(), component, dir_path_flags(), Mode::empty())
                        .map_err(|e| sys_err(op, "open", &next_rel, e))?;
                    current_rel = next_rel;
                }
                Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
                    // An existing link (e.g. /lib -> usr/lib): follow it inside the root; a dangling
                    // one has its target created, as BuildKit's MkdirAll on a resolved path does.
                    match self.open_in(&next_rel, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                        Ok(fd) => {
                            current = fd;
                            current_rel = self
                                .rel_of(current.as_fd())
                                .map_err(|e| sys_err(op, "resolve", &next_rel, e))?;
                        }
                        Err(Errno::ENOENT) => {
                            let target = self
                                .resolve_follow(&next_rel)
                                .map_err(|e| sys_err(op, "resolve", &next_rel, e))?;
                            let rest = components[i + 1..].join("/");
                            return self.mkdir_all_inner(
                                op,
                                &join_rel(&target, &rest),
                                mode,
                                owner,
                                created,
                                depth + 1,
                            );
                        }
                        Err(Errno::ENOTDIR) => {
                            return Err(FileOpError::NotADirectory {
                                op: op.to_string(),
                                path: display(&next_rel),
                            });
                        }
                        Err(e) => return Err(sys_err(op, "resolve", &next_rel, e)),
                    }
                }
                Ok(_) => {
                    return Err(FileOpError::NotADirectory {
                        op: op.to_string(),
                        path: display(&next_rel),
                    });
                }
                Err(Errno::ENOENT) => {
                    mkdirat(current.as_fd(), component, Mode::from_bits_truncate(0o700))
                        .map_err(|e| sys_err(op, "create directory", &next_rel, e))?;
                    set_metadata_at(
                        op,
                        current.as_fd(),
                        OsStr::new(component),
                        &next_rel,
                        owner,
                        Some(mode),
                        None,
                        false,
                    )?;
                    created.push(next_rel.clone());
                    current = openat(current.as_fd(), component, dir_path_flags(), Mode::empty())
                        .map_err(|e| sys_err(op, "open", &next_rel, e))?;
                    current_rel = next_rel;
                }
                Err(e) => return Err(sys_err(op, "stat", &next_rel, e)),
            }
        }
        Ok(current)
    }

    /// Finds which component of `rel` is not a directory, for an accurate error message.
    fn first_non_dir(&self, op: &str, rel: &str) -> FileOpError {
        let mut prefix = String::new();
        for component in rel.split('/').filter(|c| !c.is_empty()) {
            prefix = join_rel(&prefix, component);
            if let Err(Errno::ENOTDIR) = self.open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                return FileOpError::NotADirectory {
                    op: op.to_string(),
                    path: display(&prefix),
                };
            }
        }
        FileOpError::NotADirectory {
            op: op.to_string(),
            path: display(rel),
        }
    }
}

/// Flags to open a directory entry for further `*at` calls without following a final symlink.
pub(crate) fn dir_path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Sets owner, mode and times of `name` in `dir` (in that order: `chown` clears set-id bits and
/// file capabilities, so the mode comes after it). Symlinks get no mode.
#[allow(clippy::too_many_arguments)]
pub(crate) fn set_metadata_at(
    op: &str,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &str,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    mtime: Option<TimeSpec>,
    is_symlink: bool,
) -> Result<()> {
    if let Some((uid, gid)) = owner {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys_err(op, "chown", shown, e))?;
    }
    if let (Some(mode), false) = (mode, is_symlink) {
        fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| sys_err(op, "chmod", shown, e))?;
    }
    if let Some(time) = mtime {
        utimensat(dir, name, &time, &time, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| sys_err(op, "set times of", shown, e))?;
    }
    Ok(())
}

/// The file type bits of a stat result.
pub(crate) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Lexically cleans a path against `/`: drops `.`, empty components and any `..` that would climb
/// above the root (as Go's `filepath.Join("/", p)` does), and the leading `/`.
pub(crate) fn clean_rel(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// [`clean_rel`] for paths that need not be UTF-8.
pub(crate) fn clean_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Joins two root-relative paths.
pub(crate) fn join_rel(base: &str, name: &str) -> String {
    match (base.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{name}"),
    }
}

/// Splits a clean root-relative path into its parent and final name; `None` for the root.
pub(crate) fn split_parent(rel: &str) -> Option<(&str, &str)> {
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() {
        return None;
    }
    Some(match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    })
}

/// A root-relative path as shown in messages (absolute).
pub(crate) fn display(rel: &str) -> String {
    crate::error::display_path(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_rel_stops_dotdot_at_root() {
        assert_eq!(clean_rel("../../etc/passwd"), "etc/passwd");
        assert_eq!(clean_rel("/a/./b/../c/"), "a/c");
        assert_eq!(clean_rel("/"), "");
        assert_eq!(clean_rel("."), "");
    }

    #[test]
    fn split_parent_names_parent_and_leaf() {
        assert_eq!(split_parent("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split_parent("a"), Some(("", "a")));
        assert_eq!(split_parent(""), None);
    }

    #[test]
    fn absolute_symlink_resolves_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/target"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let root = Root::open(dir.path(), "test").unwrap();
        let fd = root.open_in("link/target", OFlag::O_RDONLY).unwrap();
        let content = std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(content, "inside");
        assert_eq!(root.resolve_follow("link/target").unwrap(), "etc/target");
        assert_eq!(root.resolve_follow("link/../../x").unwrap(), "x");
    }
}

//! `COPY`/`ADD` from a source root (the build context, or another stage's or image's root
//! filesystem) into a destination root (the step's mounted root filesystem), with BuildKit's
//! semantics (`solver/llbsolver/file` on top of `fsutil/copy`):
//!
//! - sources are cleaned against `/` (`COPY ../x` reads `x` of the context), a symlink given as a
//!   source is followed when `follow_symlinks` is set (the Dockerfile always sets it), wildcards
//!   use Go's `filepath.Match` and several matches count as several sources;
//! - a destination ending in `/` is a directory and is created (0755, with `--chown`'s owner and the
//!   `mtime`, as BuildKit's `MkdirAll` does), otherwise only its parent is; the destination path is
//!   resolved inside the root following the image's symlinks;
//! - a file copied onto an existing directory lands inside it; a directory with
//!   `dir_copy_contents` has its contents merged into the destination, whose own metadata is left
//!   alone; nested directories that already exist are merged and take the source's metadata, files
//!   replace what was there (never writing through a symlink that was there);
//! - symlinks are copied as symlinks, hardlinks inside the copied set stay hardlinks, devices and
//!   fifos are recreated, xattrs copied; modes are kept unless `--chmod`; ownership becomes
//!   `--chown`'s, else the source's (`preserve_owner`, for `COPY --from`) or 0:0 (the context);
//! - `--exclude` patterns match paths relative to each copied source, `--parents` keeps the
//!   source's parent directories (from the context root or after a `/./` pivot).
//!
//! One deliberate difference: where BuildKit fails with "cannot copy to non-directory" because the
//! image has a symlink where a copied directory goes (usr-merged `/lib -> usr/lib`), kiln merges into
//! the link's target inside the root, as Docker's classic builder did.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, linkat, symlinkat, unlinkat};

use crate::archive;
use crate::error::{FileOpError, Result, sys_err};
use crate::mode::Chmod;
use crate::owner::Chown;
use crate::pattern::{PatternSet, glob_match, has_wildcards};
use crate::root::{
    Root, clean_rel, dir_path_flags, display, file_type, join_rel, set_metadata_at, split_parent,
};

/// What to copy and how. [`CopyOptions::new`] gives the Dockerfile's settings for `COPY src… dest`.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Instruction name used in error messages (`COPY`, `ADD`).
    pub op: String,
    /// What the source root is, for error messages ("build context", "stage builder").
    pub source_label: String,
    /// Source paths inside the source root; may contain wildcards.
    pub sources: Vec<String>,
    /// Destination: absolute, or relative to `workdir`. A trailing `/` makes it a directory.
    pub dest: String,
    /// The working directory relative destinations start from.
    pub workdir: String,
    /// `--chown`; also the owner of directories the copy creates.
    pub chown: Option<Chown>,
    /// Without `--chown`: keep the source's owners (`COPY --from`) instead of 0:0 (the context).
    pub preserve_owner: bool,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// Follow a symlink named directly as a source (the Dockerfile frontend always does).
    pub follow_symlinks: bool,
    /// Copying a directory copies its contents (Dockerfile `COPY` semantics) rather than the
    /// directory itself.
    pub dir_copy_contents: bool,
    /// Create the destination's missing parent directories.
    pub create_dest_path: bool,
    /// Expand wildcards in sources.
    pub allow_wildcard: bool,
    /// A wildcard that matches nothing is not an error. Off in [`CopyOptions::new`]: Docker fails
    /// such a `COPY` ("not found", raised by BuildKit while computing the cache key).
    pub allow_empty_wildcard: bool,
    /// `--exclude` patterns (`.dockerignore` syntax), relative to each source.
    pub excludes: Vec<String>,
    /// A build context's `.dockerignore` patterns, relative to `src_root`: entries they leave out
    /// are not there for this copy (a source they leave out is not found, a wildcard skips it),
    /// so the context can be read in place instead of staged without them first.
    pub context_excludes: Vec<String>,
    /// `--parents`: keep each source's path below the context root (or below a `/./` pivot).
    pub parents: bool,
    /// `ADD` of a local archive: unpack it into the destination directory.
    pub attempt_unpack: bool,
    /// Timestamp for everything written (`SOURCE_DATE_EPOCH`); source times are kept otherwise.
    pub mtime: Option<SystemTime>,
}

impl CopyOptions {
    /// The settings the Dockerfile frontend uses for `COPY <sources> <dest>` from the context.
    pub fn new(sources: Vec<String>, dest: impl Into<String>) -> CopyOptions {
        CopyOptions {
            op: "COPY".to_string(),
            source_label: "build context".to_string(),
            sources,
            dest: dest.into(),
            workdir: "/".to_string(),
            chown: None,
            preserve_owner: false,
            chmod: None,
            follow_symlinks: true,
            dir_copy_contents: true,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: false,
            excludes: Vec::new(),
            context_excludes: Vec::new(),
            parents: false,
            attempt_unpack: false,
            mtime: None,
        }
    }
}

/// What a copy wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Where each source landed in the destination (absolute paths), in source order.
    pub targets: Vec<String>,
    /// Directories created to hold the destination (absolute paths).
    pub created_dirs: Vec<String>,
    /// Archives that were unpacked instead of copied (source paths).
    pub unpacked: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub special_files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// One resolved source.
struct SourceItem {
    /// Clean path in the source root (empty = the root); not necessarily UTF-8.
    rel: PathBuf,
    /// As the user wrote it, for messages.
    shown: String,
    /// `--parents`: the include pattern below `rel`.
    include: Option<String>,
}

/// Copies `opts.sources` from `src_root` into `dest_root` (see the module docs for the rules).
///
/// # Errors
/// [`FileOpError::SourceNotFound`] / [`FileOpError::NoWildcardMatch`] for missing sources,
/// [`FileOpError::SeveralSourcesNeedDirDest`] when several sources target a file path,
/// [`FileOpError::UnknownUser`]/[`FileOpError::UnknownGroup`] for `--chown` names the destination
/// does not know, [`FileOpError::NotADirectory`] / [`FileOpError::ReplaceDirWithFile`] for type
/// clashes, archive errors for `attempt_unpack`, [`FileOpError::Io`] for anything the system refuses.
pub fn copy(src_root: &Path, dest_root: &Path, opts: &CopyOptions) -> Result<CopyReport> {
    let op = opts.op.as_str();
    let src = Root::open(src_root, op)?;
    let dst = Root::open(dest_root, op)?;
    let owner = opts
        .chown
        .as_ref()
        .map(|c| c.resolve(op, &dst))
        .transpose()?;
    let excludes = PatternSet::new(&opts.excludes)?;
    let context_ignore = PatternSet::new(&opts.context_excludes)?;
    let mtime = opts.mtime.map(to_timespec);

    let dest_joined = if opts.dest.starts_with('/') {
        opts.dest.clone()
    } else {
        format!("{}/{}", opts.workdir, opts.dest)
    };
    let dest_rel = clean_rel(&dest_joined);
    let dest_is_dir = dest_rel.is_empty()
        || opts.dest.is_empty()
        || opts.dest == "."
        || dest_joined.ends_with('/')
        || dest_joined.ends_with("/.");

    let items = resolve_sources(&src, opts, &excludes, &context_ignore)?;
    let mut report = CopyReport::default();
    if items.is_empty() {
        return Ok(report);
    }
    if (items.len() > 1 || opts.parents) && !dest_is_dir && !is_existing_dir(&dst, &dest_rel) {
        return Err(FileOpError::SeveralSourcesNeedDirDest {
            op: op.to_string(),
            count: items.len(),
            dest: opts.dest.clone(),
        });
    }
    if !opts.create_dest_path {
        let parent = if dest_is_dir {
            dest_rel.as_str()
        } else {
            split_parent(&dest_rel).map(|(p, _)| p).unwrap_or("")
        };
        if !is_existing_dir(&dst, parent) {
            return Err(FileOpError::DestParentMissing {
                op: op.to_string(),
                path: display(parent),
            });
        }
    }

    let mut copier = Copier {
        op,
        src: &src,
        dst: &dst,
        owner,
        preserve_owner: opts.preserve_owner,
        chmod: opts.chmod.as_ref(),
        mtime,
        excludes: &excludes,
        context_ignore: &context_ignore,
        context_base: String::new(),
        includes: None,
        links: HashMap::new(),
        stack: Vec::new(),
        report: &mut report,
    };
    let mut created = Vec::new();
    for item in &items {
        if opts.attempt_unpack && item.include.is_none() {
            if let Some(archive_rel) = archive::detect(&src, op, &item.rel.to_string_lossy())? {
                let dest_fd = dst.mkdir_all(op, &dest_rel, 0o755, owner, mtime, &mut created)?;
                archive::unpack(
                    &src,
                    &archive_rel,
                    &item.shown,
                    dest_fd,
                    &dest_rel,
                    op,
                    owner,
                )?;
                copier.report.unpacked.push(item.shown.clone());
                copier.report.targets.push(display(&dest_rel));
                continue;
            }
        }
        let includes = item
            .include
            .as_ref()
            .map(|p| PatternSet::new(std::slice::from_ref(p)))
            .transpose()?;
        copier.includes = includes;
        let target = copier.copy_source(item, &dest_rel, dest_is_dir, opts, &mut created)?;
        copier.report.targets.push(display(&target));
    }
    if let Some(time) = mtime {
        // Copying into the directories created for the destination bumped their times.
        for dir in created.iter().rev() {
            dst.set_times(op, dir, time)?;
        }
    }
    report.created_dirs = created.iter().map(|d| display(d)).collect();
    Ok(report)
}

/// Expands the sources into the list of things to copy.
fn resolve_sources(
    src: &Root,
    opts: &CopyOptions,
    excludes: &PatternSet,
    context_ignore: &PatternSet,
) -> Result<Vec<SourceItem>> {
    let mut items = Vec::new();
    for source in &opts.sources {
        if opts.parents {
            // `--parents a/./b/*.go`: copy from `a` keeping `b/...`; without a pivot, from the root.
            let (base, pattern) = match source.split_once("/./") {
                Some((base, pattern)) => (clean_rel(base), clean_rel(pattern)),
                None => (String::new(), clean_rel(source)),
            };
            if pattern.is_empty() {
                items.push(SourceItem {
                    rel: PathBuf::from(&base),
                    shown: source.clone(),
                    include: None,
                });
            } else {
                items.push(SourceItem {
                    rel: PathBuf::from(&base),
                    shown: source.clone(),
                    include: Some(pattern),
                });
            }
            continue;
        }
        let rel = clean_rel(source);
        if !(opts.allow_wildcard && has_wildcards(&rel)) {
            items.push(SourceItem {
                rel: PathBuf::from(&rel),
                shown: source.clone(),
                include: None,
            });
            continue;
        }
        let matches = resolve_wildcards(src, &opts.op, &rel)?;
        if matches.is_empty() && !opts.allow_empty_wildcard {
            return Err(FileOpError::NoWildcardMatch {
                op: opts.op.clone(),
                pattern: source.clone(),
                source_label: opts.source_label.clone(),
            });
        }
        for (full, below_base) in matches {
            // `COPY --exclude=*.txt hom* /dir/` must skip `home.txt` itself, not only what is inside
            // matched directories.
            if !excludes.is_empty() && excludes.matches(&below_base) {
                continue;
            }
            // What the context's ignore file leaves out is not there to match (a directory that
            // may hold re-included entries stays, and only those are copied from it).
            if !context_ignore.is_empty() {
                let full_rel = full.to_string_lossy();
                if context_ignore.matches(&full_rel)
                    && !context_ignore.may_reinclude_below(&full_rel)
                {
                    continue;
                }
            }
            items.push(SourceItem {
                shown: full.to_string_lossy().into_owned(),
                rel: full,
                include: None,
            });
        }
    }
    Ok(items)
}

/// Expands a wildcard path in `src`: the part before the first wildcard component is resolved
/// (inside the root), the rest is matched against paths below it, not descending into matches.
/// Returns (path in root, path below the non-wildcard base), in lexical order.
pub(crate) fn resolve_wildcards(
    src: &Root,
    op: &str,
    pattern: &str,
) -> Result<Vec<(PathBuf, String)>> {
    let components: Vec<&str> = pattern.split('/').collect();
    let split = components
        .iter()
        .position(|c| has_wildcards(c))
        .unwrap_or(components.len());
    let base = components[..split].join("/");
    let rest = components[split..].join("/");
    let depth = components.len() - split;
    let base_fd = match src.open_in(&base, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(Vec::new()),
        Err(e) => return Err(sys_err(op, "open", &base, e)),
    };
    let base_real = src
        .rel_path_of(base_fd.as_fd())
        .map_err(|e| sys_err(op, "resolve", &base, e))?;
    // A malformed pattern fails even when nothing would match it, as in Go.
    glob_match(&rest, "")?;
    let mut out = Vec::new();
    walk_matches(
        op,
        base_fd.as_fd(),
        Path::new(""),
        "",
        depth,
        &rest,
        &mut |exact, below| {
            out.push((base_real.join(exact), below.to_string()));
        },
    )?;
    Ok(out)
}

fn walk_matches(
    op: &str,
    dir: BorrowedFd<'_>,
    exact: &Path,
    rel: &str,
    depth: usize,
    pattern: &str,
    found: &mut dyn FnMut(&Path, &str),
) -> Result<()> {
    for name in read_dir_sorted(op, dir, rel)? {
        let name_str = name.to_string_lossy();
        let path = join_rel(rel, &name_str);
        let exact_path = exact.join(&name);
        if glob_match(pattern, &path)? {
            found(&exact_path, &path);
            continue;
        }
        if path.split('/').count() >= depth {
            continue;
        }
        let st = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| sys_err(op, "stat", &path, e))?;
        if file_type(&st) == SFlag::S_IFDIR {
            let child = openat(
                dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| sys_err(op, "open", &path, e))?;
            walk_matches(op, child.as_fd(), &exact_path, &path, depth, pattern, found)?;
        }
    }
    Ok(())
}

/// Entry names of a directory (without `.`/`..`), sorted bytewise so output is deterministic.
pub(crate) fn read_dir_sorted(op: &str, dir: BorrowedFd<'_>, shown: &str) -> Result<Vec<OsString>> {
    let mut handle = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys_err(op, "read directory", shown, e))?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry.map_err(|e| sys_err(op, "read directory", shown, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

fn is_existing_dir(root: &Root, rel: &str) -> bool {
    root.open_in(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
        .is_ok()
}

/// A directory of the destination on the path currently being copied.
struct DirFrame {
    /// Real path in the destination root (not necessarily UTF-8).
    rel: PathBuf,
    /// Open (`O_PATH`) once the directory exists; `None` while its creation is deferred.
    fd: Option<OwnedFd>,
    /// Name inside the parent frame (for deferred creation).
    name: OsString,
    /// The source directory's metadata (for deferred creation and final metadata).
    src_stat: Option<FileStat>,
    /// The source directory (for xattrs).
    src_fd: Option<OwnedFd>,
    /// This copy created the directory.
    created: bool,
    /// The directory is below the top of the copy, so an existing one takes the source metadata.
    nested: bool,
}

struct Copier<'a> {
    op: &'a str,
    src: &'a Root,
    dst: &'a Root,
    owner: Option<(u32, u32)>,
    preserve_owner: bool,
    chmod: Option<&'a Chmod>,
    mtime: Option<TimeSpec>,
    excludes: &'a PatternSet,
    /// [`CopyOptions::context_excludes`], matched against paths from the source root.
    context_ignore: &'a PatternSet,
    /// The current source's path in the source root (what `comps` are below).
    context_base: String,
    includes: Option<PatternSet>,
    /// (device, inode) of multiply-linked source files → where the first copy went.
    links: HashMap<(u64, u64), PathBuf>,
    stack: Vec<DirFrame>,
    report: &'a mut CopyReport,
}

impl Copier<'_> {
    /// Copies one source item; returns the destination path it was copied to.
    fn copy_source(
        &mut self,
        item: &SourceItem,
        dest_rel: &str,
        dest_is_dir: bool,
        opts: &CopyOptions,
        created: &mut Vec<String>,
    ) -> Result<String> {
        let op = self.op;
        let not_found = || FileOpError::SourceNotFound {
            op: op.to_string(),
            path: item.shown.clone(),
            source_label: opts.source_label.clone(),
        };
        // Locate the source as (parent directory, name); follow a symlink named directly if asked.
        let src_rel = if opts.follow_symlinks || item.include.is_some() {
            self.src
                .resolve_follow_path(&item.rel)
                .map_err(|e| sys_err(op, "resolve", &item.shown, e))?
        } else {
            item.rel.clone()
        };
        let (src_parent, src_name) = if src_rel.as_os_str().is_empty() {
            (
                self.src
                    .open_in("", OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| sys_err(op, "open", "/", e))?,
                OsString::from("."),
            )
        } else {
            match self.src.parent_dir_of(&src_rel) {
                Ok(found) => found,
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Err(not_found()),
                Err(e) => return Err(sys_err(op, "resolve", &item.shown, e)),
            }
        };
        let src_stat = match fstatat(
            src_parent.as_fd(),
            src_name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(not_found()),
            Err(e) => return Err(sys_err(op, "stat", &item.shown, e)),
        };
        let src_is_dir = file_type(&src_stat) == SFlag::S_IFDIR;
        self.context_base = src_rel.to_string_lossy().into_owned();
        if self.context_ignored(&self.context_base)
            && !(src_is_dir && self.context_ignore.may_reinclude_below(&self.context_base))
        {
            return Err(not_found());
        }

        // BuildKit: a destination ending in `/` is created first; otherwise only its parent.
        if dest_is_dir {
            self.dst
                .mkdir_all(op, dest_rel, 0o755, self.owner, self.mtime, created)?;
        } else if let Some((parent, _)) = split_parent(dest_rel) {
            self.dst
                .mkdir_all(op, parent, 0o755, self.owner, self.mtime, created)?;
        }
        let dest_target = self
            .dst
            .resolve_follow(dest_rel)
            .map_err(|e| sys_err(op, "resolve", dest_rel, e))?;
        let target_is_dir = match self.dst.open_in(&dest_target, OFlag::O_PATH) {
            Ok(fd) => Some(
                fstat(fd.as_fd())
                    .map(|st| file_type(&st) == SFlag::S_IFDIR)
                    .map_err(|e| sys_err(op, "stat", &dest_target, e))?,
            ),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(sys_err(op, "resolve", &dest_target, e)),
        };
        let mut target = PathBuf::from(&dest_target);
        if (!opts.dir_copy_contents && src_is_dir && target_is_dir.is_some())
            || (!src_is_dir && target_is_dir == Some(true))
        {
            if let Some(name) = src_rel.file_name() {
                target.push(name);
            }
        }
        if opts.dir_copy_contents && src_is_dir && target_is_dir.is_none() {
            self.dst
                .mkdir_all(op, &dest_target, 0o755, self.owner, self.mtime, created)?;
        } else if let Some(parent) = target.parent() {
            self.dst.mkdir_all(
                op,
                &parent.to_string_lossy(),
                0o755,
                self.owner,
                self.mtime,
                created,
            )?;
        }

        // The frame holding the target: its parent directory, or the root for a root target.
        let (parent_fd, parent_rel, name) = if target.as_os_str().is_empty() {
            let fd = self
                .dst
                .open_in("", OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map_err(|e| sys_err(op, "open", "/", e))?;
            (fd, PathBuf::new(), OsString::from("."))
        } else {
            let (fd, name) = self
                .dst
                .parent_dir_of(&target)
                .map_err(|e| sys_err(op, "resolve", &shown(&target), e))?;
            let real = self
                .dst
                .rel_path_of(fd.as_fd())
                .map_err(|e| sys_err(op, "resolve", &shown(&target), e))?;
            (fd, real, name)
        };
        self.stack.push(DirFrame {
            rel: parent_rel,
            fd: Some(parent_fd),
            name: OsString::new(),
            src_stat: None,
            src_fd: None,
            created: false,
            nested: false,
        });
        let result = self.copy_entry(src_parent.as_fd(), &src_name, &src_stat, "", &name);
        self.stack.pop();
        result?;
        Ok(shown(&target))
    }

    /// Copies one entry of the source into the innermost frame under `dst_name`.
    /// `comps` is the entry's path below the copied source (`""` for the source itself).
    fn copy_entry(
        &mut self,
        src_dir: BorrowedFd<'_>,
        src_name: &OsStr,
        st: &FileStat,
        comps: &str,
        dst_name: &OsStr,
    ) -> Result<()> {
        let kind = file_type(st);
        let is_dir = kind == SFlag::S_IFDIR;
        let excluded =
            !comps.is_empty() && !self.excludes.is_empty() && self.excludes.matches(comps);
        let context_path = if self.context_ignore.is_empty() {
            String::new()
        } else {
            join_rel(&self.context_base, comps)
        };
        let ignored = self.context_ignored(&context_path);
        let included =
            comps.is_empty() || self.includes.as_ref().is_none_or(|set| set.matches(comps));
        if excluded || ignored || !included {
            // A directory may still hold entries that are re-included (`!pattern`) or that match an
            // include pattern deeper down: walk it, creating it only if something is copied.
            let worth_walking = is_dir
                && if excluded || ignored {
                    (!excluded || self.excludes.may_reinclude_below(comps))
                        && (!ignored || self.context_ignore.may_reinclude_below(&context_path))
                } else {
                    self.includes
                        .as_ref()
                        .is_some_and(|set| set.could_match_below(comps))
                };
            if worth_walking {
                self.copy_dir(src_dir, src_name, st, comps, dst_name, false)?;
            }
            return Ok(());
        }
        self.materialize_parents()?;
        match kind {
            SFlag::S_IFDIR => self.copy_dir(src_dir, src_name, st, comps, dst_name, true),
            SFlag::S_IFREG => self.copy_file(src_dir, src_name, st, dst_name),
            SFlag::S_IFLNK => self.copy_symlink(src_dir, src_name, st, dst_name),
            _ => self.copy_special(st, kind, dst_name),
        }
    }

    /// Whether the context's ignore file leaves out `context_path` (a path from the source root).
    fn context_ignored(&self, context_path: &str) -> bool {
        !self.context_ignore.is_empty()
            && !context_path.is_empty()
            && self.context_ignore.matches(context_path)
    }

    /// The innermost frame's directory descriptor (it has been materialized).
    fn parent_fd(&self) -> Result<BorrowedFd<'_>> {
        self.stack
            .last()
            .and_then(|f| f.fd.as_ref())
            .map(|fd| fd.as_fd())
            .ok_or_else(|| FileOpError::InvalidPath {
                op: self.op.to_string(),
                path: String::new(),
                reason: "no destination directory",
            })
    }

    fn parent_rel(&self) -> PathBuf {
        self.stack.last().map(|f| f.rel.clone()).unwrap_or_default()
    }

    /// Creates the directories whose creation was deferred because nothing in them was copied yet.
    fn materialize_parents(&mut self) -> Result<()> {
        let op = self.op;
        for i in 1..self.stack.len() {
            if self.stack[i].fd.is_some() {
                continue;
            }
            let (parent, parent_rel) = match self.stack[i - 1].fd.as_ref() {
                Some(fd) => (
                    fd.try_clone().map_err(|e| {
                        crate::error::io_err(op, "open", &shown(&self.stack[i].rel), e)
                    })?,
                    self.stack[i - 1].rel.clone(),
                ),
                None => continue,
            };
            let name = self.stack[i].name.clone();
            let rel = parent_rel.join(&name);
            let (fd, real, created) = self.open_or_create_dir(parent.as_fd(), &name, &rel)?;
            let frame = &mut self.stack[i];
            frame.fd = Some(fd);
            frame.rel = real;
            frame.created = created;
        }
        Ok(())
    }

    /// Opens directory `name` in `parent`, creating it if missing; an existing symlink is followed
    /// inside the root. Returns (descriptor, real path, created).
    fn open_or_create_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> Result<(OwnedFd, PathBuf, bool)> {
        let op = self.op;
        let rel_shown = shown(rel);
        let not_dir = || FileOpError::NotADirectory {
            op: op.to_string(),
            path: display(&rel_shown),
        };
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                let fd = openat(parent, name, dir_path_flags(), Mode::empty())
                    .map_err(|e| sys_err(op, "open", &rel_shown, e))?;
                Ok((fd, rel.to_path_buf(), false))
            }
            Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
                match self
                    .dst
                    .open_in_path(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
                {
                    Ok(fd) => {
                        let real = self
                            .dst
                            .rel_path_of(fd.as_fd())
                            .map_err(|e| sys_err(op, "resolve", &rel_shown, e))?;
                        Ok((fd, real, false))
                    }
                    Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Err(not_dir()),
                    Err(e) => Err(sys_err(op, "resolve", &rel_shown, e)),
                }
            }
            Ok(_) => Err(not_dir()),
            Err(Errno::ENOENT) => {
                mkdirat(parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| sys_err(op, "create directory", &rel_shown, e))?;
                let fd = openat(parent, name, dir_path_flags(), Mode::empty())
                    .map_err(|e| sys_err(op, "open", &rel_shown, e))?;
                self.report.dirs += 1;
                Ok((fd, rel.to_path_buf(), true))
            }
            Err(e) => Err(sys_err(op, "stat", &rel_shown, e)),
        }
    }

    fn copy_dir(
        &mut self,
        src_dir: BorrowedFd<'_>,
        src_name: &OsStr,
        st: &FileStat,
        comps: &str,
        dst_name: &OsStr,
        include: bool,
    ) -> Result<()> {
        let op = self.op;
        let rel = if dst_name == "." {
            self.parent_rel()
        } else {
            self.parent_rel().join(dst_name)
        };
        let src_rel_shown = if comps.is_empty() {
            src_name.to_string_lossy().into_owned()
        } else {
            comps.to_string()
        };
        let src_fd = openat(
            src_dir,
            src_name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys_err(op, "open", &src_rel_shown, e))?;
        let nested = self.stack.len() > 1 || !comps.is_empty();
        let mut frame = DirFrame {
            rel: rel.clone(),
            fd: None,
            name: dst_name.to_os_string(),
            src_stat: Some(*st),
            src_fd: None,
            created: false,
            nested,
        };
        if include {
            // An owned copy, so the frame stack can be borrowed mutably meanwhile.
            let parent = self
                .parent_fd()?
                .try_clone_to_owned()
                .map_err(|e| crate::error::io_err(op, "open", &shown(&rel), e))?;
            let (fd, real, created) = self.open_or_create_dir(parent.as_fd(), dst_name, &rel)?;
            frame.fd = Some(fd);
            frame.rel = real;
            frame.created = created;
        }
        self.stack.push(frame);
        let walked = self.copy_children(src_fd.as_fd(), comps);
        // The stack is balanced: this pops the frame pushed above.
        let Some(mut frame) = self.stack.pop() else {
            return walked;
        };
        frame.src_fd = Some(src_fd);
        walked?;
        self.finish_dir(&frame)
    }

    fn copy_children(&mut self, src_fd: BorrowedFd<'_>, comps: &str) -> Result<()> {
        let op = self.op;
        for name in read_dir_sorted(op, src_fd, comps)? {
            let child_comps = join_rel(comps, &name.to_string_lossy());
            let st = fstatat(src_fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| sys_err(op, "stat", &child_comps, e))?;
            self.copy_entry(src_fd, &name, &st, &child_comps, &name)?;
        }
        Ok(())
    }

    /// Applies a copied directory's metadata once its contents are written (so its times stick):
    /// always for a directory this copy created, and for an existing directory below the top.
    fn finish_dir(&mut self, frame: &DirFrame) -> Result<()> {
        let op = self.op;
        let (Some(fd), Some(st)) = (frame.fd.as_ref(), frame.src_stat.as_ref()) else {
            return Ok(());
        };
        if !(frame.created || frame.nested) {
            return Ok(());
        }
        let dir = openat(
            fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys_err(op, "open", &shown(&frame.rel), e))?;
        let (uid, gid) = self.owner_for(st);
        fchown(
            dir.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| sys_err(op, "chown", &shown(&frame.rel), e))?;
        fchmod(
            dir.as_fd(),
            Mode::from_bits_truncate(self.mode_for(st, true)),
        )
        .map_err(|e| sys_err(op, "chmod", &shown(&frame.rel), e))?;
        if let Some(src_fd) = frame.src_fd.as_ref() {
            crate::xattr::copy_xattrs(src_fd.as_fd(), dir.as_fd())
                .map_err(|e| sys_err(op, "copy xattrs to", &shown(&frame.rel), e))?;
        }
        let (atime, mtime) = self.times_for(st);
        futimens(dir.as_fd(), &atime, &mtime)
            .map_err(|e| sys_err(op, "set times of", &shown(&frame.rel), e))?;
        Ok(())
    }

    /// Removes a non-directory at `name` so a new entry can take its place; a directory there is
    /// an error (BuildKit: "cannot replace to directory … with file").
    fn clear_target(&self, parent: BorrowedFd<'_>, name: &OsStr, rel: &str) -> Result<()> {
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFDIR => Err(FileOpError::ReplaceDirWithFile {
                op: self.op.to_string(),
                path: display(rel),
            }),
            Ok(_) => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| sys_err(self.op, "remove", rel, e)),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(sys_err(self.op, "stat", rel, e)),
        }
    }

    fn copy_file(
        &mut self,
        src_dir: BorrowedFd<'_>,
        src_name: &OsStr,
        st: &FileStat,
        dst_name: &OsStr,
    ) -> Result<()> {
        let op = self.op;
        let rel_path = self.parent_rel().join(dst_name);
        let rel = shown(&rel_path);
        let parent = self
            .parent_fd()?
            .try_clone_to_owned()
            .map_err(|e| crate::error::io_err(op, "open", &rel, e))?;
        let link_key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&link_key).cloned() {
                self.clear_target(parent.as_fd(), dst_name, &rel)?;
                let (first_parent, first_name) = self
                    .dst
                    .parent_dir_of(&first)
                    .map_err(|e| sys_err(op, "resolve", &shown(&first), e))?;
                linkat(
                    first_parent.as_fd(),
                    first_name.as_os_str(),
                    parent.as_fd(),
                    dst_name,
                    AtFlags::empty(),
                )
                .map_err(|e| sys_err(op, "create hardlink", &rel, e))?;
                self.report.hardlinks += 1;
                return Ok(());
            }
        }
        let mut source = File::from(
            openat(
                src_dir,
                src_name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| sys_err(op, "open source", &src_name.to_string_lossy(), e))?,
        );
        // Cleared only once the source is open, so even a source that is the very file being
        // replaced is copied whole.
        self.clear_target(parent.as_fd(), dst_name, &rel)?;
        let mut dest = File::from(
            openat(
                parent.as_fd(),
                dst_name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| sys_err(op, "create", &rel, e))?,
        );
        let bytes = std::io::copy(&mut source, &mut dest)
            .map_err(|e| crate::error::io_err(op, "write", &rel, e))?;
        self.apply_fd_metadata(source.as_fd(), dest.as_fd(), st, &rel)?;
        self.report.files += 1;
        self.report.bytes += bytes;
        if st.st_nlink > 1 {
            self.links.insert(link_key, rel_path);
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of a freshly written file, through its descriptor.
    fn apply_fd_metadata(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &FileStat,
        rel: &str,
    ) -> Result<()> {
        let op = self.op;
        let (uid, gid) = self.owner_for(st);
        fchown(dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| sys_err(op, "chown", rel, e))?;
        fchmod(dst, Mode::from_bits_truncate(self.mode_for(st, false)))
            .map_err(|e| sys_err(op, "chmod", rel, e))?;
        crate::xattr::copy_xattrs(src, dst).map_err(|e| sys_err(op, "copy xattrs to", rel, e))?;
        let (atime, mtime) = self.times_for(st);
        futimens(dst, &atime, &mtime).map_err(|e| sys_err(op, "set times of", rel, e))?;
        Ok(())
    }

    fn copy_symlink(
        &mut self,
        src_dir: BorrowedFd<'_>,
        src_name: &OsStr,
        st: &FileStat,
        dst_name: &OsStr,
    ) -> Result<()> {
        let op = self.op;
        let rel_path = self.parent_rel().join(dst_name);
        let rel = shown(&rel_path);
        let parent = self
            .parent_fd()?
            .try_clone_to_owned()
            .map_err(|e| crate::error::io_err(op, "open", &rel, e))?;
        self.clear_target(parent.as_fd(), dst_name, &rel)?;
        let link = readlinkat(src_dir, src_name)
            .map_err(|e| sys_err(op, "read link", &src_name.to_string_lossy(), e))?;
        symlinkat(link.as_os_str(), parent.as_fd(), dst_name)
            .map_err(|e| sys_err(op, "create symlink", &rel, e))?;
        let owner = self.owner_for(st);
        let (_, mtime) = self.times_for(st);
        set_metadata_at(
            op,
            parent.as_fd(),
            dst_name,
            &rel,
            Some(owner),
            None,
            Some(mtime),
            true,
        )?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn copy_special(&mut self, st: &FileStat, kind: SFlag, dst_name: &OsStr) -> Result<()> {
        let op = self.op;
        let rel_path = self.parent_rel().join(dst_name);
        let rel = shown(&rel_path);
        let parent = self
            .parent_fd()?
            .try_clone_to_owned()
            .map_err(|e| crate::error::io_err(op, "open", &rel, e))?;
        self.clear_target(parent.as_fd(), dst_name, &rel)?;
        mknodat(
            parent.as_fd(),
            dst_name,
            kind,
            Mode::from_bits_truncate(0o600),
            st.st_rdev,
        )
        .map_err(|e| sys_err(op, "create special file", &rel, e))?;
        let owner = self.owner_for(st);
        let mode = self.mode_for(st, false);
        let (_, mtime) = self.times_for(st);
        set_metadata_at(
            op,
            parent.as_fd(),
            dst_name,
            &rel,
            Some(owner),
            Some(mode),
            Some(mtime),
            false,
        )?;
        self.report.special_files += 1;
        Ok(())
    }

    /// `--chown`'s owner, else the source's (`COPY --from`), else root (the context).
    fn owner_for(&self, st: &FileStat) -> (u32, u32) {
        match (self.owner, self.preserve_owner) {
            (Some(owner), _) => owner,
            (None, true) => (st.st_uid, st.st_gid),
            (None, false) => (0, 0),
        }
    }

    fn mode_for(&self, st: &FileStat, is_dir: bool) -> u32 {
        let mode = st.st_mode & 0o7777;
        self.chmod.map_or(mode, |chmod| chmod.apply(mode, is_dir))
    }

    fn times_for(&self, st: &FileStat) -> (TimeSpec, TimeSpec) {
        match self.mtime {
            Some(time) => (time, time),
            None => (
                TimeSpec::new(st.st_atime, st.st_atime_nsec),
                TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            ),
        }
    }
}

/// A destination path for messages.
fn shown(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// A `SystemTime` as a `timespec` (times before 1970 clamp to the epoch).
pub(crate) fn to_timespec(time: SystemTime) -> TimeSpec {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    TimeSpec::new(
        since.as_secs() as libc::time_t,
        since.subsec_nanos() as libc::c_long,
    )
}

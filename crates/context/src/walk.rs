//! The context walk: every entry under a root that the `.dockerignore` patterns let through, in a
//! deterministic order (names sorted bytewise within each directory, parents before children),
//! with its metadata. Symlinks are reported, never followed.
//!
//! Excluded directories are skipped without being opened unless an exception (`!pattern`) could
//! re-include something inside them ([`IgnorePatterns::may_reinclude_below`]); such a directory is
//! reported only if something inside it is, and a permission error while reading it is ignored —
//! BuildKit's context filter behaves the same, so an unreadable excluded directory never breaks a
//! build.
//!
//! Paths are matched as text: a name that is not UTF-8 is an error only if it is part of the
//! context (excluded ones are skipped).
//!
//! Cost per file: one `statx` relative to the open directory (one name to resolve, not the whole
//! path), and `.dockerignore` matching against only the patterns that can still match below the
//! directory ([`DirMatch`]: parents are never matched again, and a subtree no pattern reaches is
//! not matched at all). Directories are walked in parallel and spliced back in order.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dockerignore::{DirMatch, IgnorePatterns};

/// Why a walk failed.
#[derive(Debug, Error)]
pub enum WalkError {
    /// An I/O error on a path (the path is absolute, as on disk).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`lstat`, `read directory`, `read link`).
        action: &'static str,
        /// The path on disk.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file name that is not UTF-8 (paths are matched as text).
    #[error("file name is not valid UTF-8: {path}")]
    NonUtf8Name {
        /// The path on disk.
        path: PathBuf,
    },
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

impl FileKind {
    /// The kind of a `lstat` result.
    pub fn of(metadata: &Metadata) -> Self {
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            Self::Symlink
        } else if file_type.is_dir() {
            Self::Dir
        } else if file_type.is_fifo() {
            Self::Fifo
        } else if file_type.is_socket() {
            Self::Socket
        } else if file_type.is_char_device() {
            Self::CharDevice
        } else if file_type.is_block_device() {
            Self::BlockDevice
        } else {
            Self::File
        }
    }

    /// A short stable name, used in checksums and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
            Self::CharDevice => "chardev",
            Self::BlockDevice => "blockdev",
        }
    }
}

/// One file system entry found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the walk root, `/`-separated, no leading `./`.
    pub path: String,
    /// File type.
    pub kind: FileKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (meaningful for regular files; symlinks report the target length).
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Symlink target as stored, for symlinks.
    pub link_target: Option<String>,
    /// Device of the file system holding the entry.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// Hard link count.
    pub nlink: u64,
}

impl Entry {
    /// [`Entry::from_metadata`] for the entry `name` of the directory `dir` (the absolute path is
    /// only made for a symlink, whose target must be read).
    fn from_metadata_in(
        path: String,
        dir: &Path,
        name: &std::ffi::OsStr,
        metadata: &Metadata,
    ) -> Result<Self, WalkError> {
        if metadata.file_type().is_symlink() {
            return Self::from_metadata(path, &dir.join(name), metadata);
        }
        Ok(Self::of_metadata(path, metadata, None))
    }

    /// Builds an entry from a `lstat` result, reading the link target of symlinks.
    ///
    /// # Errors
    /// [`WalkError::Io`] when the link target cannot be read, [`WalkError::NonUtf8Name`] when it
    /// is not UTF-8.
    pub fn from_metadata(
        path: String,
        absolute: &Path,
        metadata: &Metadata,
    ) -> Result<Self, WalkError> {
        let kind = FileKind::of(metadata);
        let link_target = if kind == FileKind::Symlink {
            let target = fs::read_link(absolute).map_err(|source| WalkError::Io {
                action: "read link",
                path: absolute.to_owned(),
                source,
            })?;
            Some(
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| WalkError::NonUtf8Name {
                        path: absolute.to_owned(),
                    })?,
            )
        } else {
            None
        };
        Ok(Self::of_metadata(path, metadata, link_target))
    }

    fn of_metadata(path: String, metadata: &Metadata, link_target: Option<String>) -> Self {
        Self {
            path,
            kind: FileKind::of(metadata),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            link_target,
            dev: metadata.dev(),
            ino: metadata.ino(),
            rdev: metadata.rdev(),
            nlink: metadata.nlink(),
        }
    }
}

/// Joins a relative path onto another (`""` is the root).
pub(crate) fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() || base == "." {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

/// `lstat` with the error naming the path.
pub(crate) fn lstat(path: &Path) -> Result<Metadata, WalkError> {
    fs::symlink_metadata(path).map_err(|source| WalkError::Io {
        action: "lstat",
        path: path.to_owned(),
        source,
    })
}

/// Walks the whole context under `root`, applying `.dockerignore` patterns. The root itself is
/// not reported.
///
/// # Errors
/// [`WalkError`] when an entry that is part of the context cannot be read.
pub fn walk_context(root: &Path, ignore: &IgnorePatterns) -> Result<Vec<Entry>, WalkError> {
    let mut entries = Vec::new();
    let filters = [PrefixedFilter {
        patterns: ignore,
        prefix: "",
    }];
    walk_filtered(root, "", &filters, &mut entries)?;
    Ok(entries)
}

/// Walks below the directory `start` (relative to `root`) with several pattern lists (e.g. the
/// `.dockerignore` and `COPY --exclude`); an entry is kept only if no list excludes it. Each
/// filter is a list of patterns and the prefix its paths are relative to. `start` itself is not
/// reported.
///
/// # Errors
/// [`WalkError`] when an entry that is kept cannot be read.
pub(crate) fn walk_filtered(
    root: &Path,
    start: &str,
    filters: &[PrefixedFilter<'_>],
    out: &mut Vec<Entry>,
) -> Result<(), WalkError> {
    let positioned: Vec<FilterAt<'_>> = filters
        .iter()
        .filter_map(|filter| filter.at(start))
        .collect();
    out.extend(walk_dir(root, start, &positioned, false)?);
    Ok(())
}

/// A pattern list whose paths are relative to `prefix` (a directory under the walk root).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefixedFilter<'a> {
    pub patterns: &'a IgnorePatterns,
    pub prefix: &'a str,
}

impl<'a> PrefixedFilter<'a> {
    /// The filter positioned at the directory `start` (root-relative), with the match state of
    /// every directory on the way from its prefix; `None` when it can exclude nothing there (no
    /// patterns, or `start` is not below the prefix).
    fn at(&self, start: &str) -> Option<FilterAt<'a>> {
        if self.patterns.is_empty() {
            return None;
        }
        let (strip, below) = if self.prefix.is_empty() {
            (0, start)
        } else if start == self.prefix {
            (self.prefix.len() + 1, "")
        } else {
            let below = start.strip_prefix(self.prefix)?.strip_prefix('/')?;
            (self.prefix.len() + 1, below)
        };
        let mut state = self.patterns.root_state();
        if !below.is_empty() {
            let ends = below.match_indices('/').map(|(end, _)| end);
            for end in ends.chain(std::iter::once(below.len())) {
                state = self.patterns.enter(&state, &below[..end]);
            }
        }
        Some(FilterAt {
            patterns: self.patterns,
            strip,
            state,
        })
    }
}

/// A filter positioned at one directory of a walk.
struct FilterAt<'a> {
    patterns: &'a IgnorePatterns,
    /// Bytes to drop from a root-relative path to make it relative to the filter's prefix.
    strip: usize,
    /// The match state of the directory being walked.
    state: DirMatch,
}

impl FilterAt<'_> {
    fn excludes(&self, path: &str) -> bool {
        self.patterns.excludes_in(&self.state, &path[self.strip..])
    }

    fn may_reinclude_below(&self, dir: &str) -> bool {
        self.patterns.may_reinclude_below(&dir[self.strip..])
    }

    /// The filter positioned at the subdirectory `dir` (root-relative).
    fn enter(&self, dir: &str) -> Self {
        FilterAt {
            patterns: self.patterns,
            strip: self.strip,
            state: self.patterns.enter(&self.state, &dir[self.strip..]),
        }
    }
}

/// Whether the walk would report anything below the excluded directory `dir` (used to decide if
/// such a directory is part of the filtered context).
///
/// # Errors
/// [`WalkError`] when a re-included entry inside cannot be read.
pub(crate) fn has_visible_descendant(
    root: &Path,
    dir: &str,
    ignore: &IgnorePatterns,
) -> Result<bool, WalkError> {
    let filter = PrefixedFilter {
        patterns: ignore,
        prefix: "",
    };
    let positioned: Vec<FilterAt<'_>> = filter.at(dir).into_iter().collect();
    Ok(!walk_dir(root, dir, &positioned, true)?.is_empty())
}

/// Reads a directory's entries, sorted bytewise by name. Each entry keeps the open directory, so
/// its metadata is read relative to it (one path component to resolve, not the whole path).
fn sorted_entries(dir: &Path) -> io::Result<Vec<(std::ffi::OsString, fs::DirEntry)>> {
    let mut entries = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| (e.file_name(), e)))
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    Ok(entries)
}

/// One entry of a directory as the walk decided it, before the directories below are walked.
enum Step<'a> {
    /// A kept entry with nothing to walk below it.
    Kept(Entry),
    /// A kept directory, to walk with these filters.
    KeptDir(Entry, Vec<FilterAt<'a>>),
    /// An excluded directory to search for re-included entries: reported only if one is found.
    SearchedDir(Entry, Vec<FilterAt<'a>>),
}

/// Walks one directory and everything below it; directories below are walked in parallel (on
/// rayon's pool) and their entries spliced in order. `dir_excluded` says the directory itself is
/// excluded and is only being searched for re-included entries: then permission errors are
/// ignored, as BuildKit does. The first error in walk order is returned.
fn walk_dir(
    root: &Path,
    dir_rel: &str,
    filters: &[FilterAt<'_>],
    dir_excluded: bool,
) -> Result<Vec<Entry>, WalkError> {
    let dir_abs = root.join(dir_rel);
    let entries = match sorted_entries(&dir_abs) {
        Ok(entries) => entries,
        Err(err) if dir_excluded && err.kind() == io::ErrorKind::PermissionDenied => {
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(WalkError::Io {
                action: "read directory",
                path: dir_abs,
                source,
            });
        }
    };
    let mut steps = Vec::with_capacity(entries.len());
    // An error stops the listing here; what comes before it is still walked, so that an error
    // further up in walk order wins, as in a sequential walk.
    let mut failure = None;
    for (name, dir_entry) in entries {
        match decide(&dir_abs, dir_rel, filters, &name, &dir_entry) {
            Ok(Some(step)) => steps.push(step),
            Ok(None) => {}
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // One result per directory step, in order (rayon's collect keeps it).
    let walked: Vec<Result<Vec<Entry>, WalkError>> = steps
        .par_iter()
        .filter_map(|step| match step {
            Step::Kept(_) => None,
            Step::KeptDir(entry, inner) => Some(walk_dir(root, &entry.path, inner, false)),
            Step::SearchedDir(entry, inner) => Some(walk_dir(root, &entry.path, inner, true)),
        })
        .collect();
    let mut walked = walked.into_iter();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        match step {
            Step::Kept(entry) => out.push(entry),
            Step::KeptDir(entry, _) => {
                let below = walked.next().unwrap_or_else(|| Ok(Vec::new()))?;
                out.push(entry);
                out.extend(below);
            }
            Step::SearchedDir(entry, _) => {
                let below = walked.next().unwrap_or_else(|| Ok(Vec::new()))?;
                if !below.is_empty() {
                    out.push(entry);
                    out.extend(below);
                }
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(out),
    }
}

/// What the walk does with the entry `name` of the directory `dir_rel`: keep it, search it (an
/// excluded directory that may hold re-included entries) or skip it (`None`).
fn decide<'a>(
    dir_abs: &Path,
    dir_rel: &str,
    filters: &[FilterAt<'a>],
    name: &std::ffi::OsStr,
    dir_entry: &fs::DirEntry,
) -> Result<Option<Step<'a>>, WalkError> {
    // Patterns are text: a name that is not UTF-8 is matched in its lossy form and is an error
    // only if the entry is kept.
    let utf8 = name.to_str().is_some();
    let rel = join_rel(dir_rel, &name.to_string_lossy());
    let excluded = filters.iter().any(|f| f.excludes(&rel));
    let non_utf8 = || WalkError::NonUtf8Name {
        path: dir_abs.join(name),
    };
    // An excluded entry matters only if it is a directory (something inside may be
    // re-included); the type from the directory listing usually saves its `lstat`.
    if excluded && !dir_entry.file_type().is_ok_and(|t| t.is_dir()) {
        return Ok(None);
    }
    let metadata = match dir_entry.metadata() {
        Ok(metadata) => metadata,
        // Removed while we walk: nothing to report.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) if excluded => return Ok(None),
        Err(source) => {
            return Err(WalkError::Io {
                action: "lstat",
                path: dir_abs.join(name),
                source,
            });
        }
    };
    let is_dir = metadata.file_type().is_dir();
    if !excluded {
        if !utf8 {
            return Err(non_utf8());
        }
        let entry = Entry::from_metadata_in(rel, dir_abs, name, &metadata)?;
        if !is_dir {
            return Ok(Some(Step::Kept(entry)));
        }
        let inner = filters.iter().map(|f| f.enter(&entry.path)).collect();
        return Ok(Some(Step::KeptDir(entry, inner)));
    }
    // Excluded: only a directory that may hold re-included entries is looked into.
    let searchable = filters
        .iter()
        .filter(|f| f.excludes(&rel))
        .all(|f| f.may_reinclude_below(&rel));
    if !is_dir || !searchable {
        return Ok(None);
    }
    if !utf8 {
        return Err(non_utf8());
    }
    let inner = filters.iter().map(|f| f.enter(&rel)).collect();
    let entry = Entry::from_metadata_in(rel, dir_abs, name, &metadata)?;
    Ok(Some(Step::SearchedDir(entry, inner)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn order_is_bytewise_per_directory_parents_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a/b", "B"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        for f in ["a-b", "a/b/z", "a/c", "B/x", "_"] {
            fs::write(dir.path().join(f), f).expect("write");
        }
        let entries = walk_context(dir.path(), &IgnorePatterns::empty()).expect("walk");
        assert_eq!(
            paths(&entries),
            vec!["B", "B/x", "_", "a", "a/b", "a/b/z", "a/c", "a-b"]
        );
    }

    #[test]
    fn symlinks_are_reported_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("secret"), "x").expect("write");
        symlink(outside.path(), dir.path().join("link")).expect("symlink");
        symlink("missing", dir.path().join("dangling")).expect("symlink");
        let entries = walk_context(dir.path(), &IgnorePatterns::empty()).expect("walk");
        assert_eq!(paths(&entries), vec!["dangling", "link"]);
        assert!(entries.iter().all(|e| e.kind == FileKind::Symlink));
        assert_eq!(entries[0].link_target.as_deref(), Some("missing"));
        assert_eq!(entries[1].link_target.as_deref(), outside.path().to_str());
    }

    #[test]
    fn reincluded_file_below_excluded_dir_brings_its_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("sub/deep")).expect("mkdir");
        fs::create_dir_all(dir.path().join("other")).expect("mkdir");
        fs::write(dir.path().join("sub/deep/keep"), "k").expect("write");
        fs::write(dir.path().join("sub/deep/drop"), "d").expect("write");
        fs::write(dir.path().join("other/x"), "x").expect("write");
        let ignore = IgnorePatterns::parse("*\n!sub/deep/keep\n").expect("patterns");
        let entries = walk_context(dir.path(), &ignore).expect("walk");
        assert_eq!(paths(&entries), vec!["sub", "sub/deep", "sub/deep/keep"]);
    }

    #[test]
    fn excluded_dir_without_reinclusion_is_dropped_even_with_wildcard_exception() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("build")).expect("mkdir");
        fs::write(dir.path().join("build/out.o"), "o").expect("write");
        fs::write(dir.path().join("README.md"), "r").expect("write");
        let ignore = IgnorePatterns::parse("*\n!*.md\n").expect("patterns");
        let entries = walk_context(dir.path(), &ignore).expect("walk");
        assert_eq!(paths(&entries), vec!["README.md"]);
    }

    #[test]
    fn non_utf8_names_fail_only_when_kept() {
        use std::ffi::OsStr;
        let dir = tempfile::tempdir().expect("tempdir");
        let odd = OsStr::from_bytes(b"odd\xff.bin");
        fs::write(dir.path().join(odd), "x").expect("write");
        fs::write(dir.path().join("ok"), "x").expect("write");
        let ignore = IgnorePatterns::parse("*.bin\n").expect("patterns");
        let entries = walk_context(dir.path(), &ignore).expect("excluded odd name is skipped");
        assert_eq!(paths(&entries), vec!["ok"]);
        let err = walk_context(dir.path(), &IgnorePatterns::empty()).expect_err("kept odd name");
        assert!(matches!(err, WalkError::NonUtf8Name { .. }), "{err}");
    }

    #[test]
    fn metadata_is_recorded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "hello").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4751)).expect("chmod");
        let entries = walk_context(dir.path(), &IgnorePatterns::empty()).expect("walk");
        let entry = &entries[0];
        assert_eq!(entry.kind, FileKind::File);
        assert_eq!(entry.mode, 0o4751);
        assert_eq!(entry.size, 5);
        assert!(entry.ino != 0 && entry.mtime_ns > 0);
    }

    /// The walk order computed the plain way: sorted names, parents first, one directory at a
    /// time.
    fn sequential_order(root: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<String> = fs::read_dir(root.join(rel))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        for name in names {
            let path = join_rel(rel, &name);
            out.push(path.clone());
            if fs::symlink_metadata(root.join(&path))
                .expect("lstat")
                .is_dir()
            {
                sequential_order(root, &path, out);
            }
        }
    }

    #[test]
    fn directories_walked_in_parallel_come_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        for a in 0..12 {
            for b in 0..(a % 4) {
                let sub = dir.path().join(format!("d{a}/s{b}"));
                fs::create_dir_all(&sub).expect("mkdir");
                for f in 0..5 {
                    fs::write(sub.join(format!("f{f}")), "x").expect("write");
                }
            }
            fs::create_dir_all(dir.path().join(format!("d{a}"))).expect("mkdir");
            fs::write(dir.path().join(format!("d{a}.txt")), "x").expect("write");
        }
        let mut expected = Vec::new();
        sequential_order(dir.path(), "", &mut expected);
        let entries = walk_context(dir.path(), &IgnorePatterns::empty()).expect("walk");
        assert_eq!(paths(&entries), expected);
    }

    #[test]
    fn the_first_error_in_walk_order_is_the_one_reported() {
        use std::ffi::OsStr;
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("a/deep")).expect("mkdir");
        fs::write(
            dir.path().join("a/deep").join(OsStr::from_bytes(b"x\xff")),
            "x",
        )
        .expect("write");
        fs::write(dir.path().join(OsStr::from_bytes(b"z\xff")), "x").expect("write");
        let err = walk_context(dir.path(), &IgnorePatterns::empty()).expect_err("non-UTF-8 names");
        let WalkError::NonUtf8Name { path } = err else {
            panic!("unexpected error {err}");
        };
        assert!(
            path.starts_with(dir.path().join("a/deep")),
            "{}",
            path.display()
        );
    }
}

//! COPY/ADD source selection on any directory root (the build context or another stage's root
//! file system), with Docker/BuildKit's rules:
//!
//! - The source is cleaned as if absolute and made relative to the root, so `../x`, `/x` and
//!   `./x` all name `<root>/x`: nothing can climb out of the root.
//! - Symlinks on the way are resolved *inside* the root (an absolute target restarts at the root,
//!   `..` stops at it); the last component is followed only when asked (COPY follows it).
//! - Wildcards use Go's `filepath.Match` per path component (`*`, `?`, `[...]`, `\` escapes);
//!   matches come back in walk order (sorted by name).
//! - On a build context, entries hidden by `.dockerignore` do not exist. A source that names
//!   nothing is an error that names the source.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dockerignore::IgnorePatterns;
use crate::glob::{self, clean_path, contains_wildcards};
use crate::walk::{self, Entry, FileKind, PrefixedFilter, WalkError, join_rel};

/// Symlink hops allowed while resolving one path (Linux's own limit is 40; Go's is 255).
const MAX_SYMLINK_HOPS: usize = 255;

/// Why a source could not be resolved.
#[derive(Debug, Error)]
pub enum SourceError {
    /// Nothing in the root matches the source.
    #[error("{}", not_found_message(requested, *in_context))]
    NotFound {
        /// The source as written in the instruction.
        requested: String,
        /// Whether the root is a build context (the message then mentions `.dockerignore`).
        in_context: bool,
    },
    /// The wildcard pattern is malformed.
    #[error("invalid source pattern {requested:?}: syntax error in pattern")]
    BadPattern {
        /// The source as written in the instruction.
        requested: String,
    },
    /// Too many symlinks while resolving the source.
    #[error("resolve {requested}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The source as written in the instruction.
        requested: String,
    },
    /// An I/O error while resolving.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path on disk.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Walking a directory to check what `.dockerignore` leaves visible failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
}

fn not_found_message(requested: &str, in_context: bool) -> String {
    let stat = format!("stat {requested}: file does not exist");
    if in_context {
        format!("file not found in build context or excluded by .dockerignore: {stat}")
    } else {
        stat
    }
}

/// How to resolve sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceOptions<'a> {
    /// The `.dockerignore` patterns when the root is a build context (`None` for a stage root).
    pub ignore: Option<&'a IgnorePatterns>,
    /// Follow a symlink named by the source itself (COPY/ADD do; parents are always resolved).
    pub follow_symlinks: bool,
    /// Expand wildcards (COPY/ADD do).
    pub allow_wildcards: bool,
}

/// One selected source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The root-relative path as named (the wildcard match, before following symlinks);
    /// `""` is the root itself.
    pub requested: String,
    /// The root-relative location of the data after resolving symlinks; `""` is the root.
    pub path: String,
    /// The type of what `path` names (a symlink only when it was not followed).
    pub kind: FileKind,
}

/// Resolves one COPY/ADD source against `root`.
///
/// # Errors
/// [`SourceError::NotFound`] when nothing matches (naming `source`), [`SourceError::BadPattern`]
/// for a malformed wildcard, [`SourceError::SymlinkLoop`], or I/O errors.
pub fn resolve_sources(
    root: &Path,
    source: &str,
    options: &SourceOptions<'_>,
) -> Result<Vec<ResolvedSource>, SourceError> {
    let cleaned = clean_path(&format!("/{source}"));
    let relative = cleaned.trim_start_matches('/');
    let components: Vec<&str> = relative.split('/').filter(|c| !c.is_empty()).collect();
    let not_found = || SourceError::NotFound {
        requested: source.to_owned(),
        in_context: options.ignore.is_some(),
    };
    let first_wildcard = if options.allow_wildcards {
        components.iter().position(|c| contains_wildcards(c))
    } else {
        None
    };
    let candidates: Vec<String> = match first_wildcard {
        None => vec![components.join("/")],
        Some(index) => {
            let base = resolve_in_root(root, &components[..index].join("/"), true, source)?;
            let matches = expand_wildcards(root, &base, &components[index..], source)?;
            if matches.is_empty() {
                return Err(not_found());
            }
            matches
        }
    };
    let mut resolved = Vec::with_capacity(candidates.len());
    for requested in candidates {
        let path = resolve_in_root(root, &requested, options.follow_symlinks, source)?;
        let metadata = match fs::symlink_metadata(root.join(&path)) {
            Ok(metadata) => metadata,
            Err(err)
                if err.kind() == io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Err(not_found());
            }
            Err(source) => {
                return Err(SourceError::Io {
                    action: "lstat",
                    path: root.join(&path),
                    source,
                });
            }
        };
        let kind = FileKind::of(&metadata);
        if let Some(ignore) = options.ignore {
            // Both the name used and the data it leads to must be part of the context.
            let requested_is_dir = requested == path && kind == FileKind::Dir;
            if !is_visible(root, &requested, requested_is_dir, ignore)?
                || !is_visible(root, &path, kind == FileKind::Dir, ignore)?
            {
                // A wildcard simply does not match hidden entries; a literal source is missing.
                if first_wildcard.is_some() {
                    continue;
                }
                return Err(not_found());
            }
        }
        resolved.push(ResolvedSource {
            requested,
            path,
            kind,
        });
    }
    if resolved.is_empty() {
        return Err(not_found());
    }
    Ok(resolved)
}

/// The entries one source brings along: the source itself first (`.` for the root), then, for a
/// directory, everything below it in walk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedSource {
    /// The resolved source.
    pub source: ResolvedSource,
    /// Its entries, paths relative to the root.
    pub entries: Vec<Entry>,
}

/// Lists exactly the entries a COPY/ADD of `sources` reads — the set [`crate::checksum()`] hashes
/// and the copy must write: a directory source with everything below it that neither the
/// `.dockerignore` (`ignore`) nor the `COPY --exclude` patterns (`excludes`) hide. Excludes are
/// matched against the path as it lands in the destination: relative to a directory source, or
/// the file name of a file source (an excluded file source selects nothing).
///
/// # Errors
/// [`SourceError::Walk`] when an entry cannot be read.
pub fn select_entries(
    root: &Path,
    sources: &[ResolvedSource],
    ignore: Option<&IgnorePatterns>,
    excludes: &IgnorePatterns,
) -> Result<Vec<SelectedSource>, SourceError> {
    let empty = IgnorePatterns::empty();
    let ignore = ignore.unwrap_or(&empty);
    let mut selection = Vec::with_capacity(sources.len());
    for source in sources {
        let absolute = root.join(&source.path);
        let metadata = walk::lstat(&absolute)?;
        let label = if source.path.is_empty() {
            ".".to_owned()
        } else {
            source.path.clone()
        };
        let entry = Entry::from_metadata(label, &absolute, &metadata)?;
        let mut entries = Vec::new();
        if entry.kind == FileKind::Dir {
            entries.push(entry);
            let filters = [
                PrefixedFilter {
                    patterns: ignore,
                    prefix: "",
                },
                PrefixedFilter {
                    patterns: excludes,
                    prefix: &source.path,
                },
            ];
            walk::walk_filtered(root, &source.path, &filters, &mut entries)?;
        } else {
            let name = source.path.rsplit('/').next().unwrap_or(&source.path);
            if !excludes.matches(name) {
                entries.push(entry);
            }
        }
        selection.push(SelectedSource {
            source: source.clone(),
            entries,
        });
    }
    Ok(selection)
}

/// Whether a root-relative path is part of the filtered context: not excluded, or an excluded
/// directory that the context walk still reports because something inside is re-included.
fn is_visible(
    root: &Path,
    path: &str,
    is_dir: bool,
    ignore: &IgnorePatterns,
) -> Result<bool, WalkError> {
    if path.is_empty() || !ignore.matches(path) {
        return Ok(true);
    }
    if !is_dir || !ignore.may_reinclude_below(path) {
        return Ok(false);
    }
    walk::has_visible_descendant(root, path, ignore)
}

/// Matches the wildcard components one at a time below `base` (root-relative, resolved).
/// Intermediate components only descend into real directories (symlinks are not followed).
fn expand_wildcards(
    root: &Path,
    base: &str,
    components: &[&str],
    requested: &str,
) -> Result<Vec<String>, SourceError> {
    let mut current = vec![base.to_owned()];
    for (index, component) in components.iter().enumerate() {
        let last = index + 1 == components.len();
        let mut next = Vec::new();
        for dir in &current {
            let dir_abs = root.join(dir);
            if !fs::symlink_metadata(&dir_abs).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let mut names: Vec<String> = fs::read_dir(&dir_abs)
                .map_err(|source| SourceError::Io {
                    action: "read directory",
                    path: dir_abs.clone(),
                    source,
                })?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            for name in names {
                let matched = if contains_wildcards(component) {
                    glob::go_match(component, &name).map_err(|_| SourceError::BadPattern {
                        requested: requested.to_owned(),
                    })?
                } else {
                    glob::go_match(component, &name).unwrap_or(false)
                };
                if !matched {
                    continue;
                }
                let path = join_rel(dir, &name);
                if last || fs::symlink_metadata(root.join(&path)).is_ok_and(|m| m.is_dir()) {
                    next.push(path);
                }
            }
        }
        current = next;
    }
    Ok(current)
}

/// Resolves `path` (root-relative) inside `root`, following symlinks as if `root` were `/`:
/// an absolute target restarts at the root and `..` never leaves it. The last component is
/// followed only when `follow_last` is set. Components after a missing one are kept as
/// written, so the caller's `lstat` reports the miss.
///
/// # Errors
/// [`SourceError::SymlinkLoop`] after too many hops; I/O errors reading a link.
pub fn resolve_in_root(
    root: &Path,
    path: &str,
    follow_last: bool,
    requested: &str,
) -> Result<String, SourceError> {
    let mut pending: VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        match component.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let is_last = pending.is_empty();
        resolved.push(component);
        if is_last && !follow_last {
            break;
        }
        let absolute = root.join(resolved.join("/"));
        let metadata = match fs::symlink_metadata(&absolute) {
            Ok(metadata) => metadata,
            // Missing or not a directory: keep the rest as written; the caller reports it.
            Err(_) => {
                resolved.extend(pending.drain(..));
                break;
            }
        };
        if !metadata.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Err(SourceError::SymlinkLoop {
                requested: requested.to_owned(),
            });
        }
        let target = fs::read_link(&absolute).map_err(|source| SourceError::Io {
            action: "read link",
            path: absolute.clone(),
            source,
        })?;
        let target = target.to_string_lossy().into_owned();
        resolved.pop();
        if target.starts_with('/') {
            resolved.clear();
        }
        for part in target.split('/').filter(|c| !c.is_empty()).rev() {
            pending.push_front(part.to_owned());
        }
    }
    Ok(resolved.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).expect("mkdir");
        fs::create_dir_all(root.join("docs")).expect("mkdir");
        for f in [
            "src/a.rs",
            "src/b.rs",
            "src/c.txt",
            "src/sub/d.rs",
            "docs/x.md",
            "hom1",
            "home.txt",
        ] {
            fs::write(root.join(f), f).expect("write");
        }
        dir
    }

    fn options(ignore: Option<&IgnorePatterns>) -> SourceOptions<'_> {
        SourceOptions {
            ignore,
            follow_symlinks: true,
            allow_wildcards: true,
        }
    }

    fn requested(found: &[ResolvedSource]) -> Vec<&str> {
        found.iter().map(|s| s.requested.as_str()).collect()
    }

    #[test]
    fn wildcards_match_per_component() {
        let dir = tree();
        let found = resolve_sources(dir.path(), "src/*.rs", &options(None)).expect("resolve");
        assert_eq!(requested(&found), vec!["src/a.rs", "src/b.rs"]);
        let found = resolve_sources(dir.path(), "*/*.md", &options(None)).expect("resolve");
        assert_eq!(requested(&found), vec!["docs/x.md"]);
        let found = resolve_sources(dir.path(), "hom?", &options(None)).expect("resolve");
        assert_eq!(requested(&found), vec!["hom1"]);
        let found = resolve_sources(dir.path(), "s[q-s]c", &options(None)).expect("resolve");
        assert_eq!(found[0].kind, FileKind::Dir);
    }

    #[test]
    fn literal_source_and_root() {
        let dir = tree();
        let found = resolve_sources(dir.path(), "./src/", &options(None)).expect("resolve");
        assert_eq!(requested(&found), vec!["src"]);
        let found = resolve_sources(dir.path(), ".", &options(None)).expect("resolve");
        assert_eq!(found[0].path, "");
        assert_eq!(found[0].kind, FileKind::Dir);
    }

    #[test]
    fn sources_are_confined_to_the_root() {
        let dir = tree();
        let found = resolve_sources(dir.path(), "../../src/a.rs", &options(None)).expect("resolve");
        assert_eq!(found[0].path, "src/a.rs");
        let found = resolve_sources(dir.path(), "/docs/x.md", &options(None)).expect("resolve");
        assert_eq!(found[0].path, "docs/x.md");
        // Symlinks pointing outside land inside the root.
        symlink("/src", dir.path().join("abs")).expect("symlink");
        symlink("../../../docs", dir.path().join("src/up")).expect("symlink");
        let found = resolve_sources(dir.path(), "abs/a.rs", &options(None)).expect("resolve");
        assert_eq!(found[0].path, "src/a.rs");
        let found = resolve_sources(dir.path(), "src/up/x.md", &options(None)).expect("resolve");
        assert_eq!(found[0].path, "docs/x.md");
        // /etc/passwd through a link resolves to <root>/etc/passwd, which does not exist.
        symlink("/etc/passwd", dir.path().join("passwd")).expect("symlink");
        let err = resolve_sources(dir.path(), "passwd", &options(None)).expect_err("confined");
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
    }

    #[test]
    fn final_symlink_followed_only_when_asked() {
        let dir = tree();
        symlink("src", dir.path().join("link")).expect("symlink");
        let found = resolve_sources(dir.path(), "link", &options(None)).expect("resolve");
        assert_eq!(
            (found[0].path.as_str(), found[0].kind),
            ("src", FileKind::Dir)
        );
        let no_follow = SourceOptions {
            follow_symlinks: false,
            ..options(None)
        };
        let found = resolve_sources(dir.path(), "link", &no_follow).expect("resolve");
        assert_eq!(
            (found[0].path.as_str(), found[0].kind),
            ("link", FileKind::Symlink)
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let dir = tree();
        symlink("b", dir.path().join("a")).expect("symlink");
        symlink("a", dir.path().join("b")).expect("symlink");
        let err = resolve_sources(dir.path(), "a", &options(None)).expect_err("loop");
        assert!(matches!(err, SourceError::SymlinkLoop { .. }), "{err}");
    }

    #[test]
    fn missing_source_names_itself() {
        let dir = tree();
        let ignore = IgnorePatterns::empty();
        let err =
            resolve_sources(dir.path(), "nope.txt", &options(Some(&ignore))).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "file not found in build context or excluded by .dockerignore: stat nope.txt: file does not exist"
        );
        let err = resolve_sources(dir.path(), "*.none", &options(None)).expect_err("no match");
        assert_eq!(err.to_string(), "stat *.none: file does not exist");
    }

    #[test]
    fn ignored_sources_do_not_exist() {
        let dir = tree();
        let ignore = IgnorePatterns::parse("src\n!src/sub/d.rs\n*.txt\n").expect("patterns");
        let err =
            resolve_sources(dir.path(), "home.txt", &options(Some(&ignore))).expect_err("ignored");
        assert!(matches!(
            err,
            SourceError::NotFound {
                in_context: true,
                ..
            }
        ));
        let err =
            resolve_sources(dir.path(), "src/a.rs", &options(Some(&ignore))).expect_err("ignored");
        assert!(matches!(err, SourceError::NotFound { .. }));
        // An excluded dir still holding a re-included file is visible.
        let found =
            resolve_sources(dir.path(), "src/sub", &options(Some(&ignore))).expect("visible");
        assert_eq!(found[0].kind, FileKind::Dir);
        let found = resolve_sources(dir.path(), "hom*", &options(Some(&ignore))).expect("resolve");
        assert_eq!(requested(&found), vec!["hom1"]);
    }

    #[test]
    fn bad_wildcard_is_reported() {
        let dir = tree();
        let err = resolve_sources(dir.path(), "src/[a-", &options(None)).expect_err("bad");
        assert!(matches!(err, SourceError::BadPattern { .. }), "{err}");
    }
}

//! Source ops: `scratch` (an empty chain), images (from the store, pulled when missing, layers
//! extracted into `layers/`), local directories (the build context with `.dockerignore` applied),
//! and remote files and repositories (`ADD <url>`: see [`super::http`] and [`super::git`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_context::IgnorePatterns;
use kiln_fileop::CopyOptions;
use kiln_llb::SourceOp;
use kiln_store::Store;

use crate::error::OpError;
use crate::image::resolve_image;
use crate::layers::ensure_extracted;
use crate::ops::OpContext;
use crate::ops::mounts::{link_entries, set_mtime_no_follow};
use crate::result::{LocalDir, OpOutput};
use crate::scratch::ScratchDir;

/// A local directory the caller provides for a Local source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSource {
    pub dir: PathBuf,
    /// `.dockerignore` patterns (Docker's syntax, `!` exceptions included), relative to `dir`.
    pub excludes: Vec<String>,
}

pub(crate) fn run_source(cx: &OpContext<'_>, source: &SourceOp) -> Result<OpOutput, OpError> {
    match source {
        SourceOp::Scratch => Ok(OpOutput::Chain(Vec::new())),
        SourceOp::Image {
            reference,
            platform,
        } => {
            let platform = platform.clone().unwrap_or_else(host_platform);
            let manifest = resolve_image(cx.store, reference, &platform, cx.puller)?;
            Ok(OpOutput::Chain(ensure_extracted(
                cx.store,
                &manifest.layers,
            )?))
        }
        SourceOp::Local {
            name,
            include_patterns,
            exclude_patterns,
            ..
        } => {
            if !include_patterns.is_empty() {
                return Err(OpError::Unsupported(
                    "a local source with include patterns".into(),
                ));
            }
            let local = cx
                .locals
                .get(name)
                .ok_or_else(|| OpError::MissingLocal(name.clone()))?;
            let mut excludes = local.excludes.clone();
            excludes.extend(exclude_patterns.iter().cloned());
            stage_local(cx, name, &local.dir, &excludes)
        }
        SourceOp::Http {
            url,
            checksum,
            filename,
        } => crate::ops::http::run_http(cx, url, checksum.as_deref(), filename.as_deref()),
        SourceOp::Git {
            url,
            reference,
            subdir,
            keep_git_dir,
        } => crate::ops::git::run_git(
            cx,
            &crate::ops::git::GitSpec {
                url,
                reference: reference.as_deref(),
                subdir: subdir.as_deref(),
                keep_git_dir: *keep_git_dir,
            },
        ),
    }
}

fn host_platform() -> kiln_llb::Platform {
    let host = kiln_image::Platform::host();
    kiln_llb::Platform {
        os: host.os,
        architecture: host.architecture,
        variant: host.variant,
    }
}

/// The local directory a Local source yields. Without exclude patterns it is the user's directory.
/// With them it is still the user's directory, read in place, plus a [`ContextIgnore`]: a COPY
/// applies the patterns while it walks (see [`ContextIgnore::can_read_in_place`]), and whatever
/// needs a plain directory without the ignored entries (a bind mount, a cache seed, a COPY the
/// in-place read cannot serve) gets a staged copy, made once on first use.
fn stage_local(
    cx: &OpContext<'_>,
    name: &str,
    dir: &std::path::Path,
    excludes: &[String],
) -> Result<OpOutput, OpError> {
    let meta = std::fs::metadata(dir).map_err(OpError::io("open the build context", dir))?;
    if !meta.is_dir() {
        return Err(OpError::Io {
            action: "use the build context",
            path: dir.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let ignore = if excludes.is_empty() {
        None
    } else {
        let patterns = IgnorePatterns::compile(excludes).map_err(|e| OpError::Io {
            action: "compile the ignore patterns of",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Some(Arc::new(ContextIgnore {
            excludes: excludes.to_vec(),
            patterns,
            store: cx.store.clone(),
            staged: Mutex::new(None),
        }))
    };
    Ok(OpOutput::Local(LocalDir {
        name: name.to_string(),
        path: dir.to_path_buf(),
        _staged: None,
        content_identity: None,
        ignore,
    }))
}

/// The ignore patterns of a context read in place, and its staged copy once one was needed.
#[derive(Debug)]
pub struct ContextIgnore {
    /// The patterns (`.dockerignore` and the source's excludes), relative to the context root.
    pub(crate) excludes: Vec<String>,
    patterns: IgnorePatterns,
    store: Store,
    /// The staged directory and the scratch dir that holds it (removed with the last clone).
    staged: Mutex<Option<(PathBuf, Arc<ScratchDir>)>>,
}

impl ContextIgnore {
    /// Whether a COPY with `options` can read `dir` in place, applying the patterns as it walks,
    /// and select exactly what it would from the staged copy. True when every source is a plain
    /// path (no wildcard, no `--parents` pivot, no `..`) that exists, is not ignored, and has no
    /// symlink on the way (resolving one in the staged copy can land on a missing, ignored
    /// entry). Anything else is read from the staged copy.
    pub(crate) fn can_read_in_place(&self, dir: &Path, options: &CopyOptions) -> bool {
        if options.parents {
            return false;
        }
        options.sources.iter().all(|source| {
            let mut rel = String::new();
            for component in source.split('/').filter(|c| !c.is_empty() && *c != ".") {
                if component == ".."
                    || (options.allow_wildcard && kiln_fileop::has_wildcards(component))
                {
                    return false;
                }
                if !rel.is_empty() {
                    rel.push('/');
                }
                rel.push_str(component);
                match std::fs::symlink_metadata(dir.join(&rel)) {
                    Ok(meta) if !meta.file_type().is_symlink() => {}
                    _ => return false,
                }
            }
            rel.is_empty() || !self.patterns.matches(&rel)
        })
    }

    /// The selected entries of `dir` as a plain directory: staged on the first call (hard links
    /// where possible, a copy otherwise), the same directory after.
    ///
    /// # Errors
    /// The scratch dir cannot be created or the context cannot be read or copied.
    pub(crate) fn staged(&self, dir: &Path) -> Result<PathBuf, OpError> {
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((path, _)) = staged.as_ref() {
            return Ok(path.clone());
        }
        let (path, scratch) = stage_excluding(&self.store, dir, &self.excludes)?;
        *staged = Some((path.clone(), Arc::new(scratch)));
        Ok(path)
    }
}

/// Stages the entries of `dir` the patterns select in a scratch dir (what BuildKit's context
/// transfer does). Staging hard-links files (cheap, and their metadata is the original's); where
/// that is impossible (another filesystem, special files, names that are not UTF-8) the context is
/// copied instead.
fn stage_excluding(
    store: &Store,
    dir: &Path,
    excludes: &[String],
) -> Result<(PathBuf, ScratchDir), OpError> {
    let scratch = ScratchDir::new(store, "context")
        .map_err(OpError::io("create a scratch dir in", store.scratch_dir()))?;
    let staged = scratch.path().join("context");
    match link_farm(dir, &staged, excludes) {
        Ok(()) => return Ok((staged, scratch)),
        Err(reason) => {
            tracing::debug!(%reason, "hard-linking the context failed; copying it");
            if staged.exists() {
                std::fs::remove_dir_all(&staged).map_err(OpError::io("clear", &staged))?;
            }
        }
    }
    std::fs::create_dir_all(&staged).map_err(OpError::io("create", &staged))?;
    let mut options = CopyOptions::new(vec!["/".to_string()], "/");
    options.op = "load build context".to_string();
    options.excludes = excludes.to_vec();
    options.preserve_owner = true;
    kiln_fileop::copy(dir, &staged, &options)?;
    Ok((staged, scratch))
}

/// Recreates the entries of `src` not excluded by `excludes` under `dest`: directories and symlinks
/// anew with the source's metadata, regular files as hard links. Fails (and the caller copies
/// instead) on anything it cannot reproduce exactly.
fn link_farm(src: &Path, dest: &Path, excludes: &[String]) -> Result<(), String> {
    use kiln_context::FileKind;
    use std::os::unix::fs::MetadataExt;

    let patterns = kiln_context::IgnorePatterns::compile(excludes).map_err(|e| e.to_string())?;
    let entries = kiln_context::walk_context(src, &patterns).map_err(|e| e.to_string())?;
    let root_meta = std::fs::metadata(src).map_err(|e| e.to_string())?;
    std::fs::create_dir(dest).map_err(|e| e.to_string())?;
    // A file re-included under an excluded directory comes without its parent's entry.
    for entry in &entries {
        let to = dest.join(&entry.path);
        if entry.kind != FileKind::Dir
            && let Some(parent) = to.parent()
        {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    link_entries(
        src,
        entries
            .into_iter()
            .map(|entry| (dest.join(&entry.path), entry)),
    )?;
    let fail = |e: std::io::Error| format!("{}: {e}", dest.display());
    std::fs::set_permissions(dest, root_meta.permissions()).map_err(fail)?;
    set_mtime_no_follow(
        dest,
        root_meta.mtime() * 1_000_000_000 + root_meta.mtime_nsec(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context_with_ignore(excludes: &[&str]) -> (tempfile::TempDir, ContextIgnore) {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "app/main.rs",
            "app/debug.log",
            "app/logs/keep.log",
            "notes.txt",
        ] {
            let path = dir.path().join("ctx").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        std::os::unix::fs::symlink("app", dir.path().join("ctx/link")).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let excludes: Vec<String> = excludes.iter().map(|e| e.to_string()).collect();
        let ignore = ContextIgnore {
            patterns: IgnorePatterns::compile(&excludes).unwrap(),
            excludes,
            store,
            staged: Mutex::new(None),
        };
        (dir, ignore)
    }

    #[test]
    fn only_plain_existing_unignored_paths_are_read_in_place() {
        let (dir, ignore) = context_with_ignore(&["**/*.log", "!app/logs/keep.log"]);
        let ctx = dir.path().join("ctx");
        let copy = |source: &str| CopyOptions::new(vec![source.to_string()], "/");
        assert!(ignore.can_read_in_place(&ctx, &copy("/")));
        assert!(ignore.can_read_in_place(&ctx, &copy("app/")));
        assert!(ignore.can_read_in_place(&ctx, &copy("./app/logs/keep.log")));
        assert!(!ignore.can_read_in_place(&ctx, &copy("app/debug.log")));
        assert!(!ignore.can_read_in_place(&ctx, &copy("app/*.rs")));
        assert!(!ignore.can_read_in_place(&ctx, &copy("link/main.rs")));
        assert!(!ignore.can_read_in_place(&ctx, &copy("missing")));
        assert!(!ignore.can_read_in_place(&ctx, &copy("app/../notes.txt")));
        let mut parents = copy("app/");
        parents.parents = true;
        assert!(!ignore.can_read_in_place(&ctx, &parents));
    }

    #[test]
    fn the_staged_copy_is_made_once_without_ignored_entries() {
        let (dir, ignore) = context_with_ignore(&["**/*.log", "!app/logs/keep.log"]);
        let ctx = dir.path().join("ctx");
        let staged = ignore.staged(&ctx).unwrap();
        assert!(staged.join("app/main.rs").is_file());
        assert!(staged.join("app/logs/keep.log").is_file());
        assert!(!staged.join("app/debug.log").exists());
        assert_eq!(ignore.staged(&ctx).unwrap(), staged);
        drop(ignore);
        assert!(
            !staged.exists(),
            "the scratch dir goes with the last reference"
        );
    }
}

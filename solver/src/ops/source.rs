//! Source ops: `scratch` (an empty chain), images (from the store, pulled when missing, layers
//! extracted into `layers/`), local directories (the build context with `.dockerignore` applied),
//! and remote files and repositories (`ADD <url>`: see [`super::http`] and [`super::git`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_fileop::CopyOptions;
use kiln_llb::SourceOp;

use crate::error::OpError;
use crate::image::resolve_image;
use crate::layers::ensure_extracted;
use crate::ops::OpContext;
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

/// The directory COPY reads for a local source. With exclude patterns, the selected entries are first
/// staged in a scratch dir (what BuildKit's context transfer does), so every later COPY sees the
/// context exactly as `.dockerignore` leaves it, whatever paths it names. Staging hard-links files
/// (cheap, and their metadata is the original's); where that is impossible (another filesystem,
/// special files, names that are not UTF-8) the context is copied instead.
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
    if excludes.is_empty() {
        return Ok(OpOutput::Local(LocalDir {
            name: name.to_string(),
            path: dir.to_path_buf(),
            _staged: None,
            content_identity: None,
        }));
    }
    let scratch = ScratchDir::new(cx.store, "context").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let staged = scratch.path().join("context");
    match link_farm(dir, &staged, excludes) {
        Ok(()) => {
            return Ok(OpOutput::Local(LocalDir {
                name: name.to_string(),
                path: staged,
                _staged: Some(Arc::new(scratch)),
                content_identity: None,
            }));
        }
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
    Ok(OpOutput::Local(LocalDir {
        name: name.to_string(),
        path: staged,
        _staged: Some(Arc::new(scratch)),
        content_identity: None,
    }))
}

/// Recreates the entries of `src` not excluded by `excludes` under `dest`: directories and symlinks
/// anew with the source's metadata, regular files as hard links. Fails (and the caller copies
/// instead) on anything it cannot reproduce exactly.
fn link_farm(src: &Path, dest: &Path, excludes: &[String]) -> Result<(), String> {
    use kiln_context::FileKind;
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};

    let patterns = kiln_context::IgnorePatterns::compile(excludes).map_err(|e| e.to_string())?;
    let entries = kiln_context::walk_context(src, &patterns).map_err(|e| e.to_string())?;
    let root_meta = std::fs::metadata(src).map_err(|e| e.to_string())?;
    std::fs::create_dir(dest).map_err(|e| e.to_string())?;
    let set_times = |path: &Path, mtime_ns: i64| {
        let time = TimeSpec::new(
            mtime_ns.div_euclid(1_000_000_000),
            mtime_ns.rem_euclid(1_000_000_000),
        );
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut dirs = Vec::new();
    for entry in &entries {
        let from = src.join(&entry.path);
        let to = dest.join(&entry.path);
        let fail = |e: std::io::Error| format!("{}: {e}", to.display());
        if entry.kind != FileKind::Dir
            && let Some(parent) = to.parent()
        {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        match entry.kind {
            FileKind::Dir => {
                std::fs::create_dir_all(&to).map_err(fail)?;
                dirs.push(entry);
            }
            FileKind::File => std::fs::hard_link(&from, &to).map_err(fail)?,
            FileKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or_default();
                symlink(target, &to).map_err(fail)?;
                lchown(&to, Some(entry.uid), Some(entry.gid)).map_err(fail)?;
                set_times(&to, entry.mtime_ns)?;
            }
            other => return Err(format!("{} is a {}", entry.path, other.as_str())),
        }
    }
    // Directory metadata last, deepest first: creating children changes a directory's mtime.
    for entry in dirs.iter().rev() {
        let to = dest.join(&entry.path);
        let fail = |e: std::io::Error| format!("{}: {e}", to.display());
        lchown(&to, Some(entry.uid), Some(entry.gid)).map_err(fail)?;
        std::fs::set_permissions(&to, PermissionsExt::from_mode(entry.mode)).map_err(fail)?;
        set_times(&to, entry.mtime_ns)?;
    }
    let fail = |e: std::io::Error| format!("{}: {e}", dest.display());
    std::fs::set_permissions(dest, root_meta.permissions()).map_err(fail)?;
    set_times(
        dest,
        root_meta.mtime() * 1_000_000_000 + root_meta.mtime_nsec(),
    )?;
    Ok(())
}

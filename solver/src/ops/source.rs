//! Source ops: `scratch` (an empty chain), images (from the store, pulled when missing, layers
//! extracted into `layers/`), and local directories (the build context with `.dockerignore` applied).

use std::path::PathBuf;
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
        SourceOp::Http { .. } => Err(OpError::Unsupported("ADD from a URL".into())),
        SourceOp::Git { .. } => Err(OpError::Unsupported("ADD from a Git repository".into())),
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

/// The directory COPY reads for a local source. With exclude patterns, the selected files are first
/// copied into a scratch dir (what BuildKit's context transfer does), so every later COPY sees the
/// context exactly as `.dockerignore` leaves it, whatever paths it names.
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
        }));
    }
    let scratch = ScratchDir::new(cx.store, "context").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let staged = scratch.path().join("context");
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
    }))
}

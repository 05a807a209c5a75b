//! What an op produces: a layer chain (bottom first) or a local directory (a build context).

use std::path::PathBuf;
use std::sync::Arc;

use kiln_image::Digest;

use crate::error::OpError;
use crate::ops::ContextIgnore;
use crate::scratch::ScratchDir;

/// One committed layer of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// sha256 of the uncompressed layer tar.
    pub diff_id: Digest,
    /// The chain id of this layer on top of the layers below it in its chain.
    pub chain_id: Digest,
    /// The extracted layer, in overlay lower-dir form.
    pub dir: PathBuf,
    /// The compressed blob in the store.
    pub blob_digest: Digest,
    /// The blob's media type (as recorded; an exporter may restate it in another media type family).
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// A local directory: a build context (its `.dockerignore` applied by whoever reads it), a
/// download, or a Git checkout.
#[derive(Debug, Clone)]
pub struct LocalDir {
    /// The name of the Local source (`context`, or a named context).
    pub name: String,
    /// The directory to copy from. For a context with ignore patterns this is the user's
    /// directory, ignored entries included: readers go through `selected_dir` or apply the
    /// patterns themselves.
    pub path: PathBuf,
    /// Keeps a staged copy alive while results refer to it (`None` when `path` is the user's dir).
    pub(crate) _staged: Option<Arc<ScratchDir>>,
    /// For a directory whose whole content the op fixed (a download: its digest, name and mtime;
    /// a Git checkout: its commit): how it enters the keys of the ops reading it. `None` for a
    /// build context, which is keyed per COPY by the checksums of the paths it selects.
    pub content_identity: Option<String>,
    /// For a build context with ignore patterns: `path` is the user's directory, read in place by
    /// a COPY that applies the patterns, or staged without the ignored entries on demand.
    pub(crate) ignore: Option<Arc<ContextIgnore>>,
}

impl LocalDir {
    /// The directory with only the selected entries, as a plain directory: `path` itself, or
    /// (for a context with ignore patterns) its staged copy, made on first use.
    ///
    /// # Errors
    /// Staging failed.
    pub(crate) fn selected_dir(&self) -> Result<PathBuf, OpError> {
        match &self.ignore {
            None => Ok(self.path.clone()),
            Some(ignore) => ignore.staged(&self.path),
        }
    }
}

/// The result of one op output.
#[derive(Debug, Clone)]
pub enum OpOutput {
    /// A root filesystem as layers, bottom first (empty for `scratch`).
    Chain(Vec<Layer>),
    /// A local directory.
    Local(LocalDir),
}

impl OpOutput {
    /// The layer chain, or `None` for a local directory.
    pub fn chain(&self) -> Option<&[Layer]> {
        match self {
            OpOutput::Chain(layers) => Some(layers),
            OpOutput::Local(_) => None,
        }
    }
}

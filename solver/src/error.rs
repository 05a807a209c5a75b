//! Errors: [`SolveError`] names the failing step (its description and Dockerfile location) and keeps
//! the cause ([`OpError`]) as its source, so the CLI prints "Dockerfile:3: [2/3] COPY a /b" and then
//! why.

use std::path::PathBuf;

use kiln_image::Digest;
use kiln_llb::SourceLocation;

use crate::image::ImageError;

/// A step of the build failed.
#[derive(Debug, thiserror::Error)]
#[error("{}{description}", location_prefix(.location))]
pub struct SolveError {
    /// The op's description, or its kind and short digest when it has none.
    pub description: String,
    /// Where the step comes from in the Dockerfile, when known.
    pub location: Option<SourceLocation>,
    /// Boxed: the step's cause is large and errors travel through every `Result` of a solve.
    #[source]
    pub kind: Box<OpError>,
}

fn location_prefix(location: &Option<SourceLocation>) -> String {
    match location {
        Some(location) if location.start_line > 0 => {
            format!("{}:{}: ", location.file, location.start_line)
        }
        _ => String::new(),
    }
}

/// Why an op failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    FileOp(#[from] kiln_fileop::FileOpError),
    #[error(transparent)]
    Snapshot(#[from] kiln_executor::SnapshotError),
    #[error(transparent)]
    Sandbox(#[from] kiln_executor::SandboxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("writing the layer: {0}")]
    Compress(#[from] kiln_oci::compress::CompressError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {}: {source}", path.display())]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// Boxed: a mount error carries paths and a file-op cause and would bloat every `Result`.
    #[error(transparent)]
    RunMount(#[from] Box<crate::ops::mounts::RunMountError>),
    #[error("the mount thread panicked")]
    MountThreadPanicked,
    #[error("process {command:?} did not complete successfully: {status}{}", format_tail(.tail))]
    ExecFailed {
        command: String,
        status: kiln_executor::ExitStatus,
        /// The last lines of the process's output.
        tail: Vec<String>,
    },
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("no local directory was given for the build context {0:?}")]
    MissingLocal(String),
    #[error("input {index} of the op is {found}, but {expected} is needed")]
    BadInput {
        index: u32,
        found: &'static str,
        expected: &'static str,
    },
    #[error("input {0} of the op was not computed (a solver bug)")]
    MissingInput(String),
    #[error("layer blob {blob} unpacked to diff id {actual}, but the manifest says {expected}")]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
}

fn format_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nlast lines of output:");
    for line in tail {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

impl OpError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> OpError {
        let path = path.into();
        move |source| OpError::Io {
            action,
            path,
            source,
        }
    }
}

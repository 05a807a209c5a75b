//! The crate's error type: every failure names the instruction it came from (`COPY`, `ADD`, `mkdir`,
//! …), the path involved (relative to its root, never the host path of the mount), and the cause.

use std::io;

/// Everything a file operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    /// A source path given without wildcards does not exist in the source root.
    #[error("{op} failed: source \"{path}\" not found in {source_label}")]
    SourceNotFound {
        op: String,
        path: String,
        source_label: String,
    },

    /// A wildcard source matched nothing and empty matches were not allowed.
    #[error(
        "{op} failed: no source files were specified: \"{pattern}\" matched nothing in {source_label}"
    )]
    NoWildcardMatch {
        op: String,
        pattern: String,
        source_label: String,
    },

    /// Several sources were given (or a wildcard matched several) but the destination is a file path.
    #[error(
        "{op} failed: when using {op} with more than one source file, the destination must be a directory and end with a / (got {count} sources for \"{dest}\")"
    )]
    SeveralSourcesNeedDirDest {
        op: String,
        count: usize,
        dest: String,
    },

    /// The destination's parent directory is missing and the operation may not create it.
    #[error("{op} failed: destination directory \"{path}\" does not exist")]
    DestParentMissing { op: String, path: String },

    /// A path component that must be a directory is something else.
    #[error("{op} failed: \"{path}\" is not a directory")]
    NotADirectory { op: String, path: String },

    /// A non-directory would replace an existing directory.
    #[error("{op} failed: cannot replace directory \"{path}\" with a non-directory")]
    ReplaceDirWithFile { op: String, path: String },

    /// A path that has to name an entry (not the root itself) was empty or the root.
    #[error("{op} failed: invalid path \"{path}\": {reason}")]
    InvalidPath {
        op: String,
        path: String,
        reason: &'static str,
    },

    /// A system call failed on a path.
    #[error("{op} failed: cannot {action} \"{path}\": {source}")]
    Io {
        op: String,
        action: &'static str,
        path: String,
        source: io::Error,
    },

    /// `--chown` could not be parsed.
    #[error("invalid --chown value \"{spec}\": {reason}")]
    InvalidChown { spec: String, reason: &'static str },

    /// `--chown` named a user that the destination's `/etc/passwd` does not list.
    #[error(
        "{op} failed: unable to find user \"{name}\" in /etc/passwd of the destination: {reason}"
    )]
    UnknownUser {
        op: String,
        name: String,
        reason: String,
    },

    /// `--chown` named a group that the destination's `/etc/group` does not list.
    #[error(
        "{op} failed: unable to find group \"{name}\" in /etc/group of the destination: {reason}"
    )]
    UnknownGroup {
        op: String,
        name: String,
        reason: String,
    },

    /// `--chmod` could not be parsed.
    #[error("invalid --chmod value \"{spec}\": {reason}")]
    InvalidChmod { spec: String, reason: &'static str },

    /// A wildcard or `--exclude` pattern could not be parsed.
    #[error("invalid pattern \"{pattern}\": {reason}")]
    InvalidPattern { pattern: String, reason: String },

    /// An archive entry would be written outside the extraction directory.
    #[error(
        "{op} failed: archive \"{archive}\": entry \"{entry}\" would be written outside the destination \"{dest}\""
    )]
    ArchiveEscape {
        op: String,
        archive: String,
        entry: String,
        dest: String,
    },

    /// An archive could not be read or one of its entries could not be extracted.
    #[error("{op} failed: archive \"{archive}\": entry \"{entry}\": {reason}")]
    Archive {
        op: String,
        archive: String,
        entry: String,
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = FileOpError> = std::result::Result<T, E>;

/// Builds an [`FileOpError::Io`] from an errno.
pub(crate) fn sys_err(
    op: &str,
    action: &'static str,
    path: &str,
    errno: nix::errno::Errno,
) -> FileOpError {
    FileOpError::Io {
        op: op.to_string(),
        action,
        path: display_path(path),
        source: io::Error::from(errno),
    }
}

/// Builds an [`FileOpError::Io`] from an `io::Error`.
pub(crate) fn io_err(op: &str, action: &'static str, path: &str, source: io::Error) -> FileOpError {
    FileOpError::Io {
        op: op.to_string(),
        action,
        path: display_path(path),
        source,
    }
}

/// Paths inside a root are kept without the leading `/`; show them as absolute paths in messages.
pub(crate) fn display_path(rel: &str) -> String {
    if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("/{rel}")
    }
}

//! The store's error type: every variant names the path, digest or record that failed and why, so a
//! message like "blob /var/lib/kiln/blobs/sha256/ab… is corrupted" is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

use kiln_image::Digest;

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The filesystem holding the store is full (ENOSPC or EDQUOT). Whatever was being written was not
    /// committed.
    #[error("no space left on device while trying to {action} {}", path.display())]
    DiskFull {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading the content handed to [`crate::Store::ingest_from`] failed; nothing was stored.
    #[error("reading the content to store failed: {0}")]
    ReadSource(#[source] io::Error),

    /// A metadata database operation failed.
    #[error("metadata database {}: {action}: {source}", path.display())]
    Db {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The metadata database was written by a newer kiln.
    #[error(
        "metadata database {} has schema version {found}, but this kiln understands only up to version {supported}; use a newer kiln or another --root",
        path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// Content written to the store did not have the digest the caller expected; nothing was stored.
    #[error(
        "digest mismatch for ingested content: expected {expected}, got {actual} ({size} bytes); nothing was stored"
    )]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },

    /// A blob on disk does not match its digest or its recorded size.
    #[error("blob {} is corrupted: {reason}", path.display())]
    BlobCorrupted {
        digest: Digest,
        path: PathBuf,
        reason: String,
    },

    /// The blob is not in the store.
    #[error("blob {digest} not found in the store (expected at {})", path.display())]
    BlobNotFound { digest: Digest, path: PathBuf },

    /// A blob read into memory was larger than the caller allowed.
    #[error(
        "blob {digest} is {size} bytes, more than the {limit} bytes allowed for an in-memory read"
    )]
    BlobTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },

    /// A non-blocking lock attempt found the store busy.
    #[error("store lock {} is held by another process ({what})", path.display())]
    Busy { path: PathBuf, what: &'static str },

    /// A record read from or written to the database could not be (de)serialised.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// A database row holds a value that is not valid (e.g. a malformed digest), which means the
    /// database was edited by hand or is damaged.
    #[error("metadata database holds an invalid {what}: {value:?}")]
    InvalidRecord { what: &'static str, value: String },

    /// No default store location can be derived from the environment.
    #[error(
        "cannot choose a store directory: neither $XDG_DATA_HOME nor $HOME is set; pass --root or set KILN_ROOT"
    )]
    NoDefaultRoot,
}

impl StoreError {
    /// Wraps an I/O error about `path`, recognising a full disk so callers can report it as such.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        let path = path.to_path_buf();
        if is_disk_full(&source) {
            StoreError::DiskFull {
                action,
                path,
                source,
            }
        } else {
            StoreError::Io {
                action,
                path,
                source,
            }
        }
    }

    /// Whether this error means the disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// Shorthand for `map_err(|e| StoreError::io(action, path, e))`.
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::io(action, path, source)
}

fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || error.kind() == io::ErrorKind::StorageFull
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<StoreError>())
            .is_some_and(StoreError::is_disk_full)
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_reported_as_disk_full_with_the_path() {
        let error = StoreError::io(
            "write",
            Path::new("/x/tmp/blob"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(error.is_disk_full());
        assert!(error.to_string().contains("/x/tmp/blob"), "{error}");
        let other = StoreError::io(
            "write",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(!other.is_disk_full());
    }
}

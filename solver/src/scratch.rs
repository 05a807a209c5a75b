//! Temporary directories for one op (snapshots, staged contexts, sandbox files), created inside the
//! store's session scratch dir so that a crash leaves nothing the next `Store::open` does not reclaim.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_store::Store;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A directory under the store's scratch dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    // Keeps the session (the parent dir) alive.
    _store: Store,
}

impl ScratchDir {
    /// Creates `<scratch>/solve-<purpose>-<n>`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(store: &Store, purpose: &str) -> io::Result<ScratchDir> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = store.scratch_dir().join(format!("solve-{purpose}-{n}"));
        fs::create_dir_all(&path)?;
        Ok(ScratchDir {
            path,
            _store: store.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a scratch dir; the next store open reclaims it");
        }
    }
}

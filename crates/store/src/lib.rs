//! The on-disk store: content-addressed blobs (verified on write and on read), extracted layers,
//! the metadata database (SQLite in WAL mode: multi-process safe and transactional), leases and GC.
//!
//! The heart is a two-step ingest, as in containerd: [`Store::ingest`] hands out a [`BlobWriter`]
//! that hashes while it writes into the process's private `tmp/` session, and
//! [`BlobWriter::commit`] makes the blob visible only once its digest has checked out. Layers work
//! the same way: [`Store::prepare_layer_dir`] then [`Store::commit_layer`], where a rename is the
//! commit and losing a race to another process is fine. Everything read back is verified.
//!
//! Several processes can share one root: the database serialises writers, renames make content
//! appear atomically, and a flock ([`Store::lock_shared`] for builds, exclusive inside
//! [`Store::prune`]) keeps garbage collection away from work in flight. Prune deletes only blobs and
//! layers that no image, cache record or live lease reaches through the `refs` table.
//!
//! The store knows digests, not formats: parsing manifests and tars is `kiln-oci`'s job.

mod blob;
mod cache;
mod containers;
mod db;
mod error;
mod gc;
mod images;
mod layer;
mod layout;
mod lease;
mod lock;
mod refs;
mod session;
mod stat_cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use blob::{BlobInfo, BlobReader, BlobWriter};
pub use cache::{CacheRecord, CacheValue, CacheValueKind, EncodedCacheRecord};
pub use containers::{ContainerError, ContainerState, Containers, ProcessId, Registration};
pub use db::{SCHEMA_VERSION, unix_now_ns};
pub use error::{Result, StoreError};
pub use gc::{PruneOptions, PruneReport};
pub use images::{Compression, ImageRecord, LayerBlob, ManifestLayer, ManifestRecord};
pub use layer::{LayerInfo, TempLayerDir, chain_id};
pub use layout::{Layout, ROOT_ENV_VAR, default_root, resolve_root};
pub use lease::{Lease, LeaseInfo};
pub use lock::{LockMode, StoreLock};
pub use refs::{Owner, Resource};
pub use stat_cache::{RACY_MARGIN_NS, StatCacheEntry, StatKey, StatXattrs};

use crate::db::MetaDb;
use crate::error::io_err;
use crate::session::Session;

/// A handle on a store root. Cheap to clone; clones share one database connection and one `tmp/`
/// session. Open several handles (in one process or many) on the same root freely.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    layout: Layout,
    db: MetaDb,
    session: Session,
}

impl Store {
    /// Opens the store at `root`, creating its layout and database if needed, and reclaims
    /// temporary files left in `tmp/` by processes that died.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a directory cannot be created or `tmp/` cannot be cleaned,
    /// [`StoreError::Db`] when the database cannot be opened, [`StoreError::SchemaTooNew`] when it
    /// was written by a newer kiln.
    pub fn open(root: &Path) -> Result<Store> {
        let layout = Layout::new(root);
        layout.create()?;
        let db = MetaDb::open(&layout.db_path(), &layout.db_open_lock_path())?;
        let reclaimed = session::reclaim_stale(&layout.tmp_dir())?;
        if !reclaimed.is_empty() {
            tracing::debug!(count = reclaimed.len(), root = %root.display(), "reclaimed stale temporary entries");
        }
        let session = Session::create(&layout.tmp_dir())?;
        Ok(Store {
            inner: Arc::new(StoreInner {
                layout,
                db,
                session,
            }),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// The paths under the root.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// This handle's private scratch directory under `tmp/` (e.g. for sandbox upper dirs). It is
    /// removed when the last clone of the handle is dropped, or reclaimed after a crash.
    pub fn scratch_dir(&self) -> &Path {
        self.inner.session.dir()
    }

    /// Takes the store lock in shared mode, waiting while a prune runs. Hold it for the whole of a
    /// build (or pull, or load): it is what stops a prune from deleting blobs and layers the work
    /// has written but not yet referenced.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the lock file cannot be opened or locked.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        lock::acquire(&self.layout().lock_path(), LockMode::Shared, true)
    }

    /// As [`Store::lock_shared`], but fails with [`StoreError::Busy`] instead of waiting.
    ///
    /// # Errors
    /// [`StoreError::Busy`] while a prune runs; [`StoreError::Io`] as for `lock_shared`.
    pub fn try_lock_shared(&self) -> Result<StoreLock> {
        lock::acquire(&self.layout().lock_path(), LockMode::Shared, false)
    }

    /// The directory of the persistent cache mount `id` (`RUN --mount=type=cache,id=…`), created if
    /// missing.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn cache_mount_dir(&self, id: &str) -> Result<PathBuf> {
        let path = self.layout().cache_mount_path(id);
        std::fs::create_dir_all(&path).map_err(io_err("create cache mount directory", &path))?;
        Ok(path)
    }

    /// The registry of running containers (`<root>/containers/`).
    pub fn containers(&self) -> Containers {
        Containers::new(&self.layout().containers_dir())
    }

    pub(crate) fn db(&self) -> &MetaDb {
        &self.inner.db
    }

    pub(crate) fn session(&self) -> &Session {
        &self.inner.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_writers_and_guards_can_move_to_other_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Store>();
        send::<BlobWriter>();
        send::<BlobReader>();
        send::<TempLayerDir>();
        send::<Lease>();
        send::<StoreLock>();
        send_sync::<StoreError>();
    }
}

//! Extracted layers, in overlay lower-dir form, under `layers/<n>`.
//!
//! A layer is extracted into a [`TempLayerDir`] in the process's `tmp/` session and committed by
//! renaming it into `layers/`. The directory names are small integers from the database rather
//! than chain ids: overlayfs takes its lower dirs in one mount-option string limited to a page, and
//! 127 layers of 64-hex names would not fit. The database maps chain id → directory; committing a
//! chain id someone else already committed keeps theirs and drops ours.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kiln_image::Digest;
use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::blob::sync_dir;
use crate::db::{TxError, parse_digest, unix_now_ns};
use crate::error::{Result, StoreError, io_err};
use crate::refs::{Owner, Resource, add_ref};
use crate::session::remove_any;

/// The chain id of a layer whose diff id is `diff_id` on top of the chain `parent` (OCI image
/// spec: the first layer's chain id is its diff id; then `sha256(parent + " " + diff_id)`).
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// A committed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer's chain id.
    pub chain_id: Digest,
    /// The digest of the layer's uncompressed tar.
    pub diff_id: Digest,
    /// The chain id of the layer below, if any.
    pub parent: Option<Digest>,
    /// The extracted directory (an overlay lower dir).
    pub path: PathBuf,
    /// When it was committed, in ns since the epoch.
    pub created_ns: i64,
}

/// A directory being filled with a layer; removed on drop unless committed with
/// [`Store::commit_layer`].
#[derive(Debug)]
pub struct TempLayerDir {
    path: PathBuf,
    // Keeps the session (and so the directory's parent) alive while this exists.
    _store: Store,
    committed: bool,
}

impl TempLayerDir {
    /// The directory to fill.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempLayerDir {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = remove_any(&self.path)
        {
            tracing::warn!(error = %e, "could not remove an uncommitted layer directory; the next store open reclaims it");
        }
    }
}

impl Store {
    /// Creates an empty directory in this handle's `tmp/` session to extract a layer into.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn prepare_layer_dir(&self) -> Result<TempLayerDir> {
        let path = self.session().new_entry_path("layer");
        fs::create_dir(&path).map_err(io_err("create layer directory", &path))?;
        Ok(TempLayerDir {
            path,
            _store: self.clone(),
            committed: false,
        })
    }

    /// Commits an extracted layer as `chain_id` and returns its directory. Records that the layer
    /// needs its `parent` chain, so prune keeps the whole chain together. If the chain id is already
    /// committed (say another process won a race), the existing directory is returned and `temp`
    /// is discarded.
    ///
    /// # Errors
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] when the layer cannot be synced or renamed
    /// (nothing is committed); [`StoreError::Db`] on a database failure.
    pub fn commit_layer(
        &self,
        mut temp: TempLayerDir,
        chain_id: &Digest,
        diff_id: &Digest,
        parent: Option<&Digest>,
    ) -> Result<PathBuf> {
        // The extractor wrote many files without fsyncing each; one syncfs makes them all durable
        // before the rename publishes them. An empty dir (a RUN that changed nothing) has only its own
        // inode to write: fsync that, not the whole filesystem.
        let is_empty = fs::read_dir(&temp.path).is_ok_and(|mut entries| entries.next().is_none());
        if is_empty {
            sync_dir(&temp.path)?;
        } else {
            sync_filesystem(&temp.path)?;
        }
        let layers_dir = self.layout().layers_dir();
        let mut renamed_to: Option<PathBuf> = None;
        let outcome = self.db().write("commit layer", |tx| {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM layers WHERE chain_id = ?1",
                    params![chain_id.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                let path = layers_dir.join(id.to_string());
                if path.is_dir() {
                    return Ok((path, false));
                }
                // The directory vanished (crash during a prune): replace the stale row.
                tx.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
            }
            tx.execute(
                "INSERT INTO layers (chain_id, diff_id, parent_chain_id, created_ns)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    chain_id.to_string(),
                    diff_id.to_string(),
                    parent.map(Digest::to_string),
                    unix_now_ns()
                ],
            )?;
            let path = layers_dir.join(tx.last_insert_rowid().to_string());
            // A directory left by a commit whose transaction never landed: nobody owns it, and
            // holding the write transaction means nobody else can be committing to this id.
            remove_any(&path)?;
            fs::rename(&temp.path, &path).map_err(io_err("commit layer to", &path))?;
            renamed_to = Some(path.clone());
            if let Some(parent) = parent {
                add_ref(
                    tx,
                    &Owner::Layer(chain_id.clone()),
                    &Resource::Layer(parent.clone()),
                )?;
            }
            Ok((path, true))
        });
        let (path, renamed) = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                // The transaction rolled back after the rename (e.g. the disk filled up): move the
                // directory back so nothing unrecorded stays under layers/.
                if let Some(published) = renamed_to
                    && let Err(e) = fs::rename(&published, &temp.path)
                {
                    tracing::warn!(path = %published.display(), error = %e, "could not take back an unrecorded layer directory; prune removes it");
                }
                return Err(error);
            }
        };
        if renamed {
            temp.committed = true;
            sync_dir(&layers_dir)?;
        }
        Ok(path)
    }

    /// The directory of the committed layer `chain_id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn layer_path(&self, chain_id: &Digest) -> Result<Option<PathBuf>> {
        Ok(self.layer_info(chain_id)?.map(|info| info.path))
    }

    /// Everything recorded about the committed layer `chain_id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::InvalidRecord`] on a damaged row.
    pub fn layer_info(&self, chain_id: &Digest) -> Result<Option<LayerInfo>> {
        let layers_dir = self.layout().layers_dir();
        let info = self.db().read("look up layer", |conn| {
            let row: Option<(i64, String, Option<String>, i64)> = conn
                .query_row(
                    "SELECT id, diff_id, parent_chain_id, created_ns FROM layers WHERE chain_id = ?1",
                    params![chain_id.to_string()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            row.map(|(id, diff_id, parent, created_ns)| {
                Ok::<_, TxError>(LayerInfo {
                    chain_id: chain_id.clone(),
                    diff_id: parse_digest(&diff_id)?,
                    parent: parent.as_deref().map(parse_digest).transpose()?,
                    path: layers_dir.join(id.to_string()),
                    created_ns,
                })
            })
            .transpose()
        })?;
        // A row whose directory is gone (crash mid-prune) is not a committed layer.
        Ok(info.filter(|info| info.path.is_dir()))
    }
}

fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).map_err(io_err("open layer directory", path))?;
    nix::unistd::syncfs(&dir)
        .map_err(|errno| StoreError::io("sync filesystem of", path, io::Error::from(errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(None, &a), a);
        let expected = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(Some(&a), &b), expected);
    }
}

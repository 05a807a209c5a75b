//! Where things live under a store root, and how the root itself is chosen.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   immutable, verified content
//! <root>/layers/<n>/          extracted layers (overlay lower dirs); short numeric names keep
//!                             overlay's mount options small, the DB maps chain id → n
//! <root>/tmp/                 per-process session dirs for work in flight (see `session`)
//! <root>/cache-mounts/        persistent `RUN --mount=type=cache` directories
//! <root>/containers/          the running containers' state (see `containers`)
//! <root>/meta.db              the SQLite metadata database
//! <root>/lock                 flock: shared for builds, exclusive for prune
//! <root>/meta.lock            flock: held while a handle opens and configures meta.db
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use kiln_image::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::{Result, StoreError, io_err};

/// The environment variable that overrides the default store root.
pub const ROOT_ENV_VAR: &str = "KILN_ROOT";

/// The paths of one store root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (nothing is created).
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/sha256/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob with `digest` lives once committed.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// `layers/`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// `tmp/`. Do not create entries here directly: anything that belongs to no live session is
    /// deleted by the next [`crate::Store::open`]. Use [`crate::Store::scratch_dir`] instead.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `cache-mounts/`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// The directory of the cache mount with `id`. The id is hashed so that any string (slashes,
    /// `..`) names exactly one directory directly under `cache-mounts/`.
    pub fn cache_mount_path(&self, id: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(id.as_bytes()));
        self.cache_mounts_dir().join(&hash[..32])
    }

    /// `containers/`, the registry of running containers.
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// `meta.db`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.db")
    }

    /// `lock`, the flock file separating prune from builds.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// `meta.lock`, the flock file that lets one handle at a time open and configure the database.
    pub fn db_open_lock_path(&self) -> PathBuf {
        self.root.join("meta.lock")
    }

    /// Creates every directory of the layout (idempotent).
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the directory that could not be created.
    pub fn create(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.blobs_dir(),
            self.layers_dir(),
            self.tmp_dir(),
            self.cache_mounts_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        Ok(())
    }
}

/// The default store root: `/var/lib/kiln` for root, otherwise `$XDG_DATA_HOME/kiln` or
/// `~/.local/share/kiln`. Does not look at `KILN_ROOT`; see [`resolve_root`].
///
/// # Errors
/// [`StoreError::NoDefaultRoot`] when not root and neither `XDG_DATA_HOME` nor `HOME` is set.
pub fn default_root() -> Result<PathBuf> {
    default_root_for(
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// The store root a command should use: an explicit `--root` first, then `$KILN_ROOT`, then
/// [`default_root`]. Empty values count as unset.
///
/// # Errors
/// As [`default_root`], when neither an explicit root nor `KILN_ROOT` is given.
pub fn resolve_root(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(root) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(root.to_path_buf());
    }
    match std::env::var_os(ROOT_ENV_VAR) {
        Some(root) if !root.is_empty() => Ok(PathBuf::from(root)),
        _ => default_root(),
    }
}

fn default_root_for(
    is_root: bool,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    if is_root {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(xdg.join("kiln"));
    }
    match home.filter(|p| !p.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".local").join("share").join("kiln")),
        None => Err(StoreError::NoDefaultRoot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_follows_root_then_xdg_then_home() {
        assert_eq!(
            default_root_for(true, Some("/x".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/var/lib/kiln")
        );
        assert_eq!(
            default_root_for(false, Some("/x".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/x/kiln")
        );
        assert_eq!(
            default_root_for(false, Some("relative".into()), Some("/h".into())).unwrap(),
            PathBuf::from("/h/.local/share/kiln")
        );
        assert!(matches!(
            default_root_for(false, None, None),
            Err(StoreError::NoDefaultRoot)
        ));
    }

    #[test]
    fn explicit_root_wins() {
        assert_eq!(
            resolve_root(Some(Path::new("/explicit"))).unwrap(),
            PathBuf::from("/explicit")
        );
    }

    #[test]
    fn cache_mount_ids_stay_inside_cache_mounts() {
        let layout = Layout::new(Path::new("/r"));
        let path = layout.cache_mount_path("../../etc");
        assert_eq!(path.parent().unwrap(), Path::new("/r/cache-mounts"));
        assert_ne!(path, layout.cache_mount_path("other"));
    }
}

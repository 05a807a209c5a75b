//! The overlayfs snapshotter: lower dirs are the layer dirs themselves (topmost first), the mount stubs
//! are left to whoever mounts the root (a lowest layer of its own), the upper dir starts empty and
//! *is* the diff afterwards. Preparing a snapshot costs two `mkdir`s.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{
    MountStub, RootMount, Snapshot, SnapshotError, Snapshotter, check_layers, io_err, make_dir,
};

/// Mount options every overlay root uses: no inode index, no metacopy, no redirects, so the upper dir
/// is plain overlay form that a tar differ (and any other kernel) reads the same way.
pub const OVERLAY_OPTIONS: &str = "index=off,metacopy=off,redirect_dir=off";

/// Snapshots on overlayfs. Cheap: nothing is copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct OverlaySnapshotter;

impl Snapshotter for OverlaySnapshotter {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn prepare(
        &self,
        layers: &[PathBuf],
        scratch: &Path,
        stubs: &[MountStub],
    ) -> Result<Snapshot, SnapshotError> {
        check_layers(layers)?;
        let upper_dir = scratch.join("upper");
        let work_dir = scratch.join("work");
        for dir in [&upper_dir, &work_dir] {
            make_dir(dir)?;
        }
        // overlayfs shows the upper dir's root as "/": give it the image root's owner and mode, or the
        // layer would record a changed "/" (containerd does the same).
        if let Some(top) = layers.last() {
            let meta = fs::symlink_metadata(top).map_err(io_err("stat layer", top))?;
            std::os::unix::fs::lchown(&upper_dir, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("chown", &upper_dir))?;
            fs::set_permissions(&upper_dir, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("chmod", &upper_dir))?;
        }
        let lower_dirs: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        Ok(Snapshot {
            mount: RootMount::Overlay {
                lower_dirs,
                upper_dir,
                work_dir,
                stubs: stubs.to_vec(),
            },
            scratch: scratch.to_path_buf(),
            native_base: None,
        })
    }

    fn diff(&self, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError> {
        match &snapshot.mount {
            RootMount::Overlay { upper_dir, .. } => Ok(upper_dir.clone()),
            RootMount::Bind { source } => {
                Err(SnapshotError::WrongSnapshotter(source.clone(), "overlay"))
            }
        }
    }
}

/// Whether overlayfs with [`OVERLAY_OPTIONS`] can be mounted here: listed in `/proc/filesystems` and a
/// trial mount under `scratch` (created and removed) succeeds. Needs root (or CAP_SYS_ADMIN).
pub fn overlay_supported(scratch: &Path) -> bool {
    let listed = fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
    if !listed {
        return false;
    }
    let probe = scratch.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    let supported = dirs.iter().all(|d| fs::create_dir_all(d).is_ok()) && {
        let options = format!(
            "lowerdir={},upperdir={},workdir={},{OVERLAY_OPTIONS}",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        );
        let mounted = mount(
            Some("overlay"),
            &dirs[3],
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        );
        mounted.is_ok() && umount2(&dirs[3], MntFlags::MNT_DETACH).is_ok()
    };
    let _ = fs::remove_dir_all(&probe);
    supported
}

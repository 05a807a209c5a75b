//! Mounting snapshot roots for in-process work (file ops) without any risk of leaking mounts: the
//! work runs on a dedicated thread that first moves into a private mount namespace
//! (`unshare(CLONE_NEWNS)`, then `/` made recursively private so nothing propagates back to the
//! host). Mounts made there exist only in that namespace, which the kernel tears down when the thread
//! exits — whether the work finished, failed, or the whole process was killed.
//!
//! A [`RootMount::Bind`] root (the native snapshotter's plain directory) needs no mount at all and is
//! used in place.

use std::path::{Path, PathBuf};

use kiln_executor::RootMount;
use kiln_executor::plan::{execute, root_mount_step};
use kiln_executor::syscall::LinuxSyscall;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::error::OpError;

/// Mounts each `(root, mount point)` (mount points are created), runs `work` with the paths of the
/// mounted roots in the same order, and unmounts. Everything happens on a fresh thread in a private
/// mount namespace.
///
/// # Errors
/// [`OpError::Mount`] when the namespace or a mount cannot be set up; whatever `work` returns.
pub(crate) fn with_mounted<T, F>(roots: &[(RootMount, PathBuf)], work: F) -> Result<T, OpError>
where
    T: Send,
    F: FnOnce(&[PathBuf]) -> Result<T, OpError> + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || mount_and_run(roots, work))
            .join()
            .unwrap_or(Err(OpError::MountThreadPanicked))
    })
}

fn mount_err(action: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> OpError {
    let path = path.to_path_buf();
    move |source| OpError::Mount {
        action,
        path,
        source,
    }
}

fn mount_and_run<T, F>(roots: &[(RootMount, PathBuf)], work: F) -> Result<T, OpError>
where
    F: FnOnce(&[PathBuf]) -> Result<T, OpError>,
{
    let needs_mounts = roots
        .iter()
        .any(|(root, _)| matches!(root, RootMount::Overlay { .. }));
    if needs_mounts {
        unshare(CloneFlags::CLONE_NEWNS)
            .map_err(mount_err("unshare the mount namespace of", Path::new("/")))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(mount_err("make mounts private under", Path::new("/")))?;
    }
    let mut paths = Vec::with_capacity(roots.len());
    let mut mounted = Vec::new();
    for (root, target) in roots {
        match root {
            RootMount::Bind { source } => paths.push(source.clone()),
            RootMount::Overlay { .. } => {
                std::fs::create_dir_all(target)
                    .map_err(OpError::io("create mount point", target))?;
                // The stub layer (also the lower dir a root over no layers needs) lives on disk
                // beside the mount point, in the caller's scratch dir.
                let mut stub_dir = target.clone().into_os_string();
                stub_dir.push("-stubs");
                let root = root.with_stub_layer(Path::new(&stub_dir))?;
                // The executor's mount step: one mount(2) when the options fit a page, else the new
                // mount API with one `lowerdir+` per layer, so chains of Docker's 127 layers (and
                // more) mount whatever the store's path length.
                let step = root_mount_step(&root, target).map_err(|e| {
                    OpError::io("prepare the overlay mount of", target)(std::io::Error::other(
                        e.to_string(),
                    ))
                })?;
                execute(std::slice::from_ref(&step), &LinuxSyscall, &mut [])
                    .map_err(|failure| mount_err("mount overlay on", target)(failure.errno))?;
                mounted.push(target.clone());
                paths.push(target.clone());
            }
        }
    }
    let result = work(&paths);
    for target in mounted.iter().rev() {
        // The namespace dies with the thread anyway; unmounting now just frees it sooner.
        if let Err(error) = umount2(target.as_path(), MntFlags::MNT_DETACH) {
            tracing::debug!(path = %target.display(), %error, "unmount failed");
        }
    }
    result
}

/// Whether overlayfs can be mounted here, probed inside a private mount namespace so that the trial
/// mount can never outlive the probe.
pub(crate) fn overlay_usable(scratch: &Path) -> bool {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if unshare(CloneFlags::CLONE_NEWNS).is_err() {
                    return false;
                }
                let private = mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                );
                private.is_ok() && kiln_executor::snapshot::overlay_supported(scratch)
            })
            .join()
            .unwrap_or(false)
    })
}

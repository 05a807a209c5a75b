//! Snapshotters turn a chain of extracted layers (overlay lower-dir form, as the store keeps them) into a
//! writable root for one sandbox, and afterwards hand back the changes in overlay upper-dir form (char 0/0
//! whiteouts, `trusted.overlay.opaque` dirs), which is what the layer differ turns into a tar.
//!
//! As in containerd, a snapshotter never mounts anything: [`Snapshotter::prepare`] returns a
//! [`RootMount`] *description* and the sandbox mounts it inside its own mount namespace, so the mount
//! disappears with the namespace and nothing leaks on the host if a build is killed.
//!
//! Two implementations pass one shared test suite (`tests/snapshotters.rs`):
//! - [`OverlaySnapshotter`]: overlayfs; the diff is the upper dir as is.
//! - [`NativeSnapshotter`]: for hosts without overlayfs: copies the merged view into a plain dir and
//!   computes the diff afterwards by comparing against a record of the base (see `native.rs`).
//!
//! Mount stubs: a sandbox bind-mounts files (`/etc/hosts`, secrets) and dirs (`/proc`, bind mounts) onto
//! paths the image may not have. Creating those mount points inside the writable root would put them in
//! the layer, so both snapshotters put them *beneath* the image instead: the overlay snapshotter hands
//! them to whoever mounts the root as an extra lowest lower dir to lay out (image content shadows it;
//! the sandbox builds it in a tmpfs of its own, so a run creates no stub files on the host), the native
//! one creates them in the copy before it records the base. Either way a stub the command does not
//! touch is never part of the diff.

mod native;
mod overlay;
mod probe;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use native::NativeSnapshotter;
pub use overlay::{OVERLAY_OPTIONS, OverlaySnapshotter, overlay_supported};
pub use probe::{OVERLAY_PROBE_FILE, overlay_supported_cached};

use crate::fsutil::{is_opaque, is_whiteout, join_inside};

/// Errors of the snapshotters; each names the path it failed on.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("snapshot: layer dir {0} does not exist or is not a directory")]
    MissingLayer(PathBuf),
    #[error("snapshot: {0} was not prepared by the {1} snapshotter")]
    WrongSnapshotter(PathBuf, &'static str),
}

pub(crate) fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'p {
    move |source| SnapshotError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How the sandbox must mount its root. Paths are host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMount {
    /// overlayfs; `lower_dirs` topmost first (overlayfs's own `lowerdir=` order). `stubs` are mount
    /// points whoever mounts the root lays out in one more, lowest, layer of its own: the sandbox in
    /// a tmpfs private to its mount namespace (nothing to create or remove on the host per run),
    /// anyone else on disk with [`RootMount::with_stub_layer`].
    Overlay {
        lower_dirs: Vec<PathBuf>,
        upper_dir: PathBuf,
        work_dir: PathBuf,
        stubs: Vec<MountStub>,
    },
    /// A plain directory bind-mounted read-write as the root.
    Bind { source: PathBuf },
}

impl RootMount {
    /// For mounting an overlay root outside a sandbox: lays its stubs out on disk in `dir` (created;
    /// the caller removes it after unmounting) and returns the root with `dir` as its lowest lower
    /// dir and no stubs left. The dir is added even without stubs, so that a root over no layers
    /// (`FROM scratch`) still has the lower dir overlayfs needs. Other roots are returned as they are.
    ///
    /// # Errors
    /// Creating `dir` or a stub failed.
    pub fn with_stub_layer(&self, dir: &Path) -> Result<RootMount, SnapshotError> {
        match self {
            RootMount::Overlay {
                lower_dirs,
                upper_dir,
                work_dir,
                stubs,
            } => {
                make_dir(dir)?;
                create_stubs(dir, stubs)?;
                let mut lower_dirs = lower_dirs.clone();
                lower_dirs.push(dir.to_path_buf());
                Ok(RootMount::Overlay {
                    lower_dirs,
                    upper_dir: upper_dir.clone(),
                    work_dir: work_dir.clone(),
                    stubs: Vec::new(),
                })
            }
            RootMount::Bind { .. } => Ok(self.clone()),
        }
    }

    /// Reads a regular file of the root's merged view, e.g. `/etc/passwd`, without mounting anything.
    /// `Ok(None)` when the path is absent, deleted by a whiteout, hidden by an opaque dir, or not a
    /// regular file (symlinks are not followed: resolving them would need the mounted view).
    ///
    /// # Errors
    /// I/O errors other than "not found" while looking through the layers.
    pub fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let found = match self {
            RootMount::Overlay {
                lower_dirs,
                upper_dir,
                ..
            } => {
                let layers: Vec<&Path> = std::iter::once(upper_dir.as_path())
                    .chain(lower_dirs.iter().map(PathBuf::as_path))
                    .collect();
                lookup_in_layers(&layers, path)?
            }
            // One layer; walking it component by component never follows an image symlink to the host.
            RootMount::Bind { source } => lookup_in_layers(&[source.as_path()], path)?,
        };
        found.map(fs::read).transpose()
    }
}

/// Finds `path` in overlay-form layers (topmost first) the way overlayfs would, honouring whiteouts,
/// opaque dirs and non-directories that hide what lies below them.
fn lookup_in_layers(layers: &[&Path], path: &Path) -> io::Result<Option<PathBuf>> {
    let components: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    let Some(last) = components.len().checked_sub(1) else {
        return Ok(None);
    };
    for layer in layers {
        let mut current = layer.to_path_buf();
        let mut hides_lower = false;
        for (index, part) in components.iter().enumerate() {
            current.push(part);
            let meta = match fs::symlink_metadata(&current) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            if is_whiteout(&meta) {
                return Ok(None);
            }
            if index == last {
                return Ok(meta.is_file().then_some(current));
            }
            if !meta.is_dir() {
                return Ok(None);
            }
            if is_opaque(&current)? {
                hides_lower = true;
            }
        }
        if hides_lower {
            return Ok(None);
        }
    }
    Ok(None)
}

/// What kind of mount point a stub is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubKind {
    File,
    Dir,
}

/// A mount point the sandbox needs (absolute path inside the container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStub {
    pub path: PathBuf,
    pub kind: StubKind,
}

/// A prepared, writable root for one sandbox.
#[derive(Debug)]
pub struct Snapshot {
    mount: RootMount,
    scratch: PathBuf,
    native_base: Option<native::BaseRecord>,
}

impl Snapshot {
    /// The mount the sandbox must set up as its root.
    pub fn mount(&self) -> &RootMount {
        &self.mount
    }

    /// The scratch dir this snapshot owns (the caller removes it when done).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}

/// Prepares writable roots over layer chains and extracts their changes. Object safe, so the solver can
/// pick an implementation at run time.
pub trait Snapshotter: Send + Sync {
    /// A short name for messages and flags (`overlay`, `native`).
    fn name(&self) -> &'static str;

    /// Prepares a root over `layers` (extracted layer dirs, **bottom first**, i.e. manifest order; may be
    /// empty for `FROM scratch`), using `scratch` (a dir the caller owns, created when missing) for its
    /// state, with `stubs` present as mount points that never show up in the diff. Only the entries
    /// `upper`, `work`, `rootfs` and `diff` of `scratch` are the snapshotter's; others are left alone.
    /// An overlay snapshot leaves the stubs to whoever mounts it ([`RootMount::Overlay`]).
    ///
    /// # Errors
    /// A layer dir is missing, or creating/copying under `scratch` failed.
    fn prepare(
        &self,
        layers: &[PathBuf],
        scratch: &Path,
        stubs: &[MountStub],
    ) -> Result<Snapshot, SnapshotError>;

    /// After the sandbox has exited: the dir holding the changes in overlay upper-dir form. Besides
    /// `trusted.overlay.opaque`, an overlay upper dir carries overlayfs bookkeeping xattrs
    /// (`trusted.overlay.origin`, `impure`, `uuid`) that a layer differ must drop.
    ///
    /// # Errors
    /// Walking or copying failed, or `snapshot` came from another snapshotter.
    fn diff(&self, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError>;
}

/// The snapshotter for this host: overlay when [`overlay_supported`] (probing under `scratch`), the
/// copying one otherwise.
pub fn default_snapshotter(scratch: &Path) -> Box<dyn Snapshotter> {
    if overlay_supported(scratch) {
        Box::new(OverlaySnapshotter)
    } else {
        tracing::warn!("overlayfs unavailable: using the copying snapshotter");
        Box::new(NativeSnapshotter)
    }
}

/// [`default_snapshotter`] with the probe's answer remembered under `store_root` (see
/// [`overlay_supported_cached`]): after the first success no trial overlay is mounted.
pub fn default_snapshotter_cached(store_root: &Path, scratch: &Path) -> Box<dyn Snapshotter> {
    if overlay_supported_cached(store_root, || overlay_supported(scratch)) {
        Box::new(OverlaySnapshotter)
    } else {
        tracing::warn!("overlayfs unavailable: using the copying snapshotter");
        Box::new(NativeSnapshotter)
    }
}

/// Creates `stubs` under `root` where nothing exists yet, never following symlinks (an image's absolute
/// symlink must not lead the host). Paths whose parent is a symlink or a non-dir are left alone: the
/// sandbox resolves mount targets inside the container and reports a missing one there.
pub(crate) fn create_stubs(root: &Path, stubs: &[MountStub]) -> Result<(), SnapshotError> {
    'stubs: for stub in stubs {
        let target = join_inside(root, &stub.path);
        let Ok(relative) = target.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<_> = relative.components().collect();
        let mut current = root.to_path_buf();
        for (index, part) in parts.iter().enumerate() {
            current.push(part);
            let is_last = index + 1 == parts.len();
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => continue 'stubs,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if is_last && stub.kind == StubKind::File {
                        fs::File::create(&current).map_err(io_err("create stub", &current))?;
                    } else {
                        fs::create_dir(&current).map_err(io_err("create stub dir", &current))?;
                    }
                }
                Err(e) => {
                    return Err(SnapshotError::Io {
                        action: "stat",
                        path: current,
                        source: e,
                    });
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn check_layers(layers: &[PathBuf]) -> Result<(), SnapshotError> {
    for layer in layers {
        if !fs::metadata(layer).is_ok_and(|m| m.is_dir()) {
            return Err(SnapshotError::MissingLayer(layer.clone()));
        }
    }
    Ok(())
}

pub(crate) fn make_dir(path: &Path) -> Result<(), SnapshotError> {
    fs::create_dir_all(path).map_err(io_err("create dir", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_honours_whiteouts_opaque_dirs_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let bottom = tmp.path().join("bottom");
        let middle = tmp.path().join("middle");
        let top = tmp.path().join("top");
        for dir in [&bottom, &middle, &top] {
            fs::create_dir_all(dir.join("etc")).unwrap();
        }
        fs::write(bottom.join("etc/passwd"), "bottom").unwrap();
        fs::write(bottom.join("etc/group"), "bottom").unwrap();
        fs::write(middle.join("etc/passwd"), "middle").unwrap();
        let layers = [top.as_path(), middle.as_path(), bottom.as_path()];
        let read = |layers: &[&Path], p: &str| {
            lookup_in_layers(layers, Path::new(p))
                .unwrap()
                .map(|p| fs::read_to_string(p).unwrap())
        };
        assert_eq!(read(&layers, "/etc/passwd").as_deref(), Some("middle"));
        assert_eq!(read(&layers, "/etc/group").as_deref(), Some("bottom"));
        assert_eq!(read(&layers, "/etc/shadow"), None);
        assert_eq!(read(&layers, "/etc"), None, "a dir is not a file");

        // Opaque middle /etc hides bottom's group file.
        xattr::set(middle.join("etc"), crate::fsutil::OPAQUE_XATTR, b"y").unwrap();
        assert_eq!(read(&layers, "/etc/group"), None);
        assert_eq!(read(&layers, "/etc/passwd").as_deref(), Some("middle"));

        // A whiteout in the top layer deletes passwd.
        crate::fsutil::make_whiteout(&top.join("etc/passwd")).unwrap();
        assert_eq!(read(&layers, "/etc/passwd"), None);
    }

    #[test]
    fn stub_layer_on_disk_is_the_lowest_lower_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootMount::Overlay {
            lower_dirs: Vec::new(),
            upper_dir: "/u".into(),
            work_dir: "/w".into(),
            stubs: vec![MountStub {
                path: "/etc/hosts".into(),
                kind: StubKind::File,
            }],
        };
        let stub_dir = tmp.path().join("stubs");
        let placed = root.with_stub_layer(&stub_dir).unwrap();
        let RootMount::Overlay {
            lower_dirs, stubs, ..
        } = &placed
        else {
            panic!()
        };
        assert_eq!(lower_dirs, std::slice::from_ref(&stub_dir));
        assert!(stubs.is_empty());
        assert!(stub_dir.join("etc/hosts").is_file());
        let bind = RootMount::Bind {
            source: "/r".into(),
        };
        assert_eq!(bind.with_stub_layer(&tmp.path().join("x")).unwrap(), bind);
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn stubs_are_created_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("var")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("var/run")).unwrap();
        let stubs = [
            MountStub {
                path: "/etc/hosts".into(),
                kind: StubKind::File,
            },
            MountStub {
                path: "/proc".into(),
                kind: StubKind::Dir,
            },
            MountStub {
                path: "/var/run/secrets/x".into(),
                kind: StubKind::File,
            },
        ];
        create_stubs(&root, &stubs).unwrap();
        // Reading through the plain root does not follow the symlink either.
        fs::write(outside.join("passwd"), "host").unwrap();
        let bind = RootMount::Bind {
            source: root.clone(),
        };
        assert_eq!(bind.read_file(Path::new("/var/run/passwd")).unwrap(), None);
        fs::write(root.join("etc/passwd"), "image").unwrap();
        assert_eq!(
            bind.read_file(Path::new("/etc/passwd")).unwrap().as_deref(),
            Some(&b"image"[..])
        );
        assert!(root.join("etc/hosts").is_file());
        assert!(root.join("proc").is_dir());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing but our own passwd: no stub written through the symlink"
        );
    }
}

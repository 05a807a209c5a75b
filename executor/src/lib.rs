//! Sandboxes: a snapshot mounted as the root, new namespaces, /proc /dev /etc/hosts, users and groups
//! resolved from the image, and the process itself. Used by RUN and by `kiln run`.
//!
//! - [`snapshot`]: snapshotters (overlay, native copying) that describe a writable root over extracted
//!   layers and hand back the changes in overlay upper-dir form. They never mount.
//! - [`sandbox`]: [`run`] mounts that root inside new namespaces and runs one command as PID 1.
//! - [`syscall`]: every syscall of the child's setup behind a trait, with a recording fake; [`plan`] is
//!   that setup as data, built before `clone`.
//! - [`confinement`]: Docker's default capabilities, masked and read-only paths, and `nodev`.
//! - [`seccomp`]: Docker's default seccomp profile as a deny-list, compiled once per capability set.
//! - [`enter`]: runs one more process inside a running sandbox (`kiln exec`): setns, fork, exec.
//! - [`cgroup`]: optional memory/pids limits with cgroup v1 or v2, detected per controller and
//!   skipped with a warning where neither is available.
//!
//! Paths in, paths out: this crate does not know the store; callers pass layer dirs and scratch dirs.

pub mod cgroup;
pub mod confinement;
pub mod enter;
mod fsutil;
pub mod init;
pub mod plan;
pub mod sandbox;
pub mod seccomp;
pub mod snapshot;
pub mod syscall;

pub use cgroup::ResourceLimits;
pub use confinement::{CapabilityError, CapabilitySet, Confinement};
pub use sandbox::{
    ExitStatus, ExtraMount, Input, LineCallback, NetworkMode, Output, SandboxError, SandboxIo,
    SandboxSpec, mount_stubs, run,
};
pub use snapshot::{
    MountStub, NativeSnapshotter, OverlaySnapshotter, RootMount, Snapshot, SnapshotError,
    Snapshotter, default_snapshotter,
};

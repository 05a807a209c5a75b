//! Exec ops (RUN): a snapshot over the root filesystem input, the command run in a `kiln-executor`
//! sandbox with its output streamed to the display, and the snapshot's changes as the new layer.
//!
//! `RUN --mount`: `cache` mounts are directories of the store (`cache_mounts/`) that persist across
//! builds (`sharing=locked` holds an exclusive lock on the directory while the command runs;
//! `private` is treated as `shared`), `tmpfs` mounts are fresh, and read-only `bind` mounts show a
//! path of the context or of another stage (a stage's root is copied into the step's scratch dir
//! first, since a sandbox can bind only host paths). Read-write binds, cache mounts seeded `from` a
//! stage, secrets and SSH agents are refused with a clear error for now.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Mutex;

use std::fs::File;
use std::path::{Path, PathBuf};

use kiln_executor::{
    ExtraMount, LineCallback, NativeSnapshotter, NetworkMode, Output, SandboxIo, SandboxSpec,
    Snapshotter, mount_stubs,
};
use kiln_llb::{ExecOp, Mount, MountKind, SecurityMode};
use nix::fcntl::{Flock, FlockArg};

use crate::error::OpError;
use crate::layers::commit_diff;
use crate::ops::{OpContext, chain_input, layer_dirs};
use crate::result::{Layer, OpOutput};
use crate::scratch::ScratchDir;

/// How many trailing output lines a failure reports.
const TAIL_LINES: usize = 20;

pub(crate) fn run_exec(
    cx: &OpContext<'_>,
    exec: &ExecOp,
    inputs: &[OpOutput],
) -> Result<OpOutput, OpError> {
    let root = exec
        .mounts
        .iter()
        .find(|mount| mount.target == "/")
        .ok_or_else(|| OpError::Unsupported("RUN without a root filesystem".into()))?;
    if let Some(secret) = exec.secret_env.first() {
        return Err(OpError::Unsupported(format!(
            "RUN --mount=type=secret,env={} (secret {})",
            secret.name, secret.id
        )));
    }
    if exec.security == SecurityMode::Insecure {
        return Err(OpError::Unsupported("RUN --security=insecure".into()));
    }
    let base = match root.input {
        Some(index) => chain_input(inputs, index)?.to_vec(),
        None => Vec::new(),
    };

    let scratch = ScratchDir::new(cx.store, "exec").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let mut extra = ExtraMounts::default();
    for mount in exec.mounts.iter().filter(|mount| mount.target != "/") {
        extra.add(cx, mount, inputs, scratch.path())?;
    }
    let snapshot = cx.snapshotter.prepare(
        &layer_dirs(&base),
        &scratch.path().join("snapshot"),
        &mount_stubs(&extra.mounts),
    )?;
    let mut spec = SandboxSpec::new(
        snapshot.mount().clone(),
        scratch.path().join("sandbox"),
        exec.args.clone(),
    );
    spec.env = exec.env.iter().chain(&exec.proxy_env).cloned().collect();
    spec.cwd = exec.cwd.clone();
    spec.user = exec.user.clone();
    spec.mounts = extra.mounts.clone();
    spec.network = match exec.network {
        kiln_llb::NetworkMode::None => NetworkMode::None,
        kiln_llb::NetworkMode::Host | kiln_llb::NetworkMode::Sandbox => NetworkMode::Host,
    };

    let tail: Mutex<VecDeque<String>> = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let on_line = |line: &[u8]| {
        let text = String::from_utf8_lossy(line).into_owned();
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }
        cx.output(text);
    };
    let mut stdout = LineCallback::new(on_line);
    let mut stderr = LineCallback::new(on_line);
    let status = kiln_executor::run(
        &spec,
        SandboxIo {
            stdout: Output::Writer(&mut stdout),
            stderr: Output::Writer(&mut stderr),
            ..SandboxIo::default()
        },
    );
    // Partial last lines.
    let _ = stdout.flush();
    let _ = stderr.flush();
    let status = status?;
    if !status.success() {
        let tail = tail.into_inner().map(Vec::from).unwrap_or_default();
        return Err(OpError::ExecFailed {
            command: exec.args.join(" "),
            status,
            tail,
        });
    }

    let upper = cx.snapshotter.diff(&snapshot)?;
    let mut chain = base;
    let layer = commit_diff(cx.store, &upper, chain.last(), &cx.layer_options)?;
    chain.push(layer);
    Ok(OpOutput::Chain(chain))
}

/// The mounts of a RUN besides its root, and what keeps them valid while it runs.
#[derive(Default)]
struct ExtraMounts {
    mounts: Vec<ExtraMount>,
    /// Exclusive locks on `sharing=locked` cache dirs, released when the step ends.
    _locks: Vec<Flock<File>>,
    /// Copies of stage roots that binds read from.
    copies: Vec<kiln_executor::Snapshot>,
}

impl ExtraMounts {
    fn add(
        &mut self,
        cx: &OpContext<'_>,
        mount: &Mount,
        inputs: &[OpOutput],
        scratch: &Path,
    ) -> Result<(), OpError> {
        let target = PathBuf::from(&mount.target);
        match &mount.kind {
            MountKind::Tmpfs { size } => self.mounts.push(ExtraMount::Tmpfs {
                target,
                size_bytes: *size,
            }),
            MountKind::Cache {
                id,
                sharing,
                uid,
                gid,
                mode,
            } => {
                if mount.input.is_some() {
                    return Err(OpError::Unsupported(format!(
                        "RUN --mount=type=cache,from=... (target {})",
                        mount.target
                    )));
                }
                let fresh = !cx.store.layout().cache_mount_path(id).exists();
                let dir = cx.store.cache_mount_dir(id)?;
                if fresh {
                    // A new cache dir gets the owner and mode the mount asks for, as in BuildKit.
                    std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid))
                        .map_err(OpError::io("set the owner of cache dir", &dir))?;
                    let permissions = std::os::unix::fs::PermissionsExt::from_mode(*mode);
                    std::fs::set_permissions(&dir, permissions)
                        .map_err(OpError::io("set the mode of cache dir", &dir))?;
                }
                if *sharing == kiln_llb::CacheSharing::Locked {
                    let handle = File::open(&dir).map_err(OpError::io("open cache dir", &dir))?;
                    let lock =
                        Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| {
                            OpError::Mount {
                                action: "lock cache dir",
                                path: dir.clone(),
                                source: errno,
                            }
                        })?;
                    self._locks.push(lock);
                }
                self.mounts.push(ExtraMount::Bind {
                    source: dir,
                    target,
                    read_only: mount.readonly,
                });
            }
            MountKind::Bind => {
                if !mount.readonly {
                    return Err(OpError::Unsupported(format!(
                        "RUN --mount=type=bind,rw (target {})",
                        mount.target
                    )));
                }
                let index = mount.input.ok_or_else(|| {
                    OpError::Unsupported(format!(
                        "a bind mount without a source (target {})",
                        mount.target
                    ))
                })?;
                let root = match inputs.get(index as usize) {
                    Some(OpOutput::Local(local)) => local.path.clone(),
                    Some(OpOutput::Chain(chain)) => {
                        let copy = scratch.join(format!("bind-{}", self.copies.len()));
                        self.copy_of(chain, &copy)?
                    }
                    None => return Err(OpError::MissingInput(format!("#{index}"))),
                };
                let selector = mount.selector.as_deref().unwrap_or("/");
                let not_found = |source: std::io::Error| OpError::Io {
                    action: "find bind mount source",
                    path: PathBuf::from(selector),
                    source,
                };
                // Resolved inside the root, so a symlink cannot point the mount at a host path.
                let resolved =
                    kiln_context::sources::resolve_in_root(&root, selector, true, selector)
                        .map_err(|e| not_found(std::io::Error::other(e)))?;
                let source = root.join(resolved);
                std::fs::symlink_metadata(&source).map_err(not_found)?;
                self.mounts.push(ExtraMount::Bind {
                    source,
                    target,
                    read_only: true,
                });
            }
            MountKind::Secret { id, .. } => {
                return Err(OpError::Unsupported(format!(
                    "RUN --mount=type=secret,id={id} (target {})",
                    mount.target
                )));
            }
            MountKind::Ssh { id, .. } => {
                return Err(OpError::Unsupported(format!(
                    "RUN --mount=type=ssh,id={id} (target {})",
                    mount.target
                )));
            }
        }
        Ok(())
    }

    /// A plain-directory copy of a chain's root filesystem, to bind from.
    fn copy_of(&mut self, chain: &[Layer], scratch: &Path) -> Result<PathBuf, OpError> {
        let snapshot = NativeSnapshotter.prepare(&layer_dirs(chain), scratch, &[])?;
        let root = match snapshot.mount() {
            kiln_executor::RootMount::Bind { source } => source.clone(),
            kiln_executor::RootMount::Overlay { upper_dir, .. } => upper_dir.clone(),
        };
        self.copies.push(snapshot);
        Ok(root)
    }
}

//! Exec ops (RUN): a snapshot over the root filesystem input, the command run in a `kiln-executor`
//! sandbox with its output streamed to the display, and the snapshot's changes as the new layer.
//!
//! `RUN --mount` (bind, cache, tmpfs, secret) and secret env vars are prepared by
//! [`super::mounts`]; their mount points are stubs below the image, so they never reach the layer.
//!
//! A RUN is confined like a default Docker container (see `kiln_executor::confinement`);
//! `RUN --security=insecure` runs privileged. Whether a build may use it at all is the CLI's
//! decision (`kiln build --allow security.insecure`, BuildKit's entitlement), made before solving;
//! the mode is a field of the op, so it is part of the op digest and the cache key.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Mutex;

use kiln_executor::{
    Confinement, LineCallback, NetworkMode, Output, SandboxIo, SandboxSpec, mount_stubs,
};
use kiln_llb::{ExecOp, SecurityMode};

use crate::error::OpError;
use crate::layers::commit_diff;
use crate::ops::mounts::prepare_mounts;
use crate::ops::{OpContext, chain_input, layer_dirs};
use crate::result::OpOutput;
use crate::scratch::ScratchDir;

/// The scratch dirs of exec ops, recycled between steps (see [`ScratchDir::recycle`]).
const SCRATCH_PURPOSE: &str = "exec";

/// How many trailing output lines a failure reports.
const TAIL_LINES: usize = 20;

/// The sandbox confinement of a RUN's security mode.
fn confinement_of(security: SecurityMode) -> Confinement {
    match security {
        SecurityMode::Sandbox => Confinement::docker_default(),
        SecurityMode::Insecure => Confinement::privileged(),
    }
}

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
    let base = match root.input {
        Some(index) => chain_input(inputs, index)?.to_vec(),
        None => Vec::new(),
    };

    let scratch = ScratchDir::reuse_or_new(cx.store, SCRATCH_PURPOSE).map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let extra = prepare_mounts(cx, exec, inputs, scratch.path())?;
    // The step's scratch dir itself: a snapshotter creates only its own entries there (`upper`,
    // `work` or `rootfs`, `diff`), beside the mounts' `mount-<n>` and `secrets`.
    let snapshot = cx.snapshotter.prepare(
        &layer_dirs(&base),
        scratch.path(),
        &mount_stubs(&extra.mounts),
    )?;
    // One mount point for every sandbox of the session: each mounts its own tmpfs there, inside
    // its own mount namespace, so the dir is created once and never written to.
    let mut spec = SandboxSpec::new(
        snapshot.mount().clone(),
        cx.store.scratch_dir().join("sandbox"),
        exec.args.clone(),
    );
    spec.env = exec
        .env
        .iter()
        .chain(&exec.proxy_env)
        .chain(&extra.secret_env)
        .cloned()
        .collect();
    spec.cwd = exec.cwd.clone();
    spec.user = exec.user.clone();
    spec.mounts = extra.mounts.clone();
    spec.network = match exec.network {
        kiln_llb::NetworkMode::None => NetworkMode::None,
        kiln_llb::NetworkMode::Host | kiln_llb::NetworkMode::Sandbox => NetworkMode::Host,
    };
    spec.limits = cx.limits;
    spec.extra_hosts = cx.extra_hosts.to_vec();
    spec.confinement = confinement_of(exec.security);

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
    let layer = cx.phase(crate::progress::Phase::Layer, || {
        commit_diff(cx.store, &upper, chain.last(), &cx.layer_options)
    })?;
    chain.push(layer);
    // A step that changed nothing left just an empty upper dir (its layer was already in the store)
    // and overlayfs's work dir: the next step reuses them rather than making and removing its own.
    drop(extra);
    scratch.recycle(SCRATCH_PURPOSE);
    Ok(OpOutput::Chain(chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::{Op, OpDigest, OpKind};

    #[test]
    fn insecure_runs_privileged_and_changes_the_op_digest() {
        assert_eq!(
            confinement_of(SecurityMode::Sandbox),
            Confinement::docker_default()
        );
        assert_eq!(
            confinement_of(SecurityMode::Insecure),
            Confinement::privileged()
        );
        let exec = |security| Op {
            inputs: Vec::new(),
            kind: OpKind::Exec(ExecOp {
                args: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
                network: kiln_llb::NetworkMode::Sandbox,
                security,
                mounts: Vec::new(),
                secret_env: Vec::new(),
                proxy_env: Vec::new(),
            }),
        };
        assert_ne!(
            OpDigest::of_op_without_inputs(&exec(SecurityMode::Sandbox)),
            OpDigest::of_op_without_inputs(&exec(SecurityMode::Insecure)),
            "the cache must not hand a sandboxed result to an insecure step or back"
        );
    }
}

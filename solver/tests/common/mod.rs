//! Helpers the solver's integration tests share: a busybox base built from the host's
//! busybox-static, and a RUN-like exec op over it.

#![allow(dead_code)] // each test binary uses a different subset

use kiln_llb::{
    CopyAction, DefinitionBuilder, ExecOp, FileAction, FileOp, Mount, MountKind, NetworkMode, Op,
    OpKind, OpMetadata, OpRef, SecurityMode, SourceOp,
};
use kiln_solver::LocalSource;

/// `sh -c script` over `base`, its root the step's output, no network.
pub fn exec_op(base: OpRef, script: &str) -> Op {
    Op {
        inputs: vec![base],
        kind: OpKind::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::None,
            security: SecurityMode::Sandbox,
            mounts: vec![Mount {
                target: "/".into(),
                input: Some(0),
                selector: None,
                readonly: false,
                output: Some(0),
                kind: MountKind::Bind,
            }],
            secret_env: vec![],
            proxy_env: vec![],
        }),
    }
}

/// Lays out busybox-static with links for `applets` in `host_dir`, and adds to `builder` a File op
/// (`COPY / /` from that dir as the context) that makes it the root of an empty image. Returns the
/// op and the Local source the solver needs for the dir.
pub fn busybox_base(
    builder: &mut DefinitionBuilder,
    host_dir: &std::path::Path,
    applets: &[&str],
    metadata: OpMetadata,
) -> (OpRef, LocalSource) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed");
    std::fs::create_dir_all(host_dir.join("bin")).unwrap();
    std::fs::copy(busybox, host_dir.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", host_dir.join("bin").join(applet)).unwrap();
    }
    let scratch = builder
        .add(Op::source(SourceOp::Scratch), OpMetadata::default())
        .unwrap();
    let local = builder
        .add(
            Op::source(SourceOp::Local {
                name: "context".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
                follow_paths: vec![],
            }),
            OpMetadata::default(),
        )
        .unwrap();
    let base = builder
        .add(
            Op {
                inputs: vec![scratch, local],
                kind: OpKind::File(FileOp {
                    base: Some(0),
                    actions: vec![FileAction::Copy(CopyAction::new(1, "/", "/"))],
                }),
            },
            metadata,
        )
        .unwrap();
    (
        base,
        LocalSource {
            dir: host_dir.to_path_buf(),
            excludes: vec![],
        },
    )
}

//! Helpers the solver's integration tests share: a store in a temp dir, step metadata as a
//! Dockerfile gives it, the usual sources (scratch, the build context), COPY and file-writing ops,
//! a busybox base built from the host's busybox-static, a RUN-like exec op over it, and a progress
//! recorder.

#![allow(dead_code)] // each test binary uses a different subset

use kiln_llb::{
    CopyAction, DefinitionBuilder, ExecOp, FileAction, FileOp, MkfileAction, Mount, MountKind,
    NetworkMode, Op, OpKind, OpMetadata, OpRef, SecurityMode, SourceLocation, SourceOp,
};
use kiln_solver::{LocalSource, Progress, ProgressEvent};
#[allow(unused_imports)] // each test binary uses a different subset
pub use kiln_testsupport::temp_store;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Metadata of a step shown as `text`, from line `line` of the Dockerfile.
pub fn described_at(text: &str, line: usize) -> OpMetadata {
    OpMetadata {
        description: Some(text.to_string()),
        location: Some(SourceLocation {
            file: "Dockerfile".to_string(),
            start_line: line,
            end_line: line,
        }),
        ignore_cache: false,
    }
}

/// Metadata of a step shown as `text` (line 1 of the Dockerfile).
pub fn described(text: &str) -> OpMetadata {
    described_at(text, 1)
}

/// A File op writing `data` to `path` (mode 0644) on top of `base`.
pub fn mkfile_op(base: OpRef, path: &str, data: &str) -> Op {
    Op {
        inputs: vec![base],
        kind: OpKind::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Mkfile(MkfileAction {
                path: path.into(),
                data: data.into(),
                mode: 0o644,
                owner: None,
            })],
        }),
    }
}

/// Adds `FROM scratch` (the empty root) to `builder`.
pub fn scratch(builder: &mut DefinitionBuilder) -> OpRef {
    builder
        .add(Op::source(SourceOp::Scratch), OpMetadata::default())
        .expect("add scratch")
}

/// Adds the build context (the Local source `context`, no include or exclude patterns) to
/// `builder`.
pub fn context_source(builder: &mut DefinitionBuilder) -> OpRef {
    builder
        .add(
            Op::source(SourceOp::Local {
                name: "context".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
                follow_paths: vec![],
            }),
            OpMetadata::default(),
        )
        .expect("add context source")
}

/// A File op doing `copy` from `source` (input 1) onto `base` (input 0).
pub fn copy_op(base: OpRef, source: OpRef, copy: CopyAction) -> Op {
    Op {
        inputs: vec![base, source],
        kind: OpKind::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Copy(copy)],
        }),
    }
}

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
    std::fs::create_dir_all(host_dir.join("bin")).unwrap();
    std::fs::copy(
        kiln_testsupport::busybox_binary(),
        host_dir.join("bin/busybox"),
    )
    .unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", host_dir.join("bin").join(applet)).unwrap();
    }
    let empty = scratch(builder);
    let local = context_source(builder);
    let base = builder
        .add(
            copy_op(empty, local, CopyAction::new(1, "/", "/")),
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

/// Collects the solver's progress events for a test to read back.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<ProgressEvent>>);

impl Progress for Recorder {
    fn event(&self, event: ProgressEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    /// Per step description: `DONE` or `CACHED`; takes the events recorded so far.
    pub fn outcomes(&self) -> BTreeMap<String, &'static str> {
        let events = std::mem::take(&mut *self.0.lock().unwrap());
        let mut names = BTreeMap::new();
        let mut outcomes = BTreeMap::new();
        for event in events {
            match event {
                ProgressEvent::Started { id, description } => {
                    names.insert(id, description);
                }
                ProgressEvent::Done { id, .. } => {
                    outcomes.insert(names[&id].clone(), "DONE");
                }
                ProgressEvent::Cached { id } => {
                    outcomes.insert(names[&id].clone(), "CACHED");
                }
                _ => {}
            }
        }
        outcomes
    }
}

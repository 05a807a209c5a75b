//! The solver against a real store (run as root, as the tests of this workspace are): file ops, exec
//! ops, merges, local sources with excludes, error reporting, progress events, and image writing.
//! Each case runs with both snapshotters where it matters.

use std::collections::BTreeMap;

use kiln_image::config::{History, ImageConfig};
mod common;

use common::{Recorder, busybox_base, context_source, described_at, exec_op, scratch, temp_store};
use kiln_llb::{
    CopyAction, DefinitionBuilder, FileAction, FileOp, MergeOp, MkdirAction, MkfileAction, Op,
    OpKind, OpRef, RmAction, SourceOp,
};
use kiln_oci::manifest::MediaTypeSet;
use kiln_solver::image::{ImageOptions, find_image, write_image};
use kiln_solver::{
    LocalSource, NoProgress, OpError, OpOutput, ProgressEvent, SnapshotterKind, SolveOptions,
    Solver,
};

const BOTH: [SnapshotterKind; 2] = [SnapshotterKind::Overlay, SnapshotterKind::Native];

fn file_op(base: Option<OpRef>, extra_inputs: Vec<OpRef>, actions: Vec<FileAction>) -> Op {
    let mut inputs: Vec<OpRef> = base.iter().cloned().collect();
    inputs.extend(extra_inputs);
    Op {
        inputs,
        kind: OpKind::File(FileOp {
            base: base.map(|_| 0),
            actions,
        }),
    }
}

fn mkfile(path: &str, data: &str) -> FileAction {
    FileAction::Mkfile(MkfileAction {
        path: path.to_string(),
        data: data.to_string(),
        mode: 0o644,
        owner: None,
    })
}

fn options(snapshotter: SnapshotterKind) -> SolveOptions {
    SolveOptions {
        snapshotter,
        ..SolveOptions::default()
    }
}

fn chain(output: OpOutput) -> Vec<kiln_solver::Layer> {
    match output {
        OpOutput::Chain(chain) => chain,
        OpOutput::Local(_) => panic!("expected a chain"),
    }
}

fn read_merged(chain: &[kiln_solver::Layer], path: &str) -> Option<String> {
    chain
        .iter()
        .rev()
        .find_map(|layer| std::fs::read_to_string(layer.dir.join(path)).ok())
}

#[test]
fn file_ops_make_one_layer_each_on_top_of_the_base() {
    for kind in BOTH {
        let (_root, store) = temp_store();
        let mut builder = DefinitionBuilder::new();
        let scratch = scratch(&mut builder);
        let first = builder
            .add(
                file_op(Some(scratch), vec![], vec![mkfile("/a.txt", "a")]),
                described_at("[1/2] A", 1),
            )
            .unwrap();
        let second = builder
            .add(
                file_op(
                    Some(first),
                    vec![],
                    vec![
                        FileAction::Mkdir(MkdirAction {
                            path: "/d/e".into(),
                            mode: 0o755,
                            make_parents: true,
                            owner: None,
                        }),
                        mkfile("/d/e/b.txt", "b"),
                        FileAction::Rm(RmAction {
                            path: "/a.txt".into(),
                            allow_not_found: false,
                            allow_wildcard: false,
                        }),
                    ],
                ),
                described_at("[2/2] B", 2),
            )
            .unwrap();
        let definition = builder.build();
        let solver = Solver::new(store.clone(), options(kind), &NoProgress, None);
        let layers = chain(solver.solve(&definition, &second).unwrap());
        assert_eq!(layers.len(), 2, "{kind:?}");
        assert_eq!(read_merged(&layers[..1], "a.txt").as_deref(), Some("a"));
        assert_eq!(
            std::fs::read_to_string(layers[1].dir.join("d/e/b.txt")).unwrap(),
            "b"
        );
        // The removal is an overlay whiteout (a 0/0 char device) in the second layer.
        use std::os::unix::fs::FileTypeExt;
        let whiteout = std::fs::symlink_metadata(layers[1].dir.join("a.txt")).unwrap();
        assert!(whiteout.file_type().is_char_device(), "{kind:?}");
        // Blobs are in the store and indexed by diff id.
        for layer in &layers {
            assert!(store.has_blob(&layer.blob_digest));
            let blob = store
                .blob_for_diff_id(&layer.diff_id, kiln_store::Compression::Gzip)
                .unwrap()
                .unwrap();
            assert_eq!(blob.blob_digest, layer.blob_digest);
        }
        assert_eq!(
            layers[1].chain_id,
            kiln_store::chain_id(Some(&layers[0].chain_id), &layers[1].diff_id)
        );
    }
}

#[test]
fn ops_not_needed_by_the_target_never_run() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    // An image nobody has: solving it would fail.
    builder
        .add(
            Op::source(SourceOp::Image {
                reference: "docker.io/library/absent:1".into(),
                platform: None,
            }),
            described_at("FROM absent", 1),
        )
        .unwrap();
    let scratch = scratch(&mut builder);
    let target = builder
        .add(
            file_op(Some(scratch), vec![], vec![mkfile("/x", "x")]),
            described_at("X", 2),
        )
        .unwrap();
    let definition = builder.build();
    let solver = Solver::new(store, options(SnapshotterKind::Native), &NoProgress, None);
    assert_eq!(chain(solver.solve(&definition, &target).unwrap()).len(), 1);
}

#[test]
fn a_missing_image_without_a_puller_names_the_step_and_the_image() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let image = builder
        .add(
            Op::source(SourceOp::Image {
                reference: "docker.io/library/absent:1".into(),
                platform: None,
            }),
            described_at("[1/1] FROM absent:1", 4),
        )
        .unwrap();
    let definition = builder.build();
    let solver = Solver::new(store, options(SnapshotterKind::Native), &NoProgress, None);
    let error = solver.solve(&definition, &image).unwrap_err();
    assert_eq!(error.to_string(), "Dockerfile:4: [1/1] FROM absent:1");
    assert!(
        error
            .kind
            .to_string()
            .contains("docker.io/library/absent:1"),
        "{}",
        error.kind
    );
}

#[test]
fn local_sources_honour_excludes_and_copy_reads_them() {
    for kind in BOTH {
        let (_root, store) = temp_store();
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("keep.txt"), "keep").unwrap();
        std::fs::write(context.path().join("drop.txt"), "drop").unwrap();
        let mut builder = DefinitionBuilder::new();
        let scratch = scratch(&mut builder);
        let local = context_source(&mut builder);
        let copy = builder
            .add(
                file_op(
                    Some(scratch.clone()),
                    vec![local.clone()],
                    vec![FileAction::Copy(CopyAction::new(1, "/", "/ctx/"))],
                ),
                described_at("COPY . /ctx/", 2),
            )
            .unwrap();
        let missing = builder
            .add(
                file_op(
                    Some(scratch),
                    vec![local],
                    vec![FileAction::Copy(CopyAction::new(1, "/drop.txt", "/"))],
                ),
                described_at("COPY drop.txt /", 3),
            )
            .unwrap();
        let definition = builder.build();
        let mut opts = options(kind);
        opts.locals = BTreeMap::from([(
            "context".to_string(),
            LocalSource {
                dir: context.path().to_path_buf(),
                excludes: vec!["drop.txt".into()],
            },
        )]);
        let solver = Solver::new(store, opts, &NoProgress, None);
        let layers = chain(solver.solve(&definition, &copy).unwrap());
        assert!(layers[0].dir.join("ctx/keep.txt").is_file());
        assert!(!layers[0].dir.join("ctx/drop.txt").exists());
        let error = solver.solve(&definition, &missing).unwrap_err();
        assert_eq!(error.location.as_ref().map(|l| l.start_line), Some(3));
        assert!(
            matches!(*error.kind, OpError::FileOp(_)),
            "{:?}",
            error.kind
        );
        assert!(error.kind.to_string().contains("drop.txt"));
    }
}

#[test]
fn an_unknown_local_source_is_an_error() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let local = builder
        .add(
            Op::source(SourceOp::Local {
                name: "other".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
                follow_paths: vec![],
            }),
            described_at("load other", 1),
        )
        .unwrap();
    let definition = builder.build();
    let solver = Solver::new(store, options(SnapshotterKind::Native), &NoProgress, None);
    let error = solver.solve(&definition, &local).unwrap_err();
    assert!(matches!(*error.kind, OpError::MissingLocal(ref name) if name == "other"));
}

#[test]
fn an_empty_diff_still_adds_an_empty_layer_as_buildkit_does() {
    for kind in BOTH {
        let (_root, store) = temp_store();
        let mut builder = DefinitionBuilder::new();
        let scratch = scratch(&mut builder);
        let made = builder
            .add(
                file_op(Some(scratch), vec![], vec![mkfile("/f", "f")]),
                described_at("A", 1),
            )
            .unwrap();
        // Removing something absent (allowed) changes nothing.
        let noop = builder
            .add(
                file_op(
                    Some(made),
                    vec![],
                    vec![FileAction::Rm(RmAction {
                        path: "/absent".into(),
                        allow_not_found: true,
                        allow_wildcard: false,
                    })],
                ),
                described_at("B", 2),
            )
            .unwrap();
        let definition = builder.build();
        let solver = Solver::new(store, options(kind), &NoProgress, None);
        let layers = chain(solver.solve(&definition, &noop).unwrap());
        assert_eq!(layers.len(), 2, "{kind:?}");
        // The diff id of an empty tar (two zero blocks).
        assert_eq!(
            layers[1].diff_id.to_string(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
    }
}

#[test]
fn merge_stacks_chains_with_recomputed_chain_ids() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let a = builder
        .add(
            file_op(Some(scratch.clone()), vec![], vec![mkfile("/a", "a")]),
            described_at("A", 1),
        )
        .unwrap();
    let b = builder
        .add(
            file_op(Some(scratch), vec![], vec![mkfile("/b", "b")]),
            described_at("B", 2),
        )
        .unwrap();
    let merged = builder
        .add(
            Op {
                inputs: vec![a, b],
                kind: OpKind::Merge(MergeOp {}),
            },
            described_at("MERGE", 3),
        )
        .unwrap();
    let definition = builder.build();
    let solver = Solver::new(store, options(SnapshotterKind::Native), &NoProgress, None);
    let layers = chain(solver.solve(&definition, &merged).unwrap());
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].chain_id, layers[0].diff_id);
    assert_eq!(
        layers[1].chain_id,
        kiln_store::chain_id(Some(&layers[0].chain_id), &layers[1].diff_id)
    );
    assert!(layers[1].dir.join("b").is_file());
}

#[test]
fn exec_output_streams_and_failures_carry_the_tail() {
    for kind in BOTH {
        let (_root, store) = temp_store();
        let host = tempfile::tempdir().unwrap();
        let mut builder = DefinitionBuilder::new();
        let (base, local) = busybox_base(
            &mut builder,
            host.path(),
            &["sh", "echo", "seq"],
            described_at("COPY busybox", 1),
        );
        let ok = builder
            .add(
                exec_op(base.clone(), "echo out; echo made > /made"),
                described_at("[2/2] RUN ok", 2),
            )
            .unwrap();
        let failing = builder
            .add(
                exec_op(base, "for i in $(seq 1 25); do echo l$i; done; exit 4"),
                described_at("[2/2] RUN fail", 3),
            )
            .unwrap();
        let definition = builder.build();
        let mut opts = options(kind);
        opts.locals.insert("context".into(), local);
        let recorder = Recorder::default();
        let solver = Solver::new(store, opts, &recorder, None);
        let layers = chain(solver.solve(&definition, &ok).unwrap());
        assert_eq!(
            std::fs::read_to_string(layers[1].dir.join("made")).unwrap(),
            "made\n",
            "{kind:?}"
        );
        let events = recorder.0.lock().unwrap().clone();
        let run_id = events
            .iter()
            .find_map(|e| match e {
                ProgressEvent::Started { id, description } if description == "[2/2] RUN ok" => {
                    Some(*id)
                }
                _ => None,
            })
            .unwrap();
        assert!(events.contains(&ProgressEvent::Output {
            id: run_id,
            line: "out".into()
        }));
        assert!(matches!(events.last(), Some(ProgressEvent::Done { id, .. }) if *id == run_id));

        let error = solver.solve(&definition, &failing).unwrap_err();
        assert_eq!(error.to_string(), "Dockerfile:3: [2/2] RUN fail");
        match error.kind.as_ref() {
            OpError::ExecFailed { status, tail, .. } => {
                assert_eq!(status.code(), 4);
                assert_eq!(tail.len(), 20);
                assert_eq!(tail.first().map(String::as_str), Some("l6"));
                assert_eq!(tail.last().map(String::as_str), Some("l25"));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(matches!(
            recorder.0.lock().unwrap().last(),
            Some(ProgressEvent::Failed { .. })
        ));
    }
}

#[test]
fn written_images_pair_history_with_layers_and_are_found_by_digest() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let a = builder
        .add(
            file_op(Some(scratch), vec![], vec![mkfile("/a", "a")]),
            described_at("A", 1),
        )
        .unwrap();
    let definition = builder.build();
    let solver = Solver::new(
        store.clone(),
        options(SnapshotterKind::Native),
        &NoProgress,
        None,
    );
    let layers = chain(solver.solve(&definition, &a).unwrap());

    let mut config = ImageConfig::empty("linux", "amd64", None);
    config.history = vec![
        History::new("COPY a /", false),
        History::new("WORKDIR /", false),
        History::new("CMD", true),
    ];
    let created = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let image = write_image(
        &store,
        &layers,
        &config,
        0,
        &ImageOptions {
            media_types: MediaTypeSet::Docker,
            created,
        },
    )
    .unwrap();
    assert_eq!(
        image.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        image.config.created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert_eq!(
        image.config.rootfs.diff_ids,
        vec![layers[0].diff_id.to_string()]
    );
    let with_layers = image
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .count();
    assert_eq!(with_layers, 1);
    assert!(
        image
            .config
            .history
            .iter()
            .all(|h| h.created.as_deref() == Some("2023-11-14T22:13:20Z"))
    );

    let record = find_image(
        &store,
        &format!("docker.io/library/x@{}", image.manifest_digest),
    )
    .unwrap()
    .unwrap();
    assert_eq!(record.config_digest, image.config_digest);
    assert_eq!(
        record.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    // The config blob's digest is the image id.
    let bytes = store
        .read_blob_to_vec(&image.config_digest, 1 << 20)
        .unwrap();
    assert_eq!(kiln_image::Digest::of(&bytes), image.config_digest);
}

/// Copies the whole context (`COPY . /ctx/`) with `excludes` applied and returns the layer.
fn copy_context(
    context: &std::path::Path,
    excludes: &[&str],
) -> (tempfile::TempDir, Vec<kiln_solver::Layer>) {
    let (root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let local = context_source(&mut builder);
    let copy = builder
        .add(
            file_op(
                Some(scratch),
                vec![local],
                vec![FileAction::Copy(CopyAction::new(1, "/", "/ctx/"))],
            ),
            described_at("COPY . /ctx/", 1),
        )
        .unwrap();
    let definition = builder.build();
    let mut opts = options(SnapshotterKind::Native);
    opts.locals.insert(
        "context".into(),
        LocalSource {
            dir: context.to_path_buf(),
            excludes: excludes.iter().map(|e| e.to_string()).collect(),
        },
    );
    let solver = Solver::new(store, opts, &NoProgress, None);
    let layers = chain(solver.solve(&definition, &copy).unwrap());
    (root, layers)
}

#[test]
fn a_staged_context_keeps_modes_times_and_symlinks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let context = tempfile::tempdir().unwrap();
    let dir = context.path().join("bin");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("tool"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("bin/tool", context.path().join("link")).unwrap();
    std::fs::write(context.path().join("skip.log"), "x").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710)).unwrap();
    let (_root, layers) = copy_context(context.path(), &["*.log"]);
    let out = layers[0].dir.join("ctx");
    let tool = std::fs::metadata(out.join("bin/tool")).unwrap();
    let original = std::fs::metadata(dir.join("tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o751);
    assert_eq!(tool.mtime(), original.mtime());
    assert_eq!(
        std::fs::metadata(out.join("bin")).unwrap().mode() & 0o7777,
        0o710
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        std::path::Path::new("bin/tool")
    );
    assert!(!out.join("skip.log").exists());
    // Staging never changed the user's files.
    assert_eq!(std::fs::metadata(dir.join("tool")).unwrap().nlink(), 1);
}

#[test]
fn a_context_with_special_files_is_staged_by_copying() {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("keep.txt"), "keep").unwrap();
    std::fs::write(context.path().join("drop.txt"), "drop").unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(context.path().join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let (_root, layers) = copy_context(context.path(), &["drop.txt"]);
    let out = layers[0].dir.join("ctx");
    assert!(out.join("keep.txt").is_file());
    assert!(!out.join("drop.txt").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(out.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

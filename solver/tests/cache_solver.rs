//! The solver's cache and scheduler against a real store (as root): hits and misses as progress
//! events, results keyed by content (a re-run with identical bytes lets later steps hit), records
//! that keep their layers from prune, parallel steps that overlap in their recorded start/end
//! times, each shared op run once, and the first failure stopping what has not started.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

mod common;

use common::{busybox_base, context_source, copy_op, exec_op, mkfile_op, scratch, temp_store};
use kiln_llb::{
    CopyAction, DefinitionBuilder, FileAction, FileOp, MergeOp, Op, OpKind, OpMetadata,
};
use kiln_solver::layers::LayerOptions;
use kiln_solver::{LocalSource, OpOutput, Progress, ProgressEvent, SolveOptions, Solver};
use kiln_store::{PruneOptions, Resource, Store};

/// A step shown as `text`, its cache lookups skipped when `ignore_cache` (`--no-cache-filter`).
fn described(text: &str, ignore_cache: bool) -> OpMetadata {
    OpMetadata {
        ignore_cache,
        ..common::described(text)
    }
}

/// Records events with the moment they arrived (they are sent synchronously from the thread that
/// runs the step, at its start and end).
#[derive(Default)]
struct Recorder(Mutex<Vec<(Instant, ProgressEvent)>>);

impl Progress for Recorder {
    fn event(&self, event: ProgressEvent) {
        self.0.lock().unwrap().push((Instant::now(), event));
    }
}

impl Recorder {
    fn take(&self) -> Vec<(Instant, ProgressEvent)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Per step description: how it ended (`DONE`, `CACHED`, `FAILED`), when it started and ended.
fn outcomes(
    events: &[(Instant, ProgressEvent)],
) -> BTreeMap<String, (&'static str, Instant, Instant)> {
    let mut names = BTreeMap::new();
    let mut result = BTreeMap::new();
    for (at, event) in events {
        match event {
            ProgressEvent::Started { id, description } => {
                names.insert(*id, (description.clone(), *at));
            }
            ProgressEvent::Done { id, .. }
            | ProgressEvent::Cached { id }
            | ProgressEvent::Failed { id, .. } => {
                let status = match event {
                    ProgressEvent::Done { .. } => "DONE",
                    ProgressEvent::Cached { .. } => "CACHED",
                    _ => "FAILED",
                };
                let (name, started) = names[id].clone();
                assert!(
                    result.insert(name, (status, started, *at)).is_none(),
                    "a step ran twice"
                );
            }
            _ => {}
        }
    }
    result
}

fn options(locals: &[(&str, LocalSource)], layers: LayerOptions) -> SolveOptions {
    SolveOptions {
        layers,
        locals: locals
            .iter()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect(),
        ..SolveOptions::default()
    }
}

#[test]
fn a_rerun_step_with_identical_output_lets_later_steps_hit() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    // Always re-run (as with --no-cache-filter), but writes the same bytes every time.
    let first = builder
        .add(mkfile_op(scratch, "/a", "same"), described("[1/2] A", true))
        .unwrap();
    let second = builder
        .add(mkfile_op(first, "/b", "b"), described("[2/2] B", false))
        .unwrap();
    let definition = builder.build();
    let layers = LayerOptions {
        source_date_epoch: Some(0),
        ..LayerOptions::default()
    };
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), options(&[], layers), &recorder, None);
    let one = solver.solve(&definition, &second).unwrap();
    let first_run = outcomes(&recorder.take());
    assert_eq!(first_run["[1/2] A"].0, "DONE");
    assert_eq!(first_run["[2/2] B"].0, "DONE");

    let two = solver.solve(&definition, &second).unwrap();
    let events = recorder.take();
    let second_run = outcomes(&events);
    assert_eq!(
        second_run["[1/2] A"].0, "DONE",
        "ignore_cache re-runs the step"
    );
    assert_eq!(second_run["[2/2] B"].0, "CACHED", "{events:?}");
    assert!(events.iter().any(|(_, e)| matches!(e,
        ProgressEvent::CacheMiss { reason, .. } if reason.contains("--no-cache"))));
    let top = |output: &OpOutput| output.chain().unwrap().last().unwrap().chain_id.clone();
    assert_eq!(top(&one), top(&two));
}

#[test]
fn cache_records_keep_their_layers_through_prune() {
    let (_root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let step = builder
        .add(
            mkfile_op(scratch, "/kept", "kept"),
            described("[1/1] KEEP", false),
        )
        .unwrap();
    let definition = builder.build();
    let recorder = Recorder::default();
    let solver = Solver::new(
        store.clone(),
        options(&[], LayerOptions::default()),
        &recorder,
        None,
    );
    let output = solver.solve(&definition, &step).unwrap();
    let layer = output.chain().unwrap()[0].clone();
    let keys = store
        .cache_keys_referencing(&Resource::Layer(layer.chain_id.clone()))
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("kiln.v1:"));
    drop(solver);
    store.prune(&PruneOptions::default()).unwrap();
    assert!(store.has_blob(&layer.blob_digest));
    assert!(store.layer_path(&layer.chain_id).unwrap().is_some());

    // After prune the record still hits.
    let solver = Solver::new(
        store.clone(),
        options(&[], LayerOptions::default()),
        &recorder,
        None,
    );
    recorder.take();
    solver.solve(&definition, &step).unwrap();
    assert_eq!(outcomes(&recorder.take())["[1/1] KEEP"].0, "CACHED");
}

#[test]
fn independent_steps_overlap_in_their_recorded_times_and_shared_steps_run_once() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipping: one core, RUN steps are not run in parallel");
        return;
    }
    let (_root, store) = temp_store();
    let host = tempfile::tempdir().unwrap();
    let mut builder = DefinitionBuilder::new();
    let (base, local) = busybox_base(
        &mut builder,
        host.path(),
        &["sh", "echo", "sleep"],
        described("[1/3] COPY busybox", false),
    );
    let left = builder
        .add(
            exec_op(base.clone(), "sleep 1; echo l > /l"),
            described("[2/3] RUN left", false),
        )
        .unwrap();
    let right = builder
        .add(
            exec_op(base, "sleep 1; echo r > /r"),
            described("[2/3] RUN right", false),
        )
        .unwrap();
    let both = builder
        .add(
            Op {
                inputs: vec![left, right],
                kind: OpKind::Merge(MergeOp {}),
            },
            OpMetadata::default(),
        )
        .unwrap();
    let definition = builder.build();
    let recorder = Recorder::default();
    let solver = Solver::new(
        store,
        options(&[("context", local)], LayerOptions::default()),
        &recorder,
        None,
    );
    solver.solve(&definition, &both).unwrap();
    let steps = outcomes(&recorder.take());
    // The base both RUNs read ran once (outcomes() panics on a second run).
    assert_eq!(steps["[1/3] COPY busybox"].0, "DONE");
    let (_, left_start, left_end) = steps["[2/3] RUN left"];
    let (_, right_start, right_end) = steps["[2/3] RUN right"];
    assert!(
        left_start < right_end && right_start < left_end,
        "the RUN steps did not overlap: left {:?}..{:?}, right {:?}..{:?}",
        left_start,
        left_end,
        right_start,
        right_end
    );
}

#[test]
fn the_first_failure_stops_what_has_not_started_and_names_the_step() {
    let (_root, store) = temp_store();
    let host = tempfile::tempdir().unwrap();
    let mut builder = DefinitionBuilder::new();
    let (base, local) = busybox_base(
        &mut builder,
        host.path(),
        &["sh", "echo", "sleep"],
        described("[1/3] COPY busybox", false),
    );
    let failing = builder
        .add(
            exec_op(base, "echo nope; exit 3"),
            described("[2/3] RUN fail", false),
        )
        .unwrap();
    let after = builder
        .add(
            mkfile_op(failing, "/after", "x"),
            described("[3/3] AFTER", false),
        )
        .unwrap();
    let definition = builder.build();
    let recorder = Recorder::default();
    let solver = Solver::new(
        store,
        options(&[("context", local)], LayerOptions::default()),
        &recorder,
        None,
    );
    let error = solver.solve(&definition, &after).unwrap_err();
    assert_eq!(error.to_string(), "Dockerfile:1: [2/3] RUN fail");
    let steps = outcomes(&recorder.take());
    assert_eq!(steps["[2/3] RUN fail"].0, "FAILED");
    assert!(!steps.contains_key("[3/3] AFTER"), "{steps:?}");
}

#[test]
fn explain_reports_misses_and_hits_without_running() {
    let (_root, store) = temp_store();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("app.txt"), "v1").unwrap();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let local = context_source(&mut builder);
    let copy = builder
        .add(
            copy_op(scratch, local, CopyAction::new(1, "app.txt", "/app.txt")),
            described("[1/2] COPY app.txt /", false),
        )
        .unwrap();
    let next = builder
        .add(mkfile_op(copy, "/n", "n"), described("[2/2] NEXT", false))
        .unwrap();
    let definition = builder.build();
    let locals = [(
        "context",
        LocalSource {
            dir: context.path().to_path_buf(),
            excludes: vec![],
        },
    )];
    let recorder = Recorder::default();
    let solver = Solver::new(
        store,
        options(&locals, LayerOptions::default()),
        &recorder,
        None,
    );
    let plan = solver.explain(&definition, &next).unwrap();
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|step| !step.cached));
    assert!(recorder.take().is_empty(), "explain runs nothing");

    solver.solve(&definition, &next).unwrap();
    let plan = solver.explain(&definition, &next).unwrap();
    assert!(plan.iter().all(|step| step.cached), "{plan:?}");

    std::fs::write(context.path().join("app.txt"), "v2").unwrap();
    let plan = solver.explain(&definition, &next).unwrap();
    assert_eq!(plan[0].reason.as_deref(), Some("app.txt content changed"));
    assert_eq!(plan[1].reason.as_deref(), Some("an earlier step re-runs"));
}

#[test]
fn an_unchanged_context_is_keyed_from_the_store_stat_cache_without_reading_files() {
    use kiln_solver::cache::key::chain_identity;
    use kiln_solver::cache::{InputComponent, InputKind, StoreStatCache, compute_key};

    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    for index in 0..20 {
        std::fs::write(
            context.path().join(format!("f{index}.txt")),
            format!("{index}"),
        )
        .unwrap();
    }
    // Entries are trusted only once the files are older than the racy margin (2 s).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let store = Store::open(root.path()).unwrap();
    let op = Op {
        inputs: Vec::new(),
        kind: OpKind::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Copy(CopyAction::new(1, "/", "/app/"))],
        }),
    };
    let inputs = || {
        vec![
            InputComponent {
                kind: InputKind::Scratch,
                identity: chain_identity(None),
                key: None,
                description: None,
                local_excludes: Vec::new(),
            },
            InputComponent {
                kind: InputKind::Local,
                identity: "local:context".into(),
                key: None,
                description: None,
                local_excludes: Vec::new(),
            },
        ]
    };
    let locals = BTreeMap::from([(
        "context".to_string(),
        LocalSource {
            dir: context.path().to_path_buf(),
            excludes: Vec::new(),
        },
    )]);
    let key_once = || {
        // A fresh cache object each time: what persists is in the store.
        let stat_cache = StoreStatCache::new(&store);
        let components = compute_key(&op, "", inputs(), &locals, &stat_cache).unwrap();
        stat_cache.flush();
        (components.key(), components.contents[0].checksum.stats)
    };
    let (first_key, first) = key_once();
    assert_eq!(first.files_hashed, 20);
    let (second_key, second) = key_once();
    assert_eq!(second_key, first_key);
    assert_eq!(second.files_hashed, 0, "{second:?}");
    assert_eq!(second.cache_hits, 20);
}

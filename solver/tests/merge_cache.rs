//! `COPY --link` (a Merge op) and the build cache: the linked layer is rebased onto the base, so its
//! chain id in the merged chain is a new one. A step after the merge records that chain; the next
//! build must find every layer of it by those chain ids, and hit.

mod common;

use common::{Recorder, described, mkfile_op};

use std::collections::BTreeMap;

use kiln_llb::{Definition, DefinitionBuilder, MergeOp, Op, OpKind, OpMetadata, OpRef, SourceOp};
use kiln_solver::{OpOutput, SolveOptions, Solver};
use kiln_store::Store;

/// `FROM scratch` + a base layer with `base_data`, then `COPY --link` of a layer made on scratch,
/// then a step on the merged chain. Returns the definition and its target.
fn linked(base_data: &str) -> (Definition, OpRef) {
    let mut builder = DefinitionBuilder::new();
    let scratch = builder
        .add(Op::source(SourceOp::Scratch), OpMetadata::default())
        .unwrap();
    let base = builder
        .add(
            mkfile_op(scratch.clone(), "/base", base_data),
            described("[1/3] BASE"),
        )
        .unwrap();
    let link = builder
        .add(
            mkfile_op(scratch, "/linked", "linked"),
            described("[2/3] COPY --link"),
        )
        .unwrap();
    let merged = builder
        .add(
            Op {
                inputs: vec![base, link],
                kind: OpKind::Merge(MergeOp {}),
            },
            OpMetadata::default(),
        )
        .unwrap();
    let after = builder
        .add(
            mkfile_op(merged, "/after", "after"),
            described("[3/3] AFTER"),
        )
        .unwrap();
    (builder.build(), after)
}

/// Solves `definition` on `store`; returns the outcome (`DONE`/`CACHED`) per step and the result.
fn solve(
    store: &Store,
    definition: &Definition,
    target: &OpRef,
) -> (BTreeMap<String, &'static str>, OpOutput) {
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), SolveOptions::default(), &recorder, None);
    let output = solver.solve(definition, target).unwrap();
    (recorder.outcomes(), output)
}

#[test]
fn a_step_after_a_linked_layer_hits_on_the_next_build() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (definition, target) = linked("one");
    let (first, first_output) = solve(&store, &definition, &target);
    assert_eq!(first["[3/3] AFTER"], "DONE", "{first:?}");

    let (second, second_output) = solve(&store, &definition, &target);
    assert!(
        second.values().all(|outcome| *outcome == "CACHED"),
        "{second:?}"
    );
    let chain = |output: &OpOutput| {
        output
            .chain()
            .unwrap()
            .iter()
            .map(|layer| layer.chain_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(chain(&first_output), chain(&second_output));
    // Every layer of the result is committed under its own chain id, the rebased one included.
    for layer in second_output.chain().unwrap() {
        let dir = store.layer_path(&layer.chain_id).unwrap();
        assert_eq!(dir.as_ref(), Some(&layer.dir), "{}", layer.chain_id);
    }
}

#[test]
fn a_linked_layer_rebased_onto_another_base_is_found_by_its_new_chain_id() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (one, one_target) = linked("one");
    solve(&store, &one, &one_target);
    // Another base: the linked layer itself hits (it never depended on the base) and is rebased.
    let (two, two_target) = linked("two");
    let (first, output) = solve(&store, &two, &two_target);
    assert_eq!(first["[2/3] COPY --link"], "CACHED", "{first:?}");
    assert_eq!(first["[3/3] AFTER"], "DONE", "{first:?}");
    let rebased = output.chain().unwrap()[1].chain_id.clone();
    let (again, output) = solve(&store, &two, &two_target);
    assert!(
        again.values().all(|outcome| *outcome == "CACHED"),
        "{again:?}"
    );
    let layer = &output.chain().unwrap()[1];
    assert_eq!(layer.chain_id, rebased);
    assert_eq!(
        store.layer_path(&rebased).unwrap().as_ref(),
        Some(&layer.dir),
        "the hit committed the rebased layer under its new chain id"
    );
}

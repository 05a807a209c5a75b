//! Cache export and import between two stores (`solver::cache::transfer`): a build on store A
//! exported to an OCI layout dir hits on a fresh store B, `mode=min` covers only the steps of the
//! final image while `mode=max` covers the builder stage too, blobs are fetched only for results a
//! step needs (and for a re-export), a fetched record is kept locally, and a corrupt blob in the
//! cache makes the step run instead of failing the build.

mod common;

use common::{Recorder, described, mkfile_op};

use std::collections::BTreeMap;
use std::path::Path;

use kiln_llb::{
    CopyAction, Definition, DefinitionBuilder, FileAction, FileOp, Op, OpKind, OpMetadata, OpRef,
    SourceOp,
};
use kiln_solver::cache::transfer::{
    CacheConfig, CacheExport, CacheFrom, ExportMode, ExportedRecord, ImportedCache, OldBlobs,
    export_to_dir, pack_cache_mounts, select_records,
};
use kiln_solver::layers::LayerOptions;
use kiln_solver::{OpOutput, SolveOptions, Solver};
use kiln_store::Store;

/// A two-stage build: `builder` writes /tool then /built; the final stage copies /built onto
/// scratch. Returns the definition and the final target.
fn two_stages() -> (Definition, OpRef) {
    let mut builder = DefinitionBuilder::new();
    let scratch = builder
        .add(Op::source(SourceOp::Scratch), OpMetadata::default())
        .unwrap();
    let tool = builder
        .add(
            mkfile_op(scratch.clone(), "/tool", "tool"),
            described("[builder 1/2] TOOL"),
        )
        .unwrap();
    let built = builder
        .add(
            mkfile_op(tool, "/built", "built"),
            described("[builder 2/2] BUILD"),
        )
        .unwrap();
    let copied = builder
        .add(
            Op {
                inputs: vec![scratch, built],
                kind: OpKind::File(FileOp {
                    base: Some(0),
                    actions: vec![FileAction::Copy(CopyAction::new(1, "/built", "/built"))],
                }),
            },
            described("[stage-1 1/2] COPY --from=builder"),
        )
        .unwrap();
    let last = builder
        .add(
            mkfile_op(copied, "/final", "final"),
            described("[stage-1 2/2] FINAL"),
        )
        .unwrap();
    (builder.build(), last)
}

fn export(records: Vec<ExportedRecord>) -> CacheExport {
    CacheExport {
        records,
        cache_mounts: Vec::new(),
    }
}

fn options() -> SolveOptions {
    SolveOptions {
        layers: LayerOptions {
            source_date_epoch: Some(0),
            ..LayerOptions::default()
        },
        ..SolveOptions::default()
    }
}

fn top(output: &OpOutput) -> String {
    output.chain().unwrap().last().unwrap().chain_id.to_string()
}

/// Builds on a fresh store and exports with `mode` to `dest`; returns the result's top chain id.
fn build_and_export(dest: &Path, mode: ExportMode) -> String {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), options(), &recorder, None);
    let output = solver.solve(&definition, &target).unwrap();
    let keys = solver.cache_keys();
    assert_eq!(keys.len(), 4, "every step is recorded: {keys:?}");
    let records = select_records(&store, &keys, output.chain().unwrap(), mode, None).unwrap();
    let summary = export_to_dir(
        &store,
        &export(records.clone()),
        dest,
        None,
        OldBlobs::Remove,
    )
    .unwrap();
    assert_eq!(summary.records, records.len());
    top(&output)
}

/// Solves on a fresh store with the cache at `src`; returns the outcomes and the top chain id.
fn build_with_cache(src: &Path) -> (BTreeMap<String, &'static str>, String, Store) {
    let root = tempfile::tempdir().unwrap().keep();
    let store = Store::open(&root).unwrap();
    let mut imported = ImportedCache::new();
    imported
        .add(&CacheFrom::Local {
            src: src.to_path_buf(),
        })
        .unwrap();
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver =
        Solver::new(store.clone(), options(), &recorder, None).with_cache_import(&imported);
    let output = solver.solve(&definition, &target).unwrap();
    (recorder.outcomes(), top(&output), store)
}

/// The blob of the top layer of the exported record described as `description`.
fn exported_blob(cache: &Path, description: &str) -> String {
    let blobs = cache.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let Ok(config) = serde_json::from_slice::<CacheConfig>(&bytes) else {
            continue;
        };
        for record in config.records {
            if record.entry.description.as_deref() == Some(description) {
                let top = record.entry.layers.last().unwrap();
                return top.blob_digest.to_string();
            }
        }
    }
    panic!("no exported record of {description}");
}

#[test]
fn a_max_export_makes_every_step_hit_on_a_fresh_store_fetching_only_what_is_needed() {
    let cache = tempfile::tempdir().unwrap();
    let exported_top = build_and_export(cache.path(), ExportMode::Max);
    for file in ["index.json", "oci-layout"] {
        assert!(cache.path().join(file).is_file(), "{file}");
    }
    let (outcomes, imported_top, store) = build_with_cache(cache.path());
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert!(
        outcomes.values().all(|outcome| *outcome == "CACHED"),
        "{outcomes:?}"
    );
    assert_eq!(imported_top, exported_top);
    // Lazy: the builder's own layer was never needed (only the final chain was), so never fetched.
    let tool: kiln_image::Digest = exported_blob(cache.path(), "[builder 1/2] TOOL")
        .parse()
        .unwrap();
    assert!(!store.has_blob(&tool), "the builder-only blob was fetched");
    let last: kiln_image::Digest = exported_blob(cache.path(), "[stage-1 2/2] FINAL")
        .parse()
        .unwrap();
    assert!(store.has_blob(&last));

    // The fetched records are now the store's own: the final stage hits without the cache
    // (the builder re-runs into identical bytes).
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), options(), &recorder, None);
    solver.solve(&definition, &target).unwrap();
    let again = recorder.outcomes();
    assert_eq!(
        again["[stage-1 1/2] COPY --from=builder"], "CACHED",
        "{again:?}"
    );
    assert_eq!(again["[stage-1 2/2] FINAL"], "CACHED", "{again:?}");
    let _ = std::fs::remove_dir_all(store.root());
}

#[test]
fn re_exporting_lazy_hits_fetches_their_blobs_from_the_imported_cache() {
    let first_cache = tempfile::tempdir().unwrap();
    let exported_top = build_and_export(first_cache.path(), ExportMode::Max);

    // Store B hits everything lazily, then exports with mode=max to a second cache.
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let mut imported = ImportedCache::new();
    imported
        .add(&CacheFrom::Local {
            src: first_cache.path().to_path_buf(),
        })
        .unwrap();
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver =
        Solver::new(store.clone(), options(), &recorder, None).with_cache_import(&imported);
    let output = solver.solve(&definition, &target).unwrap();
    let records = select_records(
        &store,
        &solver.cache_keys(),
        output.chain().unwrap(),
        ExportMode::Max,
        Some(&imported),
    )
    .unwrap();
    assert_eq!(records.len(), 4, "the never-fetched builder records too");
    let second_cache = tempfile::tempdir().unwrap();
    export_to_dir(
        &store,
        &export(records),
        second_cache.path(),
        Some(&imported),
        OldBlobs::Remove,
    )
    .unwrap();

    // Store C, from the second cache only: every step hits.
    let (outcomes, top_c, store_c) = build_with_cache(second_cache.path());
    assert!(outcomes.values().all(|o| *o == "CACHED"), "{outcomes:?}");
    assert_eq!(top_c, exported_top);
    let _ = std::fs::remove_dir_all(store_c.root());
}

#[test]
fn a_min_export_covers_only_the_final_image_steps() {
    let cache = tempfile::tempdir().unwrap();
    let exported_top = build_and_export(cache.path(), ExportMode::Min);
    let (outcomes, imported_top, store) = build_with_cache(cache.path());
    assert_eq!(outcomes["[builder 1/2] TOOL"], "DONE", "{outcomes:?}");
    assert_eq!(outcomes["[builder 2/2] BUILD"], "DONE", "{outcomes:?}");
    // The builder re-ran into identical bytes, so the final stage's keys match the export.
    assert_eq!(outcomes["[stage-1 1/2] COPY --from=builder"], "CACHED");
    assert_eq!(outcomes["[stage-1 2/2] FINAL"], "CACHED");
    assert_eq!(imported_top, exported_top);
    let _ = std::fs::remove_dir_all(store.root());
}

#[test]
fn a_corrupt_blob_in_the_cache_runs_the_step_instead_of_failing() {
    let cache = tempfile::tempdir().unwrap();
    let exported_top = build_and_export(cache.path(), ExportMode::Max);
    let blobs = cache.path().join("blobs/sha256");
    let index = std::fs::read_to_string(cache.path().join("index.json")).unwrap();
    // Overwrite every layer blob (not the index, manifest or config) with garbage.
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let is_json = bytes.first() == Some(&b'{');
        if !is_json && !index.contains(&*path.file_name().unwrap().to_string_lossy()) {
            std::fs::write(&path, b"not a layer").unwrap();
            corrupted += 1;
        }
    }
    // BUILD and COPY --from=builder write the same one-file layer: one blob for both.
    assert_eq!(corrupted, 3, "layer blobs");
    let (outcomes, imported_top, store) = build_with_cache(cache.path());
    assert_eq!(outcomes["[builder 1/2] TOOL"], "DONE", "{outcomes:?}");
    assert_eq!(outcomes["[builder 2/2] BUILD"], "DONE", "{outcomes:?}");
    assert_eq!(outcomes["[stage-1 2/2] FINAL"], "DONE", "{outcomes:?}");
    // Its imported record still hits: its only blob is the one BUILD just wrote into the store,
    // so nothing is fetched from the (corrupt) cache.
    assert_eq!(outcomes["[stage-1 1/2] COPY --from=builder"], "CACHED");
    assert_eq!(imported_top, exported_top);
    let _ = std::fs::remove_dir_all(store.root());
}

#[test]
fn an_export_of_the_same_build_again_writes_no_layer_blob_twice() {
    let cache = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), options(), &recorder, None);
    let output = solver.solve(&definition, &target).unwrap();
    let records = select_records(
        &store,
        &solver.cache_keys(),
        output.chain().unwrap(),
        ExportMode::Max,
        None,
    )
    .unwrap();
    let records = export(records);
    let first = export_to_dir(&store, &records, cache.path(), None, OldBlobs::Remove).unwrap();
    assert_eq!(first.records, 4);
    // BUILD and COPY --from=builder write the same one-file layer: stored once.
    assert_eq!(first.blobs_written, 3, "{first:?}");
    let second = export_to_dir(&store, &records, cache.path(), None, OldBlobs::Remove).unwrap();
    assert_eq!(second.blobs_written, 0, "{second:?}");
    assert_eq!(second.blobs_present, first.blobs_written);
}

#[test]
fn cache_mount_contents_travel_with_the_cache_and_never_replace_local_ones() {
    let root_a = tempfile::tempdir().unwrap();
    let store_a = Store::open(root_a.path()).unwrap();
    let warm = store_a.cache_mount_dir("go-build").unwrap();
    std::fs::create_dir_all(warm.join("sub")).unwrap();
    std::fs::write(warm.join("sub/object"), "compiled").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let export = CacheExport {
        records: Vec::new(),
        cache_mounts: pack_cache_mounts(&store_a).unwrap(),
    };
    assert_eq!(export.cache_mounts.len(), 1);
    export_to_dir(&store_a, &export, cache.path(), None, OldBlobs::Remove).unwrap();

    let root_b = tempfile::tempdir().unwrap();
    let store_b = Store::open(root_b.path()).unwrap();
    let mut imported = ImportedCache::for_store(&store_b);
    imported
        .add(&CacheFrom::Local {
            src: cache.path().to_path_buf(),
        })
        .unwrap();
    let dir_b = store_b.layout().cache_mount_path("go-build");
    assert_eq!(
        std::fs::read_to_string(dir_b.join("sub/object")).unwrap(),
        "compiled"
    );

    // A store with its own contents keeps them.
    let root_c = tempfile::tempdir().unwrap();
    let store_c = Store::open(root_c.path()).unwrap();
    let own = store_c.cache_mount_dir("go-build").unwrap();
    std::fs::write(own.join("mine"), "local").unwrap();
    let mut imported = ImportedCache::for_store(&store_c);
    imported
        .add(&CacheFrom::Local {
            src: cache.path().to_path_buf(),
        })
        .unwrap();
    assert!(own.join("mine").is_file());
    assert!(!own.join("sub").exists());
}

#[test]
fn a_lazy_hit_whose_blob_turns_out_corrupt_runs_the_step_instead() {
    let cache = tempfile::tempdir().unwrap();
    let exported_top = build_and_export(cache.path(), ExportMode::Max);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let mut imported = ImportedCache::new();
    imported
        .add(&CacheFrom::Local {
            src: cache.path().to_path_buf(),
        })
        .unwrap();
    // Damaged after the records were read, keeping its size: the hit is taken, the fetch fails.
    let last = exported_blob(cache.path(), "[stage-1 2/2] FINAL");
    let path = cache
        .path()
        .join("blobs/sha256")
        .join(last.trim_start_matches("sha256:"));
    let length = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![b'x'; length]).unwrap();

    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver =
        Solver::new(store.clone(), options(), &recorder, None).with_cache_import(&imported);
    let output = solver.solve(&definition, &target).unwrap();
    assert_eq!(top(&output), exported_top);
    let outcomes = recorder.outcomes();
    // Shown as cached when hit, then run when its content was needed.
    assert_eq!(outcomes["[stage-1 2/2] FINAL"], "DONE", "{outcomes:?}");
    assert_eq!(outcomes["[stage-1 1/2] COPY --from=builder"], "CACHED");
}

/// Sets the mtime of every file under `cache/blobs/sha256` an hour back: as if the export that
/// wrote them ran an hour ago (an export removes only files older than its own start).
fn age_blobs(cache: &Path) {
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        std::fs::File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(an_hour_ago))
            .unwrap();
    }
}

fn blob_names(cache: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Solves the two-stage build on `store`; returns the records `mode` selects.
fn solved_records(store: &Store, mode: ExportMode) -> CacheExport {
    let (definition, target) = two_stages();
    let recorder = Recorder::default();
    let solver = Solver::new(store.clone(), options(), &recorder, None);
    let output = solver.solve(&definition, &target).unwrap();
    export(
        select_records(
            store,
            &solver.cache_keys(),
            output.chain().unwrap(),
            mode,
            None,
        )
        .unwrap(),
    )
}

#[test]
fn an_export_to_a_dir_removes_the_blobs_of_earlier_exports_it_no_longer_references() {
    let cache = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let max = solved_records(&store, ExportMode::Max);
    let first = export_to_dir(&store, &max, cache.path(), None, OldBlobs::Remove).unwrap();
    assert_eq!(first.blobs_removed, 0, "{first:?}");
    let tool = exported_blob(cache.path(), "[builder 1/2] TOOL");
    let tool_hex = tool.strip_prefix("sha256:").unwrap().to_string();
    let after_max = blob_names(cache.path());
    assert!(after_max.contains(&tool_hex));
    age_blobs(cache.path());

    // A min export drops the builder's records: its layer, and the old config and manifest, go.
    let min = solved_records(&store, ExportMode::Min);
    let second = export_to_dir(&store, &min, cache.path(), None, OldBlobs::Remove).unwrap();
    assert_eq!(second.blobs_removed, 3, "{second:?}");
    let after_min = blob_names(cache.path());
    assert!(
        !after_min.contains(&tool_hex),
        "the builder-only layer is gone"
    );
    // 2 layers (the final stage's) + config + manifest; no temp files left behind.
    assert_eq!(after_min.len(), 4, "{after_min:?}");
    assert!(cache.path().join(".kiln-lock").is_file());

    // What is left is a complete cache: the final stage hits from it on a fresh store.
    let (outcomes, _, fresh) = build_with_cache(cache.path());
    assert_eq!(outcomes["[stage-1 1/2] COPY --from=builder"], "CACHED");
    assert_eq!(outcomes["[stage-1 2/2] FINAL"], "CACHED");
    let _ = std::fs::remove_dir_all(fresh.root());
}

#[test]
fn reset_false_keeps_old_blobs_and_recent_unknown_files_are_never_removed() {
    let cache = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let max = solved_records(&store, ExportMode::Max);
    export_to_dir(&store, &max, cache.path(), None, OldBlobs::Remove).unwrap();
    age_blobs(cache.path());
    let after_max = blob_names(cache.path());

    let min = solved_records(&store, ExportMode::Min);
    let kept = export_to_dir(&store, &min, cache.path(), None, OldBlobs::Keep).unwrap();
    assert_eq!(kept.blobs_removed, 0);
    assert!(blob_names(cache.path()).is_superset(&after_max));

    // A blob another writer (not holding the lock) is writing right now is newer than the
    // export's start: it stays, while the aged, unreferenced blobs go.
    age_blobs(cache.path());
    let foreign = cache.path().join("blobs/sha256").join("f".repeat(64));
    std::fs::write(&foreign, b"being written").unwrap();
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&foreign)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(future))
        .unwrap();
    let cleaned = export_to_dir(&store, &min, cache.path(), None, OldBlobs::Remove).unwrap();
    assert_eq!(cleaned.blobs_removed, 3, "{cleaned:?}");
    assert!(foreign.exists());
}

//! COPY from a build context with `.dockerignore` patterns: a plain path is read in place with the
//! patterns applied while copying, wildcards and symlinked paths go through the staged copy; both
//! must select exactly the entries the patterns leave in the context.

use std::collections::BTreeMap;
use std::path::Path;

mod common;

use common::{context_source, copy_op, scratch, temp_store};
use kiln_llb::{CopyAction, DefinitionBuilder, OpMetadata};
use kiln_solver::{
    LocalSource, NoProgress, OpError, OpOutput, SnapshotterKind, SolveOptions, Solver,
};

/// Solves one COPY from the context `dir` (with `excludes` as its `.dockerignore`); returns the
/// store's temp dir (keep it alive) and the copy's layer dir, or the error.
fn solve_copy(
    dir: &Path,
    excludes: &[&str],
    copy: CopyAction,
) -> (tempfile::TempDir, Result<std::path::PathBuf, OpError>) {
    let (root, store) = temp_store();
    let mut builder = DefinitionBuilder::new();
    let scratch = scratch(&mut builder);
    let local = context_source(&mut builder);
    let target = builder
        .add(copy_op(scratch, local, copy), OpMetadata::default())
        .unwrap();
    let definition = builder.build();
    let options = SolveOptions {
        snapshotter: SnapshotterKind::Native,
        locals: BTreeMap::from([(
            "context".to_string(),
            LocalSource {
                dir: dir.to_path_buf(),
                excludes: excludes.iter().map(|e| e.to_string()).collect(),
            },
        )]),
        ..SolveOptions::default()
    };
    let solver = Solver::new(store, options, &NoProgress, None);
    let result = solver
        .solve(&definition, &target)
        .map(|output| match output {
            OpOutput::Chain(chain) => chain.last().unwrap().dir.clone(),
            OpOutput::Local(_) => panic!("expected a chain"),
        })
        .map_err(|error| *error.kind);
    (root, result)
}

/// Every path below `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            paths.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    paths.sort();
    paths
}

fn context() -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    for (path, text) in [
        ("Dockerfile", "FROM scratch\n"),
        ("app/main.rs", "main"),
        ("app/debug.log", "debug"),
        ("app/logs/a.log", "a"),
        ("app/logs/keep.log", "keep"),
        ("app/.env", "secret"),
        ("app/sub/.env", "nested"),
        ("app/notes.txt", "notes"),
    ] {
        let path = context.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::os::unix::fs::symlink("app", context.path().join("link")).unwrap();
    context
}

const IGNORE: [&str; 4] = ["**/*.log", "!app/logs/keep.log", "app/.env", "Dockerfile"];

#[test]
fn a_dockerignored_file_inside_a_copied_dir_is_left_out_and_a_reincluded_one_copied() {
    let context = context();
    let (_root, layer) = solve_copy(context.path(), &IGNORE, CopyAction::new(1, "/app", "/out/"));
    let layer = layer.unwrap();
    assert_eq!(
        listing(&layer.join("out")),
        [
            "logs",
            "logs/keep.log",
            "main.rs",
            "notes.txt",
            "sub",
            "sub/.env"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(layer.join("out/logs/keep.log")).unwrap(),
        "keep"
    );
}

#[test]
fn copy_exclude_is_relative_to_the_source_and_dockerignore_to_the_root() {
    let context = context();
    let mut copy = CopyAction::new(1, "/app", "/out/");
    // Anchored at the copied directory: `app/notes.txt` and `app/.env` alike.
    copy.exclude_patterns = vec!["notes.txt".into(), "sub".into()];
    let (_root, layer) = solve_copy(context.path(), &IGNORE, copy);
    assert_eq!(
        listing(&layer.unwrap().join("out")),
        ["logs", "logs/keep.log", "main.rs"]
    );
}

#[test]
fn wildcard_symlinked_and_in_place_copies_select_the_same_entries() {
    let context = context();
    let (_a, in_place) = solve_copy(context.path(), &IGNORE, CopyAction::new(1, "/app", "/out/"));
    let (_b, wildcard) = solve_copy(context.path(), &IGNORE, CopyAction::new(1, "/ap*", "/out/"));
    let (_c, symlinked) = solve_copy(
        context.path(),
        &IGNORE,
        CopyAction::new(1, "/link", "/out/"),
    );
    let expected = listing(&in_place.unwrap().join("out"));
    assert_eq!(listing(&wildcard.unwrap().join("out")), expected);
    assert_eq!(listing(&symlinked.unwrap().join("out")), expected);
}

#[test]
fn the_whole_context_leaves_out_ignored_files_and_the_dockerfile() {
    let context = context();
    let (_root, layer) = solve_copy(context.path(), &IGNORE, CopyAction::new(1, "/", "/ctx/"));
    let listed = listing(&layer.unwrap().join("ctx"));
    assert!(!listed.iter().any(|p| p == "Dockerfile"), "{listed:?}");
    assert!(!listed.iter().any(|p| p == "app/.env"), "{listed:?}");
    assert!(!listed.iter().any(|p| p == "app/debug.log"), "{listed:?}");
    assert!(
        listed.iter().any(|p| p == "app/logs/keep.log"),
        "{listed:?}"
    );
    assert!(listed.iter().any(|p| p == "app/sub/.env"), "{listed:?}");
}

#[test]
fn an_ignored_source_is_not_found() {
    let context = context();
    for source in ["/app/.env", "/Dockerfile", "/app/debug.log"] {
        let (_root, result) = solve_copy(context.path(), &IGNORE, CopyAction::new(1, source, "/"));
        let error = result.unwrap_err();
        assert!(matches!(error, OpError::FileOp(_)), "{source}: {error:?}");
        assert!(
            error.to_string().contains(source.trim_start_matches('/')),
            "{error}"
        );
    }
}

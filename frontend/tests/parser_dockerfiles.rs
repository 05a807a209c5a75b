//! The real-world Dockerfiles of `shared/conformance/dockerfiles` (docker-library, BuildKit,
//! buildx, compose, nginx, …): every one that is a real Dockerfile must parse into typed
//! stages; the jq/Go templates among them must at least not crash the parser.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_frontend::instructions::{InstructionKind, parse_mount};
use kiln_frontend::parser::{dump, parse_ast, parse_dockerfile};

fn dockerfiles_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/dockerfiles"
    ))
    .to_path_buf()
}

/// `(file name, is a template)` for each row of `index.tsv`.
fn index_rows() -> Vec<(String, bool)> {
    let index = fs::read_to_string(dockerfiles_dir().join("index.tsv")).unwrap();
    index
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let columns: Vec<&str> = line.split('\t').collect();
            let features = columns.get(5).copied().unwrap_or("");
            // The README also names nginx's `Dockerfile-*.template` files as templates, though
            // their rows lack the tag.
            let template = features.contains("TEMPLATE") || columns[0].contains(".template.");
            (columns[0].to_string(), template)
        })
        .collect()
}

#[test]
fn real_world_dockerfiles_parse() {
    let rows = index_rows();
    let mut parsed = 0;
    let mut templates = 0;
    let mut rejected = 0;
    let mut mounts = 0;
    let mut stages = 0;
    let mut instructions = 0;
    let mut failures = Vec::new();
    for (file, template) in &rows {
        let source = fs::read_to_string(dockerfiles_dir().join(file)).unwrap();
        if *template {
            // Not valid Dockerfiles; only check that the parser returns instead of panicking.
            let _ = parse_dockerfile(&source, file);
            templates += 1;
            continue;
        }
        if file.contains("wrong-composefile") {
            // docker/compose's fixture for a broken Dockerfile: it must fail, and say why.
            let err = parse_dockerfile(&source, file).unwrap_err();
            assert!(
                err.to_string().contains("unknown instruction: WRONG"),
                "{err}"
            );
            rejected += 1;
            continue;
        }
        match parse_dockerfile(&source, file) {
            Ok(dockerfile) => {
                parsed += 1;
                stages += dockerfile.stages.len();
                instructions += dockerfile
                    .stages
                    .iter()
                    .map(|s| s.instructions.len())
                    .sum::<usize>();
                assert!(!dockerfile.stages.is_empty(), "{file}: no stages");
                // Every --mount without variables must parse as it stands.
                for instruction in dockerfile.stages.iter().flat_map(|s| &s.instructions) {
                    if let InstructionKind::Run(run) = &instruction.kind {
                        for mount in run.mounts.iter().filter(|m| !m.contains('$')) {
                            parse_mount(mount)
                                .unwrap_or_else(|e| panic!("{file}: --mount={mount}: {e}"));
                            mounts += 1;
                        }
                    }
                }
                // The dump is stable: parsing the same text twice gives the same tree.
                let ast = parse_ast(&source).unwrap();
                assert_eq!(dump(&ast), dump(&parse_ast(&source).unwrap()));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    eprintln!("real-world --mount values parsed: {mounts}");
    eprintln!(
        "real-world Dockerfiles: {parsed} parsed ({stages} stages, {instructions} instructions), \
         {templates} templates skipped, {rejected} intentionally broken rejected, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(parsed + templates + rejected, rows.len());
    assert!(parsed >= 100, "only {parsed} files parsed");
}

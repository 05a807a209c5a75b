//! `kiln debug parse` and `kiln debug llb` through the real binary.

mod common;

use std::path::Path;

use common::{Kiln, stderr, stdout, testdata};

fn conformance(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance")
        .join(path)
}

#[test]
fn debug_parse_prints_every_conformance_result_exactly() {
    let kiln = Kiln::new();
    let cases = conformance("parser/testfiles");
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&cases)
        .expect("parser corpus")
        .flatten()
        .collect();
    names.sort_by_key(|e| e.file_name());
    for case in names {
        let dockerfile = case.path().join("Dockerfile");
        let expected = std::fs::read_to_string(case.path().join("result")).expect("result file");
        let output = kiln.run(&["debug", "parse", dockerfile.to_str().expect("utf-8 path")]);
        if output.status.success() && stdout(&output) == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "{}: {}",
                case.file_name().to_string_lossy(),
                stderr(&output)
            ));
        }
    }
    eprintln!("kiln debug parse: {passed} cases equal their result");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(passed >= 33, "only {passed} cases found");
}

#[test]
fn debug_parse_rejects_every_negative_case_with_a_located_error() {
    let kiln = Kiln::new();
    let cases = conformance("parser/testfiles-negative");
    let mut rejected = 0;
    for case in std::fs::read_dir(&cases)
        .expect("negative corpus")
        .flatten()
    {
        let dockerfile = case.path().join("Dockerfile");
        let output = kiln.run(&["debug", "parse", dockerfile.to_str().expect("utf-8 path")]);
        assert!(
            !output.status.success(),
            "{} was accepted",
            case.path().display()
        );
        assert!(
            stderr(&output).contains("Dockerfile"),
            "the error names the file: {}",
            stderr(&output)
        );
        rejected += 1;
    }
    eprintln!("kiln debug parse: {rejected} negative cases rejected");
    assert_eq!(rejected, 4);
}

#[test]
fn debug_llb_offline_prints_the_graph_and_configs() {
    let kiln = Kiln::new();
    let context = kiln.context("ctx", &[("app.txt", "hello\n")]);
    let dockerfile = testdata().join("lower/multistage.Dockerfile");
    let output = kiln.ok(&[
        "debug",
        "llb",
        "--offline",
        "-f",
        dockerfile.to_str().expect("utf-8 path"),
        context.to_str().expect("utf-8 path"),
    ]);
    let text = stdout(&output);
    assert!(text.contains("source"), "{text}");
    assert!(text.contains("\"Env\"") || text.contains("Env"), "{text}");

    // An unknown target is an error naming it.
    let output = kiln.run(&[
        "debug",
        "llb",
        "--offline",
        "--target",
        "no-such-stage",
        "-f",
        dockerfile.to_str().expect("utf-8 path"),
        context.to_str().expect("utf-8 path"),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no-such-stage"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn debug_llb_warns_about_unused_build_args() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nARG USED\nCOPY . /\n")],
    );
    let output = kiln.ok(&[
        "debug",
        "llb",
        "--offline",
        "--build-arg",
        "USED=1",
        "--build-arg",
        "UNUSED=2",
        context.to_str().expect("utf-8 path"),
    ]);
    let warnings = stderr(&output);
    assert!(warnings.contains("UNUSED"), "{warnings}");
    assert!(
        !warnings.contains("[USED]") && !warnings.contains(" USED "),
        "{warnings}"
    );
}

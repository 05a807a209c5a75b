//! Conformance of the `.dockerignore` reader, matcher and context walk against the upstream-derived
//! data in `shared/conformance/dockerignore/` (cases.tsv rows and walk_cases.json).

use std::path::{Path, PathBuf};

use kiln_context::IgnorePatterns;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/dockerignore")
}

/// Runs one cases.tsv row: each pattern is one `.dockerignore` line.
fn run_row(patterns: &[String], path: &str) -> String {
    let text = patterns.join("\n");
    match IgnorePatterns::parse(&text) {
        Err(_) => "error".to_owned(),
        Ok(compiled) => {
            if compiled.matches(path) {
                "excluded".to_owned()
            } else {
                "included".to_owned()
            }
        }
    }
}

#[test]
fn cases_tsv_all_rows() {
    let text = std::fs::read_to_string(data_dir().join("cases.tsv")).expect("read cases.tsv");
    let mut passed = 0;
    let mut failures = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            columns.len(),
            6,
            "row {} has {} columns",
            index + 1,
            columns.len()
        );
        let patterns: Vec<String> = serde_json::from_str(columns[5]).expect("patterns_json");
        let (path, expected) = (columns[1], columns[2]);
        let got = run_row(&patterns, path);
        if got == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: patterns {:?} path {:?}: expected {expected}, got {got} ({})",
                index + 1,
                patterns,
                path,
                columns[4]
            ));
        }
    }
    println!("cases.tsv: {passed} passed, {} failed", failures.len());
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert_eq!(passed, 218, "every row must run");
}

#[test]
fn error_rows_fail_the_same_way_every_time() {
    // `[Local-Only]/` must keep failing, not crash or start matching, on repeated use.
    for _ in 0..3 {
        assert!(IgnorePatterns::parse("[Local-Only]/").is_err());
    }
}

#[test]
fn ignorefile_parse_case() {
    let text = std::fs::read_to_string(data_dir().join("walk_cases.json")).expect("read json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let case = &json["ignorefile_parse"];
    let input = case["input"].as_str().expect("input");
    let want: Vec<String> = serde_json::from_value(case["patterns"].clone()).expect("patterns");
    assert_eq!(kiln_context::read_ignore_lines(input), want);
    // The lone `!` lines are kept by the reader but rejected by the compiler.
    assert!(IgnorePatterns::parse(input).is_err());
    println!("ignorefile_parse: 1 passed");
}

/// Creates the `tree` of a walk case under `root`.
fn build_tree(root: &Path, tree: &serde_json::Value) {
    for item in tree.as_array().expect("tree array") {
        let path = item[0].as_str().expect("path");
        let kind = item[1].as_str().expect("kind");
        let target = root.join(path);
        if kind.starts_with("dir") {
            std::fs::create_dir_all(&target).expect("mkdir");
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).expect("mkdir parent");
            }
            std::fs::write(&target, path).expect("write");
        }
    }
}

fn emitted(root: &Path, exclude: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let patterns: Vec<String> = serde_json::from_value(exclude.clone()).expect("exclude");
    let ignore = IgnorePatterns::compile(&patterns).map_err(|e| e.to_string())?;
    let entries = kiln_context::walk_context(root, &ignore).map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .map(|e| (e.kind.as_str().to_owned(), e.path))
        .collect())
}

fn expected_pairs(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_array()
        .expect("emitted_full")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("kind").to_owned(),
                pair[1].as_str().expect("path").to_owned(),
            )
        })
        .collect()
}

#[test]
fn walk_cases() {
    let text = std::fs::read_to_string(data_dir().join("walk_cases.json")).expect("read json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut checks = 0;
    let mut skipped = Vec::new();
    for case in json["walk"]["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        if case.get("variants").is_some() {
            // Needs an unreadable directory, which root can read anyway: covered by
            // `permission_denied_walk_cases` below when dropping DAC capabilities works.
            skipped.push(name.to_owned());
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        build_tree(dir.path(), &case["tree"]);
        let got = emitted(dir.path(), &case["exclude"]).expect("walk");
        if let Some(want) = case.get("emitted_full") {
            assert_eq!(got, expected_pairs(want), "case {name}");
            checks += 1;
        }
        let got_paths: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
        // open_ok / open_not_exist: visible or not through the filtered context.
        for path in case["open_ok"].as_array().into_iter().flatten() {
            let path = path.as_str().expect("path");
            assert!(
                got_paths.contains(&path),
                "case {name}: {path} must be visible"
            );
            checks += 1;
        }
        for path in case["open_not_exist"].as_array().into_iter().flatten() {
            let path = path.as_str().expect("path");
            assert!(
                !got_paths.contains(&path),
                "case {name}: {path} must be hidden"
            );
            checks += 1;
        }
    }
    println!("walk cases: {checks} checks passed; run elsewhere: {skipped:?}");
    assert!(checks >= 7);
}

/// Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread's effective set, so
/// that even root gets EACCES on a mode-0000 directory. Capabilities are per thread on Linux;
/// call this only on a thread made for it.
fn drop_dac_capabilities_on_this_thread() -> Result<(), std::io::Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-element data array are what the v3 capget/capset ABI expects.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    data[0].effective &= !((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH));
    // SAFETY: as above; only this thread's credentials change.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn permission_denied_walk_cases() {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(data_dir().join("walk_cases.json")).expect("read json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let case = json["walk"]["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c.get("variants").is_some())
        .expect("permission case")
        .clone();
    let dir = tempfile::tempdir().expect("tempdir");
    build_tree(dir.path(), &case["tree"]);
    let locked = dir.path().join("foo/bar");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let root = dir.path().to_owned();
    let variants = case["variants"].clone();
    let passed = std::thread::spawn(move || {
        drop_dac_capabilities_on_this_thread().expect("drop capabilities");
        let mut passed = 0;
        for variant in variants.as_array().expect("variants") {
            let got = emitted(&root, &variant["exclude"]);
            if let Some(result) = variant.get("result") {
                let err = got.expect_err("walk must fail");
                assert!(
                    result
                        .as_str()
                        .expect("result")
                        .starts_with("error: permission denied")
                        && err.to_lowercase().contains("permission denied"),
                    "variant {variant}: {err}"
                );
            } else {
                assert_eq!(
                    got.expect("walk"),
                    expected_pairs(&variant["emitted_full"]),
                    "variant {variant}"
                );
            }
            passed += 1;
        }
        passed
    })
    .join()
    .expect("thread");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    println!("permission-denied walk variants: {passed} passed");
    assert_eq!(passed, 4);
}

/// Writes an e2e case's files (keys in parentheses are descriptions, not files).
fn write_files(root: &Path, files: &serde_json::Value) {
    for (name, content) in files.as_object().expect("files") {
        if name.starts_with('(') {
            continue;
        }
        std::fs::write(root.join(name), content.as_str().expect("content")).expect("write");
    }
}

/// The paths COPY . . would see for a build with this Dockerfile: the filtered context walk.
fn context_for(root: &Path, dockerfile: &str) -> Result<Vec<String>, String> {
    let dockerfile = root.join(dockerfile);
    let ignore =
        kiln_context::load_context_ignore(root, Some(&dockerfile)).map_err(|e| e.to_string())?;
    // The Dockerfile itself stays readable whatever the patterns say.
    std::fs::read_to_string(&dockerfile).map_err(|e| e.to_string())?;
    let entries = kiln_context::walk_context(root, &ignore.patterns).map_err(|e| e.to_string())?;
    Ok(entries.into_iter().map(|e| e.path).collect())
}

#[test]
fn e2e_cases_context_part() {
    let text = std::fs::read_to_string(data_dir().join("walk_cases.json")).expect("read json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut checks = 0;
    for case in json["e2e"]["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let dir = tempfile::tempdir().expect("tempdir");
        write_files(dir.path(), &case["files"]);
        match name {
            "testDockerignore" => {
                let seen = context_for(dir.path(), "Dockerfile").expect("context");
                for (path, content) in case["expect_present"].as_object().expect("present") {
                    assert!(seen.contains(path), "{name}: {path} must be in the context");
                    let on_disk = std::fs::read_to_string(dir.path().join(path)).expect("read");
                    assert_eq!(on_disk, content.as_str().expect("content"));
                    checks += 1;
                }
                for path in case["expect_absent"].as_array().expect("absent") {
                    let path = path.as_str().expect("path").to_owned();
                    assert!(
                        !seen.contains(&path),
                        "{name}: {path} must not be in the context"
                    );
                    checks += 1;
                }
                // COPY . . selects the same set through source resolution + checksum.
                let ignore = kiln_context::load_context_ignore(dir.path(), None)
                    .expect("ignore")
                    .patterns;
                let sources = kiln_context::resolve_sources(
                    dir.path(),
                    ".",
                    &kiln_context::SourceOptions {
                        ignore: Some(&ignore),
                        follow_symlinks: true,
                        allow_wildcards: true,
                    },
                )
                .expect("resolve");
                let sum = kiln_context::checksum(
                    dir.path(),
                    &sources,
                    Some(&ignore),
                    &[],
                    &kiln_context::NoStatCache,
                )
                .expect("checksum");
                let copied: Vec<&str> = sum.entries.iter().map(|e| e.path.as_str()).collect();
                assert_eq!(
                    copied,
                    vec![".", "bay", "foo"],
                    "{name}: COPY . . selection"
                );
                checks += 1;
            }
            "testDockerignoreInvalid" => {
                let err = context_for(dir.path(), "Dockerfile").expect_err("invalid ignore");
                assert!(err.contains('!'), "{name}: {err}");
                checks += 1;
            }
            "testDockerignoreOverride" => {
                for build in case["builds"].as_array().expect("builds") {
                    let dockerfile = build["dockerfile"].as_str().expect("dockerfile");
                    let seen = context_for(dir.path(), dockerfile).expect("context");
                    // The Dockerfiles' RUN checks: Dockerfile sees foo not bar, Dockerfile2 the reverse.
                    let (present, absent) = if dockerfile == "Dockerfile" {
                        ("foo", "bar")
                    } else {
                        ("bar", "foo")
                    };
                    assert!(
                        seen.iter().any(|p| p == present),
                        "{name}/{dockerfile}: {present}"
                    );
                    assert!(
                        !seen.iter().any(|p| p == absent),
                        "{name}/{dockerfile}: {absent}"
                    );
                    checks += 1;
                }
            }
            "TestProcessShouldRemoveDockerfileDockerignore" => {
                let seen = context_for(dir.path(), "Dockerfile").expect("context");
                assert!(
                    !seen
                        .iter()
                        .any(|p| p == "Dockerfile" || p == ".dockerignore")
                );
                checks += 1;
            }
            "TestProcessShouldLeaveAllFiles" => {
                let seen = context_for(dir.path(), "Dockerfile").expect("context");
                assert_eq!(seen, vec![".dockerignore", "Dockerfile", "file"]);
                checks += 1;
            }
            other => panic!("unknown e2e case {other}: extend this test"),
        }
    }
    println!("e2e cases (context part): {checks} checks passed");
    assert_eq!(checks, 12);
}

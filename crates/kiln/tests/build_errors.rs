//! `kiln build` on bad input: each failure must say what is wrong and where (the Dockerfile line, the
//! path, the blob file), and exit non-zero.

mod common;

use common::{Kiln, build_busybox_with_kiln, stderr};

fn fails_with(kiln: &Kiln, args: &[&str]) -> String {
    let output = kiln.run(args);
    assert!(!output.status.success(), "kiln {args:?} should have failed");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    stderr(&output)
}

#[test]
fn missing_context_dir_is_named() {
    let kiln = Kiln::new();
    let missing = kiln.work.path().join("no-such-dir");
    let error = fails_with(&kiln, &["build", missing.to_str().unwrap()]);
    assert!(
        error.contains("no-such-dir") && error.contains("not found"),
        "{error}"
    );
}

#[test]
fn missing_dockerfile_is_named() {
    let kiln = Kiln::new();
    let context = kiln.context("empty", &[("a.txt", "a")]);
    let error = fails_with(&kiln, &["build", context.to_str().unwrap()]);
    assert!(error.contains("Dockerfile"), "{error}");
}

#[test]
fn missing_copy_source_names_the_source_and_the_line() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM scratch\n\nCOPY nothere.txt /\n")],
    );
    let error = fails_with(&kiln, &["build", context.to_str().unwrap()]);
    assert!(error.contains("Dockerfile:3"), "{error}");
    assert!(error.contains("nothere.txt"), "{error}");
    assert!(error.contains("not found in build context"), "{error}");
}

#[test]
fn a_dockerignored_copy_source_is_not_found() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM scratch\nCOPY secret.env /\n"),
            (".dockerignore", "*.env\n"),
            ("secret.env", "KEY=1"),
        ],
    );
    let error = fails_with(&kiln, &["build", context.to_str().unwrap()]);
    assert!(error.contains("Dockerfile:2"), "{error}");
    assert!(
        error.contains("secret.env") && error.contains("not found"),
        "{error}"
    );
}

#[test]
fn invalid_output_is_refused_before_building() {
    let kiln = Kiln::new();
    let context = kiln.context("app", &[("Dockerfile", "FROM scratch\n")]);
    let error = fails_with(
        &kiln,
        &[
            "build",
            "--output",
            "type=floppy,dest=x",
            context.to_str().unwrap(),
        ],
    );
    assert!(
        error.contains("invalid --output") && error.contains("floppy"),
        "{error}"
    );
    let error = fails_with(
        &kiln,
        &["build", "--output", "type=oci", context.to_str().unwrap()],
    );
    assert!(error.contains("needs dest"), "{error}");
    // Nothing was written to the store.
    assert_eq!(
        std::fs::read_dir(kiln.root.path().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn invalid_network_is_refused() {
    let kiln = Kiln::new();
    let context = kiln.context("app", &[("Dockerfile", "FROM scratch\n")]);
    let error = fails_with(
        &kiln,
        &["build", "--network", "bridge2", context.to_str().unwrap()],
    );
    assert!(error.contains("--network"), "{error}");
}

#[test]
fn unknown_base_image_in_a_private_registry_names_the_image() {
    let kiln = Kiln::new();
    // 127.0.0.1:1 refuses connections at once: nothing is downloaded.
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM 127.0.0.1:1/nothing/here:1\n")],
    );
    let error = fails_with(&kiln, &["build", context.to_str().unwrap()]);
    assert!(error.contains("Dockerfile:1"), "{error}");
    assert!(error.contains("127.0.0.1:1/nothing/here:1"), "{error}");
}

#[test]
fn a_tampered_blob_in_the_store_is_named_by_path() {
    let kiln = Kiln::new();
    let id = build_busybox_with_kiln(&kiln);
    let path = kiln
        .root
        .path()
        .join("blobs/sha256")
        .join(id.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b" ");
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let context = kiln.context("app", &[("Dockerfile", "FROM busybox\n")]);
    let error = fails_with(&kiln, &["build", context.to_str().unwrap()]);
    assert!(error.contains(path.to_str().unwrap()), "{error}");
    assert!(error.contains("corrupted"), "{error}");
}

#[test]
fn a_tampered_layer_blob_fails_the_export_naming_the_blob() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // The layer blob is the largest file in blobs/.
    let blobs = kiln.root.path().join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let mut permissions = std::fs::metadata(&layer).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&layer, permissions).unwrap();
    std::fs::write(&layer, &bytes).unwrap();

    let context = kiln.context("app", &[("Dockerfile", "FROM busybox\n")]);
    let dest = kiln.work.path().join("out.tar");
    let error = fails_with(
        &kiln,
        &[
            "build",
            "--output",
            &format!("type=oci,dest={}", dest.display()),
            context.to_str().unwrap(),
        ],
    );
    let hex = layer.file_name().unwrap().to_str().unwrap();
    assert!(error.contains(hex), "{error}");
    assert!(!dest.exists(), "no partial archive is left behind");
}

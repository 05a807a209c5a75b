//! End-to-end `kiln build` flags CI scripts take from `docker buildx build`: `--metadata-file`
//! (buildx's keys, checked against the store, the archive and the registry), `--annotation` (in
//! the manifest of an OCI archive, a pushed image and a stored one; the image id unchanged), and
//! `--output type=oci|docker|tar,dest=-` (the archive alone on stdout, loadable by `docker load`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Kiln, TestDockerd, TestRegistry, have_or_skip, read, skopeo_ok, stderr, stdout};
use serde_json::Value;

const DOCKERFILE: &str = "FROM scratch\nCOPY x /x\nCMD [\"/x\"]\n";

fn context(kiln: &Kiln) -> PathBuf {
    kiln.context("app", &[("Dockerfile", DOCKERFILE), ("x", "x\n")])
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&read(path)).expect("the file is JSON")
}

/// The bytes of a blob in kiln's store, by `sha256:…` digest.
fn store_blob(kiln: &Kiln, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    std::fs::read(kiln.root.path().join("blobs/sha256").join(hex)).expect("the blob is stored")
}

fn reproducible(kiln: &Kiln, args: &[&str]) -> std::process::Output {
    let output = kiln
        .command()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(args)
        .output()
        .expect("running kiln");
    assert!(
        output.status.success(),
        "kiln {args:?} failed:\n{}",
        stderr(&output)
    );
    output
}

#[test]
fn metadata_file_of_a_stored_image_describes_the_stored_manifest() {
    let kiln = Kiln::new();
    let context = context(&kiln);
    let metadata_path = kiln.work.path().join("out/meta.json");
    std::fs::create_dir_all(metadata_path.parent().unwrap()).unwrap();
    let output = kiln.ok(&[
        "build",
        "-q",
        "-t",
        "app:1",
        "-t",
        "registry.example/team/app:2",
        "--metadata-file",
        metadata_path.to_str().unwrap(),
        context.to_str().unwrap(),
    ]);
    let id = stdout(&output).trim().to_string();
    let metadata = json_file(&metadata_path);

    assert_eq!(metadata["containerimage.config.digest"], id.as_str());
    let digest = metadata["containerimage.digest"]
        .as_str()
        .expect("containerimage.digest");
    let manifest = store_blob(&kiln, digest);
    let descriptor = &metadata["containerimage.descriptor"];
    assert_eq!(descriptor["digest"], digest);
    assert_eq!(descriptor["size"], manifest.len() as u64);
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["config"]["digest"], id.as_str());
    assert_eq!(
        metadata["image.name"],
        "docker.io/library/app:1,registry.example/team/app:2"
    );
    // Nothing kiln cannot know is made up.
    assert!(metadata.get("buildx.build.ref").is_none(), "{metadata}");
    // The same digest is what the store serves for the name.
    let inspected: Value =
        serde_json::from_str(&stdout(&kiln.ok(&["inspect", "app:1"]))).expect("inspect JSON");
    let repo_digests = inspected[0]["RepoDigests"].to_string();
    assert!(repo_digests.contains(digest), "{repo_digests}");
}

#[test]
fn metadata_file_of_an_oci_archive_matches_skopeo_and_filesystem_outputs_write_an_empty_object() {
    let kiln = Kiln::new();
    let context = context(&kiln);
    let metadata_path = kiln.work.path().join("meta.json");
    let metadata_arg = metadata_path.to_str().unwrap();
    let archive = kiln.build_to(
        "oci",
        "app.tar",
        &context,
        &["--metadata-file", metadata_arg],
    );
    let metadata = json_file(&metadata_path);
    assert!(metadata.get("image.name").is_none(), "unnamed: {metadata}");
    if have_or_skip("skopeo") {
        let inspected: Value = serde_json::from_str(&skopeo_ok(&[
            "inspect",
            &format!("oci-archive:{}", archive.display()),
        ]))
        .unwrap();
        assert_eq!(metadata["containerimage.digest"], inspected["Digest"]);
        assert_eq!(
            metadata["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
    }

    kiln.build_to(
        "tar",
        "rootfs.tar",
        &context,
        &["--metadata-file", metadata_arg],
    );
    assert_eq!(json_file(&metadata_path), serde_json::json!({}));
}

/// `skopeo inspect --raw` of `reference` as JSON.
fn raw_manifest(reference: &str) -> Value {
    serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        reference,
    ]))
    .expect("a JSON manifest")
}

#[test]
fn annotations_change_the_manifest_but_not_the_image_id() {
    if !have_or_skip("skopeo") {
        return;
    }
    let kiln = Kiln::new();
    let context = context(&kiln);
    let ctx = context.to_str().unwrap();
    let plain = kiln.work.path().join("plain.tar");
    let annotated = kiln.work.path().join("annotated.tar");
    let plain_id = stdout(&reproducible(
        &kiln,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=oci,dest={}", plain.display()),
            ctx,
        ],
    ));
    let annotated_id = stdout(&reproducible(
        &kiln,
        &[
            "build",
            "-q",
            "--annotation",
            "org.opencontainers.image.title=App",
            "--annotation",
            "manifest:com.example.build=42",
            "--annotation",
            "manifest[linux/s390x]:com.example.other=ignored",
            "-o",
            &format!("type=oci,dest={}", annotated.display()),
            ctx,
        ],
    ));
    assert_eq!(plain_id, annotated_id, "annotations are not in the config");

    let plain_manifest = raw_manifest(&format!("oci-archive:{}", plain.display()));
    let manifest = raw_manifest(&format!("oci-archive:{}", annotated.display()));
    assert!(plain_manifest.get("annotations").is_none());
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({
            "org.opencontainers.image.title": "App",
            "com.example.build": "42",
        })
    );
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digest = |archive: &Path| {
        skopeo_ok(&[
            "inspect",
            "--format",
            "{{.Digest}}",
            &format!("oci-archive:{}", archive.display()),
        ])
    };
    assert_ne!(digest(&plain), digest(&annotated));
}

#[test]
fn annotations_survive_the_store_and_a_push() {
    if !have_or_skip("skopeo") {
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let config_dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::new();
    let context = context(&kiln);
    let name = format!("{}/team/annotated:1", registry.host());
    let metadata_path = kiln.work.path().join("meta.json");
    let output = kiln
        .command()
        .env("DOCKER_CONFIG", config_dir.path())
        .args([
            "build",
            "-q",
            "-t",
            &name,
            "--push",
            "--annotation",
            "org.opencontainers.image.source=https://example.com/app",
            "--metadata-file",
            metadata_path.to_str().unwrap(),
            context.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let metadata = json_file(&metadata_path);
    let digest = metadata["containerimage.digest"].as_str().unwrap();
    assert_eq!(metadata["image.name"], name.as_str());

    // In the store: the manifest kiln recorded carries the annotation.
    let stored: Value = serde_json::from_slice(&store_blob(&kiln, digest)).unwrap();
    assert_eq!(
        stored["annotations"]["org.opencontainers.image.source"],
        "https://example.com/app"
    );
    // In the registry: the same manifest, by the same digest.
    let pushed = raw_manifest(&format!("docker://{name}"));
    assert_eq!(pushed, stored);
    let registry_digest = skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{name}"),
    ]);
    assert_eq!(registry_digest.trim(), digest);
    // And `kiln save` exports it as stored.
    let saved = kiln.save("saved.tar", &[&name]);
    let exported = raw_manifest(&format!("oci-archive:{}", saved.display()));
    assert_eq!(
        exported["annotations"]["org.opencontainers.image.source"],
        "https://example.com/app"
    );
}

#[test]
fn annotation_types_kiln_cannot_write_are_refused_before_building() {
    let kiln = Kiln::new();
    let context = context(&kiln);
    let ctx = context.to_str().unwrap();
    for (value, expected) in [
        ("index:k=v", "single-platform"),
        ("manifest-descriptor:k=v", "manifest-descriptor"),
        ("index-descriptor:k=v", "index-descriptor"),
        ("layer:k=v", "unknown annotation type"),
        ("manifest[not a platform]:k=v", "platform"),
        ("novalue", "KEY=VALUE"),
    ] {
        let output = kiln.run(&["build", "--annotation", value, ctx]);
        assert!(!output.status.success(), "{value} was accepted");
        let message = stderr(&output);
        assert!(message.contains(expected), "{value}: {message}");
        assert!(
            !message.contains("COPY"),
            "{value}: refused before building"
        );
    }
    let output = kiln.run(&[
        "build",
        "--annotation",
        "k=v",
        "-o",
        "type=image,oci-mediatypes=false",
        ctx,
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("OCI media types"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn archives_on_stdout_are_byte_for_byte_the_file_ones_and_stdout_has_nothing_else() {
    let kiln = Kiln::new();
    let context = context(&kiln);
    let ctx = context.to_str().unwrap();
    for kind in ["oci", "docker", "tar"] {
        let file = kiln.work.path().join(format!("{kind}.tar"));
        reproducible(
            &kiln,
            &[
                "build",
                "-t",
                "app:1",
                "-o",
                &format!("type={kind},dest={}", file.display()),
                ctx,
            ],
        );
        let piped = reproducible(
            &kiln,
            &[
                "build",
                "-t",
                "app:1",
                "--progress=plain",
                "-o",
                &format!("type={kind},dest=-"),
                ctx,
            ],
        );
        let expected = std::fs::read(&file).unwrap();
        assert!(
            piped.stdout == expected,
            "type={kind}: stdout ({} bytes) is not the archive ({} bytes)",
            piped.stdout.len(),
            expected.len()
        );
        // Progress went to stderr.
        assert!(stderr(&piped).contains("COPY x /x"), "{}", stderr(&piped));
    }
}

#[test]
fn docker_archive_on_stdout_pipes_into_docker_load() {
    let kiln = Kiln::new();
    let context = context(&kiln);
    let Some(dockerd) = TestDockerd::start() else {
        return;
    };
    let id_file = kiln.work.path().join("iid");
    let mut build = kiln
        .command()
        .args([
            "build",
            "-t",
            "piped:1",
            "--iidfile",
            id_file.to_str().unwrap(),
            "-o",
            "type=docker,dest=-",
            context.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let loaded = dockerd
        .docker()
        .arg("load")
        .stdin(build.stdout.take().unwrap())
        .output()
        .unwrap();
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(
        loaded.status.success(),
        "docker load: {}\n{}",
        stderr(&loaded),
        dockerd.log_tail()
    );
    assert!(stdout(&loaded).contains("piped:1"), "{}", stdout(&loaded));
    assert_eq!(dockerd.image_id("piped:1"), read(&id_file).trim());
}

#[test]
fn archives_are_not_written_to_a_terminal() {
    if !have_or_skip("script") {
        return;
    }
    let kiln = Kiln::new();
    let context = context(&kiln);
    // `script` runs kiln with stdout on a pseudo-terminal.
    let command_line = format!(
        "{} --root {} build -o type=oci,dest=- {}",
        env!("CARGO_BIN_EXE_kiln"),
        kiln.root.path().display(),
        context.display()
    );
    let output = Command::new("script")
        .args(["-qec", &command_line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = stdout(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("refusing to write the archive") && shown.contains("terminal"),
        "{shown}"
    );
}

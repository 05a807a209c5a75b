//! A base image missing from the store is pulled from its registry during `kiln build` (Docker's
//! behaviour), and a local image wins over the registry. The registry is Debian's
//! `docker-registry` on 127.0.0.1; the image is pushed there with skopeo, a tool independent of kiln.

mod common;

use std::process::Command;

use common::{Kiln, TestRegistry, build_busybox_with_kiln, have, stderr};

#[test]
fn a_missing_base_image_is_pulled_then_used_from_the_store() {
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed");
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    // Make a busybox image with one kiln, export it, and push it with skopeo.
    let builder = Kiln::new();
    build_busybox_with_kiln(&builder);
    let base_context = builder.context(
        "base",
        &[
            ("Dockerfile", "FROM busybox\nCOPY marker /marker\n"),
            ("marker", "from the registry\n"),
        ],
    );
    let archive = builder.work.path().join("base.tar");
    builder.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=oci,dest={}", archive.display()),
        base_context.to_str().unwrap(),
    ]);
    let reference = format!("{}/test/base:1", registry.host());
    let pushed = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "skopeo copy: {}", stderr(&pushed));

    // A fresh store: the build pulls the base.
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            &format!("FROM {reference}\nRUN cat /marker > /copied\n"),
        )],
    );
    let out = kiln.work.path().join("rootfs");
    kiln.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=local,dest={}", out.display()),
        context.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "from the registry\n"
    );
    let manifests_fetched = registry.log_count("GET /v2/test/base/manifests/1");
    assert!(
        manifests_fetched >= 1,
        "the first build asked the registry for the manifest"
    );

    // The pulled image is in the store now: a second build does not ask the registry for it again.
    let out2 = kiln.work.path().join("rootfs2");
    kiln.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=local,dest={}", out2.display()),
        context.to_str().unwrap(),
    ]);
    assert!(out2.join("copied").is_file());
    assert_eq!(
        registry.log_count("GET /v2/test/base/manifests/1"),
        manifests_fetched
    );
}

#[test]
fn push_sends_the_built_image_to_its_registry() {
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed");
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM scratch\nCOPY x /x\nCMD [\"/x\"]\n"),
            ("x", "x"),
        ],
    );
    let name = format!("{}/test/pushed:2", registry.host());
    let output = kiln.ok(&["build", "--push", "-t", &name, context.to_str().unwrap()]);
    let id = common::stdout(&output).trim().to_string();
    let inspected = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "skopeo inspect: {}",
        stderr(&inspected)
    );
    let config: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/x"]));
    // The registry holds exactly the config kiln reported as the image id.
    let raw = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(manifest["config"]["digest"], serde_json::Value::String(id));

    // --push with an archive output is refused.
    let refused = kiln.run(&[
        "build",
        "--push",
        "-t",
        &name,
        "--output",
        "type=tar,dest=x.tar",
        context.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--push"), "{}", stderr(&refused));
}

/// Pushes an image whose `/marker` holds `marker` to `reference` with skopeo, building it with
/// `builder` (which must already have the busybox base).
fn push_marker_image(builder: &Kiln, reference: &str, marker: &str, name: &str) {
    let context = builder.context(
        name,
        &[
            ("Dockerfile", "FROM busybox\nCOPY marker /marker\n"),
            ("marker", marker),
        ],
    );
    let archive = builder.work.path().join(format!("{name}.tar"));
    builder.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=oci,dest={}", archive.display()),
        context.to_str().unwrap(),
    ]);
    let pushed = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "skopeo copy: {}", stderr(&pushed));
}

#[test]
fn pull_flag_re_resolves_a_base_the_store_already_has() {
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed");
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let builder = Kiln::new();
    build_busybox_with_kiln(&builder);
    let reference = format!("{}/test/moving:1", registry.host());
    push_marker_image(&builder, &reference, "first\n", "first");

    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            &format!("FROM {reference} AS one\nFROM {reference}\nCOPY --from=one /marker /again\nRUN cat /marker > /copied\n"),
        )],
    );
    let build = |dest: &str, pull: bool| {
        let out = kiln.work.path().join(dest);
        let spec = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "-q", "--output", spec.as_str()];
        if pull {
            args.push("--pull");
        }
        args.push(context.to_str().unwrap());
        kiln.ok(&args);
        out
    };
    let out = build("a", false);
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "first\n"
    );

    // The tag moves in the registry. Without --pull the local image still wins (Docker's rule)...
    push_marker_image(&builder, &reference, "second\n", "second");
    let out = build("b", false);
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "first\n"
    );

    // ...with --pull the registry is asked again, once for both FROMs of the same tag.
    let before = registry.log_count("GET /v2/test/moving/manifests/1");
    let out = build("c", true);
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "second\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("again")).unwrap(),
        "second\n"
    );
    assert_eq!(
        registry.log_count("GET /v2/test/moving/manifests/1") - before,
        1,
        "each tag is resolved once per build"
    );
}

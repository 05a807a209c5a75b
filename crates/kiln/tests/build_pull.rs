//! A base image missing from the store is pulled from its registry during `kiln build` (Docker's
//! behaviour), and a local image wins over the registry. The registry is Debian's
//! `docker-registry` on 127.0.0.1; the image is pushed there with skopeo, a tool independent of kiln.

mod common;

use common::{Kiln, TestRegistry, build_busybox_with_kiln, have_or_skip, read, skopeo_ok, stderr};

#[test]
fn a_missing_base_image_is_pulled_then_used_from_the_store() {
    // Make a busybox image with one kiln, export it, and push it with skopeo.
    let Some((registry, builder)) = registry_and_builder() else {
        return;
    };
    let reference = format!("{}/test/base:1", registry.host());
    push_marker_image(&builder, &reference, "from the registry\n", "base");

    // A fresh store: the build pulls the base.
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            &format!("FROM {reference}\nRUN cat /marker > /copied\n"),
        )],
    );
    let out = kiln.build_rootfs(&context, "rootfs", &[]);
    assert_eq!(read(out.join("copied")), "from the registry\n");
    let manifests_fetched = registry.log_count("GET /v2/test/base/manifests/1");
    assert!(
        manifests_fetched >= 1,
        "the first build asked the registry for the manifest"
    );

    // The pulled image is in the store now: a second build does not ask the registry for it again.
    let out2 = kiln.build_rootfs(&context, "rootfs2", &[]);
    assert!(out2.join("copied").is_file());
    assert_eq!(
        registry.log_count("GET /v2/test/base/manifests/1"),
        manifests_fetched
    );
}

#[test]
fn push_sends_the_built_image_to_its_registry() {
    if !have_or_skip("skopeo") {
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
    let inspect = |what: &str| -> serde_json::Value {
        let json = skopeo_ok(&[
            "inspect",
            "--tls-verify=false",
            what,
            &format!("docker://{name}"),
        ]);
        serde_json::from_str(&json).expect("skopeo prints JSON")
    };
    let config = inspect("--config");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/x"]));
    // The registry holds exactly the config kiln reported as the image id.
    let manifest = inspect("--raw");
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

/// A local registry, and a kiln with the busybox base to build the images pushed there; `None`
/// (the test is skipped) when skopeo or the registry is missing.
fn registry_and_builder() -> Option<(TestRegistry, Kiln)> {
    if !have_or_skip("skopeo") {
        return None;
    }
    let registry = TestRegistry::start("")?;
    let builder = Kiln::new();
    build_busybox_with_kiln(&builder);
    Some((registry, builder))
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
    let archive = builder.build_to("oci", &format!("{name}.tar"), &context, &[]);
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", archive.display()),
        &format!("docker://{reference}"),
    ]);
}

#[test]
fn pull_flag_re_resolves_a_base_the_store_already_has() {
    let Some((registry, builder)) = registry_and_builder() else {
        return;
    };
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
        let extra: &[&str] = if pull { &["--pull"] } else { &[] };
        kiln.build_rootfs(&context, dest, extra)
    };
    let out = build("a", false);
    assert_eq!(read(out.join("copied")), "first\n");

    // The tag moves in the registry. Without --pull the local image still wins (Docker's rule)...
    push_marker_image(&builder, &reference, "second\n", "second");
    let out = build("b", false);
    assert_eq!(read(out.join("copied")), "first\n");

    // ...with --pull the registry is asked again, once for both FROMs of the same tag.
    let before = registry.log_count("GET /v2/test/moving/manifests/1");
    let out = build("c", true);
    assert_eq!(read(out.join("copied")), "second\n");
    assert_eq!(read(out.join("again")), "second\n");
    assert_eq!(
        registry.log_count("GET /v2/test/moving/manifests/1") - before,
        1,
        "each tag is resolved once per build"
    );
}

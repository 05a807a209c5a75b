//! End-to-end `kiln build --platform` with the real `kiln` binary: the platform written into the
//! image, the automatic TARGET*/BUILD* args, FROM resolved for the target platform from a
//! multi-platform image, copy-only cross builds, the cross-compile pattern (a build stage on
//! `$BUILDPLATFORM` that runs), and the clear error for a RUN this machine cannot execute.

mod common;

use std::path::Path;

use common::{
    Kiln, TestRegistry, arch_image, build_busybox_with_kiln, have_or_skip, make_image,
    push_amd64_arm64_index, read, stderr, stdout,
};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The image config `kiln inspect` shows for `name`.
fn inspect(kiln: &Kiln, name: &str) -> serde_json::Value {
    let text = stdout(&kiln.ok(&["inspect", name]));
    let value: serde_json::Value = serde_json::from_str(&text).expect("inspect JSON");
    match value {
        serde_json::Value::Array(mut items) => items.remove(0),
        other => other,
    }
}

/// This machine's architecture, as OCI names it.
fn host_arch() -> String {
    kiln_image::Platform::host().architecture
}

/// An architecture that is not this machine's. The tests that run kiln for it point
/// `KILN_BINFMT_MISC_DIR` at a directory of their own, so whatever emulation the host has
/// registered does not matter.
fn foreign_arch() -> &'static str {
    if host_arch() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    }
}

/// A `binfmt_misc` directory listing: emulation enabled, with a handler for `arch` when given
/// (its ELF magic as QEMU's registration writes it).
fn binfmt_dir(kiln: &Kiln, name: &str, arch: Option<&str>) -> std::path::PathBuf {
    let dir = kiln.work.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir binfmt dir");
    std::fs::write(dir.join("status"), "enabled\n").expect("write status");
    if let Some(arch) = arch {
        let magic = match arch {
            "s390x" => "7f454c4602020100000000000000000000020016",
            "ppc64le" => "7f454c4602010100000000000000000002001500",
            other => panic!("no magic for {other}"),
        };
        std::fs::write(
            dir.join(format!("qemu-{arch}")),
            format!(
                "enabled\ninterpreter /usr/bin/qemu-{arch}\nflags: OCF\noffset 0\nmagic {magic}\nmask ffffffffffffff00fffffffffffffffffffeffff\n"
            ),
        )
        .expect("write handler");
    }
    dir
}

/// Runs kiln with `args` and `KILN_BINFMT_MISC_DIR=dir`.
fn run_with_binfmt(kiln: &Kiln, dir: &Path, args: &[&str]) -> std::process::Output {
    kiln.command()
        .env("KILN_BINFMT_MISC_DIR", dir)
        .args(args)
        .output()
        .expect("run kiln")
}

#[test]
fn the_platform_is_written_into_the_image_and_the_target_args() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\n\
                 ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH\n\
                 LABEL tp=$TARGETPLATFORM tos=$TARGETOS tarch=$TARGETARCH tvariant=$TARGETVARIANT \
                 bp=$BUILDPLATFORM bos=$BUILDOS barch=$BUILDARCH\n\
                 COPY a.txt /a.txt\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    kiln.ok(&[
        "build",
        "-q",
        "-t",
        "armv7",
        "--platform",
        "linux/arm/v7",
        path_str(&context),
    ]);
    let image = inspect(&kiln, "armv7");
    assert_eq!(image["Architecture"], "arm", "{image}");
    assert_eq!(image["Variant"], "v7", "{image}");
    assert_eq!(image["Os"], "linux", "{image}");
    let labels = &image["Config"]["Labels"];
    assert_eq!(labels["tp"], "linux/arm/v7", "{labels}");
    assert_eq!(labels["tos"], "linux");
    assert_eq!(labels["tarch"], "arm");
    assert_eq!(labels["tvariant"], "v7");
    assert_eq!(labels["bos"], "linux");
    assert_eq!(labels["barch"], host_arch().as_str());
    let build_platform = labels["bp"].as_str().unwrap_or_default();
    assert!(
        build_platform.starts_with(&format!("linux/{}", host_arch())),
        "{labels}"
    );

    // Without --platform the image is for this machine.
    kiln.ok(&["build", "-q", "-t", "native", path_str(&context)]);
    let image = inspect(&kiln, "native");
    assert_eq!(image["Architecture"], host_arch().as_str(), "{image}");
    assert_eq!(image["Config"]["Labels"]["tarch"], host_arch().as_str());
}

#[test]
fn a_copy_only_cross_build_exports_for_the_target_platform() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY app /app\n"),
            ("app", "x\n"),
        ],
    );
    let archive = kiln.build_to("oci", "out.tar", &context, &["--platform", "linux/arm64"]);
    let layout = common::untar(&archive, &kiln.work.path().join("layout"));
    let index: serde_json::Value =
        serde_json::from_str(&read(layout.join("index.json"))).expect("index.json");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&read(blob(manifest_digest))).expect("manifest");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: serde_json::Value =
        serde_json::from_str(&read(blob(config_digest))).expect("config");
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(config["os"], "linux");
}

#[test]
fn a_run_for_a_platform_this_machine_cannot_execute_names_the_step() {
    let arch = foreign_arch();
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let no_emulation = binfmt_dir(&kiln, "binfmt-none", None);
    let context = kiln.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a /a\nRUN echo built > /built\n",
            ),
            ("a", "a\n"),
        ],
    );
    let platform = format!("linux/{arch}");
    let output = run_with_binfmt(
        &kiln,
        &no_emulation,
        &["build", "--platform", &platform, path_str(&context)],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&platform), "{message}");
    assert!(message.contains("RUN echo built > /built"), "{message}");
    assert!(message.contains("Dockerfile:3"), "{message}");
    assert!(message.contains("binfmt_misc handler for"), "{message}");
    assert!(!message.contains("exec format error"), "{message}");

    // This machine's own platform, named explicitly, runs.
    let here = kiln.context(
        "here",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /built\n")],
    );
    let native = format!("linux/{}", host_arch());
    let dest = kiln.work.path().join("native");
    let output_spec = format!("type=local,dest={}", dest.display());
    let output = run_with_binfmt(
        &kiln,
        &no_emulation,
        &[
            "build",
            "-q",
            "--platform",
            &native,
            "--output",
            &output_spec,
            path_str(&here),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read(dest.join("built")), "built\n");
}

#[test]
fn a_registered_emulator_lets_a_run_through_and_its_cached_result_needs_none() {
    let arch = foreign_arch();
    let kiln = Kiln::new();
    let context = kiln.work.path().join("ctx");
    common::busybox_rootfs(&context.join("rootfs"));
    // The busybox binary is this machine's, so the "emulated" RUN really runs natively: what is
    // tested is that kiln lets it through when a handler for the platform is registered.
    let dockerfile = |run: &str| {
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM scratch\nCOPY rootfs/ /\nRUN {run}\n"),
        )
        .expect("write Dockerfile");
    };
    dockerfile("echo built > /built");
    let platform = format!("linux/{arch}");
    let emulated = binfmt_dir(&kiln, "binfmt-emulated", Some(arch));
    let none = binfmt_dir(&kiln, "binfmt-none", None);
    let build = |dir: &Path, dest: &str| {
        let dest = kiln.work.path().join(dest);
        let output_spec = format!("type=local,dest={}", dest.display());
        let output = run_with_binfmt(
            &kiln,
            dir,
            &[
                "build",
                "-q",
                "--platform",
                &platform,
                "--output",
                &output_spec,
                path_str(&context),
            ],
        );
        (output, dest)
    };
    let (output, rootfs) = build(&emulated, "emulated");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read(rootfs.join("built")), "built\n");

    // Without the handler the cached RUN is still fine: it does not run.
    let (output, rootfs) = build(&none, "cached");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read(rootfs.join("built")), "built\n");

    // A changed RUN would have to run: refused.
    dockerfile("echo changed > /built");
    let (output, _) = build(&none, "changed");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("RUN echo changed > /built"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_build_stage_on_the_build_platform_cross_compiles() {
    let arch = foreign_arch();
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM --platform=$BUILDPLATFORM busybox AS build\n\
             ARG TARGETARCH BUILDARCH\n\
             RUN echo \"$BUILDARCH->$TARGETARCH\" > /out\n\
             FROM scratch\n\
             COPY --from=build /out /out\n",
        )],
    );
    let platform = format!("linux/{arch}");
    let rootfs = kiln.build_rootfs(&context, "out", &["--platform", &platform]);
    assert_eq!(
        read(rootfs.join("out")),
        format!("{}->{arch}\n", host_arch())
    );
}

#[test]
fn from_resolves_the_target_platforms_image() {
    if !have_or_skip("skopeo") {
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let kiln = Kiln::new();
    let amd64 = arch_image(&kiln, "docker.io/library/multi:amd64", "amd64");
    let arm64 = arch_image(&kiln, "docker.io/library/multi:arm64", "arm64");
    let image = format!("{}/multi:v1", registry.host());
    push_amd64_arm64_index(&kiln, &amd64, &arm64, &image);

    let fresh = Kiln::new();
    let context = fresh.context(
        "ctx",
        &[
            ("Dockerfile", &format!("FROM {image}\nCOPY x /x\n")),
            ("x", "x\n"),
        ],
    );
    // Each platform in turn: the image the first build pulled is for another platform than the
    // second asks for, so that one is pulled too.
    for arch in ["arm64", "amd64", "arm64"] {
        let rootfs = fresh.build_rootfs(&context, arch, &["--platform", &format!("linux/{arch}")]);
        assert_eq!(read(rootfs.join("arch")), format!("{arch}\n"));
    }
}

#[test]
fn a_local_image_for_another_platform_is_not_used() {
    let kiln = Kiln::new();
    // Only this machine's image, under a registry name nothing listens on.
    let name = format!("127.0.0.1:{}/only-here:v1", common::free_port());
    make_image(kiln.root.path(), &name, &[&[("here", "here\n")]]);
    let context = kiln.context(
        "ctx",
        &[
            ("Dockerfile", &format!("FROM {name}\nCOPY x /x\n")),
            ("x", "x\n"),
        ],
    );
    let rootfs = kiln.build_rootfs(&context, "here", &[]);
    assert_eq!(
        read(rootfs.join("here")),
        "here\n",
        "this machine's platform uses it"
    );
    let other = if host_arch() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    let output = kiln.run(&[
        "build",
        "--platform",
        &format!("linux/{other}"),
        path_str(&context),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("found in the store but is for")
            && message.contains(&format!("linux/{other}")),
        "{message}"
    );
}

#[test]
fn bad_platforms_are_refused_before_any_work() {
    let kiln = Kiln::new();
    let context = kiln.context("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let many = kiln.run(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        path_str(&context),
    ]);
    assert!(!many.status.success());
    assert!(stderr(&many).contains("one platform"), "{}", stderr(&many));
    let bad = kiln.run(&["build", "--platform", "linux/", path_str(&context)]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--platform"), "{}", stderr(&bad));
}

//! `RUN` in `kiln build`: commands run in a sandbox over the image, their changes become a layer,
//! and a failing command reports its instruction, exit code and last lines of output. Both
//! snapshotters (overlay and the copying one) must give the same layers.

mod common;

use common::{Kiln, build_busybox_with_kiln, stderr, stdout};

fn rootfs_of(
    kiln: &Kiln,
    context: &std::path::Path,
    extra: &[&str],
    out_name: &str,
) -> std::path::PathBuf {
    let out = kiln.work.path().join(out_name);
    let mut args = vec!["build".to_string(), "-q".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--output".into());
    args.push(format!("type=local,dest={}", out.display()));
    args.push(context.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kiln.ok(&args);
    out
}

#[test]
fn run_writes_into_the_next_layer() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo hi > /x\nRUN rm /bin/vi && mkdir -p /made/here\n",
        )],
    );
    let out = rootfs_of(&kiln, &context, &[], "rootfs");
    assert_eq!(std::fs::read_to_string(out.join("x")).unwrap(), "hi\n");
    assert!(out.join("made/here").is_dir());
    // A deletion in a RUN is a whiteout in its layer: gone from the merged root filesystem.
    assert!(!out.join("bin/vi").exists() && out.join("bin/ls").exists());
    // Mount points of the sandbox never land in the image.
    assert!(!out.join("etc/hosts").exists() && !out.join("etc/resolv.conf").exists());
}

#[test]
fn run_sees_env_workdir_and_user() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // The busybox rootfs has no world-writable dir, so the facts go to the progress output.
    let dockerfile = "FROM busybox\nENV COLOUR=blue\nWORKDIR /work\nUSER app\nRUN echo \"facts: $COLOUR $(pwd) $(id -u):$(id -g)\"\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile)]);
    let output = kiln.ok(&["build", "--progress", "plain", context.to_str().unwrap()]);
    let progress = stderr(&output);
    assert!(
        progress
            .lines()
            .any(|l| l.ends_with(" facts: blue /work 1000:1000")),
        "{progress}"
    );
}

#[test]
fn run_output_streams_to_plain_progress() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM busybox\nRUN echo visible-line\n")],
    );
    let output = kiln.ok(&["build", "--progress", "plain", context.to_str().unwrap()]);
    let progress = stderr(&output);
    let step = progress
        .lines()
        .find(|l| l.ends_with("[2/2] RUN echo visible-line"))
        .unwrap_or_else(|| panic!("no step line in:\n{progress}"));
    let number = step.split(' ').next().unwrap();
    assert!(
        progress
            .lines()
            .any(|l| l.starts_with(&format!("{number} ")) && l.ends_with(" visible-line")),
        "{progress}"
    );
    assert!(progress.contains(&format!("{number} DONE ")), "{progress}");
    assert!(stdout(&output).trim().starts_with("sha256:"));
}

#[test]
fn failing_run_reports_instruction_exit_code_and_output_tail() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile =
        "FROM busybox\n\nRUN for i in $(seq 1 30); do echo line-$i; done; echo oops >&2; exit 7\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile)]);
    let output = kiln.run(&["build", context.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = stderr(&output);
    let report = error
        .split("error:")
        .nth(1)
        .unwrap_or_else(|| panic!("no error in:\n{error}"));
    assert!(report.contains("Dockerfile:3"), "{report}");
    assert!(report.contains("RUN for i in"), "{report}");
    assert!(report.contains("exit code 7"), "{report}");
    assert!(
        report.contains("oops") && report.contains("line-30"),
        "{report}"
    );
    // Only the last 20 lines are repeated in the error.
    assert!(!report.contains("line-5\n"), "{report}");
}

#[test]
fn a_required_ssh_mount_without_an_agent_fails_clearly() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,id=agent,required=true true\n",
        )],
    );
    let output = kiln.run(&["build", context.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("Dockerfile:2")
            && error.contains("type=ssh,id=agent")
            && error.contains("is required"),
        "{error}"
    );
}

#[test]
fn cache_tmpfs_and_bind_mounts() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = "FROM busybox AS stage\nCOPY data.txt /from-stage.txt\n\nFROM busybox\n\
RUN --mount=type=cache,target=/cache --mount=type=tmpfs,target=/scratch \\\n\
    --mount=type=bind,source=data.txt,target=/in/data.txt \\\n\
    --mount=type=bind,from=stage,source=/from-stage.txt,target=/in/stage.txt \\\n\
    echo run >> /cache/runs && echo \"runs: $(wc -l < /cache/runs)\" \\\n\
    && echo t > /scratch/t && cat /in/data.txt /in/stage.txt > /result\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile), ("data.txt", "data\n")]);
    let build = |out: &str| {
        let out = kiln.work.path().join(out);
        let output = kiln.ok(&[
            "build",
            "--progress",
            "plain",
            "--no-cache",
            "--output",
            &format!("type=local,dest={}", out.display()),
            context.to_str().unwrap(),
        ]);
        (out, stderr(&output))
    };
    let (first, progress) = build("one");
    assert!(
        progress.lines().any(|l| l.ends_with(" runs: 1")),
        "{progress}"
    );
    assert_eq!(
        std::fs::read_to_string(first.join("result")).unwrap(),
        "data\ndata\n"
    );
    // Mounted content never lands in the layer.
    assert!(!first.join("cache/runs").exists());
    assert!(!first.join("scratch/t").exists());
    assert!(!first.join("in/data.txt").exists());
    // The cache persists to the next build.
    let (_, progress) = build("two");
    assert!(
        progress.lines().any(|l| l.ends_with(" runs: 2")),
        "{progress}"
    );
}

#[test]
fn native_and_overlay_snapshotters_give_the_same_image() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile =
        "FROM busybox\nRUN mkdir -p /a/b && echo x > /a/b/f && rm -r /etc/group\nCOPY c.txt /a/\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile), ("c.txt", "c")]);
    let build = |snapshotter: &str| {
        let output = kiln
            .command()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "-q", "--no-cache", "--snapshotter", snapshotter])
            .arg(&context)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_string()
    };
    assert_eq!(build("overlay"), build("native"));
}

#[test]
fn network_none_leaves_only_loopback() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // /proc/net/dev: two header lines, then one line per interface.
    let dockerfile = "FROM busybox\nRUN echo \"interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile)]);
    let output = kiln.ok(&[
        "build",
        "--progress",
        "plain",
        "--network",
        "none",
        context.to_str().unwrap(),
    ]);
    let progress = stderr(&output);
    assert!(
        progress.lines().any(|l| l.ends_with(" interfaces: lo ")),
        "{progress}"
    );
}

#[test]
fn copy_from_an_image_reads_its_root_filesystem() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=busybox /bin/busybox /tools/busybox\n",
        )],
    );
    let out = rootfs_of(&kiln, &context, &[], "rootfs");
    assert!(out.join("tools/busybox").is_file());
    assert!(!out.join("bin").exists());
}

/// The generated /etc files are private to each RUN: a command may append to /etc/hosts (as with
/// Docker's classic builder), the next RUN sees a fresh one, and none of it reaches the image. The
/// `RUN true` between them leaves its scratch dirs for the next step to reuse, which must not
/// carry anything over either.
#[test]
fn run_may_append_to_etc_hosts_and_it_never_reaches_the_image() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = "FROM busybox\n\
        RUN echo '10.0.0.9 extra' >> /etc/hosts && grep -q extra /etc/hosts\n\
        RUN true\n\
        RUN ! grep -q extra /etc/hosts && echo fresh > /checked\n";
    let context = kiln.context("hosts", &[("Dockerfile", dockerfile)]);
    let out = rootfs_of(&kiln, &context, &[], "rootfs");
    assert_eq!(
        std::fs::read_to_string(out.join("checked")).unwrap(),
        "fresh\n"
    );
    assert!(!out.join("etc/hosts").exists() && !out.join("etc/hostname").exists());
}

/// A RUN that changes nothing still records a layer, the empty tar (as BuildKit does), also when
/// kiln reuses that layer's bytes instead of writing the tar again; the step after it gets exactly
/// its own changes.
#[test]
fn steps_that_change_nothing_record_the_empty_layer() {
    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = "FROM busybox\nRUN true\nRUN true\nRUN echo made > /made\n";
    let context = kiln.context("noop", &[("Dockerfile", dockerfile)]);
    let archive = kiln.work.path().join("noop.tar");
    kiln.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=oci,dest={}", archive.display()),
        context.to_str().unwrap(),
    ]);
    let dir = common::untar(&archive, &kiln.work.path().join("noop"));
    let blob = |digest: &serde_json::Value| -> serde_json::Value {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let n = diff_ids.len();
    assert!(n >= 4, "{diff_ids:?}");
    assert_eq!(
        diff_ids[n - 3..n - 1],
        [EMPTY_TAR, EMPTY_TAR],
        "{diff_ids:?}"
    );
    assert_ne!(diff_ids[n - 1], EMPTY_TAR);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), n);
}

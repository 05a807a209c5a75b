//! End-to-end `kiln build`: a busybox base built by kiln itself, then images FROM it with COPY, ADD,
//! WORKDIR, ENV, CMD, ENTRYPOINT, USER, LABEL; checked with independent tools (`skopeo inspect`,
//! `umoci unpack`, `tar`).

mod common;
mod layout_helpers;

use std::path::Path;
use std::process::Command;

use common::{Kiln, build_busybox_with_kiln, have, read, stdout, untar};
use layout_helpers::{Layout, umoci_rootfs};

/// `skopeo inspect [--config] oci-archive:<tar>` as JSON.
fn skopeo_inspect(archive: &Path, config: bool) -> serde_json::Value {
    let mut command = Command::new("skopeo");
    command.arg("inspect");
    if config {
        command.arg("--config");
    }
    let output = command
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("skopeo prints JSON")
}

fn tools_present() -> bool {
    let missing: Vec<&str> = ["skopeo", "umoci", "tar"]
        .into_iter()
        .filter(|tool| !have(tool))
        .collect();
    if !missing.is_empty() {
        eprintln!("skipping: {missing:?} not installed");
    }
    missing.is_empty()
}

#[test]
fn busybox_base_built_by_kiln_is_tagged_and_usable_as_a_base() {
    let kiln = Kiln::new();
    let id = build_busybox_with_kiln(&kiln);
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    // The id is the config blob's digest, stored under blobs/.
    let hex = id.trim_start_matches("sha256:");
    assert!(kiln.root.path().join("blobs/sha256").join(hex).is_file());

    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /\n"),
            ("hello.txt", "hi\n"),
        ],
    );
    let output = kiln.ok(&["build", "-t", "app:1", context.to_str().unwrap()]);
    let app_id = stdout(&output).trim().to_string();
    assert!(app_id.starts_with("sha256:") && app_id != id);
    let progress = common::stderr(&output);
    assert!(
        progress.contains("[1/2] FROM docker.io/library/busybox:latest"),
        "{progress}"
    );
    assert!(progress.contains("[2/2] COPY hello.txt /"), "{progress}");
    assert!(progress.contains(" DONE "), "{progress}");
}

#[test]
fn instructions_end_up_in_the_files_and_the_config() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = r#"FROM busybox
LABEL org.example.team="builders"
ENV GREETING=hello APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY hello.txt ./
COPY --chown=app:staff --chmod=0640 conf/ /etc/app/
ADD notes.txt /opt/notes.txt
USER app
EXPOSE 8080/tcp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat $APP_HOME/hello.txt"]
"#;
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", dockerfile),
            ("hello.txt", "hello from kiln\n"),
            ("conf/app.conf", "port=8080\n"),
            ("notes.txt", "notes\n"),
        ],
    );
    let archive = kiln.work.path().join("app.tar");
    let output = kiln.ok(&[
        "build",
        "-t",
        "example/app:v1",
        "--label",
        "from.cli=yes",
        "--output",
        &format!("type=oci,dest={}", archive.display()),
        context.to_str().unwrap(),
    ]);
    let id = stdout(&output).trim().to_string();

    let config = skopeo_inspect(&archive, true);
    let container = &config["config"];
    assert_eq!(container["WorkingDir"], "/srv/app");
    assert_eq!(container["User"], "app");
    assert_eq!(
        container["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c"])
    );
    assert_eq!(
        container["Cmd"],
        serde_json::json!(["cat $APP_HOME/hello.txt"])
    );
    assert_eq!(container["Labels"]["org.example.team"], "builders");
    assert_eq!(container["Labels"]["from.cli"], "yes");
    assert!(container["ExposedPorts"]["8080/tcp"].is_object());
    let env: Vec<String> = serde_json::from_value(container["Env"].clone()).unwrap();
    assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");
    // One layer from busybox, then WORKDIR, COPY, COPY, ADD.
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 5, "{config}");
    let history = config["history"].as_array().unwrap();
    let with_layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(with_layers, diff_ids.len(), "{config}");
    assert!(history.iter().any(|h| {
        h["created_by"]
            .as_str()
            .unwrap()
            .starts_with("ADD notes.txt")
    }));

    // The image id printed is the config digest in the archive.
    let manifest = skopeo_inspect(&archive, false);
    assert_eq!(manifest["Layers"].as_array().unwrap().len(), 5);
    let layout = Layout::open(&archive, &kiln.work.path().join("raw"));
    assert!(
        layout
            .dir
            .join("blobs/sha256")
            .join(id.trim_start_matches("sha256:"))
            .is_file()
    );

    // Files, owners and modes as an independent unpacker sees them.
    let rootfs = umoci_rootfs(&layout, "v1", &kiln.work.path().join("bundle"))
        .expect("umoci is installed (tools_present)");
    assert_eq!(read(rootfs.join("srv/app/hello.txt")), "hello from kiln\n");
    assert_eq!(read(rootfs.join("opt/notes.txt")), "notes\n");
    assert!(rootfs.join("bin/busybox").is_file());
    use std::os::unix::fs::MetadataExt;
    let conf = std::fs::metadata(rootfs.join("etc/app/app.conf")).unwrap();
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (1000, 50, 0o640)
    );
}

#[test]
fn layer_tars_hold_exactly_what_each_step_wrote() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM busybox\nCOPY a.txt b.txt /data/\n"),
            ("a.txt", "a"),
            ("b.txt", "b"),
        ],
    );
    let archive = kiln.build_to("oci", "app.tar", &context, &[]);
    let layout = Layout::open(&archive, &kiln.work.path().join("layout"));
    let mut entries = layout.layer_entries().pop().expect("a top layer");
    entries.sort();
    assert_eq!(entries, ["data/", "data/a.txt", "data/b.txt"]);
}

#[test]
fn image_id_goes_to_stdout_and_iidfile() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM scratch\nCOPY x /\n"), ("x", "x")],
    );
    let iidfile = kiln.work.path().join("iid");
    let output = kiln.ok(&[
        "build",
        "--iidfile",
        iidfile.to_str().unwrap(),
        context.to_str().unwrap(),
    ]);
    let id = stdout(&output).trim().to_string();
    assert!(id.starts_with("sha256:"));
    assert_eq!(read(&iidfile), id);
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[
            (
                "Dockerfile",
                "FROM busybox\nWORKDIR /app\nCOPY . .\nENV A=1\n",
            ),
            ("f.txt", "content\n"),
        ],
    );
    let build = |name: &str| {
        let archive = kiln.work.path().join(name);
        let output = kiln
            .command()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--no-cache", "-q", "--output"])
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&context)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        archive
    };
    let first = skopeo_inspect(&build("one.tar"), false);
    // Touch the context file: a new mtime, clamped to SOURCE_DATE_EPOCH in the layer.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(context.join("f.txt"), "content\n").unwrap();
    let second = skopeo_inspect(&build("two.tar"), false);
    assert_eq!(first["Digest"], second["Digest"]);
    assert_eq!(first["Created"], "2023-11-14T22:13:20Z");
}

#[test]
fn dockerignore_keeps_files_out_of_copy_dot() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx/\n"),
            (".dockerignore", "secret.txt\nlogs/\n!logs/keep.log\n"),
            ("secret.txt", "s3cret"),
            ("public.txt", "public"),
            ("logs/a.log", "a"),
            ("logs/keep.log", "keep"),
        ],
    );
    let out = kiln.build_rootfs(&context, "rootfs", &[]);
    assert!(out.join("ctx/public.txt").is_file());
    assert!(!out.join("ctx/secret.txt").exists());
    assert!(!out.join("ctx/logs/a.log").exists());
    assert_eq!(read(out.join("ctx/logs/keep.log")), "keep");
    assert!(
        out.join("bin/busybox").is_file(),
        "type=local writes the whole root filesystem"
    );
}

#[test]
fn a_dockerfile_specific_ignore_file_wins() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[
            ("build/app.Dockerfile", "FROM scratch\nCOPY . /\n"),
            ("build/app.Dockerfile.dockerignore", "b.txt\n"),
            (".dockerignore", "a.txt\n"),
            ("a.txt", "a"),
            ("b.txt", "b"),
        ],
    );
    let out = kiln.build_rootfs(
        &context,
        "rootfs",
        &["-f", context.join("build/app.Dockerfile").to_str().unwrap()],
    );
    assert!(out.join("a.txt").is_file());
    assert!(!out.join("b.txt").exists());
}

#[test]
fn a_foreign_base_image_is_extracted_and_built_upon() {
    // The base comes from GNU tar + gzip, not from kiln: its layer is extracted on first use.
    let kiln = Kiln::new();
    common::make_image(
        kiln.root.path(),
        "docker.io/library/base:latest",
        &[
            &[("etc/os-release", "ID=test\n")],
            &[("usr/share/doc/readme", "r\n")],
        ],
    );
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM base\nCOPY x /x\n"), ("x", "x")],
    );
    let out = kiln.build_rootfs(&context, "rootfs", &[]);
    assert_eq!(read(out.join("etc/os-release")), "ID=test\n");
    assert!(out.join("usr/share/doc/readme").is_file());
    assert!(out.join("x").is_file());
}

#[test]
fn target_and_build_args_select_what_is_built() {
    let kiln = Kiln::new();
    let dockerfile = "ARG NAME=default\nFROM scratch AS first\nARG NAME\nCOPY ${NAME}.txt /picked.txt\n\nFROM scratch\nCOPY other.txt /\n";
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", dockerfile),
            ("default.txt", "d"),
            ("chosen.txt", "c"),
            ("other.txt", "o"),
        ],
    );
    let out = kiln.build_rootfs(
        &context,
        "rootfs",
        &["--target", "first", "--build-arg", "NAME=chosen"],
    );
    assert_eq!(read(out.join("picked.txt")), "c");
    assert!(!out.join("other.txt").exists());
}

#[test]
fn copy_from_another_stage() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = "FROM busybox AS build\nCOPY src.txt /out/result.txt\n\nFROM scratch\nCOPY --from=build /out/ /dist/\n";
    let context = kiln.context("app", &[("Dockerfile", dockerfile), ("src.txt", "built")]);
    let out = kiln.build_rootfs(&context, "rootfs", &[]);
    assert_eq!(read(out.join("dist/result.txt")), "built");
    assert!(!out.join("bin").exists());
}

#[test]
fn docker_archive_and_rootfs_tar_outputs() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[("Dockerfile", "FROM scratch\nCOPY x /x\n"), ("x", "x")],
    );
    let docker_tar = kiln.build_to("docker", "docker.tar", &context, &["-t", "app:2"]);
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&docker_tar)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(names.lines().any(|l| l == "manifest.json"), "{names}");
    assert!(names.lines().any(|l| l == "index.json"), "{names}");
    let layout = untar(&docker_tar, &kiln.work.path().join("docker"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:2"]));

    let rootfs_tar = kiln.build_to("tar", "rootfs.tar", &context, &[]);
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&rootfs_tar)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout).trim(), "x");
}

#[test]
fn context_and_dockerfile_from_stdin() {
    let kiln = Kiln::new();
    let source = kiln.context(
        "src",
        &[
            ("Dockerfile", "FROM scratch\nCOPY in.txt /\n"),
            ("in.txt", "stdin"),
        ],
    );
    let archive = kiln.work.path().join("ctx.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&source)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = kiln.work.path().join("rootfs");
    let output = kiln
        .command()
        .args(["build", "-q", "--output"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg("-")
        .stdin(std::fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert_eq!(read(out.join("in.txt")), "stdin");

    // A Dockerfile on stdin with `-f -` and a directory context.
    let out2 = kiln.work.path().join("rootfs2");
    let mut child = kiln
        .command()
        .args(["build", "-q", "-f", "-", "--output"])
        .arg(format!("type=local,dest={}", out2.display()))
        .arg(&source)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"FROM scratch\nCOPY in.txt /renamed.txt\n")
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(out2.join("renamed.txt").is_file());
}

#[test]
fn steps_that_change_nothing_keep_history_and_layers_paired() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // /etc exists already: WORKDIR changes nothing, and still gets its (empty) layer, as in BuildKit.
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", "FROM busybox\nWORKDIR /etc\nCOPY x /x\n"),
            ("x", "x"),
        ],
    );
    let archive = kiln.build_to("oci", "app.tar", &context, &[]);
    let config = skopeo_inspect(&archive, true);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 3, "{config}");
    assert_eq!(
        diff_ids[1],
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
    let history = config["history"].as_array().unwrap();
    let layered: Vec<&str> = history
        .iter()
        .filter(|h| h["empty_layer"] != true)
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    assert_eq!(layered.len(), 3, "{config}");
    assert_eq!(layered[1], "WORKDIR /etc");
}

#[test]
fn add_unpacks_a_local_archive_and_copy_does_not() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "app",
        &[
            (
                "Dockerfile",
                "FROM scratch\nADD bundle.tar.gz /unpacked/\nCOPY bundle.tar.gz /copied/\n",
            ),
            ("payload/inner.txt", "inner"),
        ],
    );
    let status = Command::new("tar")
        .arg("-czf")
        .arg(context.join("bundle.tar.gz"))
        .arg("-C")
        .arg(context.join("payload"))
        .arg("inner.txt")
        .status()
        .unwrap();
    assert!(status.success());
    let out = kiln.build_rootfs(&context, "rootfs", &[]);
    assert_eq!(read(out.join("unpacked/inner.txt")), "inner");
    assert!(out.join("copied/bundle.tar.gz").is_file());
}

#[test]
fn two_stores_build_identical_images_from_scratch_with_source_date_epoch() {
    if !tools_present() {
        return;
    }
    // Everything from the base up, RUN included, in two separate stores and work dirs.
    let build_everything = || {
        let kiln = Kiln::new();
        let base = kiln.work.path().join("base");
        common::busybox_rootfs(&base.join("rootfs"));
        std::fs::write(base.join("Dockerfile"), "FROM scratch\nCOPY rootfs/ /\n").unwrap();
        let app = kiln.context(
            "app",
            &[
                (
                    "Dockerfile",
                    "FROM busybox\nCOPY f.txt /srv/\nRUN echo built > /srv/out && mkdir /srv/d\n",
                ),
                ("f.txt", "content\n"),
            ],
        );
        let archive = kiln.work.path().join("app.tar");
        for args in [
            vec![
                "build".to_string(),
                "-q".into(),
                "-t".into(),
                "busybox".into(),
                base.display().to_string(),
            ],
            vec![
                "build".to_string(),
                "-q".into(),
                "--output".into(),
                format!("type=oci,dest={}", archive.display()),
                app.display().to_string(),
            ],
        ] {
            let output = kiln
                .command()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(&args)
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", common::stderr(&output));
        }
        let digest = skopeo_inspect(&archive, false)["Digest"].clone();
        (kiln, digest)
    };
    let (_first_kiln, first) = build_everything();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_second_kiln, second) = build_everything();
    assert_eq!(first, second);
}

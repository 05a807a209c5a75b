//! End-to-end tests of `kiln save` and `kiln load`, checked with independent tools: skopeo reads
//! what kiln writes and writes what kiln reads, and a private dockerd loads and runs kiln's archive.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    Kiln, TestDockerd, have_or_skip, make_busybox_image, make_image, multi_platform_layout,
    output_ok, skopeo_ok, stderr, stdout,
};

const APP: &str = "docker.io/library/app:latest";
const OTHER: &str = "docker.io/library/other:1.0";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `REPOSITORY:TAG ID` lines of `kiln images`, sorted.
fn listing(kiln: &Kiln) -> Vec<String> {
    let out = stdout(&kiln.ok(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]));
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn saved_archive_is_read_by_skopeo() {
    if !have_or_skip("skopeo") {
        return;
    }
    let kiln = Kiln::new();
    let app = make_image(
        kiln.root.path(),
        APP,
        &[&[("a.txt", "a\n")], &[("b/b.txt", "b\n")]],
    );
    let archive = kiln.save("app.tar", &["app"]);

    let inspected: serde_json::Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .expect("skopeo inspect JSON");
    // A docker-archive source reports its layers by uncompressed digest.
    let diff_ids: Vec<String> = app.diff_ids.iter().map(ToString::to_string).collect();
    assert_eq!(inspected["Layers"], serde_json::json!(diff_ids));
    assert_eq!(inspected["Created"], "2024-01-01T00:00:00Z");

    let config: serde_json::Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .expect("skopeo config JSON");
    assert_eq!(config["config"]["Labels"]["test.name"], APP);

    // The same tar is also an OCI layout.
    let oci = skopeo_ok(&["inspect", &format!("oci-archive:{}", archive.display())]);
    assert!(oci.contains(&app.layer_blobs[0].to_string()), "{oci}");

    let mut names = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .expect("tar -t");
    assert!(names.status.success());
    names.stdout.retain(|b| *b != b'\r');
    let entries = String::from_utf8_lossy(&names.stdout);
    for expected in ["oci-layout", "index.json", "manifest.json", "repositories"] {
        assert!(
            entries.lines().any(|l| l == expected),
            "{expected} in:\n{entries}"
        );
    }
}

#[test]
fn several_images_share_one_archive() {
    if !have_or_skip("skopeo") {
        return;
    }
    let kiln = Kiln::new();
    let app = make_image(kiln.root.path(), APP, &[&[("a.txt", "a\n")]]);
    let other = make_image(kiln.root.path(), OTHER, &[&[("o.txt", "o\n")]]);
    let archive = kiln.save("both.tar", &["app", "other:1.0"]);

    for (name, image) in [("app:latest", &app), ("other:1.0", &other)] {
        let config: serde_json::Value = serde_json::from_str(&skopeo_ok(&[
            "inspect",
            "--config",
            &format!("docker-archive:{}:{name}", archive.display()),
        ]))
        .expect("skopeo config JSON");
        let diff_ids: Vec<String> = image.diff_ids.iter().map(ToString::to_string).collect();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(diff_ids),
            "{name}"
        );
    }
}

#[test]
fn save_then_load_into_a_fresh_store_keeps_names_and_ids() {
    let kiln = Kiln::new();
    make_image(
        kiln.root.path(),
        APP,
        &[&[("a.txt", "a\n")], &[("b.txt", "b\n")]],
    );
    make_image(kiln.root.path(), OTHER, &[&[("o.txt", "o\n")]]);
    kiln.ok(&["tag", "app", "127.0.0.1:5000/team/app:v1"]);
    let archive = kiln.save(
        "all.tar",
        &["app", "other:1.0", "127.0.0.1:5000/team/app:v1"],
    );

    let fresh = Kiln::new();
    let loaded = stdout(&fresh.ok(&["load", "-i", path_str(&archive)]));
    let mut lines: Vec<&str> = loaded.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "Loaded image: 127.0.0.1:5000/team/app:v1",
            "Loaded image: app:latest",
            "Loaded image: other:1.0"
        ]
    );
    assert_eq!(listing(&fresh), listing(&kiln));
    let original = stdout(&kiln.ok(&["inspect", "--format", "{{.Id}} {{json .RootFS}}", "app"]));
    let reloaded = stdout(&fresh.ok(&["inspect", "--format", "{{.Id}} {{json .RootFS}}", "app"]));
    assert_eq!(original, reloaded);

    // To stdout, as `docker save > file` does: the same bytes (the archive is deterministic).
    let piped_save = kiln
        .command()
        .args(["save", "app", "other:1.0", "127.0.0.1:5000/team/app:v1"])
        .output()
        .expect("kiln save to stdout");
    assert!(piped_save.status.success(), "{}", stderr(&piped_save));
    assert!(
        piped_save.stdout == std::fs::read(&archive).expect("read archive"),
        "save to stdout writes the same archive as -o"
    );

    // From stdin, as `docker load < file` does.
    let piped = Kiln::new();
    let output = piped
        .command()
        .arg("load")
        .stdin(std::fs::File::open(&archive).expect("open archive"))
        .output()
        .expect("kiln load from stdin");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(&piped), listing(&kiln));
}

#[test]
fn archives_written_by_skopeo_load() {
    if !have_or_skip("skopeo") {
        return;
    }
    let kiln = Kiln::new();
    let app = make_image(
        kiln.root.path(),
        APP,
        &[&[("a.txt", "a\n")], &[("b.txt", "b\n")]],
    );
    let archive = kiln.save("app.tar", &["app"]);
    let source = format!("docker-archive:{}", archive.display());

    let legacy = kiln.work.path().join("skopeo-docker.tar");
    skopeo_ok(&[
        "copy",
        &source,
        &format!("docker-archive:{}:copied:v1", legacy.display()),
    ]);
    let oci = kiln.work.path().join("skopeo-oci.tar");
    skopeo_ok(&[
        "copy",
        &source,
        &format!("oci-archive:{}:copied:v2", oci.display()),
    ]);

    let what = "{{json .RootFS}} {{json .Config}}";
    let original = stdout(&kiln.ok(&["inspect", "--format", what, "app"]));
    for (file, name) in [(&legacy, "copied:v1"), (&oci, "copied:v2")] {
        let fresh = Kiln::new();
        let out = stdout(&fresh.ok(&["load", "-i", path_str(file)]));
        assert_eq!(out, format!("Loaded image: {name}\n"), "{}", file.display());
        // skopeo may re-serialise the config (a new id), but its layers and settings stay.
        let loaded = stdout(&fresh.ok(&["inspect", "--format", what, name]));
        assert_eq!(loaded, original, "{name}");
        if name == "copied:v1" {
            let id = stdout(&fresh.ok(&["inspect", "--format", "{{.Id}}", name]));
            assert_eq!(
                id.trim(),
                app.config.to_string(),
                "a docker archive keeps the config"
            );
        }
        // The loaded image is complete: it saves again and skopeo reads it.
        let again = fresh.save("again.tar", &[name]);
        skopeo_ok(&["inspect", &format!("docker-archive:{}", again.display())]);
    }
}

#[test]
fn a_corrupted_blob_is_never_exported() {
    let kiln = Kiln::new();
    let app = make_image(kiln.root.path(), APP, &[&[("a.txt", "original content\n")]]);
    let blob = kiln
        .root
        .path()
        .join("blobs/sha256")
        .join(app.layer_blobs[0].hex());
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let mut permissions = std::fs::metadata(&blob).expect("stat blob").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&blob, permissions).expect("make blob writable");
    std::fs::write(&blob, &bytes).expect("corrupt blob");

    let archive = kiln.work.path().join("bad.tar");
    let output = kiln.run(&["save", "-o", path_str(&archive), "app"]);
    assert!(
        !output.status.success(),
        "save must fail on a corrupted blob"
    );
    assert!(
        stderr(&output).contains(&app.layer_blobs[0].to_string()),
        "the error names the bad blob: {}",
        stderr(&output)
    );
    assert!(!archive.exists(), "no archive is left behind");
    let leftovers: Vec<_> = std::fs::read_dir(kiln.work.path())
        .expect("list work dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("bad.tar"))
        .collect();
    assert!(leftovers.is_empty(), "temp file removed: {leftovers:?}");
}

#[test]
fn load_rejects_what_is_not_an_image_archive() {
    let kiln = Kiln::new();
    let dir = kiln.context("junk", &[("hello.txt", "hi\n")]);
    let tar = kiln.work.path().join("junk.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let output = kiln.run(&["load", "-i", path_str(&tar)]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("index.json"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stdout(&kiln.ok(&["images", "-q"])), "");
}

#[test]
fn docker_loads_and_runs_a_saved_image_and_kiln_loads_docker_save() {
    let kiln = Kiln::new();
    let image = make_busybox_image(kiln.root.path(), "docker.io/library/kiln-busybox:latest");
    let extra = make_image(kiln.root.path(), OTHER, &[&[("o.txt", "o\n")]]);
    let archive = kiln.save("busybox.tar", &["kiln-busybox", "other:1.0"]);
    let Some(dockerd) = TestDockerd::start() else {
        return;
    };
    let loaded = dockerd.load(&archive);
    assert!(
        loaded.contains("Loaded image: kiln-busybox:latest"),
        "{loaded}"
    );
    assert!(
        loaded.contains("Loaded image: other:1.0"),
        "both images of the archive load: {loaded}"
    );
    let other_id = dockerd.image_id("other:1.0");
    assert!(
        other_id == extra.config.to_string() || other_id == extra.manifest.to_string(),
        "docker's id {other_id} is kiln's second image"
    );
    let id = dockerd.image_id("kiln-busybox");
    assert!(
        id == image.config.to_string() || id == image.manifest.to_string(),
        "docker's id {id} is kiln's image"
    );
    let ran = dockerd.run_isolated(&["kiln-busybox", "echo", "hello from kiln"]);
    assert!(ran.status.success(), "docker run failed: {}", stderr(&ran));
    assert_eq!(stdout(&ran), "hello from kiln\n");

    // And the other way: what docker saves, kiln loads with the same id.
    let docker_archive = kiln.work.path().join("from-docker.tar");
    output_ok(dockerd.docker().args([
        "save",
        "-o",
        path_str(&docker_archive),
        "kiln-busybox:latest",
    ]));
    let fresh = Kiln::new();
    let out = stdout(&fresh.ok(&["load", "-i", path_str(&docker_archive)]));
    assert_eq!(out, "Loaded image: kiln-busybox:latest\n");
    let reloaded = stdout(&fresh.ok(&["inspect", "--format", "{{.Id}}", "kiln-busybox"]));
    assert_eq!(reloaded.trim(), image.config.to_string());
}

#[test]
fn loading_a_multi_platform_layout_keeps_this_machines_image() {
    let kiln = Kiln::new();
    let here = make_image(
        kiln.root.path(),
        "docker.io/library/multi:here",
        &[&[("p", "here\n")]],
    );
    let elsewhere = make_image(
        kiln.root.path(),
        "docker.io/library/multi:elsewhere",
        &[&[("p", "there\n")]],
    );
    let host = kiln_image::Platform::host();
    let other_arch = if host.architecture == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    let mut here_platform = serde_json::json!({"os": "linux", "architecture": host.architecture});
    if let Some(variant) = &host.variant {
        here_platform["variant"] = serde_json::json!(variant);
    }
    let (layout, _) = multi_platform_layout(
        &kiln,
        "layout",
        &[
            (
                "multi:elsewhere",
                &elsewhere,
                serde_json::json!({"os": "linux", "architecture": other_arch}),
            ),
            ("multi:here", &here, here_platform),
        ],
        serde_json::json!({
            "io.containerd.image.name": "docker.io/library/multi:v1",
            "org.opencontainers.image.ref.name": "v1",
        }),
    );
    let layout_tar = kiln.work.path().join("multi-oci.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&layout_tar)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .expect("tar -c");
    assert!(status.success());

    let fresh = Kiln::new();
    let out = stdout(&fresh.ok(&["load", "-i", path_str(&layout_tar)]));
    assert_eq!(out, "Loaded image: multi:v1\n");
    let id = stdout(&fresh.ok(&["inspect", "--format", "{{.Id}}", "multi:v1"]));
    assert_eq!(id.trim(), here.config.to_string(), "the image for {host}");
}

/// Bytes that do not compress: a simple linear congruential generator.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        })
        .collect()
}

#[test]
fn prune_waits_for_a_load_in_progress() {
    let source = Kiln::new();
    let layer_dir = source.work.path().join("big");
    std::fs::create_dir_all(&layer_dir).expect("mkdir");
    std::fs::write(layer_dir.join("noise.bin"), noise(6 << 20)).expect("write noise");
    let image = common::make_image_from_dirs(source.root.path(), APP, &[layer_dir], &[]);
    let archive = source.save("big.tar", &["app"]);
    let bytes = std::fs::read(&archive).expect("read archive");

    let kiln = Kiln::new();
    let mut load = kiln
        .command()
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln load");
    let mut stdin = load.stdin.take().expect("load stdin");
    use std::io::Write as _;
    let half = bytes.len() / 2;
    stdin
        .write_all(&bytes[..half])
        .expect("feed half the archive");
    stdin.flush().expect("flush");
    // Wait until the load is ingesting the big layer (it took the store lock before that);
    // layers above kiln-oci's 4 MiB small-file limit stream straight into the store.
    let tmp = kiln.root.path().join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ingesting = || {
        std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|session| {
                std::fs::read_dir(session.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|entry| entry.file_name().to_string_lossy().starts_with("ingest"))
            })
    };
    while !ingesting() {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never started ingesting"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let mut prune = kiln
        .command()
        .arg("prune")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln prune");
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        prune.try_wait().expect("poll prune").is_none(),
        "prune must wait while a load holds the store"
    );
    stdin.write_all(&bytes[half..]).expect("feed the rest");
    drop(stdin);
    let loaded = load.wait_with_output().expect("load output");
    assert!(loaded.status.success(), "load failed: {}", stderr(&loaded));
    let pruned = prune.wait_with_output().expect("prune output");
    assert!(pruned.status.success(), "prune failed: {}", stderr(&pruned));
    assert!(
        !stdout(&pruned).contains(&image.layer_blobs[0].to_string()),
        "prune kept the loaded layer: {}",
        stdout(&pruned)
    );
    let again = kiln.save("again.tar", &["app"]);
    assert!(
        std::fs::read(&again).expect("read") == bytes,
        "every blob survived"
    );
}

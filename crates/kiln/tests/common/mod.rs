//! Shared helpers for end-to-end tests: a temp store root, a way to run the real `kiln` binary on a
//! context written by the test, images written into kiln's store, and a private dockerd. The
//! fixtures other crates' tests share too (busybox root filesystem, local registry, images made with
//! GNU tar) come from kiln-testsupport and are re-exported here.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub use kiln_testsupport::{
    MediaTypes, TestImage, TestRegistry, busybox_rootfs, free_port, have, tar_gz_dir, write_files,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A kiln with its own store root, removed when dropped.
pub struct Kiln {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Kiln {
    pub fn new() -> Kiln {
        Kiln {
            root: tempfile::tempdir().expect("temp store root"),
            work: tempfile::tempdir().expect("temp work dir"),
        }
    }

    /// `kiln --root <root>` with the given arguments, not yet run.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("--root").arg(self.root.path());
        command.env_remove("KILN_ROOT");
        command.stdin(Stdio::null());
        command
    }

    /// Starts kiln with `args` on a new pty: its slave is kiln's stdin, stdout and stderr, as a
    /// terminal would give them. Returns the child and the pty's master.
    pub fn spawn_on_pty(&self, args: &[&str]) -> (std::process::Child, std::fs::File) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave: std::os::fd::OwnedFd = pty.slave;
        let mut command = self.command();
        command
            .args(args)
            .stdin(Stdio::from(slave.try_clone().expect("dup the pty slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup the pty slave")))
            .stderr(Stdio::from(slave));
        let child = command.spawn().expect("spawn kiln");
        // The Command holds our copies of the slave: drop them, so that a reader of the master
        // sees EIO once kiln (the last holder) exits.
        drop(command);
        (child, std::fs::File::from(pty.master))
    }

    /// Runs kiln with `args`; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running kiln")
    }

    /// Runs kiln with `args` and panics with its output when it fails.
    pub fn ok(&self, args: &[&str]) -> Output {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kiln {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `kiln build -q <extra…> --output type=<kind>,dest=<work dir>/<dest> <context>`, panicking
    /// with kiln's output when it fails; returns the destination (a directory for `local`, an
    /// archive for `oci` and `docker`).
    pub fn build_to(&self, kind: &str, dest: &str, context: &Path, extra: &[&str]) -> PathBuf {
        let dest = self.work.path().join(dest);
        let output = format!("type={kind},dest={}", dest.display());
        let mut args = vec!["build", "-q"];
        args.extend_from_slice(extra);
        args.extend([
            "--output",
            output.as_str(),
            context.to_str().expect("UTF-8 context path"),
        ]);
        self.ok(&args);
        dest
    }

    /// [`Kiln::build_to`] with `type=local`: the built root filesystem, at `<work dir>/<dest>`.
    pub fn build_rootfs(&self, context: &Path, dest: &str, extra: &[&str]) -> PathBuf {
        self.build_to("local", dest, context, extra)
    }

    /// `kiln save -o <work dir>/<file> <names…>`, panicking when it fails; returns the archive.
    pub fn save(&self, file: &str, names: &[&str]) -> PathBuf {
        let archive = self.work.path().join(file);
        let mut args = vec!["save", "-o", archive.to_str().expect("UTF-8 work path")];
        args.extend_from_slice(names);
        self.ok(&args);
        archive
    }

    /// A new context directory under the work dir, with `files` (path, content) written into it.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        write_files(&dir, files);
        dir
    }
}

/// The workspace's `testdata/` directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Whether `tool` is installed; when it is not, says that the test is skipped.
pub fn have_or_skip(tool: &str) -> bool {
    let installed = have(tool);
    if !installed {
        eprintln!("SKIP: {tool} is not installed");
    }
    installed
}

/// Runs `command` to its end, panicking with its stderr when it cannot start or fails; returns its
/// output.
pub fn output_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        stderr(&output)
    );
    output
}

/// Runs `skopeo <args…>` (plain HTTP and no TLS checks are the caller's flags), panicking with its
/// output when it fails; returns its stdout.
pub fn skopeo_ok(args: &[&str]) -> String {
    stdout(&output_ok(Command::new("skopeo").args(args)))
}

/// Extracts `archive` with GNU tar into `dir` (created if missing) and returns `dir`.
pub fn untar(archive: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar -x");
    assert!(status.success(), "tar -xf {} failed", archive.display());
    dir.to_path_buf()
}

/// The content of the text file `path`, panicking when it cannot be read.
pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Images in kiln's store, multi-platform layouts made from them, and a private dockerd (for the
// image, archive and registry command tests).

/// Writes an image into the store at `root` with the store API and tags it `name` (a full,
/// normalised name such as `docker.io/library/app:latest`). Each layer is a directory tree of
/// `(path, content)` files; the config has a creation time, a history entry per layer plus a
/// final `CMD` entry without a layer, and Docker media types, as `docker save` would have them.
pub fn make_image(root: &Path, name: &str, layers: &[&[(&str, &str)]]) -> TestImage {
    let work = tempfile::tempdir().expect("work dir");
    let dirs: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let dir = work.path().join(format!("layer{i}"));
            write_files(&dir, files);
            dir
        })
        .collect();
    make_image_from_dirs(root, name, &dirs, &[])
}

/// As [`make_image`], from layer directories already laid out; `env` goes into the config.
pub fn make_image_from_dirs(root: &Path, name: &str, dirs: &[PathBuf], env: &[&str]) -> TestImage {
    let mut history: Vec<serde_json::Value> = (0..dirs.len())
        .map(|i| {
            serde_json::json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("/bin/sh -c #(nop) ADD dir:layer{i} in / "),
            })
        })
        .collect();
    history.push(serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]",
        "empty_layer": true,
    }));
    let mut env_list = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
    env_list.extend_from_slice(env);
    let config = serde_json::json!({
        "architecture": kiln_image::Platform::host().architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": env_list, "Cmd": ["sh"], "Labels": {"test.name": name}},
        "rootfs": {},
        "history": history,
    });
    let store = kiln_store::Store::open(root).expect("open store");
    kiln_testsupport::write_image(&store, name, dirs, config, MediaTypes::Docker)
}

/// A one-layer image tagged `name` in `kiln`'s store whose config is for `linux/<arch>`, with the
/// file `/arch` saying which.
pub fn arch_image(kiln: &Kiln, name: &str, arch: &str) -> TestImage {
    let dir = kiln.work.path().join(format!("layer-{arch}"));
    write_files(&dir, &[("arch", format!("{arch}\n").as_str())]);
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {},
        "history": [{"created_by": "test layer"}],
    });
    let store = kiln_store::Store::open(kiln.root.path()).expect("open store");
    kiln_testsupport::write_image(&store, name, &[dir], config, MediaTypes::Docker)
}

/// Pushes an index of `amd64` (saved as `multi:amd64`, for linux/amd64) and `arm64` (`multi:arm64`,
/// for linux/arm64/v8) from `kiln`'s store to `destination` on a plain-HTTP registry with
/// `skopeo copy --all`. Returns the index's digest.
pub fn push_amd64_arm64_index(
    kiln: &Kiln,
    amd64: &TestImage,
    arm64: &TestImage,
    destination: &str,
) -> kiln_image::Digest {
    let (layout, index_digest) = multi_platform_layout(
        kiln,
        "layout",
        &[
            (
                "multi:amd64",
                amd64,
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
            ),
            (
                "multi:arm64",
                arm64,
                serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            ),
        ],
        serde_json::json!({"org.opencontainers.image.ref.name": "multi"}),
    );
    skopeo_ok(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{destination}"),
    ]);
    index_digest
}

/// Saves `images` ((name for `kiln save`, the image, its platform as OCI JSON)) from `kiln`'s store,
/// unpacks the archive into `<work dir>/<dir>` and makes that an OCI layout whose one entry is an
/// image index of them, with `annotations` on the entry. Returns the layout and the index's digest.
pub fn multi_platform_layout(
    kiln: &Kiln,
    dir: &str,
    images: &[(&str, &TestImage, serde_json::Value)],
    annotations: serde_json::Value,
) -> (PathBuf, kiln_image::Digest) {
    let names: Vec<&str> = images.iter().map(|(name, _, _)| *name).collect();
    let archive = kiln.save(&format!("{dir}.tar"), &names);
    let layout = untar(&archive, &kiln.work.path().join(dir));
    // Only the OCI layout stays: kiln's docker-archive files would name the images one by one.
    std::fs::remove_file(layout.join("manifest.json")).expect("rm manifest.json");
    std::fs::remove_file(layout.join("repositories")).expect("rm repositories");
    let blob = |digest: &kiln_image::Digest| layout.join("blobs/sha256").join(digest.hex());
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(_, image, platform)| {
            serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": image.manifest.to_string(),
                "size": std::fs::metadata(blob(&image.manifest)).expect("manifest in layout").len(),
                "platform": platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let index_bytes = serde_json::to_vec(&index).expect("index JSON");
    let index_digest = kiln_image::Digest::of(&index_bytes);
    std::fs::write(blob(&index_digest), &index_bytes).expect("write index");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest.to_string(),
            "size": index_bytes.len(),
            "annotations": annotations,
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )
    .expect("write index.json");
    (layout, index_digest)
}

/// The name the busybox test image is tagged with in kiln's store.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// A kiln whose store holds the busybox image as [`BUSYBOX`].
pub fn kiln_with_busybox() -> Kiln {
    let kiln = Kiln::new();
    make_busybox_image(kiln.root.path(), BUSYBOX);
    kiln
}

/// `kiln run --rm <flags> busybox sh -c <script>`; returns the output whatever the exit status.
pub fn run_busybox_sh(kiln: &Kiln, flags: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend(["busybox", "sh", "-c", script]);
    kiln.run(&args)
}

/// A runnable one-layer busybox image (from Debian's busybox-static) tagged `name` in the store at
/// `root`.
pub fn make_busybox_image(root: &Path, name: &str) -> TestImage {
    let work = tempfile::tempdir().expect("work dir");
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    make_image_from_dirs(root, name, &[rootfs], &[])
}

/// A private dockerd (`--iptables=false --bridge=none`) on its own socket, data root and exec
/// root, stopped when dropped.
pub struct TestDockerd {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl TestDockerd {
    /// Starts dockerd and waits for it to answer; `None` (with the reason printed) when dockerd
    /// or the docker client is missing or the daemon cannot start here.
    pub fn start() -> Option<TestDockerd> {
        if !have("dockerd") || !have("docker") {
            eprintln!("SKIP: dockerd or docker is not installed (apt-get install docker.io)");
            return None;
        }
        // /tmp paths: the socket path must stay short.
        let dir = tempfile::Builder::new()
            .prefix("kd")
            .tempdir_in("/tmp")
            .expect("dockerd dir");
        let socket = dir.path().join("d.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                eprintln!("SKIP: cannot start dockerd: {error}");
                return None;
            }
        };
        let mut dockerd = TestDockerd { child, dir, socket };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                eprintln!(
                    "SKIP: dockerd exited ({status}); log:\n{}",
                    dockerd.log_tail()
                );
                return None;
            }
            if dockerd.socket.exists()
                && dockerd
                    .docker()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return Some(dockerd);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!(
            "SKIP: dockerd did not answer in time; log:\n{}",
            dockerd.log_tail()
        );
        None
    }

    /// The docker client pointed at this daemon.
    pub fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()));
        command.env("DOCKER_CONFIG", self.dir.path().join("client"));
        command
    }

    /// `docker load -i <archive>`, panicking with the daemon's log when it fails; returns docker's
    /// stdout (the `Loaded image: …` lines).
    pub fn load(&self, archive: &Path) -> String {
        let loaded = self
            .docker()
            .arg("load")
            .arg("-i")
            .arg(archive)
            .output()
            .expect("run docker load");
        assert!(
            loaded.status.success(),
            "docker load: {}\n{}",
            stderr(&loaded),
            self.log_tail()
        );
        stdout(&loaded)
    }

    /// Docker's id of the image `name` (`docker image inspect --format {{.Id}}`), empty when docker
    /// does not know it.
    pub fn image_id(&self, name: &str) -> String {
        let inspected = self
            .docker()
            .args(["image", "inspect", "--format", "{{.Id}}", name])
            .output()
            .expect("run docker image inspect");
        stdout(&inspected).trim().to_string()
    }

    /// `docker run --rm --network none <args…>`; returns the output whatever the exit status.
    pub fn run_isolated(&self, args: &[&str]) -> Output {
        self.docker()
            .args(["run", "--rm", "--network", "none"])
            .args(args)
            .output()
            .expect("run docker run")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for TestDockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount its data root; kill only if it does not stop.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the image `busybox` in kiln's store with kiln itself (`FROM scratch` + `COPY rootfs/ /`,
/// the rootfs from [`busybox_rootfs`]) and returns its image id.
pub fn build_busybox_with_kiln(kiln: &Kiln) -> String {
    let dir = kiln.work.path().join("busybox-base");
    busybox_rootfs(&dir.join("rootfs"));
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
    )
    .expect("write busybox Dockerfile");
    let output = kiln.ok(&[
        "build",
        "-q",
        "-t",
        "busybox",
        dir.to_str().expect("utf-8 path"),
    ]);
    stdout(&output).trim().to_string()
}

/// A one-layer busybox image (the rootfs of [`busybox_rootfs`]) tagged `name` in the store at
/// `root`, whose container config is `container_config` (the image config's `config` object, e.g.
/// `{"Entrypoint": ["echo"], "Cmd": ["hi"], "Env": [...]}`) as is. Written with the store API, so
/// tests of `kiln run` do not depend on `kiln build`.
pub fn make_busybox_image_with_config(
    root: &Path,
    name: &str,
    container_config: serde_json::Value,
) -> TestImage {
    let work = tempfile::tempdir().expect("work dir");
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let config = serde_json::json!({
        "architecture": kiln_image::Platform::host().architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": container_config,
        "rootfs": {},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "COPY rootfs/ / # buildkit"}],
    });
    let store = kiln_store::Store::open(root).expect("open store");
    kiln_testsupport::write_image(&store, name, &[rootfs], config, MediaTypes::Oci)
}

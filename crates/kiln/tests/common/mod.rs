//! Shared helpers for end-to-end tests: a temp store root, a way to run the real `kiln` binary on a
//! context written by the test, and a busybox root filesystem laid out from Debian's
//! `busybox-static` (base images are made locally, never downloaded).

#![allow(dead_code)] // each test binary uses a different subset

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

    /// A new context directory under the work dir, with `files` (path, content) written into it.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("file has a parent")).expect("mkdir");
            std::fs::write(&file, content).expect("write context file");
        }
        std::fs::create_dir_all(&dir).expect("mkdir context");
        dir
    }
}

/// The workspace's `testdata/` directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether an external tool is on PATH; tests that need a missing tool say so and skip.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Lays out a busybox root filesystem in `dir`: `/bin/busybox` from Debian's busybox-static with a
/// symlink per applet, `/etc/passwd` and `/etc/group` with root, a user `app` (1000) and a group
/// `staff` (50), and the usual empty directories.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static is installed (./setup.sh deps)");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet symlink");
        }
    }
    for empty in [
        "etc", "tmp", "root", "home/app", "var", "proc", "sys", "dev",
    ] {
        std::fs::create_dir_all(dir.join(empty)).expect("mkdir");
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .expect("group");
}

// ---------------------------------------------------------------------------------------------
// Images in a store, a local registry and dockerd (added for the image, archive and registry
// command tests).

/// What [`make_image`] wrote.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub manifest: kiln_image::Digest,
    pub config: kiln_image::Digest,
    pub layer_blobs: Vec<kiln_image::Digest>,
    pub diff_ids: Vec<kiln_image::Digest>,
}

/// A layer as a gzip'd tar of the directory `dir`, made with GNU tar and gzip (tools independent
/// of kiln); returns (compressed bytes, diff id).
pub fn tar_gz_dir(dir: &Path) -> (Vec<u8>, kiln_image::Digest) {
    let tar = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            "-",
            "-C",
        ])
        .arg(dir)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(tar.status.success(), "tar failed");
    let diff_id = kiln_image::Digest::of(&tar.stdout);
    let mut gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gzip.stdin.take().expect("gzip stdin");
    let input = tar.stdout;
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        stdin.write_all(&input).expect("feed gzip");
    });
    let output = gzip.wait_with_output().expect("gzip output");
    writer.join().expect("gzip feeder");
    assert!(output.status.success(), "gzip failed");
    (output.stdout, diff_id)
}

fn ingest_bytes(store: &kiln_store::Store, bytes: &[u8]) -> kiln_image::Digest {
    use std::io::Write as _;
    let mut writer = store.ingest().expect("ingest");
    writer.write_all(bytes).expect("write blob");
    writer.commit(None).expect("commit blob").digest
}

/// Writes an image into the store at `root` with the store API and tags it `name` (a full,
/// normalised name such as `docker.io/library/app:latest`). Each layer is a directory tree of
/// `(path, content)` files; the config has a creation time, a history entry per layer plus a
/// final `CMD` entry without a layer, and Docker media types, as `docker save` would have them.
pub fn make_image(root: &Path, name: &str, layers: &[&[(&str, &str)]]) -> TestImage {
    let work = tempfile::tempdir().expect("work dir");
    let mut dirs = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let dir = work.path().join(format!("layer{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir layer");
        for (path, content) in files.iter() {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, content).expect("write layer file");
        }
        dirs.push(dir);
    }
    make_image_from_dirs(root, name, &dirs, &[])
}

/// As [`make_image`], from layer directories already laid out; `env` goes into the config.
pub fn make_image_from_dirs(root: &Path, name: &str, dirs: &[PathBuf], env: &[&str]) -> TestImage {
    let store = kiln_store::Store::open(root).expect("open store");
    let mut layer_records = Vec::new();
    let mut history = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (blob, diff_id) = tar_gz_dir(dir);
        let digest = ingest_bytes(&store, &blob);
        layer_records.push(kiln_store::ManifestLayer {
            blob_digest: digest,
            diff_id,
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            size: blob.len() as u64,
        });
        history.push(serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "created_by": format!("/bin/sh -c #(nop) ADD dir:layer{i} in / "),
        }));
    }
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
        "rootfs": {
            "type": "layers",
            "diff_ids": layer_records.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = ingest_bytes(&store, &config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layer_records.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.blob_digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = ingest_bytes(&store, &manifest_bytes);
    store
        .record_manifest(&kiln_store::ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            layers: layer_records.clone(),
        })
        .expect("record manifest");
    store
        .tag(name, &manifest_digest, &config_digest)
        .expect("tag image");
    TestImage {
        manifest: manifest_digest,
        config: config_digest,
        layer_blobs: layer_records
            .iter()
            .map(|l| l.blob_digest.clone())
            .collect(),
        diff_ids: layer_records.iter().map(|l| l.diff_id.clone()).collect(),
    }
}

/// A runnable one-layer busybox image (from Debian's busybox-static) tagged `name` in the store at
/// `root`.
pub fn make_busybox_image(root: &Path, name: &str) -> TestImage {
    let work = tempfile::tempdir().expect("work dir");
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    make_image_from_dirs(root, name, &[rootfs], &[])
}

/// A CNCF distribution registry (Debian's `docker-registry`) on 127.0.0.1 with a temp config and
/// storage, stopped when dropped.
pub struct TestRegistry {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// Other directories the registry reads (the htpasswd file), removed with it.
    keep_alive: Vec<tempfile::TempDir>,
}

impl TestRegistry {
    /// Starts a registry; `auth_yaml` is an optional top-level `auth:` section. Returns `None`
    /// (and says why) when `docker-registry` is not installed.
    pub fn start(auth_yaml: &str) -> Option<TestRegistry> {
        if !have("docker-registry") {
            eprintln!("SKIP: docker-registry is not installed (./setup.sh deps)");
            return None;
        }
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let registry = TestRegistry {
            child,
            port,
            dir,
            log,
            keep_alive: Vec::new(),
        };
        registry.wait_ready();
        Some(registry)
    }

    /// A registry that requires `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_password(user: &str, password: &str) -> Option<TestRegistry> {
        let auth_dir = tempfile::tempdir().expect("auth dir");
        let htpasswd = auth_dir.path().join("htpasswd");
        let hash = bcrypt::hash_with_result(password, 4)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY);
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
        let mut registry = TestRegistry::start(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            htpasswd.display()
        ))?;
        registry.keep_alive.push(auth_dir);
        Some(registry)
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "registry did not start; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lines of the registry's log containing `needle` (e.g. `"PUT /v2/"`).
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
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
    let store = kiln_store::Store::open(root).expect("open store");
    let (blob, diff_id) = tar_gz_dir(&rootfs);
    let layer_digest = ingest_bytes(&store, &blob);
    let layer = kiln_store::ManifestLayer {
        blob_digest: layer_digest,
        diff_id,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        size: blob.len() as u64,
    };
    let config = serde_json::json!({
        "architecture": kiln_image::Platform::host().architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "COPY rootfs/ / # buildkit"}],
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = ingest_bytes(&store, &config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": layer.media_type,
            "digest": layer.blob_digest.to_string(),
            "size": layer.size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = ingest_bytes(&store, &manifest_bytes);
    store
        .record_manifest(&kiln_store::ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            layers: vec![layer.clone()],
        })
        .expect("record manifest");
    store
        .tag(name, &manifest_digest, &config_digest)
        .expect("tag image");
    TestImage {
        manifest: manifest_digest,
        config: config_digest,
        layer_blobs: vec![layer.blob_digest],
        diff_ids: vec![layer.diff_id],
    }
}

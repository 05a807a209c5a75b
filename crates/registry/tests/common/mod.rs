//! Test set-up shared by the registry tests: a real CNCF distribution server (Debian's
//! `docker-registry`) on 127.0.0.1 with a temp config and storage, and small images written into a
//! store without any other kiln crate.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::Digest;
use kiln_store::{ManifestLayer, ManifestRecord, Store};

pub struct TestRegistry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl TestRegistry {
    /// Starts a registry; `auth_yaml` is an optional `auth:` section (indented as top-level YAML).
    /// Returns `None` (and says why) when `docker-registry` is not installed.
    pub fn start(auth_yaml: &str) -> Option<TestRegistry> {
        if Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
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
        };
        registry.wait_ready();
        Some(registry)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry did not start; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lines of the registry's access log matching `needle` (e.g. `"PUT /v2/"`).
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn ingest(store: &Store, bytes: &[u8]) -> Digest {
    let mut writer = store.ingest().expect("ingest");
    writer.write_all(bytes).expect("write blob");
    writer.commit(None).expect("commit blob").digest
}

/// A gzip'd tar holding `files`, made with GNU tar and gzip (tools independent of kiln).
fn layer_tar_gz(files: &[(&str, &[u8])], work: &Path) -> (Vec<u8>, Digest) {
    let dir = tempfile::tempdir_in(work).expect("layer dir");
    for (path, content) in files {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, content).expect("write");
    }
    let tar_path = work.join(format!(
        "layer-{}.tar",
        Digest::of(format!("{files:?}").as_bytes()).hex()
    ));
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(dir.path())
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let tar = std::fs::read(&tar_path).expect("read tar");
    let diff_id = Digest::of(&tar);
    let gz = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(&tar_path)
        .output()
        .expect("gzip");
    assert!(gz.status.success());
    (gz.stdout, diff_id)
}

/// Writes an image of `layer_count` small layers into `store` under `name`; returns its manifest
/// digest. Docker media types, as `docker save` would have them.
pub fn make_image(store: &Store, name: &str, layer_count: usize, seed: &str) -> Digest {
    let work = tempfile::tempdir().expect("work");
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layer_count {
        let content = format!("{seed} layer {i}\n");
        let (blob, diff_id) = layer_tar_gz(
            &[(&format!("layer{i}/file.txt"), content.as_bytes())],
            work.path(),
        );
        let digest = ingest(store, &blob);
        layers.push(ManifestLayer {
            blob_digest: digest,
            diff_id: diff_id.clone(),
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            size: blob.len() as u64,
        });
        diff_ids.push(diff_id.to_string());
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = ingest(store, &config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.blob_digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
    let manifest_digest = ingest(store, &manifest_bytes);
    store
        .record_manifest(&ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            layers,
        })
        .expect("record manifest");
    store
        .tag(name, &manifest_digest, &config_digest)
        .expect("tag");
    manifest_digest
}

//! Images written straight into a store with the store API (so tests of pulling, pushing, saving or
//! running do not depend on `kiln build`), their layers made by GNU tar and gzip, and a store in a
//! temp directory.

use std::io::Write as _;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_image::Digest;
use kiln_store::{ManifestLayer, ManifestRecord, Store};

/// A store in a temp directory, removed when dropped; derefs to the [`Store`].
pub struct TempStore {
    // Declared first, so the store is closed before its directory goes.
    store: Store,
    dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> TempStore {
        let (dir, store) = temp_store();
        TempStore { store, dir }
    }

    /// The store's root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TempStore {
    fn default() -> TempStore {
        TempStore::new()
    }
}

impl Deref for TempStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

/// A store in a new temp directory, as parts, for APIs that take the store by value: keep the
/// directory alive as long as the store is used.
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp store dir");
    let store = Store::open(dir.path()).expect("open temp store");
    (dir, store)
}

/// Writes `files` (path relative to `dir`, content) under `dir`, creating `dir` and parents.
pub fn write_files<C: AsRef<[u8]>>(dir: &Path, files: &[(&str, C)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (path, content) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write file");
    }
}

/// A layer as a gzip'd tar of the directory `dir` (sorted, mtime 0, owner 0), made with GNU tar and
/// gzip; returns (compressed bytes, diff id).
pub fn tar_gz_dir(dir: &Path) -> (Vec<u8>, Digest) {
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
    let diff_id = Digest::of(&tar.stdout);
    let mut gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gzip.stdin.take().expect("gzip stdin");
    let input = tar.stdout;
    // Fed from a thread: gzip's output pipe would fill while we block writing its input.
    let writer = std::thread::spawn(move || stdin.write_all(&input).expect("feed gzip"));
    let output = gzip.wait_with_output().expect("gzip output");
    writer.join().expect("gzip feeder");
    assert!(output.status.success(), "gzip failed");
    (output.stdout, diff_id)
}

/// Stores `bytes` as a blob; returns its digest.
pub fn ingest_bytes(store: &Store, bytes: &[u8]) -> Digest {
    let mut writer = store.ingest().expect("ingest");
    writer.write_all(bytes).expect("write blob");
    writer.commit(None).expect("commit blob").digest
}

/// The media types an image is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTypes {
    /// Docker's, as `docker save` has them.
    Docker,
    /// OCI's, as BuildKit writes them.
    Oci,
}

impl MediaTypes {
    fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Docker => "application/vnd.docker.distribution.manifest.v2+json",
            MediaTypes::Oci => "application/vnd.oci.image.manifest.v1+json",
        }
    }

    fn config(self) -> &'static str {
        match self {
            MediaTypes::Docker => "application/vnd.docker.container.image.v1+json",
            MediaTypes::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }

    fn gzip_layer(self) -> &'static str {
        match self {
            MediaTypes::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            MediaTypes::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub manifest: Digest,
    pub config: Digest,
    pub layer_blobs: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
}

/// Writes an image into `store` and tags it `name` (a full name such as
/// `docker.io/library/app:latest`): one gzip'd layer per directory of `layer_dirs` (see
/// [`tar_gz_dir`]), and `config` as the image config with its `rootfs` set to those layers.
pub fn write_image(
    store: &Store,
    name: &str,
    layer_dirs: &[PathBuf],
    mut config: serde_json::Value,
    media: MediaTypes,
) -> TestImage {
    let mut layers = Vec::new();
    for dir in layer_dirs {
        let (blob, diff_id) = tar_gz_dir(dir);
        layers.push(ManifestLayer {
            blob_digest: ingest_bytes(store, &blob),
            diff_id,
            media_type: media.gzip_layer().into(),
            size: blob.len() as u64,
        });
    }
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).expect("config json");
    let config_digest = ingest_bytes(store, &config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media.manifest(),
        "config": {
            "mediaType": media.config(),
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
    let manifest_digest = ingest_bytes(store, &manifest_bytes);
    store
        .record_manifest(&ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            media_type: media.manifest().into(),
            layers: layers.clone(),
        })
        .expect("record manifest");
    store
        .tag(name, &manifest_digest, &config_digest)
        .expect("tag image");
    TestImage {
        manifest: manifest_digest,
        config: config_digest,
        layer_blobs: layers.iter().map(|l| l.blob_digest.clone()).collect(),
        diff_ids: layers.into_iter().map(|l| l.diff_id).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_image_is_recorded_and_tagged_with_its_layers() {
        let store = TempStore::new();
        let work = tempfile::tempdir().unwrap();
        let layer = work.path().join("layer");
        write_files(&layer, &[("etc/hello", "hi\n")]);
        let image = write_image(
            &store,
            "docker.io/library/t:1",
            &[layer],
            serde_json::json!({"architecture": "amd64", "os": "linux"}),
            MediaTypes::Oci,
        );
        let record = store.manifest(&image.manifest).unwrap().expect("recorded");
        assert_eq!(record.config_digest, image.config);
        assert_eq!(record.layers.len(), 1);
        assert_eq!(record.layers[0].diff_id, image.diff_ids[0]);
        let (blob, diff_id) = tar_gz_dir(&work.path().join("layer"));
        assert_eq!(Digest::of(&blob), image.layer_blobs[0]);
        assert_eq!(diff_id, image.diff_ids[0]);
    }
}

//! Reading what `kiln build --output type=oci` wrote with independent tools: the layout untarred
//! with GNU tar, the manifest and config read as JSON, every layer listed or extracted with
//! `tar -z`, and `umoci unpack` for the merged root filesystem. Test files that use it also declare
//! `mod common;` (it untars with `common::untar`).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An exported OCI archive, untarred.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
    pub config: serde_json::Value,
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    dir.join("blobs/sha256").join(hex)
}

fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("JSON")
}

impl Layout {
    /// Untars `archive` into `dir` and reads its (only) image's manifest and config.
    pub fn open(archive: &Path, dir: &Path) -> Layout {
        crate::common::untar(archive, dir);
        let index = read_json(&dir.join("index.json"));
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .expect("index lists a manifest");
        let manifest = read_json(&blob_path(dir, digest));
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("config digest");
        let config = read_json(&blob_path(dir, config_digest));
        Layout {
            dir: dir.to_path_buf(),
            manifest,
            config,
        }
    }

    /// The layer blobs, bottom first.
    pub fn layers(&self) -> Vec<PathBuf> {
        self.manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|layer| blob_path(&self.dir, layer["digest"].as_str().expect("digest")))
            .collect()
    }

    /// Every entry name of every layer (as `tar -t` prints them, without a leading `./`).
    pub fn layer_entries(&self) -> Vec<Vec<String>> {
        self.layers()
            .iter()
            .map(|blob| {
                let output = Command::new("tar")
                    .arg("-tzf")
                    .arg(blob)
                    .output()
                    .expect("run tar");
                assert!(output.status.success(), "tar -t {}", blob.display());
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(|line| line.trim_start_matches("./").to_string())
                    .filter(|line| !line.is_empty())
                    .collect()
            })
            .collect()
    }

    /// Extracts every layer into its own dir under `dest` (`dest/0`, `dest/1`…), as plain tar does
    /// (whiteouts stay `.wh.` files), and returns the dirs.
    pub fn extract_layers(&self, dest: &Path) -> Vec<PathBuf> {
        self.layers()
            .iter()
            .enumerate()
            .map(|(index, blob)| {
                let dir = dest.join(index.to_string());
                std::fs::create_dir_all(&dir).unwrap();
                let status = Command::new("tar")
                    .arg("--numeric-owner")
                    .arg("-xzpf")
                    .arg(blob)
                    .arg("-C")
                    .arg(&dir)
                    .status()
                    .expect("run tar");
                assert!(status.success(), "tar -x {}", blob.display());
                dir
            })
            .collect()
    }
}

/// `umoci unpack` of the first image of the untarred layout at `dir` into `bundle`; returns the
/// rootfs. `None` (with a message) when umoci is not installed.
pub fn umoci_rootfs(layout: &Layout, tag: &str, bundle: &Path) -> Option<PathBuf> {
    if !common_have("umoci") {
        eprintln!("SKIP umoci checks: umoci is not installed (apt-get install umoci)");
        return None;
    }
    let output = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.dir.display()))
        .arg(bundle)
        .output()
        .expect("run umoci");
    assert!(
        output.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(bundle.join("rootfs"))
}

fn common_have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Paths of files under `dir` whose content contains `needle` (symlinks not followed).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if meta.is_file() {
            let content = std::fs::read(&path).unwrap();
            if content.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Output as text (stdout then stderr), for assertion messages.
pub fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

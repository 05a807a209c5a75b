//! Image archives in (`kiln load`): an OCI image layout tar, a Docker 25+ docker archive (OCI layout plus
//! `manifest.json`), or a legacy docker archive (`manifest.json`, `<id>.json` configs and `<id>/layer.tar`
//! layers), optionally gzip- or zstd-compressed as a whole.
//!
//! The archive is read once, as a stream. Blob entries are streamed into the [`BlobSink`] as they come,
//! checked against the digest in their name; small files (up to [`SMALL_FILE_LIMIT`], within a total of
//! [`SMALL_FILES_BUDGET`]) are also kept in memory because manifests and configs must be parsed once
//! `index.json`/`manifest.json` says which is which. Files of a legacy archive that are not named by
//! digest are stored only when referenced; big ones (layers) are stored as they stream by.
//!
//! A legacy image has no manifest: one is made (Docker media types, layer types by the compression
//! found in each layer's first bytes) and stored too. Its uncompressed layers are checked against the
//! config's `rootfs.diff_ids`.

use std::collections::HashMap;
use std::io::{self, Read};

use kiln_image::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::blobs::{BlobSink, HashingReader};
use kiln_image::StreamCompression;

use crate::compress::{Compression, decompressing_reader, sniff_compression};
use crate::manifest::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ManifestError, MediaTypeSet, build_manifest,
    descriptor, is_index, is_manifest, is_non_distributable, kiln_digest,
};

/// Files up to this size are kept in memory while the archive streams by.
pub const SMALL_FILE_LIMIT: u64 = 4 << 20;
/// The most memory all kept small files may take.
pub const SMALL_FILES_BUDGET: u64 = 256 << 20;

/// The kind of archive that was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    /// An OCI image layout (including Docker 25+ archives, which are OCI layouts with extra files).
    OciLayout,
    /// A docker archive with `manifest.json` only.
    LegacyDocker,
}

/// One platform's manifest and config.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedManifest {
    pub descriptor: Descriptor,
    pub manifest: ImageManifest,
    /// The config blob's bytes, unparsed.
    pub config: Vec<u8>,
}

/// One image found in an archive.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedImage {
    /// Names as the archive gives them (full names from `io.containerd.image.name`, tags from
    /// `org.opencontainers.image.ref.name`, or `RepoTags` such as `alpine:3.19`); not normalized.
    pub names: Vec<String>,
    /// The image's manifest or index.
    pub descriptor: Descriptor,
    /// The index, when the image is multi-platform.
    pub index: Option<ImageIndex>,
    /// The manifests found (for an index: the platforms present in the archive).
    pub manifests: Vec<LoadedManifest>,
}

/// What [`load_archive`] read.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedArchive {
    pub kind: ArchiveKind,
    pub images: Vec<LoadedImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    #[error("archive entry {entry}: storing it: {source}")]
    Sink { entry: String, source: io::Error },
    #[error("archive entry {entry}: content has digest {actual}, but its name says {expected}")]
    DigestMismatch {
        entry: String,
        expected: String,
        actual: String,
    },
    #[error("archive entry {entry}: unsupported blob digest algorithm (only sha256)")]
    UnsupportedDigest { entry: String },
    #[error("archive entry {entry}: small files exceed the {budget}-byte memory budget")]
    TooManySmallFiles { entry: String, budget: u64 },
    #[error("parsing {file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{referenced_by} refers to {file}, which the archive does not contain")]
    Missing { file: String, referenced_by: String },
    #[error("{file} is {size} bytes, larger than the {limit}-byte limit for manifests and configs")]
    TooLarge { file: String, size: u64, limit: u64 },
    #[error("layer {layer} of {config}: diff id {actual} does not match the config's {expected}")]
    DiffIdMismatch {
        layer: String,
        config: String,
        expected: String,
        actual: String,
    },
    #[error("layer {layer} is {compression:?}-compressed; image layers may only be gzip or zstd")]
    UnsupportedLayerCompression {
        layer: String,
        compression: StreamCompression,
    },
    #[error("the archive has neither index.json (OCI layout) nor manifest.json (docker archive)")]
    NotAnImageArchive,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A regular file of a legacy archive that was stored while streaming.
#[derive(Clone, Debug)]
struct StoredFile {
    digest: Digest,
    size: u64,
    compression: StreamCompression,
}

#[derive(Default)]
struct Collected {
    /// Small files by normalized path (JSON files, small layers of legacy archives).
    small_files: HashMap<String, Vec<u8>>,
    small_bytes: u64,
    /// Small blobs (`blobs/sha256/<hex>`) that look like JSON, by digest.
    json_blobs: HashMap<Digest, Vec<u8>>,
    /// Every blob written to the sink, with its size and the compression its first bytes show.
    stored_blobs: HashMap<Digest, (u64, StreamCompression)>,
    /// Big non-blob files streamed into the sink, by path.
    stored_files: HashMap<String, StoredFile>,
    /// Symlinks and hard links: path → normalized target path.
    links: HashMap<String, String>,
}

fn normalize(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

/// `target` of a symlink at `path`, relative to the symlink's directory; `..` stays in the archive.
fn resolve_link(path: &str, target: &str, symlink: bool) -> String {
    let mut parts: Vec<&str> = if symlink && !target.starts_with('/') {
        let mut dir: Vec<&str> = path.split('/').collect();
        dir.pop();
        dir
    } else {
        Vec::new()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts.join("/")
}

/// Reads an image archive from `archive` (plain, gzip or zstd), storing its blobs into `sink`, and
/// returns the images with their names, manifests and configs.
///
/// # Errors
/// [`ImportError::DigestMismatch`] when a blob's content does not match its name,
/// [`ImportError::Missing`] for a referenced file the archive lacks, [`ImportError::Parse`] for JSON
/// that does not parse, [`ImportError::Sink`] for storage errors, [`ImportError::NotAnImageArchive`].
pub fn load_archive<R: Read>(
    archive: R,
    sink: &dyn BlobSink,
) -> Result<LoadedArchive, ImportError> {
    let (_, reader) = decompressing_reader(archive).map_err(ImportError::Read)?;
    let mut collected = Collected::default();
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(ImportError::Read)? {
        let entry = entry.map_err(ImportError::Read)?;
        collect_entry(entry, sink, &mut collected)?;
    }
    if collected.small_files.contains_key("index.json") {
        load_oci_layout(&collected)
    } else if collected.small_files.contains_key("manifest.json") {
        load_legacy(&mut collected, sink)
    } else {
        Err(ImportError::NotAnImageArchive)
    }
}

fn collect_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    sink: &dyn BlobSink,
    collected: &mut Collected,
) -> Result<(), ImportError> {
    let path = normalize(&entry.path_bytes());
    let entry_type = entry.header().entry_type();
    match entry_type {
        tar::EntryType::Symlink | tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let resolved = resolve_link(&path, &target, entry_type == tar::EntryType::Symlink);
            collected.links.insert(path, resolved);
            return Ok(());
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {}
        _ => return Ok(()),
    }
    let size = entry.size();
    if let Some(name) = path.strip_prefix("blobs/") {
        let Some(hex) = name.strip_prefix("sha256/") else {
            return Err(ImportError::UnsupportedDigest { entry: path });
        };
        let expected = Digest::from_hex(hex).map_err(|_| ImportError::UnsupportedDigest {
            entry: path.clone(),
        })?;
        return collect_blob(entry, path, expected, size, sink, collected);
    }
    if size <= SMALL_FILE_LIMIT {
        let bytes = read_small(&mut entry, &path, size, collected)?;
        collected.small_files.insert(path, bytes);
        return Ok(());
    }
    // A big file outside blobs/: a legacy layer. Store it now; it is named by content later.
    let (digest, size, compression) = stream_into_sink(&mut entry, None, &path, sink)?;
    collected
        .stored_blobs
        .insert(digest.clone(), (size, compression));
    collected.stored_files.insert(
        path,
        StoredFile {
            digest,
            size,
            compression,
        },
    );
    Ok(())
}

/// Streams `entry` into `sink`, hashing it on the way; returns digest, size and detected compression.
fn stream_into_sink(
    entry: &mut dyn Read,
    expected: Option<&Digest>,
    path: &str,
    sink: &dyn BlobSink,
) -> Result<(Digest, u64, StreamCompression), ImportError> {
    let (compression, stream) = sniff_compression(entry).map_err(ImportError::Read)?;
    let mut reader = HashingReader::new(stream);
    let stored = sink.write_blob(expected, &mut reader);
    let (read, actual) = (reader.read, reader.digest());
    if let Some(expected) = expected {
        if actual != *expected {
            return Err(ImportError::DigestMismatch {
                entry: path.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    let digest = stored.map_err(|source| ImportError::Sink {
        entry: path.to_string(),
        source,
    })?;
    if digest != actual {
        return Err(ImportError::DigestMismatch {
            entry: path.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok((digest, read, compression))
}

fn read_small<R: Read>(
    entry: &mut R,
    path: &str,
    size: u64,
    collected: &mut Collected,
) -> Result<Vec<u8>, ImportError> {
    collected.small_bytes += size;
    if collected.small_bytes > SMALL_FILES_BUDGET {
        return Err(ImportError::TooManySmallFiles {
            entry: path.to_string(),
            budget: SMALL_FILES_BUDGET,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(ImportError::Read)?;
    Ok(bytes)
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn collect_blob<R: Read>(
    mut entry: tar::Entry<'_, R>,
    path: String,
    expected: Digest,
    size: u64,
    sink: &dyn BlobSink,
    collected: &mut Collected,
) -> Result<(), ImportError> {
    if size <= SMALL_FILE_LIMIT {
        let bytes = read_small(&mut entry, &path, size, collected)?;
        let actual = Digest::of(&bytes);
        if actual != expected {
            return Err(ImportError::DigestMismatch {
                entry: path,
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        sink.write_blob(Some(&expected), &mut &bytes[..])
            .map_err(|source| ImportError::Sink {
                entry: path,
                source,
            })?;
        collected
            .stored_blobs
            .insert(expected.clone(), (size, StreamCompression::detect(&bytes)));
        if looks_like_json(&bytes) {
            collected.json_blobs.insert(expected, bytes);
        } else {
            collected.small_bytes -= size;
        }
        return Ok(());
    }
    let (digest, read, compression) = stream_into_sink(&mut entry, Some(&expected), &path, sink)?;
    collected.stored_blobs.insert(digest, (read, compression));
    Ok(())
}

fn parse<'a, T: Deserialize<'a>>(file: &str, bytes: &'a [u8]) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|e| ImportError::Parse {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

fn json_blob<'a>(
    collected: &'a Collected,
    descriptor: &Descriptor,
    referenced_by: &str,
) -> Result<&'a [u8], ImportError> {
    let digest = kiln_digest(descriptor.digest())?;
    if let Some(bytes) = collected.json_blobs.get(&digest) {
        return Ok(bytes);
    }
    match collected.stored_blobs.get(&digest) {
        Some(&(size, _)) => Err(ImportError::TooLarge {
            file: format!("blobs/sha256/{}", digest.hex()),
            size,
            limit: SMALL_FILE_LIMIT,
        }),
        None => Err(ImportError::Missing {
            file: format!("blobs/sha256/{}", digest.hex()),
            referenced_by: referenced_by.to_string(),
        }),
    }
}

fn load_manifest(
    collected: &Collected,
    descriptor: &Descriptor,
    referenced_by: &str,
) -> Result<LoadedManifest, ImportError> {
    let file = format!("manifest {}", descriptor.digest());
    let manifest: ImageManifest = parse(&file, json_blob(collected, descriptor, referenced_by)?)?;
    let config = json_blob(collected, manifest.config(), &file)?.to_vec();
    for layer in manifest.layers() {
        let digest = kiln_digest(layer.digest())?;
        if !collected.stored_blobs.contains_key(&digest)
            && !is_non_distributable(layer.media_type())
        {
            return Err(ImportError::Missing {
                file: format!("blobs/sha256/{}", digest.hex()),
                referenced_by: file,
            });
        }
    }
    Ok(LoadedManifest {
        descriptor: descriptor.clone(),
        manifest,
        config,
    })
}

fn load_oci_layout(collected: &Collected) -> Result<LoadedArchive, ImportError> {
    let index: ImageIndex = parse("index.json", &collected.small_files["index.json"])?;
    // RepoTags of a Docker 25+ archive, by config path, for entries without name annotations.
    let repo_tags: HashMap<String, Vec<String>> = match collected.small_files.get("manifest.json") {
        Some(bytes) => parse::<Vec<LegacyManifestItem>>("manifest.json", bytes)?
            .into_iter()
            .map(|item| {
                (
                    normalize(item.config.as_bytes()),
                    item.repo_tags.unwrap_or_default(),
                )
            })
            .collect(),
        None => HashMap::new(),
    };

    // One image per distinct descriptor; its names in the order index.json lists them.
    let mut order: Vec<Digest> = Vec::new();
    let mut by_digest: HashMap<Digest, (Descriptor, Vec<String>)> = HashMap::new();
    for entry in index.manifests() {
        let digest = kiln_digest(entry.digest())?;
        let annotations = entry.annotations().clone().unwrap_or_default();
        let name = annotations
            .get(ANNOTATION_IMAGE_NAME)
            .or_else(|| annotations.get(ANNOTATION_REF_NAME))
            .cloned();
        let slot = by_digest.entry(digest.clone()).or_insert_with(|| {
            order.push(digest.clone());
            let mut plain = entry.clone();
            plain.set_annotations(None);
            (plain, Vec::new())
        });
        if let Some(name) = name {
            if !slot.1.contains(&name) {
                slot.1.push(name);
            }
        }
    }

    let mut images = Vec::new();
    for digest in order {
        let Some((descriptor, mut names)) = by_digest.remove(&digest) else {
            continue;
        };
        let (index, manifests) = if is_manifest(descriptor.media_type()) {
            (
                None,
                vec![load_manifest(collected, &descriptor, "index.json")?],
            )
        } else if is_index(descriptor.media_type()) {
            let file = format!("index {digest}");
            let child_index: ImageIndex =
                parse(&file, json_blob(collected, &descriptor, "index.json")?)?;
            let mut manifests = Vec::new();
            for child in child_index.manifests() {
                let child_digest = kiln_digest(child.digest())?;
                // A multi-platform image is often saved with only some platforms present.
                if is_manifest(child.media_type())
                    && collected.json_blobs.contains_key(&child_digest)
                {
                    manifests.push(load_manifest(collected, child, &file)?);
                }
            }
            if manifests.is_empty() {
                return Err(ImportError::Missing {
                    file: "any platform's manifest".into(),
                    referenced_by: file,
                });
            }
            (Some(child_index), manifests)
        } else {
            return Err(ImportError::Parse {
                file: "index.json".into(),
                reason: format!(
                    "entry {digest} has media type {}, not a manifest or index",
                    descriptor.media_type()
                ),
            });
        };
        if names.is_empty() {
            for loaded in &manifests {
                let config_path = format!(
                    "blobs/sha256/{}",
                    kiln_digest(loaded.manifest.config().digest())?.hex()
                );
                names.extend(repo_tags.get(&config_path).cloned().unwrap_or_default());
            }
        }
        images.push(LoadedImage {
            names,
            descriptor,
            index,
            manifests,
        });
    }
    Ok(LoadedArchive {
        kind: ArchiveKind::OciLayout,
        images,
    })
}

/// An entry of a docker archive's `manifest.json`.
#[derive(Deserialize)]
struct LegacyManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The part of an image config checked here.
#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Option<Rootfs>,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl Collected {
    /// The path after following links (at most 16 hops).
    fn resolve(&self, path: &str) -> String {
        let mut current = normalize(path.as_bytes());
        for _ in 0..16 {
            match self.links.get(&current) {
                Some(target) => current = target.clone(),
                None => break,
            }
        }
        current
    }

    /// Stores the file at `path` (if not already stored) and returns its digest, size and compression.
    fn store_file(
        &mut self,
        path: &str,
        referenced_by: &str,
        sink: &dyn BlobSink,
    ) -> Result<StoredFile, ImportError> {
        let resolved = self.resolve(path);
        if let Some(stored) = self.stored_files.get(&resolved) {
            return Ok(stored.clone());
        }
        if let Some(hex) = resolved.strip_prefix("blobs/sha256/") {
            if let Ok(digest) = Digest::from_hex(hex) {
                if let Some(&(size, compression)) = self.stored_blobs.get(&digest) {
                    return Ok(StoredFile {
                        digest,
                        size,
                        compression,
                    });
                }
            }
        }
        let Some(bytes) = self.small_files.get(&resolved) else {
            return Err(ImportError::Missing {
                file: path.to_string(),
                referenced_by: referenced_by.to_string(),
            });
        };
        let digest = sink
            .write_blob(Some(&Digest::of(bytes)), &mut &bytes[..])
            .map_err(|source| ImportError::Sink {
                entry: resolved.clone(),
                source,
            })?;
        let stored = StoredFile {
            digest: digest.clone(),
            size: bytes.len() as u64,
            compression: StreamCompression::detect(bytes),
        };
        self.stored_blobs
            .insert(digest, (stored.size, stored.compression));
        self.stored_files.insert(resolved, stored.clone());
        Ok(stored)
    }

    fn bytes_of(&self, path: &str, referenced_by: &str) -> Result<Vec<u8>, ImportError> {
        let resolved = self.resolve(path);
        if let Some(bytes) = self.small_files.get(&resolved) {
            return Ok(bytes.clone());
        }
        if let Some(hex) = resolved.strip_prefix("blobs/sha256/") {
            if let Some(bytes) = Digest::from_hex(hex)
                .ok()
                .and_then(|d| self.json_blobs.get(&d))
            {
                return Ok(bytes.clone());
            }
        }
        Err(ImportError::Missing {
            file: path.to_string(),
            referenced_by: referenced_by.to_string(),
        })
    }
}

fn load_legacy(
    collected: &mut Collected,
    sink: &dyn BlobSink,
) -> Result<LoadedArchive, ImportError> {
    let items: Vec<LegacyManifestItem> =
        parse("manifest.json", &collected.small_files["manifest.json"])?;
    let mut images = Vec::new();
    for item in items {
        let config = collected.bytes_of(&item.config, "manifest.json")?;
        let config_stored = collected.store_file(&item.config, "manifest.json", sink)?;
        let rootfs: ConfigRootfs = parse(&item.config, &config)?;
        let diff_ids = rootfs.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        let mut layers = Vec::new();
        for (i, layer_path) in item.layers.iter().enumerate() {
            let stored = collected.store_file(layer_path, "manifest.json", sink)?;
            let compression = match stored.compression {
                StreamCompression::Uncompressed => {
                    if let Some(expected) = diff_ids.get(i) {
                        if *expected != stored.digest.to_string() {
                            return Err(ImportError::DiffIdMismatch {
                                layer: layer_path.clone(),
                                config: item.config.clone(),
                                expected: expected.clone(),
                                actual: stored.digest.to_string(),
                            });
                        }
                    }
                    Compression::Uncompressed
                }
                StreamCompression::Gzip => Compression::Gzip { level: 0 },
                StreamCompression::Zstd => Compression::Zstd { level: 0 },
                // No layer media type names these: Docker would decompress and re-register.
                unsupported @ (StreamCompression::Bzip2 | StreamCompression::Xz) => {
                    return Err(ImportError::UnsupportedLayerCompression {
                        layer: layer_path.clone(),
                        compression: unsupported,
                    });
                }
            };
            layers.push(descriptor(
                MediaTypeSet::Docker.layer(compression),
                &stored.digest,
                stored.size,
            )?);
        }
        let config_descriptor = descriptor(
            MediaTypeSet::Docker.config(),
            &config_stored.digest,
            config_stored.size,
        )?;
        let (manifest, bytes, manifest_descriptor) =
            build_manifest(MediaTypeSet::Docker, config_descriptor, layers, None)?;
        sink.write_blob(Some(&Digest::of(&bytes)), &mut &bytes[..])
            .map_err(|source| ImportError::Sink {
                entry: format!("manifest made for {}", item.config),
                source,
            })?;
        images.push(LoadedImage {
            names: item.repo_tags.unwrap_or_default(),
            descriptor: manifest_descriptor.clone(),
            index: None,
            manifests: vec![LoadedManifest {
                descriptor: manifest_descriptor,
                manifest,
                config,
            }],
        });
    }
    Ok(LoadedArchive {
        kind: ArchiveKind::LegacyDocker,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_relative_to_their_directory() {
        assert_eq!(
            resolve_link("abc/layer.tar", "../def/layer.tar", true),
            "def/layer.tar"
        );
        assert_eq!(
            resolve_link("abc/layer.tar", "def/layer.tar", false),
            "def/layer.tar"
        );
        assert_eq!(
            resolve_link("abc/layer.tar", "/x/layer.tar", true),
            "x/layer.tar"
        );
    }

    #[test]
    fn a_legacy_layer_compressed_with_xz_is_refused_by_name() {
        use std::io::Write as _;
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"not even a tar").unwrap();
        let layer = xz.finish().unwrap();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let manifest = br#"[{"Config":"config.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in [
            ("l/layer.tar", &layer[..]),
            ("config.json", &config[..]),
            ("manifest.json", &manifest[..]),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, path, content).unwrap();
        }
        let archive = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sink = crate::blobs::LayoutDir::create(dir.path()).unwrap();
        let err = load_archive(&archive[..], &sink).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::UnsupportedLayerCompression {
                    compression: StreamCompression::Xz,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("l/layer.tar"), "{err}");
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize(b"./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(normalize(b"/manifest.json"), "manifest.json");
    }
}

//! Image archives out: an OCI image layout as a tar (`oci-layout`, `index.json`, `blobs/sha256/…`), or a
//! docker archive in the Docker 25+ form — the same OCI layout plus the legacy `manifest.json` and
//! `repositories`, so that both old and new `docker load` read it. Several images fit in one archive;
//! a blob shared by several images is written once.
//!
//! The small JSON files come first and the blobs after them, in the order the images reference them
//! (manifest, config, layers), so a reader can plan before the big blobs arrive. Every blob is
//! streamed from the [`BlobSource`] and checked against its digest and size while it is written.
//! Entry headers are fixed (mode 0644/0755, uid/gid 0, mtime 0): the same images give the same bytes.
//!
//! `index.json` gets one entry per image name, annotated with `io.containerd.image.name` (the full
//! name) and `org.opencontainers.image.ref.name` (the tag), as Docker 25 and BuildKit write it.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};

use kiln_image::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType};
use serde::Serialize;

use crate::blobs::{BlobSource, HashingReader};
use crate::manifest::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ManifestError, canonical_json, is_index,
    is_manifest, is_non_distributable, kiln_digest,
};
use crate::tar_writer::{EntryKind, TarEntry, TarWriter};

/// Largest manifest or index this crate reads into memory.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The archive to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout in a tar (`--output type=oci`).
    OciLayout,
    /// What Docker 25+ `docker save` writes (`--output type=docker`, `kiln save`).
    DockerArchive,
}

/// One image to put in an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportImage {
    /// Full, normalized names such as `docker.io/library/alpine:3.19` (may be empty).
    pub names: Vec<String>,
    /// The image's manifest or index.
    pub descriptor: Descriptor,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading blob {digest}: {source}")]
    Source { digest: String, source: io::Error },
    #[error(
        "blob {digest}: read back {actual_size} bytes with digest {actual}, expected {size} bytes"
    )]
    BlobMismatch {
        digest: String,
        size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("blob {digest} ({media_type}): {reason}")]
    BadManifest {
        digest: String,
        media_type: String,
        reason: String,
    },
    #[error(
        "image {name}: a docker archive holds one manifest per image, but this is an index of {count} \
         manifests; export it as an OCI layout or pick a platform"
    )]
    NotSinglePlatform { name: String, count: usize },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("writing the archive entry {entry}: {source}")]
    Write { entry: String, source: io::Error },
}

/// Everything read about one image before writing.
struct PlannedImage {
    names: Vec<String>,
    descriptor: Descriptor,
    /// (descriptor, manifest) of the image, or of each platform of an index.
    manifests: Vec<(Descriptor, ImageManifest)>,
}

/// `manifest.json` entry of a docker archive.
#[derive(Serialize)]
struct DockerManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `name` without its tag or digest, and its tag. `registry:5000/repo:tag` → (`registry:5000/repo`,
/// `tag`); a name pinned by digest has no tag.
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let without_digest = name.split_once('@').map_or(name, |(n, _)| n);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(i) if !name.contains('@') => {
            let split = last_slash + i;
            (&without_digest[..split], Some(&without_digest[split + 1..]))
        }
        _ => (without_digest, None),
    }
}

/// The name as Docker shows it: `docker.io/library/` and `docker.io/` are dropped.
/// The short repository name `docker save` writes (`alpine`, `me/app`), by Docker's naming rules;
/// a name that does not parse is written as it is.
fn familiar(repository: &str) -> String {
    kiln_image::Reference::parse(repository)
        .map(|reference| reference.familiar_name())
        .unwrap_or_else(|_| repository.to_string())
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn read_small_blob(
    source: &dyn BlobSource,
    descriptor: &Descriptor,
) -> Result<(Digest, Vec<u8>), ExportError> {
    let digest = kiln_digest(descriptor.digest())?;
    let bad = |reason: String| ExportError::BadManifest {
        digest: digest.to_string(),
        media_type: descriptor.media_type().to_string(),
        reason,
    };
    if descriptor.size() > MAX_MANIFEST_SIZE {
        return Err(bad(format!(
            "larger than the {MAX_MANIFEST_SIZE}-byte limit for manifests"
        )));
    }
    let mut bytes = Vec::new();
    source
        .open_blob(&digest)
        .and_then(|r| r.take(MAX_MANIFEST_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|source| ExportError::Source {
            digest: digest.to_string(),
            source,
        })?;
    let actual = Digest::of(&bytes);
    if actual != digest || bytes.len() as u64 != descriptor.size() {
        return Err(ExportError::BlobMismatch {
            digest: digest.to_string(),
            size: descriptor.size(),
            actual: actual.to_string(),
            actual_size: bytes.len() as u64,
        });
    }
    Ok((digest, bytes))
}

fn plan_image(source: &dyn BlobSource, image: &ExportImage) -> Result<PlannedImage, ExportError> {
    let descriptor = &image.descriptor;
    let (digest, bytes) = read_small_blob(source, descriptor)?;
    let bad = |reason: String| ExportError::BadManifest {
        digest: digest.to_string(),
        media_type: descriptor.media_type().to_string(),
        reason,
    };
    let mut manifests = Vec::new();
    if is_manifest(descriptor.media_type()) {
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        manifests.push((descriptor.clone(), manifest));
    } else if is_index(descriptor.media_type()) {
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        for child in index.manifests() {
            if !is_manifest(child.media_type()) {
                return Err(bad(format!(
                    "nested index entries ({}) are not supported",
                    child.media_type()
                )));
            }
            let (child_digest, child_bytes) = read_small_blob(source, child)?;
            let manifest: ImageManifest = serde_json::from_slice(&child_bytes)
                .map_err(|e| bad(format!("manifest {child_digest}: {e}")))?;
            manifests.push((child.clone(), manifest));
        }
    } else {
        return Err(bad("not an image manifest or index".into()));
    }
    Ok(PlannedImage {
        names: image.names.clone(),
        descriptor: descriptor.clone(),
        manifests,
    })
}

/// Writes `images` from `source` as an archive of `format` to `out`, and returns `out`.
///
/// # Errors
/// [`ExportError::Source`] for a missing or unreadable blob, [`ExportError::BlobMismatch`] when a blob's
/// bytes do not match its descriptor, [`ExportError::BadManifest`] for a manifest that does not parse,
/// [`ExportError::NotSinglePlatform`] for a multi-platform index in a docker archive, and
/// [`ExportError::Write`] for output errors.
pub fn export_archive<W: Write>(
    source: &dyn BlobSource,
    images: &[ExportImage],
    format: ArchiveFormat,
    out: W,
) -> Result<W, ExportError> {
    let planned: Vec<PlannedImage> = images
        .iter()
        .map(|image| plan_image(source, image))
        .collect::<Result<_, _>>()?;

    let mut tar = TarWriter::new(out);
    write_file(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_file(&mut tar, "index.json", &index_json(&planned)?)?;
    if format == ArchiveFormat::DockerArchive {
        let (manifest_json, repositories) = docker_files(&planned)?;
        write_file(&mut tar, "manifest.json", &manifest_json)?;
        if let Some(repositories) = repositories {
            write_file(&mut tar, "repositories", &repositories)?;
        }
    }

    write_dir(&mut tar, "blobs/")?;
    write_dir(&mut tar, "blobs/sha256/")?;
    let mut written: HashSet<Digest> = HashSet::new();
    for image in &planned {
        let mut descriptors = vec![image.descriptor.clone()];
        for (manifest_descriptor, manifest) in &image.manifests {
            descriptors.push(manifest_descriptor.clone());
            descriptors.push(manifest.config().clone());
            for layer in manifest.layers() {
                // Foreign layers are served by their registry; include them only when we have them.
                if is_non_distributable(layer.media_type()) {
                    let digest = kiln_digest(layer.digest())?;
                    if source.blob_size(&digest).is_err() {
                        continue;
                    }
                }
                descriptors.push(layer.clone());
            }
        }
        for descriptor in descriptors {
            let digest = kiln_digest(descriptor.digest())?;
            if written.insert(digest.clone()) {
                write_blob(&mut tar, source, &digest, descriptor.size())?;
            }
        }
    }
    tar.finish().map_err(|source| ExportError::Write {
        entry: "(end of archive)".into(),
        source,
    })
}

fn index_json(planned: &[PlannedImage]) -> Result<Vec<u8>, ExportError> {
    let mut entries = Vec::new();
    for image in planned {
        if image.names.is_empty() {
            entries.push(image.descriptor.clone());
        }
        for name in &image.names {
            let mut entry = image.descriptor.clone();
            let mut annotations = entry.annotations().clone().unwrap_or_default();
            annotations.insert(ANNOTATION_IMAGE_NAME.into(), name.clone());
            if let (_, Some(tag)) = split_tag(name) {
                annotations.insert(ANNOTATION_REF_NAME.into(), tag.to_string());
            }
            entry.set_annotations(Some(annotations));
            entries.push(entry);
        }
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()
        .map_err(ManifestError::from)?;
    Ok(canonical_json(&index)?)
}

/// `manifest.json` and, when any image is tagged, `repositories`.
fn docker_files(planned: &[PlannedImage]) -> Result<(Vec<u8>, Option<Vec<u8>>), ExportError> {
    let mut items = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in planned {
        let display_name = image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| image.descriptor.digest().to_string());
        let [(_, manifest)] = image.manifests.as_slice() else {
            return Err(ExportError::NotSinglePlatform {
                name: display_name,
                count: image.manifests.len(),
            });
        };
        let config_digest = kiln_digest(manifest.config().digest())?;
        let mut repo_tags = Vec::new();
        for name in &image.names {
            if let (repository, Some(tag)) = split_tag(name) {
                let repository = familiar(repository);
                repo_tags.push(format!("{repository}:{tag}"));
                repositories
                    .entry(repository.to_string())
                    .or_default()
                    .insert(tag.to_string(), config_digest.hex().to_string());
            }
        }
        let layers = manifest
            .layers()
            .iter()
            .map(|layer| kiln_digest(layer.digest()).map(|d| blob_path(&d)))
            .collect::<Result<_, _>>()?;
        items.push(DockerManifestItem {
            config: blob_path(&config_digest),
            repo_tags,
            layers,
        });
    }
    let manifest_json = serde_json::to_vec(&items).map_err(ManifestError::from)?;
    let repositories = if repositories.is_empty() {
        None
    } else {
        Some(serde_json::to_vec(&repositories).map_err(ManifestError::from)?)
    };
    Ok((manifest_json, repositories))
}

fn write_dir<W: Write>(tar: &mut TarWriter<W>, path: &str) -> Result<(), ExportError> {
    let mut entry = TarEntry::new(path, EntryKind::Directory);
    entry.mode = 0o755;
    tar.append(&entry, None)
        .map_err(|source| ExportError::Write {
            entry: path.into(),
            source,
        })
}

fn write_file<W: Write>(
    tar: &mut TarWriter<W>,
    path: &str,
    bytes: &[u8],
) -> Result<(), ExportError> {
    let mut entry = TarEntry::new(path, EntryKind::File);
    entry.mode = 0o644;
    entry.size = bytes.len() as u64;
    tar.append(&entry, Some(&mut &bytes[..]))
        .map_err(|source| ExportError::Write {
            entry: path.into(),
            source,
        })
}

fn write_blob<W: Write>(
    tar: &mut TarWriter<W>,
    source: &dyn BlobSource,
    digest: &Digest,
    size: u64,
) -> Result<(), ExportError> {
    let path = blob_path(digest);
    let source_err = |source| ExportError::Source {
        digest: digest.to_string(),
        source,
    };
    let stored_size = source.blob_size(digest).map_err(source_err)?;
    if stored_size != size {
        return Err(ExportError::BlobMismatch {
            digest: digest.to_string(),
            size,
            actual: "(not read)".into(),
            actual_size: stored_size,
        });
    }
    let mut reader = HashingReader::new(source.open_blob(digest).map_err(source_err)?);
    let mut entry = TarEntry::new(path.clone(), EntryKind::File);
    entry.mode = 0o644;
    entry.size = size;
    tar.append(&entry, Some(&mut reader))
        .map_err(|source| ExportError::Write {
            entry: path.clone(),
            source,
        })?;
    let read = reader.read;
    let actual = reader.digest();
    if actual != *digest || read != size {
        return Err(ExportError::BlobMismatch {
            digest: digest.to_string(),
            size,
            actual: actual.to_string(),
            actual_size: read,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(
            split_tag("docker.io/library/alpine:3.19"),
            ("docker.io/library/alpine", Some("3.19"))
        );
        assert_eq!(
            split_tag("registry:5000/repo"),
            ("registry:5000/repo", None)
        );
        assert_eq!(
            split_tag("registry:5000/repo:v1"),
            ("registry:5000/repo", Some("v1"))
        );
        assert_eq!(
            split_tag("docker.io/library/alpine@sha256:abcd"),
            ("docker.io/library/alpine", None)
        );
        assert_eq!(familiar("docker.io/library/alpine"), "alpine");
        assert_eq!(familiar("docker.io/me/app"), "me/app");
        assert_eq!(familiar("ghcr.io/me/app"), "ghcr.io/me/app");
        // Only single-component library names lose the prefix, as Docker prints them.
        assert_eq!(familiar("docker.io/library/a/b"), "library/a/b");
    }
}

//! Media types (OCI or Docker, chosen by the caller), building image manifests, and deterministic JSON.
//!
//! `oci-spec` holds annotations in a `HashMap`, whose iteration order changes from run to run; a
//! manifest's digest is the hash of its bytes, so every JSON document this crate writes goes through
//! [`canonical_json`], which sorts the keys of `annotations` objects.

use std::collections::HashMap;
use std::str::FromStr;

use kiln_image::Digest;
use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};
use serde::Serialize;

use crate::compress::Compression;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Annotation holding the full image name in an OCI layout's `index.json` (containerd, Docker 25+).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation holding the reference name (the tag) in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Which family of media types a manifest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaTypeSet {
    /// `application/vnd.oci.image.*`.
    Oci,
    /// `application/vnd.docker.*` (Docker image manifest v2 schema 2). zstd layers have no Docker
    /// media type and use the OCI one, as BuildKit does.
    Docker,
}

impl MediaTypeSet {
    pub fn manifest(self) -> MediaType {
        match self {
            MediaTypeSet::Oci => MediaType::ImageManifest,
            MediaTypeSet::Docker => MediaType::Other(DOCKER_MANIFEST.into()),
        }
    }

    pub fn index(self) -> MediaType {
        match self {
            MediaTypeSet::Oci => MediaType::ImageIndex,
            MediaTypeSet::Docker => MediaType::Other(DOCKER_MANIFEST_LIST.into()),
        }
    }

    pub fn config(self) -> MediaType {
        match self {
            MediaTypeSet::Oci => MediaType::ImageConfig,
            MediaTypeSet::Docker => MediaType::Other(DOCKER_CONFIG.into()),
        }
    }

    pub fn layer(self, compression: Compression) -> MediaType {
        match (self, compression) {
            (MediaTypeSet::Oci, Compression::Uncompressed) => MediaType::ImageLayer,
            (MediaTypeSet::Oci, Compression::Gzip { .. }) => MediaType::ImageLayerGzip,
            (_, Compression::Zstd { .. }) => MediaType::ImageLayerZstd,
            (MediaTypeSet::Docker, Compression::Uncompressed) => {
                MediaType::Other(DOCKER_LAYER.into())
            }
            (MediaTypeSet::Docker, Compression::Gzip { .. }) => {
                MediaType::Other(DOCKER_LAYER_GZIP.into())
            }
        }
    }
}

/// Whether `media_type` names an image manifest (OCI or Docker).
pub fn is_manifest(media_type: &MediaType) -> bool {
    *media_type == MediaType::ImageManifest || media_type.to_string() == DOCKER_MANIFEST
}

/// Whether `media_type` names an image index / manifest list (OCI or Docker).
pub fn is_index(media_type: &MediaType) -> bool {
    *media_type == MediaType::ImageIndex || media_type.to_string() == DOCKER_MANIFEST_LIST
}

/// Whether a layer of `media_type` may legitimately be left out of an archive (foreign or
/// non-distributable layers, which their registries serve).
pub fn is_non_distributable(media_type: &MediaType) -> bool {
    let text = media_type.to_string();
    text.contains("foreign") || text.contains("nondistributable")
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("digest {0} is not a sha256 digest kiln can use")]
    Digest(String),
    #[error("building the manifest: {0}")]
    Build(#[from] oci_spec::OciSpecError),
    #[error("serialising JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// kiln's digest from an `oci-spec` digest.
///
/// # Errors
/// [`ManifestError::Digest`] for any algorithm but sha256 or a malformed value.
pub fn kiln_digest(digest: &oci_spec::image::Digest) -> Result<Digest, ManifestError> {
    Digest::from_str(digest.as_ref()).map_err(|_| ManifestError::Digest(digest.to_string()))
}

/// An `oci-spec` digest from kiln's.
///
/// # Errors
/// [`ManifestError::Digest`] (not expected: kiln digests are valid sha256 digests).
pub fn oci_digest(digest: &Digest) -> Result<oci_spec::image::Digest, ManifestError> {
    oci_spec::image::Digest::from_str(&digest.to_string())
        .map_err(|_| ManifestError::Digest(digest.to_string()))
}

/// A descriptor of `media_type` for content with `digest` and `size`.
///
/// # Errors
/// [`ManifestError::Digest`] (not expected for kiln digests).
pub fn descriptor(
    media_type: MediaType,
    digest: &Digest,
    size: u64,
) -> Result<Descriptor, ManifestError> {
    Ok(Descriptor::new(media_type, size, oci_digest(digest)?))
}

/// Serialises `value` as compact JSON with the keys of every `annotations` object sorted, so the same
/// value always gives the same bytes.
///
/// # Errors
/// [`ManifestError::Json`] when `value` cannot be serialised.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ManifestError> {
    fn sort_annotations(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "annotations" {
                        if let serde_json::Value::Object(annotations) = child {
                            annotations.sort_keys();
                        }
                    }
                    sort_annotations(child);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(sort_annotations),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(value)?;
    sort_annotations(&mut json);
    Ok(serde_json::to_vec(&json)?)
}

/// An image manifest of `media_types` for `config` and `layers`, with its canonical bytes and a
/// descriptor of those bytes.
///
/// # Errors
/// [`ManifestError`] when the manifest cannot be built or serialised.
pub fn build_manifest(
    media_types: MediaTypeSet,
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: Option<HashMap<String, String>>,
) -> Result<(ImageManifest, Vec<u8>, Descriptor), ManifestError> {
    let mut builder = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(media_types.manifest())
        .config(config)
        .layers(layers);
    if let Some(annotations) = annotations {
        builder = builder.annotations(annotations);
    }
    let manifest = builder.build()?;
    let bytes = canonical_json(&manifest)?;
    let descriptor = descriptor(
        media_types.manifest(),
        &Digest::of(&bytes),
        bytes.len() as u64,
    )?;
    Ok((manifest, bytes, descriptor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_bytes_are_stable_and_use_the_chosen_media_types() {
        let config = descriptor(MediaTypeSet::Docker.config(), &Digest::of(b"{}"), 2).unwrap();
        let layer = descriptor(
            MediaTypeSet::Docker.layer(Compression::Gzip { level: 1 }),
            &Digest::of(b"l"),
            1,
        )
        .unwrap();
        let annotations: HashMap<String, String> = (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let (_, first, desc) = build_manifest(
            MediaTypeSet::Docker,
            config.clone(),
            vec![layer.clone()],
            Some(annotations.clone()),
        )
        .unwrap();
        let (_, second, _) =
            build_manifest(MediaTypeSet::Docker, config, vec![layer], Some(annotations)).unwrap();
        assert_eq!(first, second);
        let text = String::from_utf8(first.clone()).unwrap();
        assert!(
            text.contains(DOCKER_MANIFEST)
                && text.contains(DOCKER_LAYER_GZIP)
                && text.contains(DOCKER_CONFIG)
        );
        assert_eq!(desc.size(), first.len() as u64);
        let k0 = text.find("\"k0\"").unwrap();
        let k1 = text.find("\"k1\"").unwrap();
        let k10 = text.find("\"k10\"").unwrap();
        assert!(k0 < k1 && k1 < k10);
    }

    #[test]
    fn oci_media_types() {
        assert_eq!(
            MediaTypeSet::Oci
                .layer(Compression::Gzip { level: 1 })
                .to_string(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            MediaTypeSet::Docker
                .layer(Compression::Zstd { level: 3 })
                .to_string(),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert!(is_manifest(&MediaType::from(DOCKER_MANIFEST)));
        assert!(is_index(&MediaType::ImageIndex));
    }
}

//! `--build-context NAME=oci-layout://PATH[:TAG|@DIGEST]`: an image in an OCI image layout
//! directory on this machine (what `skopeo copy … oci:DIR:TAG` or an unpacked `--output type=oci`
//! archive leaves), as buildx reads one.
//!
//! The image is chosen in `PATH/index.json` by digest, by its `org.opencontainers.image.ref.name`
//! tag (`latest` when none is given, or the only image of the layout), and, when that is an image
//! index, by the build's target platform. Its manifest, config and layers are streamed into kiln's
//! store (each checked against its digest) and the manifest is recorded untagged: the build then
//! names the image by digest, so FROM, `COPY --from` and `RUN --mount=from=` read it like any
//! image of the store. The build's shared store lock keeps a prune from removing it meanwhile.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kiln_image::{Digest, ImageConfig};
use kiln_llb::Platform;
use kiln_store::{ManifestLayer, ManifestRecord, Store};
use serde::Deserialize;

/// Manifests, indexes and configs bigger than this are refused (they are small JSON documents).
const MAX_DOCUMENT_SIZE: u64 = 8 << 20;

const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Why an OCI layout context could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OciLayoutError {
    #[error("invalid digest in oci-layout://{value}")]
    BadDigest {
        value: String,
        #[source]
        source: kiln_image::DigestError,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {MAX_DOCUMENT_SIZE} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not a valid {what}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the OCI layout {} has no image {wanted}", dir.display())]
    NoSuchImage { dir: PathBuf, wanted: String },
    #[error(
        "the OCI layout {} holds {count} images; name one with oci-layout://PATH:TAG or @DIGEST",
        dir.display()
    )]
    Ambiguous { dir: PathBuf, count: usize },
    #[error("the image index {digest} in {} has no image for {platform}", dir.display())]
    NoPlatform {
        dir: PathBuf,
        digest: Digest,
        platform: Platform,
    },
    #[error(
        "image {digest}: the manifest has {layers} layers but the config lists {diff_ids} diff ids"
    )]
    LayerCount {
        digest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("image config {digest}")]
    Config {
        digest: Digest,
        #[source]
        source: kiln_image::ConfigError,
    },
    #[error("storing {what} {digest} from the OCI layout")]
    Store {
        what: &'static str,
        digest: Digest,
        #[source]
        source: Box<kiln_store::StoreError>,
    },
}

/// `PATH[:TAG|@DIGEST]` of an `oci-layout://` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Parses what follows `oci-layout://`. A `:` counts as the tag separator only in the last path
/// component, so directories with colons in parent names still work.
///
/// # Errors
/// [`OciLayoutError::BadDigest`] for an `@` not followed by a valid digest.
pub fn parse_layout_ref(value: &str) -> Result<LayoutRef, OciLayoutError> {
    if let Some((dir, digest)) = value.rsplit_once('@') {
        let digest = digest.parse().map_err(|source| OciLayoutError::BadDigest {
            value: value.to_string(),
            source,
        })?;
        return Ok(LayoutRef {
            dir: PathBuf::from(dir),
            tag: None,
            digest: Some(digest),
        });
    }
    let last_slash = value.rfind('/').map_or(0, |at| at + 1);
    match value[last_slash..].rfind(':') {
        Some(at) if last_slash + at > 0 => Ok(LayoutRef {
            dir: PathBuf::from(&value[..last_slash + at]),
            tag: Some(value[last_slash + at + 1..].to_string()).filter(|tag| !tag.is_empty()),
            digest: None,
        }),
        _ => Ok(LayoutRef {
            dir: PathBuf::from(value),
            tag: None,
            digest: None,
        }),
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<DescriptorPlatform>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct DescriptorPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Imports the image `layout` names (for `platform`, when it is an index) into `store` and
/// returns its manifest digest.
///
/// # Errors
/// [`OciLayoutError`] when the layout cannot be read, holds no matching image, or a blob does
/// not match its digest.
pub fn import_layout_image(
    store: &Store,
    layout: &LayoutRef,
    platform: &Platform,
) -> Result<Digest, OciLayoutError> {
    let index_path = layout.dir.join("index.json");
    let index: Index = parse_json(&index_path, "OCI layout index")?;
    let chosen = choose_entry(layout, &index)?;
    let mut descriptor = chosen;
    // An index (possibly nested) narrows down to the target platform's manifest.
    for _ in 0..4 {
        if !is_index(&descriptor) {
            break;
        }
        let digest = parse_digest(&layout.dir, &descriptor.digest)?;
        let nested: Index = parse_json(&blob_path(&layout.dir, &digest), "image index")?;
        descriptor = nested
            .manifests
            .into_iter()
            .find(|entry| {
                entry
                    .platform
                    .as_ref()
                    .is_some_and(|p| platform_matches(p, platform))
            })
            .ok_or_else(|| OciLayoutError::NoPlatform {
                dir: layout.dir.clone(),
                digest,
                platform: platform.clone(),
            })?;
    }
    let manifest_digest = parse_digest(&layout.dir, &descriptor.digest)?;
    let manifest_path = blob_path(&layout.dir, &manifest_digest);
    let manifest: Manifest = parse_json(&manifest_path, "image manifest")?;
    let config_digest = parse_digest(&layout.dir, &manifest.config.digest)?;
    let config_path = blob_path(&layout.dir, &config_digest);
    let config_bytes = read_document(&config_path)?;
    let config =
        ImageConfig::from_json(&config_bytes).map_err(|source| OciLayoutError::Config {
            digest: config_digest.clone(),
            source,
        })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(OciLayoutError::LayerCount {
            digest: manifest_digest,
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let blob_digest = parse_digest(&layout.dir, &layer.digest)?;
        copy_blob(store, &layout.dir, &blob_digest, "layer")?;
        layers.push(ManifestLayer {
            blob_digest,
            diff_id: parse_digest(&layout.dir, diff_id)?,
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
    }
    copy_blob(store, &layout.dir, &config_digest, "config")?;
    copy_blob(store, &layout.dir, &manifest_digest, "manifest")?;
    let media_type = if manifest.media_type.is_empty() {
        descriptor.media_type.clone()
    } else {
        manifest.media_type.clone()
    };
    store
        .record_manifest(&ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest,
            media_type,
            layers,
        })
        .map_err(|source| OciLayoutError::Store {
            what: "the manifest record of",
            digest: manifest_digest.clone(),
            source: Box::new(source),
        })?;
    Ok(manifest_digest)
}

/// The entry of `index.json` the reference names.
fn choose_entry(layout: &LayoutRef, index: &Index) -> Result<Descriptor, OciLayoutError> {
    let not_found = |wanted: String| OciLayoutError::NoSuchImage {
        dir: layout.dir.clone(),
        wanted,
    };
    if let Some(digest) = &layout.digest {
        let wanted = digest.to_string();
        if let Some(entry) = index.manifests.iter().find(|e| e.digest == wanted) {
            return Ok(entry.clone());
        }
        // A digest of a blob the index does not list directly (a platform's manifest).
        if blob_path(&layout.dir, digest).is_file() {
            let probe: serde_json::Value =
                parse_json(&blob_path(&layout.dir, digest), "OCI layout blob")?;
            let media_type = probe["mediaType"].as_str().unwrap_or_default().to_string();
            let media_type = if media_type.is_empty() && probe.get("manifests").is_some() {
                "application/vnd.oci.image.index.v1+json".to_string()
            } else {
                media_type
            };
            return Ok(Descriptor {
                media_type,
                digest: wanted,
                size: 0,
                platform: None,
                annotations: Default::default(),
            });
        }
        return Err(not_found(format!("@{wanted}")));
    }
    let tag = layout.tag.as_deref().unwrap_or("latest");
    let tagged = index
        .manifests
        .iter()
        .find(|e| e.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(tag));
    match (tagged, &layout.tag, index.manifests.as_slice()) {
        (Some(entry), _, _) => Ok(entry.clone()),
        // No tag asked for: the only image of the layout is the one.
        (None, None, [only]) => Ok(only.clone()),
        (None, None, []) => Err(not_found(":latest".to_string())),
        (None, None, all) => Err(OciLayoutError::Ambiguous {
            dir: layout.dir.clone(),
            count: all.len(),
        }),
        (None, Some(tag), _) => Err(not_found(format!(":{tag}"))),
    }
}

fn is_index(descriptor: &Descriptor) -> bool {
    matches!(
        descriptor.media_type.as_str(),
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// Whether an index entry's platform is `wanted` (a variant counts only when both name one).
fn platform_matches(found: &DescriptorPlatform, wanted: &Platform) -> bool {
    let variant = match (found.variant.as_deref(), wanted.variant.as_deref()) {
        (Some(found), Some(wanted)) => found == wanted,
        _ => true,
    };
    found.os == wanted.os && found.architecture == wanted.architecture && variant
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

fn parse_digest(dir: &Path, value: &str) -> Result<Digest, OciLayoutError> {
    value.parse().map_err(|source| OciLayoutError::BadDigest {
        value: format!("{}@{value}", dir.display()),
        source,
    })
}

fn read_document(path: &Path) -> Result<Vec<u8>, OciLayoutError> {
    let read_error = |source| OciLayoutError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_DOCUMENT_SIZE {
        return Err(OciLayoutError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    fs::read(path).map_err(read_error)
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<T, OciLayoutError> {
    let bytes = read_document(path)?;
    serde_json::from_slice(&bytes).map_err(|source| OciLayoutError::Parse {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Streams a blob of the layout into the store (checked against its digest) unless it is there.
fn copy_blob(
    store: &Store,
    dir: &Path,
    digest: &Digest,
    what: &'static str,
) -> Result<(), OciLayoutError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = blob_path(dir, digest);
    let mut file = fs::File::open(&path).map_err(|source| OciLayoutError::Read {
        path: path.clone(),
        source,
    })?;
    store
        .ingest_from(&mut io::BufReader::new(&mut file), Some(digest))
        .map_err(|source| OciLayoutError::Store {
            what,
            digest: digest.clone(),
            source: Box::new(source),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_split_path_tag_and_digest() {
        assert_eq!(
            parse_layout_ref("/tmp/layout:v1").unwrap(),
            LayoutRef {
                dir: PathBuf::from("/tmp/layout"),
                tag: Some("v1".into()),
                digest: None,
            }
        );
        let by_digest = parse_layout_ref(&format!("/tmp/a:b/layout@{DIGEST}")).unwrap();
        assert_eq!(by_digest.dir, PathBuf::from("/tmp/a:b/layout"));
        assert_eq!(by_digest.digest.unwrap().to_string(), DIGEST);
        let plain = parse_layout_ref("/tmp/a:b/layout").unwrap();
        assert_eq!(
            (plain.dir, plain.tag),
            (PathBuf::from("/tmp/a:b/layout"), None)
        );
        assert!(parse_layout_ref("/tmp/layout@sha256:zz").is_err());
    }

    fn entry(tag: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: DIGEST.into(),
            size: 1,
            platform: None,
            annotations: tag
                .map(|tag| [(REF_NAME_ANNOTATION.to_string(), tag.to_string())].into())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn entries_are_chosen_by_tag_or_as_the_only_one() {
        let layout = |tag: Option<&str>| LayoutRef {
            dir: PathBuf::from("/nonexistent"),
            tag: tag.map(Into::into),
            digest: None,
        };
        let one = Index {
            manifests: vec![entry(Some("v1"))],
        };
        assert!(choose_entry(&layout(None), &one).is_ok(), "the only image");
        assert!(choose_entry(&layout(Some("v1")), &one).is_ok());
        assert!(matches!(
            choose_entry(&layout(Some("v2")), &one),
            Err(OciLayoutError::NoSuchImage { .. })
        ));
        let two = Index {
            manifests: vec![entry(Some("v1")), entry(Some("v2"))],
        };
        assert!(matches!(
            choose_entry(&layout(None), &two),
            Err(OciLayoutError::Ambiguous { count: 2, .. })
        ));
    }
}

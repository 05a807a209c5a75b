//! Media types of OCI and Docker manifests, indexes, configs and layers, and what they say about a
//! blob: is it an index, a manifest, a layer, and how is the layer compressed.
//!
//! Both families are accepted everywhere (registries and archives mix them freely); kiln writes OCI
//! types unless asked for Docker's.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (a manifest list).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI empty descriptor (`{}`), used as the config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable layer (deprecated by the spec; still found in Windows images).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 1 (signed). Long obsolete: recognised only to refuse it clearly.
pub const DOCKER_MANIFEST_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker image manifest, schema 1 (unsigned).
pub const DOCKER_MANIFEST_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, uncompressed tar.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker layer, gzip-compressed tar (the usual one).
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer, zstd-compressed tar (containerd's extension of the Docker family).
pub const DOCKER_LAYER_TAR_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker foreign layer (fetched from its `urls`, e.g. Windows base layers).
pub const DOCKER_LAYER_FOREIGN_TAR: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_LAYER_FOREIGN_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// BuildKit's cache config (the config blob of a registry cache export).
pub const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// How a layer blob is compressed, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerCompression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            LayerCompression::Uncompressed => OCI_LAYER_TAR,
            LayerCompression::Gzip => OCI_LAYER_TAR_GZIP,
            LayerCompression::Zstd => OCI_LAYER_TAR_ZSTD,
        }
    }

    /// The Docker layer media type for this compression.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            LayerCompression::Uncompressed => DOCKER_LAYER_TAR,
            LayerCompression::Gzip => DOCKER_LAYER_TAR_GZIP,
            LayerCompression::Zstd => DOCKER_LAYER_TAR_ZSTD,
        }
    }
}

/// Strips parameters (`; charset=utf-8`) and surrounding spaces, as registries sometimes add them
/// to `Content-Type`.
fn essence(media_type: &str) -> &str {
    media_type
        .split_once(';')
        .map_or(media_type, |(essence, _)| essence)
        .trim()
}

/// An image index or Docker manifest list.
pub fn is_index(media_type: &str) -> bool {
    matches!(essence(media_type), OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// A single-platform image manifest (OCI or Docker schema 2).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(essence(media_type), OCI_MANIFEST | DOCKER_MANIFEST)
}

/// A Docker schema 1 manifest, which kiln does not support.
pub fn is_schema1_manifest(media_type: &str) -> bool {
    matches!(
        essence(media_type),
        DOCKER_MANIFEST_SCHEMA1 | DOCKER_MANIFEST_SCHEMA1_SIGNED
    )
}

/// An image config (OCI or Docker).
pub fn is_config(media_type: &str) -> bool {
    matches!(essence(media_type), OCI_CONFIG | DOCKER_CONFIG)
}

/// A layer of either family, including non-distributable and foreign layers.
pub fn is_layer(media_type: &str) -> bool {
    layer_compression(media_type).is_some()
}

/// A layer that registries may not serve (OCI non-distributable, Docker foreign): it is fetched
/// from the descriptor's `urls`, and is not pushed.
pub fn is_non_distributable_layer(media_type: &str) -> bool {
    let media_type = essence(media_type);
    (media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign."))
        && is_layer(media_type)
}

/// The compression of a layer from its media type, or `None` when it is not a layer type kiln
/// knows. OCI types carry it as a `+gzip`/`+zstd` suffix, Docker types as `.gzip`/`.zstd`.
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    let media_type = essence(media_type);
    let (base, suffix) = if let Some(base) = media_type
        .strip_prefix("application/vnd.oci.image.layer.v1.")
        .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.nondistributable.v1."))
    {
        match base.split_once('+') {
            Some((base, suffix)) => (base, Some(suffix)),
            None => (base, None),
        }
    } else if let Some(base) = media_type
        .strip_prefix("application/vnd.docker.image.rootfs.diff.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.foreign.diff."))
    {
        match base.split_once('.') {
            Some((base, suffix)) => (base, Some(suffix)),
            None => (base, None),
        }
    } else {
        return None;
    };
    if base != "tar" {
        return None;
    }
    match suffix {
        None => Some(LayerCompression::Uncompressed),
        Some("gzip") => Some(LayerCompression::Gzip),
        Some("zstd") => Some(LayerCompression::Zstd),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_manifests() {
        assert!(is_index(OCI_INDEX) && is_index(DOCKER_MANIFEST_LIST));
        assert!(!is_index(OCI_MANIFEST) && !is_index(DOCKER_MANIFEST));
        assert!(is_manifest(OCI_MANIFEST) && is_manifest(DOCKER_MANIFEST));
        assert!(!is_manifest(OCI_INDEX) && !is_manifest(DOCKER_MANIFEST_SCHEMA1_SIGNED));
        assert!(is_manifest(
            "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
        ));
        assert!(is_schema1_manifest(DOCKER_MANIFEST_SCHEMA1_SIGNED));
        assert!(is_schema1_manifest(DOCKER_MANIFEST_SCHEMA1));
        assert!(is_config(OCI_CONFIG) && is_config(DOCKER_CONFIG));
        assert!(!is_config(OCI_EMPTY) && !is_config(BUILDKIT_CACHE_CONFIG));
        assert!(!is_index("application/json"));
    }

    #[test]
    fn layer_compression_from_media_type() {
        use LayerCompression::*;
        let cases = [
            (OCI_LAYER_TAR, Some(Uncompressed)),
            (OCI_LAYER_TAR_GZIP, Some(Gzip)),
            (OCI_LAYER_TAR_ZSTD, Some(Zstd)),
            (OCI_LAYER_NONDISTRIBUTABLE_TAR, Some(Uncompressed)),
            (OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP, Some(Gzip)),
            (OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD, Some(Zstd)),
            (DOCKER_LAYER_TAR, Some(Uncompressed)),
            (DOCKER_LAYER_TAR_GZIP, Some(Gzip)),
            (DOCKER_LAYER_TAR_ZSTD, Some(Zstd)),
            (DOCKER_LAYER_FOREIGN_TAR, Some(Uncompressed)),
            (DOCKER_LAYER_FOREIGN_TAR_GZIP, Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                None,
            ),
            ("application/vnd.oci.image.layer.v1.json", None),
            (OCI_CONFIG, None),
            (DOCKER_MANIFEST, None),
            ("", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(layer_compression(media_type), expected, "{media_type}");
            assert_eq!(is_layer(media_type), expected.is_some(), "{media_type}");
        }
    }

    #[test]
    fn compression_round_trips_through_media_types() {
        for compression in [
            LayerCompression::Uncompressed,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
        ] {
            assert_eq!(
                layer_compression(compression.oci_media_type()),
                Some(compression)
            );
            assert_eq!(
                layer_compression(compression.docker_media_type()),
                Some(compression)
            );
        }
    }

    #[test]
    fn non_distributable_layers() {
        assert!(is_non_distributable_layer(
            OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
        ));
        assert!(is_non_distributable_layer(DOCKER_LAYER_FOREIGN_TAR_GZIP));
        assert!(!is_non_distributable_layer(OCI_LAYER_TAR_GZIP));
        assert!(!is_non_distributable_layer(DOCKER_LAYER_TAR_GZIP));
    }

    #[test]
    fn constants_agree_with_oci_spec() {
        use oci_spec::image::MediaType;
        assert_eq!(MediaType::ImageManifest.to_string(), OCI_MANIFEST);
        assert_eq!(MediaType::ImageIndex.to_string(), OCI_INDEX);
        assert_eq!(MediaType::ImageConfig.to_string(), OCI_CONFIG);
        assert_eq!(MediaType::ImageLayer.to_string(), OCI_LAYER_TAR);
        assert_eq!(MediaType::ImageLayerGzip.to_string(), OCI_LAYER_TAR_GZIP);
        assert_eq!(MediaType::ImageLayerZstd.to_string(), OCI_LAYER_TAR_ZSTD);
        assert_eq!(MediaType::EmptyJSON.to_string(), OCI_EMPTY);
    }
}

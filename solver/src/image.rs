//! Images in and out of the store.
//!
//! - Base images: [`find_image`] looks a reference up in the store (`name:tag` by its tag,
//!   `name@sha256:…` by its manifest digest); [`resolve_image`] pulls it when absent and a puller is
//!   given (Docker's behaviour: a local image wins, even if the registry has a newer one).
//! - New images: [`write_image`] turns a stage config plus its layer chain into a config blob and a
//!   manifest (media types chosen by the caller: Docker schema 2 for the local store, like
//!   `docker build`; OCI for OCI archives), records the manifest, and returns the image id.
//! - Exports: [`export_rootfs`] and [`write_rootfs_tar`] give the merged root filesystem.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use kiln_image::config::{History, ImageConfig, RootFs};
use kiln_image::{Digest, Reference};
use kiln_llb::Platform;
use kiln_oci::apply::{ApplyOptions, WhiteoutMode, apply_layer};
use kiln_oci::diff::{DiffOptions, write_layer_tar};
use kiln_oci::manifest::{ManifestError, MediaTypeSet, build_manifest, descriptor};
use kiln_registry::credentials::DockerConfig;
use kiln_registry::{ClientOptions, RegistryClient, RegistryError, Repository, WantedPlatform};
use kiln_store::{ManifestLayer, ManifestRecord, Store, StoreError};
use oci_spec::image::MediaType;

use crate::layers::compression_of;
use crate::result::Layer;
use crate::scratch::ScratchDir;

/// Largest config blob read into memory.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {0} not found in the store")]
    NotFound(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("pulling {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("pushing {reference}: {source}")]
    Push {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("setting up the registry client: {0}")]
    Client(String),
    #[error("image config {digest} is not valid: {source}")]
    Config {
        digest: Digest,
        #[source]
        source: kiln_image::ConfigError,
    },
    #[error("writing the manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("exporting the root filesystem: {0}")]
    Export(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Fetches images that are not in the store.
pub trait ImagePuller: Send + Sync {
    /// Pulls `reference` (normalised) for `platform` into the store, records and tags it.
    ///
    /// # Errors
    /// The registry refuses or the transfer fails.
    fn pull(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
    ) -> Result<ManifestRecord, ImageError>;
}

/// Pulls (and pushes) with kiln-registry, authenticated from Docker's `config.json`.
pub struct RegistryTransport {
    client: RegistryClient,
}

impl RegistryTransport {
    /// A puller using `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`) for credentials.
    ///
    /// # Errors
    /// The config file is unreadable, or the HTTP client cannot be built.
    pub fn from_docker_config() -> Result<RegistryTransport, ImageError> {
        let config = DockerConfig::load(&DockerConfig::default_path())
            .map_err(|e| ImageError::Client(e.to_string()))?;
        let client = RegistryClient::new(Arc::new(config), ClientOptions::from_env())
            .map_err(|e| ImageError::Client(e.to_string()))?;
        Ok(RegistryTransport { client })
    }
}

/// A reference and the registry repository it names.
fn parse_repository(reference: &str) -> Result<(Reference, Repository), ImageError> {
    let parsed = Reference::parse(reference).map_err(|e| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: e.to_string(),
    })?;
    let repo = Repository::from(&parsed);
    Ok((parsed, repo))
}

/// The registry client is async; the solver's ops are blocking code on their own threads, so each
/// transfer runs on a small runtime of its own.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ImageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImageError::Client(e.to_string()))
}

impl RegistryTransport {
    /// Pushes the manifest `manifest_digest` from the store to `reference` (a normalised name with
    /// a tag) and returns the pushed manifest's digest.
    ///
    /// # Errors
    /// An invalid reference, or the push fails (the registry refuses, a blob is damaged).
    pub fn push(
        &self,
        store: &Store,
        manifest_digest: &Digest,
        reference: &str,
    ) -> Result<Digest, ImageError> {
        let (parsed, repo) = parse_repository(reference)?;
        let runtime = current_thread_runtime()?;
        runtime
            .block_on(kiln_registry::push(
                &self.client,
                store,
                manifest_digest,
                &repo,
                parsed.tag_or_latest(),
                &[],
                &|_| {},
            ))
            .map_err(|source| ImageError::Push {
                reference: reference.to_string(),
                source,
            })
    }
}

impl ImagePuller for RegistryTransport {
    fn pull(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
    ) -> Result<ManifestRecord, ImageError> {
        let (parsed, repo) = parse_repository(reference)?;
        let wanted = WantedPlatform {
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
        };
        let runtime = current_thread_runtime()?;
        let pulled = runtime
            .block_on(kiln_registry::pull(
                &self.client,
                store,
                &repo,
                &parsed.tag_or_digest(),
                &wanted,
                &|_| {},
            ))
            .map_err(|source| ImageError::Pull {
                reference: reference.to_string(),
                source,
            })?;
        if parsed.digest().is_none() {
            store.tag(
                reference,
                &pulled.manifest.digest,
                &pulled.manifest.config_digest,
            )?;
        }
        Ok(pulled.manifest)
    }
}

/// The store's manifest for `reference` (normalised; `name@sha256:…` is looked up by digest).
///
/// # Errors
/// A store failure.
pub fn find_image(store: &Store, reference: &str) -> Result<Option<ManifestRecord>, ImageError> {
    if let Some((_, digest)) = reference.rsplit_once('@') {
        let digest: Digest =
            digest
                .parse()
                .map_err(|e: kiln_image::DigestError| ImageError::InvalidReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })?;
        return Ok(store.manifest(&digest)?);
    }
    match store.resolve_image(reference)? {
        Some(image) => Ok(store.manifest(&image.manifest_digest)?),
        None => Ok(None),
    }
}

/// The manifest for `reference`: from the store, else pulled with `puller`.
///
/// # Errors
/// [`ImageError::NotFound`] when absent and there is no puller; pull and store failures.
pub fn resolve_image(
    store: &Store,
    reference: &str,
    platform: &Platform,
    puller: Option<&dyn ImagePuller>,
) -> Result<ManifestRecord, ImageError> {
    if let Some(found) = find_image(store, reference)? {
        return Ok(found);
    }
    match puller {
        Some(puller) => puller.pull(store, reference, platform),
        None => Err(ImageError::NotFound(reference.to_string())),
    }
}

/// Reads and parses an image's config blob (verified against its digest).
///
/// # Errors
/// The blob is missing or corrupted (the error names its path), or not a valid config.
pub fn read_config(store: &Store, manifest: &ManifestRecord) -> Result<ImageConfig, ImageError> {
    let bytes = store.read_blob_to_vec(&manifest.config_digest, MAX_CONFIG_SIZE)?;
    ImageConfig::from_json(&bytes).map_err(|source| ImageError::Config {
        digest: manifest.config_digest.clone(),
        source,
    })
}

/// How to write an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    pub media_types: MediaTypeSet,
    /// The creation time: `SOURCE_DATE_EPOCH` for reproducible builds, else now.
    pub created: SystemTime,
}

/// An image written to the store.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The image id.
    pub config_digest: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    /// The config as written.
    pub config: ImageConfig,
}

impl BuiltImage {
    /// The manifest's descriptor, for exports.
    ///
    /// # Errors
    /// Not expected (kiln digests are valid).
    pub fn descriptor(&self) -> Result<oci_spec::image::Descriptor, ImageError> {
        Ok(descriptor(
            MediaType::from(self.manifest_media_type.as_str()),
            &self.manifest_digest,
            self.manifest_size,
        )?)
    }
}

/// RFC 3339 text of `time` (UTC, nanoseconds when not whole seconds), as Docker writes `created`.
pub fn rfc3339(time: SystemTime) -> String {
    let nanos = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Makes the non-empty history entries match the layers one to one: when some steps produced no
/// layer (an empty diff), the last surplus entries are marked empty, as BuildKit's exporter does;
/// layers without an entry get a plain one.
pub fn pair_history(history: &mut Vec<History>, layer_count: usize) {
    let with_layer = history.iter().filter(|h| !h.empty_layer).count();
    if with_layer > layer_count {
        let mut surplus = with_layer - layer_count;
        for entry in history.iter_mut().rev() {
            if surplus == 0 {
                break;
            }
            if !entry.empty_layer {
                entry.empty_layer = true;
                surplus -= 1;
            }
        }
    } else {
        for _ in with_layer..layer_count {
            history.push(History::new("", false));
        }
    }
}

fn store_blob(store: &Store, bytes: &[u8]) -> Result<Digest, ImageError> {
    let digest = Digest::of(bytes);
    let mut writer = store.ingest()?;
    writer.write_all(bytes).map_err(|source| ImageError::Io {
        action: "write blob to",
        path: store.scratch_dir().to_path_buf(),
        source,
    })?;
    writer.commit(Some(&digest))?;
    Ok(digest)
}

/// Writes the image made of `chain` and `config` (a stage config; `base_history_len` of its history
/// entries came from the base image) and records its manifest. Does not tag it.
///
/// # Errors
/// Writing a blob or recording the manifest failed.
pub fn write_image(
    store: &Store,
    chain: &[Layer],
    config: &ImageConfig,
    base_history_len: usize,
    options: &ImageOptions,
) -> Result<BuiltImage, ImageError> {
    write_image_annotated(
        store,
        chain,
        config,
        base_history_len,
        options,
        &BTreeMap::new(),
    )
}

/// [`write_image`] with `annotations` in the manifest's `annotations` field (`docker buildx build
/// --annotation`): they change the manifest digest, never the image id. Only OCI manifests carry
/// annotations; the caller picks [`MediaTypeSet::Oci`] when there are any.
///
/// # Errors
/// Writing a blob or recording the manifest failed.
pub fn write_image_annotated(
    store: &Store,
    chain: &[Layer],
    config: &ImageConfig,
    base_history_len: usize,
    options: &ImageOptions,
    annotations: &BTreeMap<String, String>,
) -> Result<BuiltImage, ImageError> {
    let created = rfc3339(options.created);
    let mut config = config.clone();
    config.created = Some(created.clone());
    for entry in config.history.iter_mut().skip(base_history_len) {
        if entry.created.is_none() {
            entry.created = Some(created.clone());
        }
    }
    pair_history(&mut config.history, chain.len());
    let mut rootfs = RootFs::default();
    rootfs.kind = "layers".to_string();
    rootfs.diff_ids = chain.iter().map(|l| l.diff_id.to_string()).collect();
    config.rootfs = rootfs;
    let config_bytes = config.to_docker_json();
    let config_digest = store_blob(store, &config_bytes)?;

    let media_types = options.media_types;
    let layer_media_type = |layer: &Layer| -> String {
        let compression = compression_of(&layer.media_type);
        match media_types {
            MediaTypeSet::Docker => compression.docker_media_type().to_string(),
            MediaTypeSet::Oci => compression.oci_media_type().to_string(),
        }
    };
    let config_descriptor = descriptor(
        media_types.config(),
        &config_digest,
        config_bytes.len() as u64,
    )?;
    let layer_descriptors = chain
        .iter()
        .map(|layer| {
            descriptor(
                MediaType::from(layer_media_type(layer).as_str()),
                &layer.blob_digest,
                layer.size,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (_, manifest_bytes, manifest_descriptor) = build_manifest(
        media_types,
        config_descriptor,
        layer_descriptors,
        (!annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
    )?;
    let manifest_digest = store_blob(store, &manifest_bytes)?;
    let manifest_media_type = manifest_descriptor.media_type().to_string();
    store.record_manifest(&ManifestRecord {
        digest: manifest_digest.clone(),
        config_digest: config_digest.clone(),
        media_type: manifest_media_type.clone(),
        layers: chain
            .iter()
            .map(|layer| ManifestLayer {
                blob_digest: layer.blob_digest.clone(),
                diff_id: layer.diff_id.clone(),
                media_type: layer_media_type(layer),
                size: layer.size,
            })
            .collect(),
    })?;
    Ok(BuiltImage {
        config_digest,
        manifest_digest,
        manifest_media_type,
        manifest_size: manifest_bytes.len() as u64,
        config,
    })
}

/// Applies the layers of `chain` in order onto the directory `dest` (created if missing), giving the
/// merged root filesystem.
///
/// # Errors
/// A blob is missing or corrupted, or applying fails.
pub fn export_rootfs(store: &Store, chain: &[Layer], dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(|source| ImageError::Io {
        action: "create",
        path: dest.to_path_buf(),
        source,
    })?;
    let options = ApplyOptions {
        whiteouts: WhiteoutMode::Merged,
        chown: nix::unistd::geteuid().is_root(),
    };
    for layer in chain {
        let blob = store.open_blob(&layer.blob_digest)?;
        let path = blob.path().to_path_buf();
        apply_layer(blob, dest, &options).map_err(|e| {
            ImageError::Export(format!("applying layer blob {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// Writes the merged root filesystem of `chain` as one tar to `out` (mtimes clamped to
/// `source_date_epoch` when given).
///
/// # Errors
/// As [`export_rootfs`], or writing `out` failed.
pub fn write_rootfs_tar<W: Write>(
    store: &Store,
    chain: &[Layer],
    source_date_epoch: Option<i64>,
    out: W,
) -> Result<W, ImageError> {
    let scratch = ScratchDir::new(store, "rootfs").map_err(|source| ImageError::Io {
        action: "create scratch dir in",
        path: store.scratch_dir().to_path_buf(),
        source,
    })?;
    let root = scratch.path().join("root");
    export_rootfs(store, chain, &root)?;
    let options = DiffOptions {
        source_date_epoch,
        ..DiffOptions::plain()
    };
    let (out, _) =
        write_layer_tar(&root, &options, out).map_err(|e| ImageError::Export(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(created_by: &str, empty: bool) -> History {
        History::new(created_by, empty)
    }

    #[test]
    fn surplus_history_entries_are_marked_empty_from_the_end() {
        let mut history = vec![
            entry("COPY a /", false),
            entry("ENV A=b", true),
            entry("WORKDIR /x", false),
        ];
        pair_history(&mut history, 1);
        assert!(!history[0].empty_layer);
        assert!(history[2].empty_layer);
    }

    #[test]
    fn layers_without_history_get_an_entry() {
        let mut history = vec![entry("COPY a /", false)];
        pair_history(&mut history, 3);
        assert_eq!(history.iter().filter(|h| !h.empty_layer).count(), 3);
    }

    #[test]
    fn rfc3339_of_an_epoch() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(time), "2023-11-14T22:13:20Z");
    }
}

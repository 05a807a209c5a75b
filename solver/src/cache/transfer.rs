//! Sharing the build cache between stores: `--cache-to` exports cache records with the layer blobs
//! their results need, `--cache-from` makes them available to a later build on another store.
//!
//! The format is an OCI image layout (`docs/cache-export.md`): `index.json` → one image manifest
//! whose config blob ([`CACHE_CONFIG_MEDIA_TYPE`], a [`CacheConfig`]) lists the records — key →
//! layer chain plus the key's components, so a miss against an imported record is explained like a
//! local one — and whose layers are the blobs of those chains, each stored once.
//!
//! Import is lazy at the record level: [`ImportedCache`] reads only the index, manifest and config;
//! a layer blob is copied into the store when a lookup hits a record that needs it and the store
//! does not already have it. A cache that cannot be read is the caller's warning, never a failed
//! build: every error here says which cache and which file failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_image::{Digest, Reference};
use kiln_registry::credentials::DockerConfig;
use kiln_registry::{Access, ClientOptions, RegistryClient, RegistryError, Repository};
use kiln_store::{ManifestLayer, Store, StoreError};
use serde::{Deserialize, Serialize};

use kiln_oci::apply::{ApplyOptions, WhiteoutMode, apply_layer};
use kiln_oci::compress::{Compression, compress_dir_layer};
use kiln_oci::diff::DiffOptions;

use crate::cache::local_dir::{self, ExportLock};
use crate::cache::record::{CacheEntry, RecordError};
use crate::error::OpError;
use crate::layers::ensure_extracted;
use crate::result::Layer;

/// The media type of the config blob that lists the records.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The `format` of a [`CacheConfig`] this version writes and reads.
pub const CACHE_FORMAT: &str = "kiln.cache.v1";
/// The image config field holding an inline cache (a [`CacheConfig`]).
pub const INLINE_CACHE_FIELD: &str = "kiln.cache.v1";

/// Cache mount contents are plain gzip tars of the directory.
const CACHE_MOUNT_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Metadata (index, manifest, config) larger than this is not a cache we wrote.
pub(crate) const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Exporting or importing a cache failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid cache option {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("cache {reference}: {message}")]
    Client { reference: String, message: String },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("extracting the imported layers of cache record {key}: {source}")]
    Extract {
        key: String,
        #[source]
        source: Box<OpError>,
    },
}

/// Maps an I/O error to a [`TransferError`] naming what was being done to `path`.
pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> TransferError {
    let path = path.to_path_buf();
    move |source| TransferError::Io {
        action,
        path,
        source,
    }
}

/// Which steps an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// The steps whose results are layers of the exported image (BuildKit's default).
    #[default]
    Min,
    /// Every cached step of every stage the build ran.
    Max,
}

/// What an export to a directory does with the blobs of earlier exports that the new index no
/// longer references (see [`crate::cache::local_dir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OldBlobs {
    /// Remove them (`reset=true`, kiln's default): the directory holds one cache.
    #[default]
    Remove,
    /// Keep them (`reset=false`, BuildKit's default): the directory only grows.
    Keep,
}

/// One `--cache-to` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    /// `type=local,dest=DIR[,mode=min|max][,cache-mounts=true|false][,reset=true|false]`.
    Local {
        dest: PathBuf,
        mode: ExportMode,
        /// Whether the contents of `RUN --mount=type=cache` dirs travel too (default: with
        /// `mode=max`).
        cache_mounts: bool,
        /// `reset=`: whether blobs no longer referenced are removed (default: yes).
        old_blobs: OldBlobs,
    },
    /// `type=registry,ref=NAME[:TAG][,mode=min|max][,cache-mounts=true|false]` (the reference
    /// normalised).
    Registry {
        reference: String,
        mode: ExportMode,
        cache_mounts: bool,
    },
    /// `type=inline`: the records of the image's own steps in its config, under
    /// [`INLINE_CACHE_FIELD`] (see [`inline_cache_value`]).
    Inline,
}

/// One `--cache-from` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    /// `type=local,src=DIR`.
    Local { src: PathBuf },
    /// `type=registry,ref=NAME[:TAG]` (the reference normalised).
    Registry { reference: String },
    /// `IMAGE`: the records inlined in that image's config (`--cache-to type=inline`), its
    /// layers as the blobs.
    Image { reference: String },
}

/// `key=value` fields of a cache option, with `type` required.
fn fields(spec: &str) -> Result<(String, BTreeMap<String, String>), TransferError> {
    let invalid = |reason: String| TransferError::Spec {
        spec: spec.to_string(),
        reason,
    };
    let mut map = BTreeMap::new();
    for field in spec.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(invalid(format!("{field:?} is not KEY=VALUE")));
        };
        map.insert(key.trim().to_ascii_lowercase(), value.to_string());
    }
    let kind = map
        .remove("type")
        .ok_or_else(|| invalid("type= is required".to_string()))?;
    Ok((kind, map))
}

fn unsupported(spec: &str, kind: &str) -> TransferError {
    TransferError::Spec {
        spec: spec.to_string(),
        reason: format!("type={kind} is not supported (supported: local, registry, inline)"),
    }
}

/// The `ref=` of a registry cache, normalised (`docker.io/library/…`, tag `latest` by default).
fn registry_ref(spec: &str, map: &mut BTreeMap<String, String>) -> Result<String, TransferError> {
    let invalid = |reason: String| TransferError::Spec {
        spec: spec.to_string(),
        reason,
    };
    let text = map
        .remove("ref")
        .filter(|text| !text.is_empty())
        .ok_or_else(|| invalid("type=registry needs ref=NAME[:TAG]".to_string()))?;
    let reference = Reference::parse(&text).map_err(|error| invalid(error.to_string()))?;
    if reference.digest().is_some() {
        return Err(invalid("ref= must be a tag, not a digest".to_string()));
    }
    Ok(reference.with_default_tag().to_string())
}

impl CacheTo {
    /// Parses a `--cache-to` value.
    ///
    /// # Errors
    /// [`TransferError::Spec`] naming what is wrong or unsupported.
    pub fn parse(spec: &str) -> Result<CacheTo, TransferError> {
        let invalid = |reason: &str| TransferError::Spec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (kind, mut map) = fields(spec)?;
        let mode = match map.remove("mode").as_deref() {
            None | Some("min") => ExportMode::Min,
            Some("max") => ExportMode::Max,
            Some(_) => return Err(invalid("mode must be min or max")),
        };
        let cache_mounts = match map.remove("cache-mounts").as_deref() {
            None => mode == ExportMode::Max,
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(invalid("cache-mounts must be true or false")),
        };
        let reset = map.remove("reset");
        if reset.is_some() && kind != "local" {
            return Err(invalid("reset applies to type=local only"));
        }
        let old_blobs = match reset.as_deref() {
            None | Some("true") => OldBlobs::Remove,
            Some("false") => OldBlobs::Keep,
            Some(_) => return Err(invalid("reset must be true or false")),
        };
        let parsed = match kind.as_str() {
            "local" => CacheTo::Local {
                dest: map
                    .remove("dest")
                    .filter(|dest| !dest.is_empty())
                    .map(PathBuf::from)
                    .ok_or_else(|| invalid("type=local needs dest=DIR"))?,
                mode,
                cache_mounts,
                old_blobs,
            },
            "registry" => CacheTo::Registry {
                reference: registry_ref(spec, &mut map)?,
                mode,
                cache_mounts,
            },
            // The image holds only its own layers: always `min`.
            "inline" if mode == ExportMode::Min && !cache_mounts => CacheTo::Inline,
            "inline" => {
                return Err(invalid(
                    "type=inline exports mode=min only, without cache mounts",
                ));
            }
            other => return Err(unsupported(spec, other)),
        };
        if let Some(extra) = map.keys().next() {
            return Err(invalid(&format!("unknown option {extra:?}")));
        }
        Ok(parsed)
    }
}

impl CacheFrom {
    /// Parses a `--cache-from` value.
    ///
    /// # Errors
    /// [`TransferError::Spec`] naming what is wrong or unsupported.
    pub fn parse(spec: &str) -> Result<CacheFrom, TransferError> {
        let invalid = |reason: &str| TransferError::Spec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if !spec.contains('=') {
            // `--cache-from IMAGE`: the cache inlined in an image's config.
            let reference = Reference::parse(spec).map_err(|error| invalid(&error.to_string()))?;
            return Ok(CacheFrom::Image {
                reference: reference.with_default_tag().to_string(),
            });
        }
        let (kind, mut map) = fields(spec)?;
        let parsed = match kind.as_str() {
            "local" => CacheFrom::Local {
                src: map
                    .remove("src")
                    .filter(|src| !src.is_empty())
                    .map(PathBuf::from)
                    .ok_or_else(|| invalid("type=local needs src=DIR"))?,
            },
            "registry" => CacheFrom::Registry {
                reference: registry_ref(spec, &mut map)?,
            },
            other => return Err(unsupported(spec, other)),
        };
        if let Some(extra) = map.keys().next() {
            return Err(invalid(&format!("unknown option {extra:?}")));
        }
        Ok(parsed)
    }
}

/// One exported cache record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub key: String,
    /// When the result was first recorded (ns since the epoch): an image built from imported
    /// records gets the same creation time, hence the same id, as the exporting build's.
    pub created_ns: i64,
    pub entry: CacheEntry,
}

/// The config blob of an exported cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// [`CACHE_FORMAT`].
    pub format: String,
    pub records: Vec<ExportedRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<ExportedCacheMount>,
}

/// The contents of one `RUN --mount=type=cache` directory, as a gzip layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedCacheMount {
    /// The directory's name in the store (a hash of the mount's id and seed: the same on every
    /// store).
    pub name: String,
    pub digest: Digest,
    pub size: u64,
}

/// What an export writes: records, and the cache mounts when asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheExport {
    pub records: Vec<ExportedRecord>,
    pub cache_mounts: Vec<ExportedCacheMount>,
}

/// Packs every cache mount directory of the store into a gzip layer blob in the store.
///
/// # Errors
/// [`TransferError`] when a directory cannot be read or the store cannot be written.
pub fn pack_cache_mounts(store: &Store) -> Result<Vec<ExportedCacheMount>, TransferError> {
    let dir = store.layout().cache_mounts_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("list", &dir)(error)),
    };
    let mut mounts = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error("list", &dir))?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if !is_cache_mount_name(name) || !path.is_dir() {
            continue;
        }
        let writer = store.ingest()?;
        let (writer, _) = compress_dir_layer(
            &path,
            &DiffOptions::plain(),
            Compression::Gzip { level: 1 },
            writer,
        )
        .map_err(|error| TransferError::Io {
            action: "pack cache mount",
            path: path.clone(),
            source: io::Error::other(error),
        })?;
        let blob = writer.commit(None)?;
        mounts.push(ExportedCacheMount {
            name: name.to_string(),
            digest: blob.digest,
            size: blob.size,
        });
    }
    mounts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(mounts)
}

/// Cache mount dirs are named by 32 hex digits; anything else (and any path) is refused.
fn is_cache_mount_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The records an export covers: of the cache `keys` a solve used, all of them for
/// [`ExportMode::Max`], and for [`ExportMode::Min`] those whose result is a prefix of
/// `image_chain` (the exported image's layers). A key `imported` has is taken from there (a step
/// that hit an imported record, fetched or not, keeps its original time), others from the store;
/// keys found in neither are skipped.
///
/// # Errors
/// [`TransferError::Record`] when the store cannot be read.
pub fn select_records(
    store: &Store,
    keys: &[String],
    image_chain: &[Layer],
    mode: ExportMode,
    imported: Option<&ImportedCache>,
) -> Result<Vec<ExportedRecord>, TransferError> {
    let in_image: HashSet<&Digest> = image_chain.iter().map(|layer| &layer.chain_id).collect();
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    for key in keys {
        if !seen.insert(key.as_str()) {
            continue;
        }
        // An imported record first: a fetched one is also in the store, but with the time it
        // was fetched instead of its result's.
        let from_import = imported
            .and_then(|imported| imported.record(key))
            .map(|record| CacheEntry {
                created_ns: record.created_ns,
                ..record.entry.clone()
            });
        let entry = match from_import {
            Some(entry) => entry,
            None => match CacheEntry::load(store, key)? {
                Some(entry) => entry,
                None => continue,
            },
        };
        let wanted = match mode {
            ExportMode::Max => true,
            ExportMode::Min => match entry.layers.last() {
                Some(top) => in_image.contains(&top.chain_id),
                None => image_chain.is_empty(),
            },
        };
        if wanted {
            records.push(ExportedRecord {
                key: key.clone(),
                created_ns: entry.created_ns,
                entry,
            });
        }
    }
    Ok(records)
}

/// The value of [`INLINE_CACHE_FIELD`] for `records` (selected with [`ExportMode::Min`]): a
/// [`CacheConfig`] whose per-file checksum records are left out — only the checksums' digests
/// (which the keys already cover) — so a large build context does not bloat the image config.
///
/// # Errors
/// [`TransferError::Json`] when encoding fails.
pub fn inline_cache_value(records: &[ExportedRecord]) -> Result<serde_json::Value, TransferError> {
    let records = records
        .iter()
        .map(|record| {
            let mut record = record.clone();
            for content in &mut record.entry.components.contents {
                content.checksum.entries.clear();
            }
            record
        })
        .collect();
    let config = CacheConfig {
        format: CACHE_FORMAT.to_string(),
        records,
        cache_mounts: Vec::new(),
    };
    serde_json::to_value(&config).map_err(|source| TransferError::Json {
        what: "encoding the inline cache".to_string(),
        source,
    })
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    pub records: usize,
    /// Layer blobs copied into the destination.
    pub blobs_written: usize,
    /// Layer blobs the destination already had.
    pub blobs_present: usize,
    /// Files of earlier exports removed from the destination's `blobs/` (a directory export with
    /// [`OldBlobs::Remove`]).
    pub blobs_removed: usize,
}

/// Writes `records` and their layer blobs as an OCI image layout in `dest` (created if missing).
/// Blobs already in `dest` are not copied again; `index.json` is replaced last and atomically, so
/// a reader sees the old cache or the new one, never a mix. Time is linear in the records. A blob
/// the store lacks (of a record hit in an imported cache and never fetched) is fetched from
/// `imported` first. With [`OldBlobs::Remove`], the blobs the new index does not reference are
/// removed afterwards. The whole export holds `dest`'s lock ([`crate::cache::local_dir`]).
///
/// # Errors
/// [`TransferError`] when a blob is missing from the store and `imported`, or `dest` cannot be
/// written or locked. A failed clean-up is only a warning: the new cache is complete by then.
pub fn export_to_dir(
    store: &Store,
    export: &CacheExport,
    dest: &Path,
    imported: Option<&ImportedCache>,
    old_blobs: OldBlobs,
) -> Result<ExportSummary, TransferError> {
    let blobs_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blobs_dir).map_err(io_error("create", &blobs_dir))?;
    let lock = ExportLock::acquire(dest)?;
    let artifact = CacheArtifact::of(export)?;
    let mut summary = ExportSummary {
        records: export.records.len(),
        ..ExportSummary::default()
    };
    for layer in &artifact.layers {
        let target = blobs_dir.join(layer.digest.hex());
        let present = fs::metadata(&target).is_ok_and(|meta| meta.len() == layer.size);
        if present {
            summary.blobs_present += 1;
        } else {
            ensure_blob(store, &layer.digest, imported)?;
            let mut reader = store.open_blob(&layer.digest)?;
            write_atomically(&target, |out| io::copy(&mut reader, out).map(|_| ()))?;
            summary.blobs_written += 1;
        }
    }
    write_metadata_blob(&blobs_dir, &artifact.config)?;
    let manifest_digest = write_metadata_blob(&blobs_dir, &artifact.manifest)?;
    let layout = dest.join("oci-layout");
    write_atomically(&layout, |out| {
        out.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)
    })?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "artifactType": CACHE_CONFIG_MEDIA_TYPE,
            "digest": manifest_digest.to_string(),
            "size": artifact.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "cache" },
        }],
    });
    let index_bytes = to_json(&index, "encoding the cache index")?;
    write_atomically(&dest.join("index.json"), |out| out.write_all(&index_bytes))?;
    if old_blobs == OldBlobs::Remove {
        // Computed from the index on disk, not from this export: whatever it lists is kept.
        let cleaned = local_dir::referenced_blobs(dest).and_then(|referenced| {
            local_dir::remove_unreferenced(dest, &referenced, lock.started())
        });
        match cleaned {
            Ok(clean_up) => {
                summary.blobs_removed = clean_up.removed;
                tracing::debug!(?clean_up, dest = %dest.display(), "removed old cache blobs");
            }
            Err(error) => tracing::warn!(%error, "not removing old blobs from the cache dir"),
        }
    }
    drop(lock);
    Ok(summary)
}

/// Pushes `records` and their layer blobs to the registry tag `reference` (normalised, see
/// [`CacheTo::Registry`]) as an OCI manifest. A blob the repository already has — from an
/// earlier export or the pushed image — is not uploaded again (nor fetched from `imported` when
/// the store lacks it); the manifest is put last.
///
/// # Errors
/// [`TransferError`] when a blob is missing from the store and `imported`, or the registry
/// refuses.
pub fn export_to_registry(
    store: &Store,
    export: &CacheExport,
    reference: &str,
    imported: Option<&ImportedCache>,
) -> Result<ExportSummary, TransferError> {
    let connection = RegistryConnection::open(reference)?;
    let artifact = CacheArtifact::of(export)?;
    // The config goes through the store like every other blob, so uploads stream from a file.
    let config = store.ingest_from(&mut artifact.config.as_slice(), None)?;
    let mut summary = ExportSummary {
        records: export.records.len(),
        ..ExportSummary::default()
    };
    let registry_error = |source| TransferError::Registry {
        reference: reference.to_string(),
        source,
    };
    let client = &connection.client;
    let repo = &connection.repo;
    let runtime = &connection.runtime;
    let blobs = artifact.layers.iter().map(|layer| (&layer.digest, true));
    for (digest, is_layer) in blobs.chain([(&config.digest, false)]) {
        let present = runtime
            .block_on(client.blob_size(repo, digest, Access::Push))
            .map_err(registry_error)?
            .is_some();
        if !present {
            // Outside the runtime: fetching from a registry cache drives its own runtime.
            ensure_blob(store, digest, imported)?;
            // Fails with the store's own error (naming the blob) when it is missing.
            drop(store.open_blob(digest)?);
            runtime
                .block_on(client.upload_blob(repo, digest, &store.blob_path(digest)))
                .map_err(registry_error)?;
        }
        if is_layer {
            if present {
                summary.blobs_present += 1;
            } else {
                summary.blobs_written += 1;
            }
        }
    }
    runtime
        .block_on(client.put_manifest(repo, &connection.tag, OCI_MANIFEST, &artifact.manifest))
        .map_err(registry_error)?;
    Ok(summary)
}

/// Makes sure the store has `digest`, fetching it from `imported` when it does not.
fn ensure_blob(
    store: &Store,
    digest: &Digest,
    imported: Option<&ImportedCache>,
) -> Result<(), TransferError> {
    match imported {
        Some(imported) if !store.has_blob(digest) => imported.fetch_blob_into(store, digest),
        _ => Ok(()),
    }
}

/// One distinct layer blob of an export.
struct ArtifactLayer {
    digest: Digest,
    size: u64,
}

/// The encoded config and manifest of an export, and its distinct layer blobs.
struct CacheArtifact {
    layers: Vec<ArtifactLayer>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl CacheArtifact {
    fn of(export: &CacheExport) -> Result<CacheArtifact, TransferError> {
        let mut layers = Vec::new();
        let mut descriptors = Vec::new();
        let mut seen = HashSet::new();
        let record_blobs = export.records.iter().flat_map(|record| {
            record
                .entry
                .layers
                .iter()
                .map(|layer| (&layer.blob_digest, layer.media_type.as_str(), layer.size))
        });
        let mount_blobs = export
            .cache_mounts
            .iter()
            .map(|mount| (&mount.digest, CACHE_MOUNT_MEDIA_TYPE, mount.size));
        for (digest, media_type, size) in record_blobs.chain(mount_blobs) {
            if !seen.insert(digest.clone()) {
                continue;
            }
            descriptors.push(serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": size,
            }));
            layers.push(ArtifactLayer {
                digest: digest.clone(),
                size,
            });
        }
        let config = to_json(
            &CacheConfig {
                format: CACHE_FORMAT.to_string(),
                records: export.records.clone(),
                cache_mounts: export.cache_mounts.clone(),
            },
            "encoding the cache config",
        )?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": CACHE_CONFIG_MEDIA_TYPE,
            "config": {
                "mediaType": CACHE_CONFIG_MEDIA_TYPE,
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": descriptors,
        });
        let manifest = to_json(&manifest, "encoding the cache manifest")?;
        Ok(CacheArtifact {
            layers,
            config,
            manifest,
        })
    }
}

/// A registry repository and tag with a client, and a runtime to drive it from the solver's
/// (synchronous) threads: one small runtime per cache, whose `block_on` several threads may call.
struct RegistryConnection {
    runtime: tokio::runtime::Runtime,
    client: RegistryClient,
    repo: Repository,
    tag: String,
    reference: String,
}

impl RegistryConnection {
    /// Credentials come from Docker's `config.json`, as for pulls and pushes.
    fn open(reference: &str) -> Result<RegistryConnection, TransferError> {
        let client_error = |message: String| TransferError::Client {
            reference: reference.to_string(),
            message,
        };
        let parsed = Reference::parse(reference).map_err(|e| client_error(e.to_string()))?;
        let config = DockerConfig::load(&DockerConfig::default_path())
            .map_err(|e| client_error(e.to_string()))?;
        let client = RegistryClient::new(std::sync::Arc::new(config), ClientOptions::default())
            .map_err(|e| client_error(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kiln-cache-transfer")
            .enable_all()
            .build()
            .map_err(|e| client_error(format!("starting the network runtime: {e}")))?;
        Ok(RegistryConnection {
            runtime,
            client,
            repo: Repository::from(&parsed),
            tag: parsed.tag_or_digest(),
            reference: reference.to_string(),
        })
    }

    fn error(&self, source: RegistryError) -> TransferError {
        TransferError::Registry {
            reference: self.reference.clone(),
            source,
        }
    }

    /// A small blob (the cache config), whole, checked against its digest.
    fn read_small_blob(&self, digest: &Digest) -> Result<Vec<u8>, TransferError> {
        self.runtime.block_on(async {
            let mut response = self
                .client
                .get_blob(&self.repo, digest, 0)
                .await
                .map_err(|e| self.error(e))?;
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| TransferError::Client {
                reference: self.reference.clone(),
                message: format!("reading blob {digest}: {e}"),
            })? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() as u64 > MAX_METADATA_BYTES {
                    return Err(TransferError::Client {
                        reference: self.reference.clone(),
                        message: format!("blob {digest} is larger than {MAX_METADATA_BYTES} bytes"),
                    });
                }
            }
            if &Digest::of(&bytes) != digest {
                return Err(TransferError::Client {
                    reference: self.reference.clone(),
                    message: format!("blob {digest} does not match its digest"),
                });
            }
            Ok(bytes)
        })
    }

    /// Streams the blob `digest` into the store (verified by the store's commit).
    fn fetch_into(&self, store: &Store, digest: &Digest) -> Result<(), TransferError> {
        self.runtime.block_on(async {
            let mut response = self
                .client
                .get_blob(&self.repo, digest, 0)
                .await
                .map_err(|e| self.error(e))?;
            let mut writer = store.ingest()?;
            while let Some(chunk) = response.chunk().await.map_err(|e| TransferError::Client {
                reference: self.reference.clone(),
                message: format!("reading blob {digest}: {e}"),
            })? {
                writer
                    .write_all(&chunk)
                    .map_err(|source| TransferError::Io {
                        action: "write",
                        path: store.root().join("tmp"),
                        source,
                    })?;
            }
            writer.commit(Some(digest))?;
            Ok(())
        })
    }
}

fn to_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, TransferError> {
    serde_json::to_vec(value).map_err(|source| TransferError::Json {
        what: what.to_string(),
        source,
    })
}

fn write_metadata_blob(blobs_dir: &Path, bytes: &[u8]) -> Result<Digest, TransferError> {
    let digest = Digest::of(bytes);
    let target = blobs_dir.join(digest.hex());
    if !target.exists() {
        write_atomically(&target, |out| out.write_all(bytes))?;
    }
    Ok(digest)
}

/// Writes `path` through a temp file beside it, fsynced, then renamed over it.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> Result<(), TransferError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(
        ".{name}{}{}",
        local_dir::TEMP_MARKER,
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temp).map_err(io_error("create", &temp))?;
        write(&mut file).map_err(io_error("write", &temp))?;
        file.sync_all().map_err(io_error("sync", &temp))?;
        fs::rename(&temp, path).map_err(io_error("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Finds a cache record for a key the store does not have (the solver's hook on a local miss).
pub trait CacheImport: Send + Sync {
    /// The record under `key` from an imported cache when every blob of its chain is in `store`
    /// or available from that cache (checked, not fetched), with its original `created_ns`.
    fn find(&self, store: &Store, key: &str) -> Option<CacheEntry>;

    /// The record under `key` from an imported cache, with every blob and layer its result needs
    /// now in `store` and the record saved there; `None` when no imported cache has `key`.
    ///
    /// # Errors
    /// [`TransferError`] when the record's blobs cannot be fetched or extracted (the caller treats
    /// it as a miss and warns).
    fn import(&self, store: &Store, key: &str) -> Result<Option<CacheEntry>, TransferError>;

    /// Which cache the record under `key` comes from, as the user named it (a registry
    /// reference, an image, or a directory), for `--explain`; `None` when unknown.
    fn origin(&self, key: &str) -> Option<String> {
        let _ = key;
        None
    }
}

/// Where the blobs of an imported cache come from.
enum BlobSource {
    /// `blobs/sha256/<hex>` under an OCI layout dir.
    LocalDir(PathBuf),
    /// A registry repository.
    Registry(Box<RegistryConnection>),
}

/// The records of every `--cache-from`, read up front; blobs are fetched on a hit.
#[derive(Default)]
pub struct ImportedCache {
    sources: Vec<BlobSource>,
    /// How the user named each source (same index as `sources`).
    origins: Vec<String>,
    /// Key → (record, index into `sources`); the first cache to list a key wins.
    records: HashMap<String, (ExportedRecord, usize)>,
    /// The store cache mounts are imported into (see [`ImportedCache::for_store`]).
    mount_store: Option<Store>,
    /// Which source to fetch each layer blob from (the first cache listing it).
    blob_sources: HashMap<Digest, usize>,
    /// Keys of the records whose result's top layer has this chain id.
    by_top_chain: HashMap<Digest, Vec<String>>,
    /// Whether a source has a blob, by (source, digest), once asked.
    available: std::sync::Mutex<HashMap<(usize, Digest), bool>>,
}

impl ImportedCache {
    /// No caches; cache mounts in caches added later are not imported.
    pub fn new() -> ImportedCache {
        ImportedCache::default()
    }

    /// No caches; the cache mounts of caches added later are unpacked into `store`.
    pub fn for_store(store: &Store) -> ImportedCache {
        ImportedCache {
            mount_store: Some(store.clone()),
            ..ImportedCache::default()
        }
    }

    /// How many records the imported caches hold.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no records were imported.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether an imported cache has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.records.contains_key(key)
    }

    /// Reads the records of the cache `from` describes (not its blobs) and returns how many it has.
    ///
    /// # Errors
    /// [`TransferError`] when the cache is missing, unreadable or of another format; nothing is
    /// added then.
    pub fn add(&mut self, from: &CacheFrom) -> Result<usize, TransferError> {
        let (added, origin) = match from {
            CacheFrom::Local { src } => (self.add_local_dir(src), src.display().to_string()),
            CacheFrom::Registry { reference } => (self.add_registry(reference), reference.clone()),
            CacheFrom::Image { reference } => (self.add_image(reference), reference.clone()),
        };
        // A source is pushed only once its records are read; the origins follow it.
        self.origins.resize(self.sources.len(), origin);
        added
    }

    /// The inline cache of the image `reference` (a single-platform manifest, or this host's
    /// platform in an index).
    fn add_image(&mut self, reference: &str) -> Result<usize, TransferError> {
        let connection = RegistryConnection::open(reference)?;
        let json_error = |what: &str| {
            let what = format!("decoding the {what} of {reference}");
            move |source| TransferError::Json { what, source }
        };
        let mut fetched = connection
            .runtime
            .block_on(
                connection
                    .client
                    .get_manifest(&connection.repo, &connection.tag),
            )
            .map_err(|e| connection.error(e))?;
        if fetched.media_type.contains("index") || fetched.media_type.contains("list") {
            let index: OciImageIndex =
                serde_json::from_slice(&fetched.bytes).map_err(json_error("index"))?;
            let architecture = host_architecture();
            let chosen = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
                })
                .ok_or_else(|| TransferError::Format {
                    path: PathBuf::from(reference),
                    reason: format!("the index has no linux/{architecture} image"),
                })?;
            fetched = connection
                .runtime
                .block_on(
                    connection
                        .client
                        .get_manifest(&connection.repo, &chosen.digest.to_string()),
                )
                .map_err(|e| connection.error(e))?;
        }
        let manifest: OciManifest =
            serde_json::from_slice(&fetched.bytes).map_err(json_error("manifest"))?;
        let bytes = connection.read_small_blob(&manifest.config.digest)?;
        let mut image_config: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(json_error("image config"))?;
        let inline =
            image_config
                .remove(INLINE_CACHE_FIELD)
                .ok_or_else(|| TransferError::Format {
                    path: PathBuf::from(reference),
                    reason:
                        "the image carries no inline cache (build it with --cache-to type=inline)"
                            .to_string(),
                })?;
        let config: CacheConfig =
            serde_json::from_value(inline).map_err(json_error("inline cache"))?;
        self.add_config(
            config,
            PathBuf::from(reference),
            BlobSource::Registry(Box::new(connection)),
        )
    }

    fn add_registry(&mut self, reference: &str) -> Result<usize, TransferError> {
        let connection = RegistryConnection::open(reference)?;
        let fetched = connection
            .runtime
            .block_on(
                connection
                    .client
                    .get_manifest(&connection.repo, &connection.tag),
            )
            .map_err(|e| connection.error(e))?;
        let where_ = PathBuf::from(reference);
        let manifest: OciManifest =
            serde_json::from_slice(&fetched.bytes).map_err(|source| TransferError::Json {
                what: format!("decoding the manifest of {reference}"),
                source,
            })?;
        if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
            return Err(TransferError::Format {
                path: where_,
                reason: format!(
                    "the config is {}, not a kiln cache config",
                    manifest.config.media_type
                ),
            });
        }
        let bytes = connection.read_small_blob(&manifest.config.digest)?;
        let config: CacheConfig =
            serde_json::from_slice(&bytes).map_err(|source| TransferError::Json {
                what: format!("decoding the cache config of {reference}"),
                source,
            })?;
        self.add_config(config, where_, BlobSource::Registry(Box::new(connection)))
    }

    /// Adds the records of `config` (read from `path`), whose blobs come from `source`.
    fn add_config(
        &mut self,
        config: CacheConfig,
        path: PathBuf,
        source: BlobSource,
    ) -> Result<usize, TransferError> {
        if config.format != CACHE_FORMAT {
            return Err(TransferError::Format {
                path,
                reason: format!(
                    "cache format {:?} (this kiln reads {CACHE_FORMAT:?})",
                    config.format
                ),
            });
        }
        let index = self.sources.len();
        self.sources.push(source);
        let count = config.records.len();
        for mount in &config.cache_mounts {
            // One bad mount costs only its own contents.
            if let Err(error) = self.import_cache_mount(index, mount) {
                tracing::warn!(%error, mount = mount.name, "could not import a cache mount");
            }
        }
        for record in config.records {
            if self.records.contains_key(&record.key) {
                continue;
            }
            for layer in &record.entry.layers {
                self.blob_sources
                    .entry(layer.blob_digest.clone())
                    .or_insert(index);
            }
            if let Some(top) = record.entry.layers.last() {
                self.by_top_chain
                    .entry(top.chain_id.clone())
                    .or_default()
                    .push(record.key.clone());
            }
            self.records.insert(record.key.clone(), (record, index));
        }
        Ok(count)
    }

    fn add_local_dir(&mut self, dir: &Path) -> Result<usize, TransferError> {
        // Held while the index, manifest and config are read: no export replaces them meanwhile.
        let _lock = local_dir::lock_for_import(dir);
        let index_path = dir.join("index.json");
        let index: OciIndex = read_json(&index_path, None)?;
        let blobs_dir = dir.join("blobs").join("sha256");
        let descriptor = index
            .manifests
            .iter()
            .find(|descriptor| {
                descriptor.media_type == OCI_MANIFEST
                    && descriptor.artifact_type.as_deref() == Some(CACHE_CONFIG_MEDIA_TYPE)
            })
            .ok_or_else(|| TransferError::Format {
                path: index_path.clone(),
                reason: "lists no kiln cache manifest".to_string(),
            })?;
        let manifest_path = blobs_dir.join(descriptor.digest.hex());
        let manifest: OciManifest = read_json(&manifest_path, Some(&descriptor.digest))?;
        if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
            return Err(TransferError::Format {
                path: manifest_path,
                reason: format!(
                    "the config is {}, not a kiln cache config",
                    manifest.config.media_type
                ),
            });
        }
        let config_path = blobs_dir.join(manifest.config.digest.hex());
        let config: CacheConfig = read_json(&config_path, Some(&manifest.config.digest))?;
        self.add_config(config, config_path, BlobSource::LocalDir(blobs_dir))
    }

    fn fetch_blob(
        &self,
        store: &Store,
        source: usize,
        digest: &Digest,
    ) -> Result<(), TransferError> {
        match &self.sources[source] {
            BlobSource::LocalDir(blobs_dir) => {
                let path = blobs_dir.join(digest.hex());
                let mut file = fs::File::open(&path).map_err(io_error("open cache blob", &path))?;
                store.ingest_from(&mut file, Some(digest))?;
                Ok(())
            }
            BlobSource::Registry(connection) => connection.fetch_into(store, digest),
        }
    }

    /// Unpacks an exported cache mount into the store's cache mount dir of the same name, unless
    /// that dir exists (local contents win). Cache mounts are imported with the records, not
    /// lazily: which RUN steps will run is not known yet.
    fn import_cache_mount(
        &self,
        source: usize,
        mount: &ExportedCacheMount,
    ) -> Result<(), TransferError> {
        let Some(store) = &self.mount_store else {
            return Ok(());
        };
        if !is_cache_mount_name(&mount.name) {
            return Err(TransferError::Format {
                path: PathBuf::from(&mount.name),
                reason: "not a cache mount name".to_string(),
            });
        }
        let mounts_dir = store.layout().cache_mounts_dir();
        let target = mounts_dir.join(&mount.name);
        if target.exists() {
            return Ok(());
        }
        if !store.has_blob(&mount.digest) {
            self.fetch_blob(store, source, &mount.digest)?;
        }
        fs::create_dir_all(&mounts_dir).map_err(io_error("create", &mounts_dir))?;
        // Unpacked beside its final place, then renamed: a RUN never sees half a cache.
        let temp = mounts_dir.join(format!(".import-{}-{}", mount.name, std::process::id()));
        let unpack = || -> Result<(), TransferError> {
            fs::create_dir(&temp).map_err(io_error("create", &temp))?;
            let blob = store.open_blob(&mount.digest)?;
            let options = ApplyOptions {
                whiteouts: WhiteoutMode::OverlayLower,
                chown: nix::unistd::geteuid().is_root(),
            };
            apply_layer(blob, &temp, &options).map_err(|error| TransferError::Io {
                action: "unpack cache mount into",
                path: temp.clone(),
                source: io::Error::other(error),
            })?;
            match fs::rename(&temp, &target) {
                Ok(()) => Ok(()),
                // Another build created it meanwhile: theirs wins.
                Err(_) if target.exists() => Err(TransferError::Format {
                    path: target.clone(),
                    reason: "created by another build meanwhile".to_string(),
                }),
                Err(error) => Err(io_error("rename into place", &target)(error)),
            }
        };
        let result = unpack();
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result
    }

    /// Whether the cache `source` has the blob `digest` of `size` bytes (memoised: a registry is
    /// asked once per blob).
    fn source_has_blob(&self, source: usize, digest: &Digest, size: u64) -> bool {
        let memo_key = (source, digest.clone());
        if let Some(&known) = self
            .available
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&memo_key)
        {
            return known;
        }
        let available = match &self.sources[source] {
            BlobSource::LocalDir(blobs_dir) => fs::metadata(blobs_dir.join(digest.hex()))
                .is_ok_and(|meta| meta.is_file() && meta.len() == size),
            BlobSource::Registry(connection) => connection
                .runtime
                .block_on(
                    connection
                        .client
                        .blob_size(&connection.repo, digest, Access::Pull),
                )
                .is_ok_and(|found| found == Some(size)),
        };
        self.available
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(memo_key, available);
        available
    }

    /// The imported record under `key` (for exporting a record this build hit but never
    /// fetched).
    pub fn record(&self, key: &str) -> Option<&ExportedRecord> {
        self.records.get(key).map(|(record, _)| record)
    }

    /// Copies the blob `digest` into `store` from the first imported cache that has it.
    ///
    /// # Errors
    /// [`TransferError::Format`] when no imported cache lists it; the fetch's own error otherwise.
    pub fn fetch_blob_into(&self, store: &Store, digest: &Digest) -> Result<(), TransferError> {
        match self.blob_sources.get(digest) {
            Some(&source) => self.fetch_blob(store, source, digest),
            None => Err(TransferError::Format {
                path: PathBuf::from(digest.to_string()),
                reason: "no imported cache has this blob".to_string(),
            }),
        }
    }
}

impl CacheImport for ImportedCache {
    fn origin(&self, key: &str) -> Option<String> {
        let (_, source) = self.records.get(key)?;
        self.origins.get(*source).cloned()
    }

    fn find(&self, store: &Store, key: &str) -> Option<CacheEntry> {
        let (record, source) = self.records.get(key)?;
        let available = record.entry.layers.iter().all(|layer| {
            store.has_blob(&layer.blob_digest)
                || self.source_has_blob(*source, &layer.blob_digest, layer.size)
        });
        available.then(|| CacheEntry {
            created_ns: record.created_ns,
            ..record.entry.clone()
        })
    }

    fn import(&self, store: &Store, key: &str) -> Result<Option<CacheEntry>, TransferError> {
        let Some((record, source)) = self.records.get(key) else {
            return Ok(None);
        };
        let mut manifest_layers = Vec::with_capacity(record.entry.layers.len());
        for layer in &record.entry.layers {
            if !store.has_blob(&layer.blob_digest) {
                self.fetch_blob(store, *source, &layer.blob_digest)?;
            }
            manifest_layers.push(ManifestLayer {
                blob_digest: layer.blob_digest.clone(),
                diff_id: layer.diff_id.clone(),
                media_type: layer.media_type.clone(),
                size: layer.size,
            });
        }
        let chain =
            ensure_extracted(store, &manifest_layers).map_err(|source| TransferError::Extract {
                key: key.to_string(),
                source: Box::new(source),
            })?;
        let consistent = chain
            .iter()
            .zip(&record.entry.layers)
            .all(|(layer, recorded)| layer.chain_id == recorded.chain_id);
        if !consistent {
            return Err(TransferError::Format {
                path: PathBuf::from(key),
                reason: "the record's chain ids do not match its diff ids".to_string(),
            });
        }
        // Kept locally so the next build hits without the imported cache — with every other
        // imported record whose result is a prefix of this chain (the steps before it that hit
        // without being fetched): their layers are all in the store now.
        record.entry.save(store, key, &[])?;
        for layer in &chain {
            for other in self.by_top_chain.get(&layer.chain_id).into_iter().flatten() {
                if other != key
                    && let Some((prefix, _)) = self.records.get(other)
                {
                    prefix.entry.save(store, other, &[])?;
                }
            }
        }
        Ok(Some(CacheEntry {
            created_ns: record.created_ns,
            ..record.entry.clone()
        }))
    }
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    media_type: String,
    #[serde(default)]
    artifact_type: Option<String>,
    digest: Digest,
}

#[derive(Deserialize)]
struct OciImageIndex {
    manifests: Vec<OciIndexEntry>,
}

#[derive(Deserialize)]
struct OciIndexEntry {
    digest: Digest,
    #[serde(default)]
    platform: Option<OciPlatform>,
}

#[derive(Deserialize)]
struct OciPlatform {
    os: String,
    architecture: String,
}

/// This host's architecture as OCI names it.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[derive(Deserialize)]
struct OciManifest {
    config: OciDescriptor,
}

/// Reads and decodes a small JSON file (at most [`MAX_METADATA_BYTES`]), checking its digest when
/// one is expected. Shared with the local cache directory's clean-up.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: Option<&Digest>,
) -> Result<T, TransferError> {
    let file = fs::File::open(path).map_err(io_error("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(TransferError::Format {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_METADATA_BYTES} bytes"),
        });
    }
    if let Some(expected) = expected {
        let actual = Digest::of(&bytes);
        if &actual != expected {
            return Err(TransferError::Format {
                path: path.to_path_buf(),
                reason: format!("content is {actual}, expected {expected}"),
            });
        }
    }
    serde_json::from_slice(&bytes).map_err(|source| TransferError::Json {
        what: format!("decoding {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_options_parse_like_buildx() {
        assert_eq!(
            CacheTo::parse("type=local,dest=/tmp/c,mode=max").unwrap(),
            CacheTo::Local {
                dest: "/tmp/c".into(),
                mode: ExportMode::Max,
                cache_mounts: true,
                old_blobs: OldBlobs::Remove,
            }
        );
        assert_eq!(
            CacheTo::parse("type=local,dest=d").unwrap(),
            CacheTo::Local {
                dest: "d".into(),
                mode: ExportMode::Min,
                cache_mounts: false,
                old_blobs: OldBlobs::Remove,
            }
        );
        assert!(CacheTo::parse("type=local").is_err());
        assert!(CacheTo::parse("type=local,dest=d,mode=all").is_err());
        assert_eq!(
            CacheTo::parse("type=local,dest=d,mode=max,cache-mounts=false").unwrap(),
            CacheTo::Local {
                dest: "d".into(),
                mode: ExportMode::Max,
                cache_mounts: false,
                old_blobs: OldBlobs::Remove,
            }
        );
        assert!(CacheTo::parse("type=local,dest=d,cache-mounts=yes").is_err());
        assert_eq!(
            CacheTo::parse("type=local,dest=d,reset=false").unwrap(),
            CacheTo::Local {
                dest: "d".into(),
                mode: ExportMode::Min,
                cache_mounts: false,
                old_blobs: OldBlobs::Keep,
            }
        );
        assert!(CacheTo::parse("type=local,dest=d,reset=maybe").is_err());
        assert!(CacheTo::parse("type=registry,ref=r,reset=true").is_err());
        assert!(CacheTo::parse("type=local,dest=d,colour=blue").is_err());
        assert!(CacheTo::parse("dest=d").is_err());
        assert_eq!(
            CacheFrom::parse("type=local,src=/c").unwrap(),
            CacheFrom::Local { src: "/c".into() }
        );
        assert!(CacheFrom::parse("type=local,dest=/c").is_err());
        assert!(CacheFrom::parse("type=gha,url=x").is_err());
        assert_eq!(
            CacheTo::parse("type=registry,ref=localhost:5000/app:cache,mode=max").unwrap(),
            CacheTo::Registry {
                reference: "localhost:5000/app:cache".into(),
                mode: ExportMode::Max,
                cache_mounts: true,
            }
        );
        assert_eq!(
            CacheFrom::parse("type=registry,ref=app").unwrap(),
            CacheFrom::Registry {
                reference: "docker.io/library/app:latest".into()
            }
        );
        assert!(CacheFrom::parse("type=registry").is_err());
        assert_eq!(CacheTo::parse("type=inline").unwrap(), CacheTo::Inline);
        assert!(CacheTo::parse("type=inline,mode=max").is_err());
        assert_eq!(
            CacheFrom::parse("localhost:5000/app").unwrap(),
            CacheFrom::Image {
                reference: "localhost:5000/app:latest".into()
            }
        );
        assert!(CacheTo::parse("type=registry,ref=app@sha256:0000").is_err());
    }

    #[test]
    fn a_missing_or_foreign_cache_dir_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut imported = ImportedCache::new();
        let error = imported
            .add(&CacheFrom::Local {
                src: dir.path().join("nothing"),
            })
            .unwrap_err();
        assert!(error.to_string().contains("index.json"), "{error}");
        fs::write(
            dir.path().join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let error = imported
            .add(&CacheFrom::Local {
                src: dir.path().to_path_buf(),
            })
            .unwrap_err();
        assert!(error.to_string().contains("no kiln cache"), "{error}");
        assert!(imported.is_empty());
    }
}

//! Cache records in the store, and the store as the stat cache of context checksums.
//!
//! A record (`kiln.v1:<hex>` → [`CacheEntry`]) holds the step's result as a layer chain (diff ids,
//! chain ids, blobs with media types and sizes) and the [`KeyComponents`] behind the key; its
//! store references are every layer and blob of the chain, so prune keeps what a hit needs.
//!
//! The per-path entry lists of the step's local reads (megabytes for a large context) serve only
//! to explain a miss, so they are kept apart: zstd-compressed JSON in a content blob of the store
//! that the record references (identical lists are stored once; prune keeps the blob as long as
//! the record; reading it writes nothing, unlike a database row, which SQLite rewrites whole when
//! a read marks it as used). A hit reads the small record alone ([`CacheEntry::load_result`]); an
//! export reads both ([`CacheEntry::load`]); a miss explanation reads the lists' JSON only
//! ([`CacheEntry::load_previous_at_positions`]). Records written before (lists inline, or in a
//! `kiln.v1.entries:<hex>` record of their own) still load.
//!
//! A second, small record per step *position* (`kiln.v1.pos:<hex>` of the step's description and
//! the local directories it may read) points to the latest key computed there: on a miss it finds
//! the previous build of "the same step" to compare components with.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_context::{CachedDigest, CachedXattrs, ContentChecksum, EntryRecord, StatCache, StatKey};
use kiln_image::Digest;
use kiln_store::{CacheValueKind, Resource, StatCacheEntry, StatXattrs, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cache::key::{ContentComponent, KeyComponents};
use crate::result::Layer;

/// Reading or writing a cache record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cache record {key}: {source}")]
    Store {
        key: String,
        /// Boxed: store errors are large and this one travels through every lookup.
        #[source]
        source: Box<StoreError>,
    },
    #[error("encoding cache record {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("compressing cache record {key}: {source}")]
    Compress {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

/// One layer of a recorded result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub blob_digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What a cache record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The step's description when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub components: KeyComponents,
    /// The result chain, bottom first.
    pub layers: Vec<LayerRecord>,
    /// When the record was first written, ns since the epoch (from the store, not the JSON; 0 for
    /// an entry not loaded from the store).
    #[serde(skip)]
    pub created_ns: i64,
}

/// zstd level of the entry lists: fast, and hex digests do not compress much further anyway.
const ENTRY_LISTS_ZSTD_LEVEL: i32 = 1;

/// The previous build of a step (see [`CacheEntry::load_previous_at_positions`]): its record,
/// with the per-path entry lists still in the store when they are kept apart.
#[derive(Debug)]
pub struct PreviousBuild {
    /// The record; its entry lists are empty when they are kept apart.
    pub entry: CacheEntry,
    entry_lists: Option<EntryListsAt>,
}

/// Where a record's entry lists are kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryListsAt {
    /// A content blob of the store (zstd-compressed JSON) that the record references, so prune
    /// keeps it as long as the record, and reading it writes nothing.
    Blob(Digest),
    /// A cache record of its own (`kiln.v1.entries:<hex>`), as kiln wrote them before.
    Record(String),
}

impl PreviousBuild {
    /// The entry lists' JSON (one array of entry records per local read, in the order of the
    /// record's contents), decompressed; `None` when they were stored inline (they are then in
    /// [`PreviousBuild::entry`]), are gone (pruned) or cannot be read — an explanation then names
    /// no paths.
    pub fn entry_lists_json(&self, store: &Store) -> Option<Vec<u8>> {
        match read_entry_lists_json(store, self.entry_lists.as_ref()?) {
            Ok(json) => json,
            Err(error) => {
                tracing::debug!(%error, "reading cache record entry lists");
                None
            }
        }
    }
}

/// The decompressed JSON of the entry lists at `at` (`None`, logged, when they are gone or not
/// zstd).
fn read_entry_lists_json(store: &Store, at: &EntryListsAt) -> Result<Option<Vec<u8>>, RecordError> {
    match at {
        EntryListsAt::Record(entries_key) => {
            let record = store
                .get_encoded_cache_record(entries_key)
                .map_err(|source| RecordError::Store {
                    key: entries_key.clone(),
                    source: Box::new(source),
                })?;
            Ok(entry_lists_json(entries_key, record))
        }
        EntryListsAt::Blob(digest) => {
            let reader = match store.open_blob(digest) {
                Ok(reader) => reader,
                Err(error) => {
                    tracing::debug!(%digest, %error, "the entry lists of a cache record are gone");
                    return Ok(None);
                }
            };
            // The reader checks the digest at its end: a damaged blob fails here.
            match zstd::stream::decode_all(reader) {
                Ok(json) => Ok(Some(json)),
                Err(error) => {
                    tracing::debug!(%digest, %error, "ignoring unreadable cache record entry lists");
                    Ok(None)
                }
            }
        }
    }
}

/// The decompressed JSON of the entry lists record `entries_key` (`None`, logged, when it is
/// gone or not zstd).
fn entry_lists_json(
    entries_key: &str,
    record: Option<kiln_store::EncodedCacheRecord>,
) -> Option<Vec<u8>> {
    let Some(record) = record else {
        tracing::debug!(entries_key, "the entry lists of a cache record are gone");
        return None;
    };
    match zstd::stream::decode_all(record.bytes.as_slice()) {
        Ok(json) => Some(json),
        Err(error) => {
            tracing::debug!(entries_key, %error, "ignoring undecodable cache record entry lists");
            None
        }
    }
}

/// A record as stored: the entry, with the entry lists of its local reads emptied when they are
/// kept in the record `entry_lists`.
#[derive(Deserialize)]
struct StoredEntry {
    #[serde(default)]
    description: Option<String>,
    components: KeyComponents,
    layers: Vec<LayerRecord>,
    /// Entry lists in a cache record of their own (how kiln stored them before blobs).
    #[serde(default)]
    entry_lists: Option<String>,
    #[serde(default)]
    entry_lists_blob: Option<Digest>,
}

impl StoredEntry {
    fn entry_lists_at(&self) -> Option<EntryListsAt> {
        match (&self.entry_lists_blob, &self.entry_lists) {
            (Some(digest), _) => Some(EntryListsAt::Blob(digest.clone())),
            (None, Some(key)) => Some(EntryListsAt::Record(key.clone())),
            (None, None) => None,
        }
    }
}

/// [`StoredEntry`] borrowed, for writing.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    components: &'a KeyComponents,
    layers: &'a [LayerRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_lists_blob: Option<&'a Digest>,
}

#[derive(Serialize, Deserialize)]
struct PositionEntry {
    key: String,
}

impl CacheEntry {
    /// A record of `chain` computed from `components`.
    pub fn new(description: Option<String>, components: KeyComponents, chain: &[Layer]) -> Self {
        CacheEntry {
            description,
            components,
            layers: chain
                .iter()
                .map(|layer| LayerRecord {
                    diff_id: layer.diff_id.clone(),
                    chain_id: layer.chain_id.clone(),
                    blob_digest: layer.blob_digest.clone(),
                    media_type: layer.media_type.clone(),
                    size: layer.size,
                })
                .collect(),
            created_ns: 0,
        }
    }

    /// The record under `key`, if there is one that decodes (an undecodable record, e.g. from
    /// another kiln version, is treated as absent), with its per-path entry lists — what a miss
    /// explanation and an export need. A hit needs only [`CacheEntry::load_result`].
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn load(store: &Store, key: &str) -> Result<Option<CacheEntry>, RecordError> {
        let Some((stored, mut entry)) = CacheEntry::load_stored(store, key)? else {
            return Ok(None);
        };
        if let Some(at) = &stored {
            entry.load_entry_lists(store, at)?;
        }
        Ok(Some(entry))
    }

    /// The record under `key` without the per-path entry lists of its local reads (they are left
    /// empty): the result chain, creation time and key components a hit needs, read from the small
    /// record alone.
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn load_result(store: &Store, key: &str) -> Result<Option<CacheEntry>, RecordError> {
        let Some((entry_lists, entry)) = CacheEntry::load_stored(store, key)? else {
            return Ok(None);
        };
        // Lists in a record of their own are marked as used with this one, so "unused for N
        // days" pruning keeps them together (a blob is kept by this record's reference).
        if let Some(EntryListsAt::Record(entry_lists)) = entry_lists
            && let Err(error) = store.touch_cache_record(&entry_lists)
        {
            tracing::debug!(%error, entry_lists, "could not mark cache record entry lists as used");
        }
        Ok(Some(entry))
    }

    /// The record under `key` as stored, and where its entry lists are if they are kept apart
    /// (records written before the split hold them inline).
    fn load_stored(
        store: &Store,
        key: &str,
    ) -> Result<Option<(Option<EntryListsAt>, CacheEntry)>, RecordError> {
        let record = store
            .get_encoded_cache_record(key)
            .map_err(|source| RecordError::Store {
                key: key.to_string(),
                source: Box::new(source),
            })?;
        let Some(record) = record.filter(|record| record.kind == CacheValueKind::Json) else {
            return Ok(None);
        };
        match serde_json::from_slice::<StoredEntry>(&record.bytes) {
            Ok(stored) => Ok(Some((
                stored.entry_lists_at(),
                CacheEntry {
                    description: stored.description,
                    components: stored.components,
                    layers: stored.layers,
                    created_ns: record.created_ns,
                },
            ))),
            Err(error) => {
                tracing::debug!(key, %error, "ignoring an undecodable cache record");
                Ok(None)
            }
        }
    }

    /// Fills in the per-path entry lists of this entry's local reads from `at`. Missing or
    /// undecodable ones (pruned, another kiln version) leave them empty: the explanation of a
    /// miss then names no paths, nothing else depends on them.
    fn load_entry_lists(&mut self, store: &Store, at: &EntryListsAt) -> Result<(), RecordError> {
        let Some(json) = read_entry_lists_json(store, at)? else {
            return Ok(());
        };
        let decoded = serde_json::from_slice::<Vec<Vec<EntryRecord>>>(&json);
        match decoded {
            Ok(lists) if lists.len() == self.components.contents.len() => {
                for (content, entries) in self.components.contents.iter_mut().zip(lists) {
                    content.checksum.entries = entries;
                }
            }
            Ok(_) => tracing::debug!(?at, "cache record entry lists do not match"),
            Err(error) => {
                tracing::debug!(?at, %error, "ignoring undecodable cache record entry lists");
            }
        }
        Ok(())
    }

    /// Stores this entry under `key` with references to its layers and blobs, and points the
    /// position records `positions` (see [`position_keys`]) at it; returns the record's creation
    /// time (an existing record keeps its own).
    ///
    /// The per-path entry lists of the local reads (megabytes for a large context, needed only to
    /// explain a miss) go to a blob of their own ([`CacheEntry::save_entry_lists`]) that the
    /// record references: identical lists are stored once and a hit never reads them.
    ///
    /// # Errors
    /// [`RecordError`] when encoding or the store fails.
    pub fn save(&self, store: &Store, key: &str, positions: &[String]) -> Result<i64, RecordError> {
        let entry_lists = CacheEntry::save_entry_lists(store, &self.components)?;
        self.save_with_entry_lists(store, key, positions, entry_lists.as_ref())
    }

    /// [`CacheEntry::save`] with the entry lists already written by
    /// [`CacheEntry::save_entry_lists`] (as the blob `entry_lists`; `None` when there were
    /// none): a solve writes them while the step runs, off the critical path.
    ///
    /// # Errors
    /// [`RecordError`] when encoding or the store fails.
    pub fn save_with_entry_lists(
        &self,
        store: &Store,
        key: &str,
        positions: &[String],
        entry_lists: Option<&Digest>,
    ) -> Result<i64, RecordError> {
        let store_error = |key: &str| {
            let key = key.to_string();
            move |source| RecordError::Store {
                key,
                source: Box::new(source),
            }
        };
        // Built field by field: cloning the components would copy the very lists kept apart.
        let stripped;
        let components = match entry_lists {
            Some(_) => {
                stripped = without_entry_lists(&self.components);
                &stripped
            }
            None => &self.components,
        };
        let stored = StoredEntryRef {
            description: self.description.as_deref(),
            components,
            layers: &self.layers,
            entry_lists_blob: entry_lists,
        };
        let json = serde_json::to_vec(&stored).map_err(|source| RecordError::Encode {
            key: key.to_string(),
            source,
        })?;
        let mut refs = Vec::with_capacity(self.layers.len() * 2 + 1);
        for layer in &self.layers {
            refs.push(Resource::Layer(layer.chain_id.clone()));
            refs.push(Resource::Blob(layer.blob_digest.clone()));
        }
        // Keeps the lists' blob for as long as the record (prune removes unreferenced blobs).
        refs.extend(entry_lists.cloned().map(Resource::Blob));
        let created_ns = store
            .put_encoded_cache_record(key, CacheValueKind::Json, &json, &refs)
            .map_err(store_error(key))?;
        for position in positions {
            let pointer = serde_json::to_vec(&PositionEntry {
                key: key.to_string(),
            })
            .map_err(|source| RecordError::Encode {
                key: position.clone(),
                source,
            })?;
            store
                .put_encoded_cache_record(position, CacheValueKind::Json, &pointer, &[])
                .map_err(store_error(position))?;
        }
        Ok(created_ns)
    }

    /// Writes the entry lists of the local reads of `components` (one JSON array of entry
    /// records per read, zstd-compressed, streamed) as a content blob of the store; returns its
    /// digest (`None` when there are no entries to keep apart). Identical lists make the same
    /// blob. Depends on the key components only, so it can run while the step does; until a
    /// record references the blob, it is as unreferenced as any fresh blob of a running build.
    ///
    /// # Errors
    /// [`RecordError`] when encoding, compressing or the store fails.
    pub fn save_entry_lists(
        store: &Store,
        components: &KeyComponents,
    ) -> Result<Option<Digest>, RecordError> {
        const WHAT: &str = "the entry lists of a cache record";
        let contents = &components.contents;
        if contents
            .iter()
            .all(|content| content.checksum.entries.is_empty())
        {
            return Ok(None);
        }
        let store_error = |source| RecordError::Store {
            key: WHAT.to_string(),
            source: Box::new(source),
        };
        let compress_error = |source| RecordError::Compress {
            key: WHAT.to_string(),
            source,
        };
        let lists: Vec<&[EntryRecord]> = contents
            .iter()
            .map(|content| content.checksum.entries.as_slice())
            .collect();
        let blob = store.ingest().map_err(store_error)?;
        let encoder =
            zstd::stream::Encoder::new(blob, ENTRY_LISTS_ZSTD_LEVEL).map_err(compress_error)?;
        // serde_json writes piece by piece: buffered, and flushed explicitly to see its errors.
        let mut writer = std::io::BufWriter::new(encoder);
        serde_json::to_writer(&mut writer, &lists).map_err(|source| RecordError::Encode {
            key: WHAT.to_string(),
            source,
        })?;
        let encoder = writer
            .into_inner()
            .map_err(|error| compress_error(error.into_error()))?;
        let blob = encoder.finish().map_err(compress_error)?;
        let written = blob.commit(None).map_err(store_error)?;
        Ok(Some(written.digest))
    }

    /// The record last saved at the first of `positions` that has one, with its entry lists.
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn load_at_positions(
        store: &Store,
        positions: &[String],
    ) -> Result<Option<CacheEntry>, RecordError> {
        for position in positions {
            if let Some(entry) = CacheEntry::load_at_position(store, position)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Like [`CacheEntry::load_at_positions`], but with the entry lists left in the store until
    /// an explanation needs them ([`PreviousBuild::entry_lists_json`]): a miss whose reads did not
    /// change never decodes them, and one that did can compare them without building records.
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn load_previous_at_positions(
        store: &Store,
        positions: &[String],
    ) -> Result<Option<PreviousBuild>, RecordError> {
        for position in positions {
            let Some(key) = CacheEntry::key_at_position(store, position)? else {
                continue;
            };
            if let Some((entry_lists, entry)) = CacheEntry::load_stored(store, &key)? {
                return Ok(Some(PreviousBuild { entry, entry_lists }));
            }
            return Ok(None);
        }
        Ok(None)
    }

    /// The key the position record `position` points to.
    fn key_at_position(store: &Store, position: &str) -> Result<Option<String>, RecordError> {
        let record =
            store
                .get_encoded_cache_record(position)
                .map_err(|source| RecordError::Store {
                    key: position.to_string(),
                    source: Box::new(source),
                })?;
        Ok(record.and_then(|record| {
            serde_json::from_slice::<PositionEntry>(&record.bytes)
                .ok()
                .map(|pointer| pointer.key)
        }))
    }

    fn load_at_position(store: &Store, position: &str) -> Result<Option<CacheEntry>, RecordError> {
        let record =
            store
                .get_encoded_cache_record(position)
                .map_err(|source| RecordError::Store {
                    key: position.to_string(),
                    source: Box::new(source),
                })?;
        let Some(record) = record else {
            return Ok(None);
        };
        match serde_json::from_slice::<PositionEntry>(&record.bytes) {
            Ok(pointer) => CacheEntry::load(store, &pointer.key),
            Err(_) => Ok(None),
        }
    }

    /// The recorded chain with its extracted dirs, or `None` when a blob is no longer in the store
    /// (then the step must run again).
    ///
    /// A layer whose blob is there but which was never extracted under its chain id is extracted
    /// now and committed under it: a `COPY --link` layer rebased by a merge has a new chain id
    /// (its parent changed) while its dir is still the one extracted under the old id, so the
    /// next build finds it by the new id. Extraction failing is a miss too (a warning).
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn restore(&self, store: &Store) -> Result<Option<Vec<Layer>>, RecordError> {
        let mut chain = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            if !store.has_blob(&layer.blob_digest) {
                return Ok(None);
            }
            let dir = store
                .layer_path(&layer.chain_id)
                .map_err(|source| RecordError::Store {
                    key: layer.chain_id.to_string(),
                    source: Box::new(source),
                })?;
            let Some(dir) = dir else {
                return Ok(self.extract_missing_layers(store));
            };
            chain.push(Layer {
                diff_id: layer.diff_id.clone(),
                chain_id: layer.chain_id.clone(),
                dir,
                blob_digest: layer.blob_digest.clone(),
                media_type: layer.media_type.clone(),
                size: layer.size,
            });
        }
        Ok(Some(chain))
    }
}

impl CacheEntry {
    /// The recorded chain with every layer extracted from its blob under its recorded chain id
    /// (those already extracted are kept), or `None` with a warning when that fails or gives
    /// other chain ids than the record's.
    fn extract_missing_layers(&self, store: &Store) -> Option<Vec<Layer>> {
        let manifest_layers: Vec<kiln_store::ManifestLayer> = self
            .layers
            .iter()
            .map(|layer| kiln_store::ManifestLayer {
                blob_digest: layer.blob_digest.clone(),
                diff_id: layer.diff_id.clone(),
                media_type: layer.media_type.clone(),
                size: layer.size,
            })
            .collect();
        let chain = match crate::layers::ensure_extracted(store, &manifest_layers) {
            Ok(chain) => chain,
            Err(error) => {
                tracing::warn!(%error, "could not extract a cached layer; running the step");
                return None;
            }
        };
        // Chain ids follow from diff ids alone, so a record can only disagree if it is damaged.
        let consistent = chain
            .iter()
            .zip(&self.layers)
            .all(|(layer, recorded)| layer.chain_id == recorded.chain_id);
        if !consistent {
            tracing::warn!("a cache record's chain ids do not follow from its diff ids");
            return None;
        }
        Some(chain)
    }
}

/// `components` with the per-path entry lists of its local reads left empty.
fn without_entry_lists(components: &KeyComponents) -> KeyComponents {
    KeyComponents {
        op_digest: components.op_digest.clone(),
        op: components.op.clone(),
        layer_settings: components.layer_settings.clone(),
        inputs: components.inputs.clone(),
        contents: components
            .contents
            .iter()
            .map(|content| ContentComponent {
                reads: content.reads.clone(),
                checksum: ContentChecksum {
                    digest: content.checksum.digest.clone(),
                    entries: Vec::new(),
                    stats: content.checksum.stats,
                },
            })
            .collect(),
    }
}

/// The position record keys of a step, most specific first: its description, then its step
/// slot (`[stage 3/4] RUN` in the Dockerfile `file`) for when the description itself changed (it
/// shows expanded build args). Both include the local directories of the build, so two projects
/// with a step `[2/4] RUN make` each compare with their own history.
pub fn position_keys(description: &str, file: &str, local_dirs: &[String]) -> Vec<String> {
    let slot = match description.split_once("] ") {
        Some((prefix, rest)) => {
            let keyword = rest.split_whitespace().next().unwrap_or_default();
            format!("{prefix}] {keyword}\0{file}")
        }
        None => format!("{description}\0{file}"),
    };
    [("description", description.to_string()), ("slot", slot)]
        .into_iter()
        .map(|(kind, text)| {
            let mut hasher = Sha256::new();
            hasher.update(b"kiln.cache.position.v1\n");
            hasher.update(kind.as_bytes());
            hasher.update(b"\0");
            hasher.update(text.as_bytes());
            for dir in local_dirs {
                hasher.update(b"\0");
                hasher.update(dir.as_bytes());
            }
            format!("kiln.v1.pos:{}", Digest::from_hasher(hasher).hex())
        })
        .collect()
}

/// The store's persistent stat cache behind kiln-context's [`StatCache`], for one build.
///
/// A checksum asks for all the files it selected at once ([`StatCache::get_many`]): one batch
/// (one read transaction, range scans over nearby inodes) answered in order, so the hashing
/// threads never touch the database or its lock. Entries this build records are kept in memory
/// (a later COPY of the same file in this build hits them) and written in one transaction by
/// [`StoreStatCache::flush`].
pub struct StoreStatCache<'a> {
    store: &'a Store,
    /// Entries recorded by this build, not yet written.
    recorded: Mutex<HashMap<StatKey, CachedDigest>>,
}

impl<'a> StoreStatCache<'a> {
    pub fn new(store: &'a Store) -> Self {
        StoreStatCache {
            store,
            recorded: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the buffered entries, all in one transaction. A failure only costs re-hashing next
    /// time, so it is logged, not returned.
    pub fn flush(&self) {
        let recorded = std::mem::take(&mut *self.recorded());
        let entries: Vec<(kiln_store::StatKey, StatCacheEntry)> = recorded
            .iter()
            .filter_map(|(key, digest)| Some((store_key(key), store_entry(digest)?)))
            .collect();
        if let Err(error) = self.store.put_stat_cache_entries(&entries) {
            tracing::warn!(%error, "could not record the stat cache");
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, HashMap<StatKey, CachedDigest>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn store_key(key: &StatKey) -> kiln_store::StatKey {
    kiln_store::StatKey {
        dev: key.dev,
        ino: key.ino,
        size: key.size,
        mtime_ns: key.mtime_ns,
        ctime_ns: key.ctime_ns,
    }
}

/// The store's entry as kiln-context's digest (`None` for a digest that is not a sha256).
fn cached_digest(entry: &StatCacheEntry) -> Option<CachedDigest> {
    let xattrs = match &entry.xattrs {
        StatXattrs::Unknown => CachedXattrs::Unknown,
        StatXattrs::Absent => CachedXattrs::Absent,
        StatXattrs::Digest(digest) => CachedXattrs::Digest(digest_bytes(digest)?),
    };
    Some(CachedDigest {
        sha256: digest_bytes(&entry.sha256)?,
        recorded_at_ns: entry.recorded_at_ns,
        xattrs,
    })
}

/// The 32 bytes of a digest (a build turns every file's digest back into bytes: kept simple
/// and fast).
fn digest_bytes(digest: &Digest) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let hex = digest.hex().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

impl StatCache for StoreStatCache<'_> {
    fn get_many(&self, keys: &[StatKey]) -> Vec<Option<CachedDigest>> {
        let store_keys: Vec<kiln_store::StatKey> = keys.iter().map(store_key).collect();
        let found = self
            .store
            .get_stat_cache_many(&store_keys)
            .unwrap_or_else(|error| {
                // Every file is then hashed: slower, never wrong.
                tracing::debug!(%error, "stat cache batch lookup failed");
                vec![None; keys.len()]
            });
        let recorded = self.recorded();
        keys.iter()
            .zip(found)
            .map(|(key, entry)| {
                recorded
                    .get(key)
                    .copied()
                    .or_else(|| entry.as_ref().and_then(cached_digest))
            })
            .collect()
    }

    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        if let Some(digest) = self.recorded().get(key) {
            return Some(*digest);
        }
        match self.store.get_stat_cache(&store_key(key)) {
            Ok(entry) => entry.as_ref().and_then(cached_digest),
            Err(error) => {
                tracing::debug!(%error, "stat cache lookup failed; hashing the file");
                None
            }
        }
    }

    fn put(&self, key: &StatKey, digest: CachedDigest) {
        self.recorded().insert(*key, digest);
    }
}

/// kiln-context's digest as the store's entry.
fn store_entry(digest: &CachedDigest) -> Option<StatCacheEntry> {
    let xattrs = match digest.xattrs {
        CachedXattrs::Unknown => StatXattrs::Unknown,
        CachedXattrs::Absent => StatXattrs::Absent,
        CachedXattrs::Digest(bytes) => {
            StatXattrs::Digest(Digest::from_hex(&hex::encode(bytes)).ok()?)
        }
    };
    Some(StatCacheEntry {
        sha256: Digest::from_hex(&hex::encode(digest.sha256)).ok()?,
        recorded_at_ns: digest.recorded_at_ns,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_stat_cache_round_trips_old_files_only_after_flush() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let cache = StoreStatCache::new(&store);
        let key = StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        };
        let digest = CachedDigest {
            sha256: [9; 32],
            recorded_at_ns: 100_000_000_000,
            xattrs: CachedXattrs::Digest([5; 32]),
        };
        cache.put(&key, digest);
        assert_eq!(cache.get(&key), Some(digest), "this build remembers it");
        let next_build = StoreStatCache::new(&store);
        assert_eq!(next_build.get(&key), None, "not written before flush");
        cache.flush();
        assert_eq!(StoreStatCache::new(&store).get(&key), Some(digest));
        // A file changed within the margin of the recording is never served by the store.
        let racy = StatKey {
            mtime_ns: 99_500_000_000,
            ..key
        };
        cache.put(&racy, digest);
        cache.flush();
        let later_build = StoreStatCache::new(&store);
        assert_eq!(later_build.get_many(&[racy]), vec![None]);
        assert_eq!(later_build.get(&racy), None);
        assert_eq!(StoreStatCache::new(&store).get(&racy), None);
    }

    #[test]
    fn a_batch_answers_in_order_with_this_builds_own_records_first() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let key = |ino| StatKey {
            dev: 1,
            ino,
            size: 3,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        };
        let digest = |byte| CachedDigest {
            sha256: [byte; 32],
            recorded_at_ns: 100_000_000_000,
            xattrs: CachedXattrs::Absent,
        };
        let earlier_build = StoreStatCache::new(&store);
        earlier_build.put(&key(1), digest(1));
        earlier_build.put(&key(3), digest(3));
        earlier_build.flush();

        let cache = StoreStatCache::new(&store);
        // Recorded by this build, not yet written: it wins over the store's older answer.
        cache.put(&key(3), digest(33));
        cache.put(&key(4), digest(4));
        assert_eq!(
            cache.get_many(&[key(4), key(1), key(2), key(3), key(1)]),
            vec![
                Some(digest(4)),
                Some(digest(1)),
                None,
                Some(digest(33)),
                Some(digest(1))
            ]
        );
        assert_eq!(cache.get(&key(3)), Some(digest(33)));
        cache.flush();
        assert_eq!(
            StoreStatCache::new(&store).get_many(&[key(3), key(4)]),
            vec![Some(digest(33)), Some(digest(4))]
        );
    }

    #[test]
    fn records_round_trip_and_position_points_to_the_latest() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let components = KeyComponents {
            op_digest: "ab".into(),
            op: Default::default(),
            layer_settings: String::new(),
            inputs: Vec::new(),
            contents: Vec::new(),
        };
        let entry = CacheEntry {
            description: Some("[1/1] RUN x".into()),
            components: components.clone(),
            layers: Vec::new(),
            created_ns: 0,
        };
        let positions = position_keys("[1/1] RUN x", "Dockerfile", &[]);
        entry.save(&store, "kiln.v1:1", &positions).unwrap();
        // What was saved, with the store's creation time filled in.
        let loaded = |entry: Option<CacheEntry>| {
            entry.map(|entry| {
                assert!(entry.created_ns > 0);
                CacheEntry {
                    created_ns: 0,
                    ..entry
                }
            })
        };
        assert_eq!(
            loaded(CacheEntry::load(&store, "kiln.v1:1").unwrap()),
            Some(entry.clone())
        );
        assert_eq!(CacheEntry::load(&store, "kiln.v1:2").unwrap(), None);
        let newer = CacheEntry {
            description: Some("[1/1] RUN y".into()),
            ..entry
        };
        newer.save(&store, "kiln.v1:2", &positions).unwrap();
        assert_eq!(
            loaded(CacheEntry::load_at_positions(&store, &positions).unwrap()),
            Some(newer.clone())
        );
        // A step whose description changed is still found through its slot.
        let renamed = position_keys("[1/1] RUN z", "Dockerfile", &[]);
        assert_ne!(renamed[0], positions[0]);
        assert_eq!(
            loaded(CacheEntry::load_at_positions(&store, &renamed).unwrap()),
            Some(newer)
        );
        // An empty chain restores as an empty chain.
        assert_eq!(
            CacheEntry::load(&store, "kiln.v1:1")
                .unwrap()
                .unwrap()
                .restore(&store)
                .unwrap()
                .map(|c| c.len()),
            Some(0)
        );
    }

    /// Components reading `files` (path, content) from one local source.
    fn reading(files: &[(&str, &str)]) -> KeyComponents {
        let entries = files
            .iter()
            .map(|(path, content)| {
                EntryRecord::new(
                    (*path).into(),
                    kiln_context::FileKind::File,
                    0o644,
                    0,
                    0,
                    content.len() as u64,
                    format!("sha256:{content}"),
                    String::new(),
                )
            })
            .collect();
        KeyComponents {
            op_digest: "cd".into(),
            op: Default::default(),
            layer_settings: String::new(),
            inputs: Vec::new(),
            contents: vec![crate::cache::key::ContentComponent {
                reads: "COPY tree/ -> /tree/".into(),
                checksum: kiln_context::ContentChecksum {
                    digest: Digest::from_hasher(Sha256::new_with_prefix(format!("{files:?}")))
                        .to_string(),
                    entries,
                    stats: Default::default(),
                },
            }],
        }
    }

    fn encoded_len(store: &Store, key: &str) -> usize {
        store
            .get_encoded_cache_record(key)
            .unwrap()
            .map_or(0, |record| record.bytes.len())
    }

    #[test]
    fn entry_lists_are_kept_apart_loaded_only_in_full_and_stored_once() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let files: Vec<(String, String)> = (0..200)
            .map(|i| (format!("dir/file{i}.rs"), format!("{i:064}")))
            .collect();
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let entry = CacheEntry {
            description: Some("[1/1] COPY tree/ /tree/".into()),
            components: reading(&files),
            layers: Vec::new(),
            created_ns: 0,
        };
        let created_ns = entry.save(&store, "kiln.v1:a", &[]).unwrap();
        assert!(created_ns > 0);

        // The full entry round-trips; the result alone has the lists empty and the rest intact.
        let full = CacheEntry::load(&store, "kiln.v1:a").unwrap().unwrap();
        assert_eq!(full.created_ns, created_ns);
        assert_eq!(
            CacheEntry {
                created_ns: 0,
                ..full
            },
            entry
        );
        let result = CacheEntry::load_result(&store, "kiln.v1:a")
            .unwrap()
            .unwrap();
        assert_eq!(result.created_ns, created_ns);
        assert!(result.components.contents[0].checksum.entries.is_empty());
        assert_eq!(result.components.key(), entry.components.key());
        assert_eq!(result.layers, entry.layers);

        // The record itself is small: the lists are in a compressed blob of their own.
        let inline = serde_json::to_vec(&entry).unwrap().len();
        assert!(encoded_len(&store, "kiln.v1:a") * 10 < inline);

        // A second record with the same reads shares the lists; saving again keeps the time.
        entry.save(&store, "kiln.v1:b", &[]).unwrap();
        assert_eq!(entry.save(&store, "kiln.v1:a", &[]).unwrap(), created_ns);
        let stored: StoredEntry = serde_json::from_slice(
            &store
                .get_encoded_cache_record("kiln.v1:b")
                .unwrap()
                .unwrap()
                .bytes,
        )
        .unwrap();
        let lists_blob = stored.entry_lists_blob.unwrap();
        let first: StoredEntry = serde_json::from_slice(
            &store
                .get_encoded_cache_record("kiln.v1:a")
                .unwrap()
                .unwrap()
                .bytes,
        )
        .unwrap();
        assert_eq!(first.entry_lists_blob.as_ref(), Some(&lists_blob));
        assert!(store.has_blob(&lists_blob));

        // Lists that are gone (pruned) leave them empty: only explanations lose detail.
        std::fs::remove_file(store.blob_path(&lists_blob)).unwrap();
        let degraded = CacheEntry::load(&store, "kiln.v1:a").unwrap().unwrap();
        assert!(degraded.components.contents[0].checksum.entries.is_empty());
        assert_eq!(degraded.layers, entry.layers);
    }

    #[test]
    fn records_written_with_inline_entry_lists_still_load() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let entry = CacheEntry {
            description: None,
            components: reading(&[("src/main.rs", "x")]),
            layers: Vec::new(),
            created_ns: 0,
        };
        // The format before the entry lists were split off: the whole entry as one JSON record.
        store
            .put_cache_record(
                "kiln.v1:old",
                &kiln_store::CacheValue::Json(serde_json::to_value(&entry).unwrap()),
                &[],
            )
            .unwrap();
        let loaded = CacheEntry::load(&store, "kiln.v1:old").unwrap().unwrap();
        assert_eq!(
            CacheEntry {
                created_ns: 0,
                ..loaded
            },
            entry
        );
        let result = CacheEntry::load_result(&store, "kiln.v1:old")
            .unwrap()
            .unwrap();
        assert_eq!(result.components, entry.components);
    }

    #[test]
    fn the_previous_build_leaves_its_entry_lists_in_the_store_until_asked() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let entry = CacheEntry {
            description: Some("[1/1] COPY tree/ /tree/".into()),
            components: reading(&[("src/main.rs", "x"), ("src/lib.rs", "y")]),
            layers: Vec::new(),
            created_ns: 0,
        };
        let positions = position_keys("[1/1] COPY tree/ /tree/", "Dockerfile", &[]);
        assert!(
            CacheEntry::load_previous_at_positions(&store, &positions)
                .unwrap()
                .is_none()
        );
        // Written first (as while the step runs), then the record pointing at them.
        let lists = CacheEntry::save_entry_lists(&store, &entry.components).unwrap();
        assert!(lists.is_some());
        entry
            .save_with_entry_lists(&store, "kiln.v1:p", &positions, lists.as_ref())
            .unwrap();
        let previous = CacheEntry::load_previous_at_positions(&store, &positions)
            .unwrap()
            .unwrap();
        assert!(
            previous.entry.components.contents[0]
                .checksum
                .entries
                .is_empty()
        );
        let json = previous.entry_lists_json(&store).unwrap();
        let lists: Vec<Vec<EntryRecord>> = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            lists,
            vec![entry.components.contents[0].checksum.entries.clone()]
        );
        // The full load sees the same record.
        let full = CacheEntry::load_at_positions(&store, &positions)
            .unwrap()
            .unwrap();
        assert_eq!(full.components, entry.components);
    }

    #[test]
    fn entry_lists_in_a_record_of_their_own_still_load() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let entry = CacheEntry {
            description: None,
            components: reading(&[("src/main.rs", "x")]),
            layers: Vec::new(),
            created_ns: 0,
        };
        // The format before blobs: the lists zstd-compressed in a `kiln.v1.entries:` record.
        let lists = vec![entry.components.contents[0].checksum.entries.clone()];
        let compressed =
            zstd::stream::encode_all(serde_json::to_vec(&lists).unwrap().as_slice(), 1).unwrap();
        store
            .put_encoded_cache_record(
                "kiln.v1.entries:old",
                CacheValueKind::Bytes,
                &compressed,
                &[],
            )
            .unwrap();
        let mut record = serde_json::to_value(StoredEntryRef {
            description: None,
            components: &without_entry_lists(&entry.components),
            layers: &[],
            entry_lists_blob: None,
        })
        .unwrap();
        record["entry_lists"] = "kiln.v1.entries:old".into();
        let positions = position_keys("[1/1] COPY x /", "Dockerfile", &[]);
        store
            .put_encoded_cache_record(
                "kiln.v1:old",
                CacheValueKind::Json,
                &serde_json::to_vec(&record).unwrap(),
                &[],
            )
            .unwrap();
        store
            .put_encoded_cache_record(
                &positions[0],
                CacheValueKind::Json,
                br#"{"key":"kiln.v1:old"}"#,
                &[],
            )
            .unwrap();
        let loaded = CacheEntry::load(&store, "kiln.v1:old").unwrap().unwrap();
        assert_eq!(loaded.components, entry.components);
        let previous = CacheEntry::load_previous_at_positions(&store, &positions)
            .unwrap()
            .unwrap();
        let json = previous.entry_lists_json(&store).unwrap();
        assert_eq!(
            serde_json::from_slice::<Vec<Vec<EntryRecord>>>(&json).unwrap(),
            lists
        );
    }
}

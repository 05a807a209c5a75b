//! Cache records in the store, and the store as the stat cache of context checksums.
//!
//! A record (`kiln.v1:<hex>` → [`CacheEntry`]) holds the step's result as a layer chain (diff ids,
//! chain ids, blobs with media types and sizes) and the [`KeyComponents`] behind the key; its
//! store references are every layer and blob of the chain, so prune keeps what a hit needs.
//!
//! A second, small record per step *position* (`kiln.v1.pos:<hex>` of the step's description and
//! the local directories it may read) points to the latest key computed there: on a miss it finds
//! the previous build of "the same step" to compare components with.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use kiln_context::{CachedDigest, StatCache, StatKey};
use kiln_image::Digest;
use kiln_store::{CacheValue, Resource, StatCacheEntry, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cache::key::KeyComponents;
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
    /// another kiln version, is treated as absent).
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn load(store: &Store, key: &str) -> Result<Option<CacheEntry>, RecordError> {
        let record = store
            .get_cache_record(key)
            .map_err(|source| RecordError::Store {
                key: key.to_string(),
                source: Box::new(source),
            })?;
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(match record.value {
            CacheValue::Json(json) => match serde_json::from_value::<CacheEntry>(json) {
                Ok(entry) => Some(CacheEntry {
                    created_ns: record.created_ns,
                    ..entry
                }),
                Err(error) => {
                    tracing::debug!(key, %error, "ignoring an undecodable cache record");
                    None
                }
            },
            _ => None,
        })
    }

    /// Stores this entry under `key` with references to its layers and blobs, and points the
    /// position records `positions` (see [`position_keys`]) at it.
    ///
    /// # Errors
    /// [`RecordError`] when encoding or the store fails.
    pub fn save(&self, store: &Store, key: &str, positions: &[String]) -> Result<(), RecordError> {
        let json = serde_json::to_value(self).map_err(|source| RecordError::Encode {
            key: key.to_string(),
            source,
        })?;
        let mut refs = Vec::with_capacity(self.layers.len() * 2);
        for layer in &self.layers {
            refs.push(Resource::Layer(layer.chain_id.clone()));
            refs.push(Resource::Blob(layer.blob_digest.clone()));
        }
        let store_error = |key: &str| {
            let key = key.to_string();
            move |source| RecordError::Store {
                key,
                source: Box::new(source),
            }
        };
        store
            .put_cache_record(key, &CacheValue::Json(json), &refs)
            .map_err(store_error(key))?;
        for position in positions {
            let pointer = serde_json::json!({ "key": key });
            store
                .put_cache_record(position, &CacheValue::Json(pointer), &[])
                .map_err(store_error(position))?;
        }
        Ok(())
    }

    /// The record last saved at the first of `positions` that has one.
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

    fn load_at_position(store: &Store, position: &str) -> Result<Option<CacheEntry>, RecordError> {
        let record = store
            .get_cache_record(position)
            .map_err(|source| RecordError::Store {
                key: position.to_string(),
                source: Box::new(source),
            })?;
        let Some(CacheValue::Json(json)) = record.map(|r| r.value) else {
            return Ok(None);
        };
        match serde_json::from_value::<PositionEntry>(json) {
            Ok(pointer) => CacheEntry::load(store, &pointer.key),
            Err(_) => Ok(None),
        }
    }

    /// The recorded chain with its extracted dirs, or `None` when a layer or blob is no longer in
    /// the store (then the step must run again).
    ///
    /// # Errors
    /// [`RecordError::Store`] on a store failure.
    pub fn restore(&self, store: &Store) -> Result<Option<Vec<Layer>>, RecordError> {
        let mut chain = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let dir = store
                .layer_path(&layer.chain_id)
                .map_err(|source| RecordError::Store {
                    key: layer.chain_id.to_string(),
                    source: Box::new(source),
                })?;
            let Some(dir) = dir else {
                return Ok(None);
            };
            if !store.has_blob(&layer.blob_digest) {
                return Ok(None);
            }
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
/// A checksum [prefetches](StatCache::prefetch) the keys of all the files it selected: they are
/// looked up in one batch (one read transaction, one prepared statement) and kept in memory, so the
/// per-file `get`s that follow, on many hashing threads at once, never touch the database or its
/// lock. A key that was not prefetched is looked up alone. New entries are kept in memory too (a
/// second COPY of the same file in this build hits) and written in one transaction by
/// [`StoreStatCache::flush`].
pub struct StoreStatCache<'a> {
    store: &'a Store,
    /// What this build knows: the store's answer for each key looked up (`None`: no trusted
    /// entry), and the entries it recorded itself.
    known: RwLock<HashMap<StatKey, Option<CachedDigest>>>,
    /// Entries recorded by this build, not yet written.
    pending: Mutex<Vec<(kiln_store::StatKey, StatCacheEntry)>>,
}

impl<'a> StoreStatCache<'a> {
    pub fn new(store: &'a Store) -> Self {
        StoreStatCache {
            store,
            known: RwLock::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Writes the buffered entries, all in one transaction. A failure only costs re-hashing next
    /// time, so it is logged, not returned.
    pub fn flush(&self) {
        let pending = {
            let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *guard)
        };
        if let Err(error) = self.store.put_stat_cache_entries(&pending) {
            tracing::warn!(%error, "could not record the stat cache");
        }
    }

    fn remember(&self, key: StatKey, digest: Option<CachedDigest>) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.insert(key, digest);
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
    let bytes = hex::decode(entry.sha256.hex()).ok()?;
    Some(CachedDigest {
        sha256: bytes.try_into().ok()?,
        recorded_at_ns: entry.recorded_at_ns,
    })
}

impl StatCache for StoreStatCache<'_> {
    fn prefetch(&self, keys: &[StatKey]) {
        let missing: Vec<StatKey> = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            keys.iter()
                .filter(|key| !known.contains_key(key))
                .copied()
                .collect()
        };
        let store_keys: Vec<kiln_store::StatKey> = missing.iter().map(store_key).collect();
        match self.store.get_stat_cache_many(&store_keys) {
            Ok(found) => {
                let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
                for (key, entry) in missing.into_iter().zip(found) {
                    // Recorded by this build meanwhile (another thread's checksum): keep that.
                    known
                        .entry(key)
                        .or_insert_with(|| entry.as_ref().and_then(cached_digest));
                }
            }
            // The per-file lookups will try again (and hash what they cannot find).
            Err(error) => tracing::debug!(%error, "stat cache batch lookup failed"),
        }
    }

    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        if let Some(known) = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return *known;
        }
        match self.store.get_stat_cache(&store_key(key)) {
            Ok(entry) => {
                let digest = entry.as_ref().and_then(cached_digest);
                self.remember(*key, digest);
                digest
            }
            Err(error) => {
                tracing::debug!(%error, "stat cache lookup failed; hashing the file");
                None
            }
        }
    }

    fn put(&self, key: &StatKey, digest: CachedDigest) {
        let Ok(sha256) = Digest::from_hex(&hex::encode(digest.sha256)) else {
            return;
        };
        self.remember(*key, Some(digest));
        let entry = StatCacheEntry {
            sha256,
            recorded_at_ns: digest.recorded_at_ns,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push((store_key(key), entry));
    }
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
        later_build.prefetch(&[racy]);
        assert_eq!(later_build.get(&racy), None);
        assert_eq!(StoreStatCache::new(&store).get(&racy), None);
    }

    #[test]
    fn prefetched_keys_are_answered_from_memory() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let key = |ino| StatKey {
            dev: 1,
            ino,
            size: 3,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        };
        let digest = CachedDigest {
            sha256: [4; 32],
            recorded_at_ns: 100_000_000_000,
        };
        let first = StoreStatCache::new(&store);
        first.put(&key(1), digest);
        first.flush();

        let cache = StoreStatCache::new(&store);
        cache.prefetch(&[key(1), key(2)]);
        // Written by another process after the prefetch: this build already knows key 2 has no
        // entry and does not ask again (the database is consulted once, not per file).
        let other = StoreStatCache::new(&store);
        other.put(&key(2), digest);
        other.flush();
        assert_eq!(cache.get(&key(1)), Some(digest));
        assert_eq!(cache.get(&key(2)), None);
        // A key nobody prefetched is looked up on its own.
        assert_eq!(StoreStatCache::new(&store).get(&key(2)), Some(digest));
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
}

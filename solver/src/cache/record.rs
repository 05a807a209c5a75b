//! Cache records in the store, and the store as the stat cache of context checksums.
//!
//! A record (`kiln.v1:<hex>` → [`CacheEntry`]) holds the step's result as a layer chain (diff ids,
//! chain ids, blobs with media types and sizes) and the [`KeyComponents`] behind the key; its
//! store references are every layer and blob of the chain, so prune keeps what a hit needs.
//!
//! A second, small record per step *position* (`kiln.v1.pos:<hex>` of the step's description and
//! the local directories it may read) points to the latest key computed there: on a miss it finds
//! the previous build of "the same step" to compare components with.

use std::sync::Mutex;

use kiln_context::{CachedDigest, StatCache, StatKey};
use kiln_image::Digest;
use kiln_store::{CacheValue, Resource, Store, StoreError};
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

/// The store's persistent stat cache behind kiln-context's [`StatCache`]. Lookups go to the store
/// (which applies the racy rule too); new entries are buffered and written in one transaction by
/// [`StoreStatCache::flush`].
pub struct StoreStatCache<'a> {
    store: &'a Store,
    pending: Mutex<Vec<(i64, kiln_store::StatKey, Digest)>>,
}

impl<'a> StoreStatCache<'a> {
    pub fn new(store: &'a Store) -> Self {
        StoreStatCache {
            store,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Writes the buffered entries (grouped by recording time). A failure only costs re-hashing
    /// next time, so it is logged, not returned.
    pub fn flush(&self) {
        let mut pending = {
            let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *guard)
        };
        pending.sort_by_key(|(at, _, _)| *at);
        for group in pending.chunk_by(|a, b| a.0 == b.0) {
            let at = group[0].0;
            let entries: Vec<(kiln_store::StatKey, Digest)> = group
                .iter()
                .map(|(_, key, digest)| (*key, digest.clone()))
                .collect();
            if let Err(error) = self.store.put_stat_cache_many(&entries, at) {
                tracing::warn!(%error, "could not record the stat cache");
            }
        }
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

impl StatCache for StoreStatCache<'_> {
    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        match self.store.get_stat_cache(&store_key(key)) {
            Ok(Some(entry)) => {
                let bytes = hex::decode(entry.sha256.hex()).ok()?;
                let sha256: [u8; 32] = bytes.try_into().ok()?;
                Some(CachedDigest {
                    sha256,
                    recorded_at_ns: entry.recorded_at_ns,
                })
            }
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, "stat cache lookup failed; hashing the file");
                None
            }
        }
    }

    fn put(&self, key: &StatKey, digest: CachedDigest) {
        let Ok(sha) = Digest::from_hex(&hex::encode(digest.sha256)) else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push((digest.recorded_at_ns, store_key(key), sha));
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
        assert_eq!(cache.get(&key), None, "not written before flush");
        cache.flush();
        assert_eq!(cache.get(&key), Some(digest));
        // A file changed within the margin of the recording is never served.
        let racy = StatKey {
            mtime_ns: 99_500_000_000,
            ..key
        };
        cache.put(&racy, digest);
        cache.flush();
        assert_eq!(cache.get(&racy), None);
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

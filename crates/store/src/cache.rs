//! Build cache records: a cache key (computed by the solver) → its result, with the blobs and layers
//! the result needs recorded as references so prune keeps them while the record exists.
//!
//! The store does not interpret keys or results; it keeps them, timestamps their use (for
//! "unused for N days" pruning) and ties their lifetime to their content.

use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::db::unix_now_ns;
use crate::error::{Result, StoreError};
use crate::refs::{Owner, Resource, add_ref, clear_refs};

/// A cached result: structured JSON or opaque bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheValue {
    /// A JSON document (e.g. the layer chain and image config a step produced).
    Json(serde_json::Value),
    /// Opaque bytes.
    Bytes(Vec<u8>),
}

/// What a stored record's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheValueKind {
    /// A JSON document.
    Json,
    /// Opaque bytes.
    Bytes,
}

impl CacheValueKind {
    /// The name in the `kind` column.
    fn as_str(self) -> &'static str {
        match self {
            CacheValueKind::Json => "json",
            CacheValueKind::Bytes => "bytes",
        }
    }
}

/// A stored cache record as stored: its bytes not decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedCacheRecord {
    pub kind: CacheValueKind,
    pub bytes: Vec<u8>,
    /// When the record was first written, in ns since the epoch.
    pub created_ns: i64,
    /// When it was last written or read (now), in ns since the epoch.
    pub last_used_ns: i64,
}

/// A stored cache record.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRecord {
    /// The cache key.
    pub key: String,
    /// The cached result.
    pub value: CacheValue,
    /// When the record was first written, in ns since the epoch.
    pub created_ns: i64,
    /// When it was last written or read, in ns since the epoch.
    pub last_used_ns: i64,
}

impl Store {
    /// Stores `value` under `key` (replacing an earlier record), and records that it needs `refs`
    /// (replacing the earlier record's references).
    ///
    /// # Errors
    /// [`StoreError::Json`] when the value cannot be encoded; [`StoreError::Db`] on a database
    /// failure.
    pub fn put_cache_record(&self, key: &str, value: &CacheValue, refs: &[Resource]) -> Result<()> {
        let encoded;
        let (kind, bytes) = match value {
            CacheValue::Json(json) => {
                encoded = serde_json::to_vec(json).map_err(|source| StoreError::Json {
                    what: format!("encode cache record {key:?}"),
                    source,
                })?;
                (CacheValueKind::Json, encoded.as_slice())
            }
            CacheValue::Bytes(bytes) => (CacheValueKind::Bytes, bytes.as_slice()),
        };
        self.put_encoded_cache_record(key, kind, bytes, refs)
            .map(|_| ())
    }

    /// Stores already encoded `bytes` of `kind` under `key` (replacing an earlier record) with
    /// references to `refs`, like [`Store::put_cache_record`]; returns the record's creation time
    /// (ns since the epoch) — an earlier record's, if there was one — so a caller needs no reload.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn put_encoded_cache_record(
        &self,
        key: &str,
        kind: CacheValueKind,
        bytes: &[u8],
        refs: &[Resource],
    ) -> Result<i64> {
        self.db().write("put cache record", |tx| {
            let now = unix_now_ns();
            let created_ns: i64 = tx.query_row(
                "INSERT INTO cache_records (key, kind, value, created_ns, last_used_ns)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (key) DO UPDATE
                 SET kind = excluded.kind, value = excluded.value, last_used_ns = excluded.last_used_ns
                 RETURNING created_ns",
                params![key, kind.as_str(), bytes, now],
                |row| row.get(0),
            )?;
            let owner = Owner::CacheRecord(key.to_string());
            clear_refs(tx, &owner)?;
            for resource in refs {
                add_ref(tx, &owner, resource)?;
            }
            Ok(created_ns)
        })
    }

    /// The record under `key` as stored (undecoded), if any; marks it as used now. Lets a caller
    /// decode a JSON record straight into its own type.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn get_encoded_cache_record(&self, key: &str) -> Result<Option<EncodedCacheRecord>> {
        self.db().write("get cache record", |tx| {
            let now = unix_now_ns();
            let row: Option<(String, Vec<u8>, i64)> = tx
                .query_row(
                    "UPDATE cache_records SET last_used_ns = ?2 WHERE key = ?1
                     RETURNING kind, value, created_ns",
                    params![key, now],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            Ok(row.map(|(kind, bytes, created_ns)| EncodedCacheRecord {
                kind: if kind == "json" {
                    CacheValueKind::Json
                } else {
                    CacheValueKind::Bytes
                },
                bytes,
                created_ns,
                last_used_ns: now,
            }))
        })
    }

    /// Marks the record under `key` as used now without reading it; returns whether it exists.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn touch_cache_record(&self, key: &str) -> Result<bool> {
        self.db().write("touch cache record", |tx| {
            let updated = tx.execute(
                "UPDATE cache_records SET last_used_ns = ?2 WHERE key = ?1",
                params![key, unix_now_ns()],
            )?;
            Ok(updated > 0)
        })
    }

    /// The record under `key`, if any; marks it as used now.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::Json`] when a JSON record does not
    /// decode.
    pub fn get_cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        let Some(record) = self.get_encoded_cache_record(key)? else {
            return Ok(None);
        };
        let value = match record.kind {
            CacheValueKind::Json => {
                CacheValue::Json(serde_json::from_slice(&record.bytes).map_err(|source| {
                    StoreError::Json {
                        what: format!("decode cache record {key:?}"),
                        source,
                    }
                })?)
            }
            CacheValueKind::Bytes => CacheValue::Bytes(record.bytes),
        };
        Ok(Some(CacheRecord {
            key: key.to_string(),
            value,
            created_ns: record.created_ns,
            last_used_ns: record.last_used_ns,
        }))
    }

    /// Deletes the record under `key` and its references; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn delete_cache_record(&self, key: &str) -> Result<bool> {
        self.db().write("delete cache record", |tx| {
            let removed = tx.execute("DELETE FROM cache_records WHERE key = ?1", params![key])?;
            clear_refs(tx, &Owner::CacheRecord(key.to_string()))?;
            Ok(removed > 0)
        })
    }

    /// Every cache key whose record references `resource`, sorted; lets the solver find results
    /// by the layers a step produced.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn cache_keys_referencing(&self, resource: &Resource) -> Result<Vec<String>> {
        self.db().read("find cache records by reference", |conn| {
            let mut statement = conn.prepare(
                "SELECT substr(owner, 7) FROM refs
                 WHERE target = ?1 AND substr(owner, 1, 6) = 'cache:' ORDER BY owner",
            )?;
            let rows = statement.query_map(params![resource.node()], |row| row.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_put_returns_the_first_creation_time_and_reads_back_undecoded() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        assert!(store.get_encoded_cache_record("k").unwrap().is_none());
        assert!(!store.touch_cache_record("k").unwrap());
        let created = store
            .put_encoded_cache_record("k", CacheValueKind::Json, b"{\"a\":1}", &[])
            .unwrap();
        assert!(created > 0);
        let again = store
            .put_encoded_cache_record("k", CacheValueKind::Bytes, &[0, 255], &[])
            .unwrap();
        assert_eq!(again, created, "a replaced record keeps its creation time");
        assert!(store.touch_cache_record("k").unwrap());
        let record = store.get_encoded_cache_record("k").unwrap().unwrap();
        assert_eq!(record.kind, CacheValueKind::Bytes);
        assert_eq!(record.bytes, vec![0, 255]);
        assert_eq!(record.created_ns, created);
        assert!(record.last_used_ns >= created);
        assert_eq!(
            store.get_cache_record("k").unwrap().unwrap().value,
            CacheValue::Bytes(vec![0, 255])
        );
    }
}

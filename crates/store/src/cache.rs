//! Build cache records: a cache key (computed by the solver) → its result, with the blobs and layers
//! the result needs recorded as references so prune keeps them while the record exists.
//!
//! The store does not interpret keys or results; it keeps them, timestamps their use (for
//! "unused for N days" pruning) and ties their lifetime to their content.

use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::db::{TxError, unix_now_ns};
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
        let (kind, bytes) = match value {
            CacheValue::Json(json) => (
                "json",
                serde_json::to_vec(json).map_err(|source| StoreError::Json {
                    what: format!("encode cache record {key:?}"),
                    source,
                })?,
            ),
            CacheValue::Bytes(bytes) => ("bytes", bytes.clone()),
        };
        self.db().write("put cache record", |tx| {
            let now = unix_now_ns();
            tx.execute(
                "INSERT INTO cache_records (key, kind, value, created_ns, last_used_ns)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (key) DO UPDATE
                 SET kind = excluded.kind, value = excluded.value, last_used_ns = excluded.last_used_ns",
                params![key, kind, bytes, now],
            )?;
            let owner = Owner::CacheRecord(key.to_string());
            clear_refs(tx, &owner)?;
            for resource in refs {
                add_ref(tx, &owner, resource)?;
            }
            Ok(())
        })
    }

    /// The record under `key`, if any; marks it as used now.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::Json`] when a JSON record does not
    /// decode.
    pub fn get_cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.db().write("get cache record", |tx| {
            let now = unix_now_ns();
            let row: Option<(String, Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT kind, value, created_ns FROM cache_records WHERE key = ?1",
                    params![key],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((kind, bytes, created_ns)) = row else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE cache_records SET last_used_ns = ?2 WHERE key = ?1",
                params![key, now],
            )?;
            let value = match kind.as_str() {
                "json" => CacheValue::Json(serde_json::from_slice(&bytes).map_err(|source| {
                    TxError::Store(StoreError::Json {
                        what: format!("decode cache record {key:?}"),
                        source,
                    })
                })?),
                _ => CacheValue::Bytes(bytes),
            };
            Ok(Some(CacheRecord {
                key: key.to_string(),
                value,
                created_ns,
                last_used_ns: now,
            }))
        })
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

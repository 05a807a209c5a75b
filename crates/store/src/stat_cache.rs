//! The stat cache: (device, inode, size, mtime, ctime) → content sha256, so that checksumming an
//! unchanged build context costs one `lstat` per file.
//!
//! It must never return stale content. A file modified within the same timestamp tick as the
//! moment it was hashed would keep its stat fields while its content changed ("racy", as git calls
//! it), so an entry whose mtime or ctime is not at least [`RACY_MARGIN_NS`] older than the moment it
//! was recorded is never returned: the caller re-hashes and re-records it, and once the file has
//! aged the entry becomes trustworthy.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use kiln_image::Digest;
use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::db::{TxError, parse_digest};
use crate::error::Result;

/// How much older than its recording time a file's timestamps must be for its entry to be trusted.
/// Generous on purpose: some filesystems keep timestamps at 1 s or 2 s granularity, and kernels
/// stamp files from a coarse clock.
pub const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// The stat fields that identify one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
}

impl StatKey {
    /// The key of a file from its (l)stat metadata.
    pub fn from_metadata(meta: &Metadata) -> StatKey {
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        }
    }

    /// Whether a hash recorded at `recorded_at_ns` may not match this file's content (the file
    /// could have changed within the same timestamp tick).
    pub fn is_racy_at(&self, recorded_at_ns: i64) -> bool {
        let newest = self.mtime_ns.max(self.ctime_ns);
        newest.saturating_add(RACY_MARGIN_NS) >= recorded_at_ns
    }
}

/// A trusted stat cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatCacheEntry {
    /// The sha256 of the file's content.
    pub sha256: Digest,
    /// When the hash was taken, ns since the epoch.
    pub recorded_at_ns: i64,
}

impl Store {
    /// The content hash recorded for a file with exactly these stat fields, unless the entry is
    /// racy (see the module docs) — then `None`, and the caller must hash the file.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure; [`crate::StoreError::InvalidRecord`] on a
    /// damaged row.
    pub fn get_stat_cache(&self, key: &StatKey) -> Result<Option<StatCacheEntry>> {
        self.db()
            .read("look up stat cache", |conn| lookup_entry(conn, key))
    }

    /// [`Store::get_stat_cache`] for many files at once: one answer per key, in the order of
    /// `keys`. All lookups share one read transaction and one prepared statement, so checking a
    /// whole build context costs one database round trip instead of one per file.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure; [`crate::StoreError::InvalidRecord`] on a
    /// damaged row.
    pub fn get_stat_cache_many(&self, keys: &[StatKey]) -> Result<Vec<Option<StatCacheEntry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.db().read("look up stat cache", |conn| {
            // One snapshot for the batch: without it every lookup opens and closes its own WAL
            // read transaction (file locks included). Nothing is written, so dropping it (a
            // rollback) is the right end.
            let snapshot = conn.unchecked_transaction()?;
            // In primary-key order: consecutive lookups land on the same or the next B-tree page,
            // so each page is read once however large the table is.
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_unstable_by_key(|&index| (keys[index].dev as i64, keys[index].ino as i64));
            let mut found = vec![None; keys.len()];
            for index in order {
                found[index] = lookup_entry(&snapshot, &keys[index])?;
            }
            snapshot.rollback()?;
            Ok(found)
        })
    }

    /// Records that the file with `key` hashed to `sha256`, where `hashed_at_ns` is a time taken
    /// *before* the file was stat'ed and read (e.g. [`crate::unix_now_ns`] at the start of the
    /// walk) — a later time could make a racy entry look safe.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure.
    pub fn put_stat_cache(&self, key: &StatKey, sha256: &Digest, hashed_at_ns: i64) -> Result<()> {
        self.db().write("record stat cache", |tx| {
            insert_entry(tx, key, sha256, hashed_at_ns)
        })
    }

    /// As [`Store::put_stat_cache`] for many files in one transaction (much cheaper per file).
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure; then none of the entries is recorded.
    pub fn put_stat_cache_many(
        &self,
        entries: &[(StatKey, Digest)],
        hashed_at_ns: i64,
    ) -> Result<()> {
        self.db().write("record stat cache", |tx| {
            for (key, sha256) in entries {
                insert_entry(tx, key, sha256, hashed_at_ns)?;
            }
            Ok(())
        })
    }

    /// Records many files, each with its own hashing time (see [`Store::put_stat_cache`] for what
    /// that time must be), in one transaction: what a build that hashed files one by one writes
    /// at its end.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure; then none of the entries is recorded.
    pub fn put_stat_cache_entries(&self, entries: &[(StatKey, StatCacheEntry)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.db().write("record stat cache", |tx| {
            for (key, entry) in entries {
                insert_entry(tx, key, &entry.sha256, entry.recorded_at_ns)?;
            }
            Ok(())
        })
    }
}

/// The trusted entry for `key`, if any (see the module docs for the racy rule).
fn lookup_entry(conn: &Connection, key: &StatKey) -> Result<Option<StatCacheEntry>, TxError> {
    // Cached: a build looks up thousands of files, and parsing the SQL each time cost more than
    // the lookup itself.
    let mut statement = conn.prepare_cached(
        "SELECT sha256, recorded_at_ns FROM stat_cache
         WHERE dev = ?1 AND ino = ?2 AND size = ?3 AND mtime_ns = ?4 AND ctime_ns = ?5",
    )?;
    let row: Option<(String, i64)> = statement
        .query_row(
            params![
                key.dev as i64,
                key.ino as i64,
                key.size as i64,
                key.mtime_ns,
                key.ctime_ns
            ],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    match row {
        Some((_, recorded_at_ns)) if key.is_racy_at(recorded_at_ns) => Ok(None),
        Some((sha256, recorded_at_ns)) => Ok(Some(StatCacheEntry {
            sha256: parse_digest(&sha256)?,
            recorded_at_ns,
        })),
        None => Ok(None),
    }
}

fn insert_entry(
    conn: &Connection,
    key: &StatKey,
    sha256: &Digest,
    hashed_at_ns: i64,
) -> Result<(), TxError> {
    let mut statement = conn.prepare_cached(
        "INSERT OR REPLACE INTO stat_cache (dev, ino, size, mtime_ns, ctime_ns, sha256, recorded_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    statement.execute(params![
        // SQLite integers are signed; the bit pattern round-trips (overlayfs' xino uses high bits).
        key.dev as i64,
        key.ino as i64,
        key.size as i64,
        key.mtime_ns,
        key.ctime_ns,
        sha256.to_string(),
        hashed_at_ns
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_racy_until_the_file_is_older_than_the_margin() {
        let key = StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 10_000_000_000,
            ctime_ns: 10_000_000_000,
        };
        assert!(key.is_racy_at(10_000_000_000));
        assert!(key.is_racy_at(10_000_000_000 + RACY_MARGIN_NS));
        assert!(!key.is_racy_at(10_000_000_001 + RACY_MARGIN_NS));
        let changed_later = StatKey {
            ctime_ns: 20_000_000_000,
            ..key
        };
        assert!(changed_later.is_racy_at(15_000_000_000));
    }

    fn old_file(ino: u64) -> StatKey {
        StatKey {
            dev: 7,
            ino,
            size: 100 + ino,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        }
    }

    fn entry_at(name: &str, recorded_at_ns: i64) -> StatCacheEntry {
        StatCacheEntry {
            sha256: Digest::of(name.as_bytes()),
            recorded_at_ns,
        }
    }

    #[test]
    fn a_batch_lookup_answers_each_key_in_order_like_single_lookups() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let trusted = entry_at("a", 50_000_000_000);
        // Recorded within the margin of the file's timestamps: stored, but never served.
        let racy = entry_at("b", 1_500_000_000);
        store
            .put_stat_cache_entries(&[(old_file(1), trusted.clone()), (old_file(2), racy)])
            .unwrap();

        let changed = StatKey {
            size: 1,
            ..old_file(1)
        };
        let keys = [old_file(2), old_file(3), old_file(1), changed, old_file(1)];
        let batch = store.get_stat_cache_many(&keys).unwrap();
        assert_eq!(
            batch,
            vec![None, None, Some(trusted.clone()), None, Some(trusted)]
        );
        let single: Vec<_> = keys
            .iter()
            .map(|key| store.get_stat_cache(key).unwrap())
            .collect();
        assert_eq!(batch, single);
        assert!(store.get_stat_cache_many(&[]).unwrap().is_empty());
    }

    #[test]
    fn entries_with_their_own_times_are_recorded_together_and_replace_older_ones() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let entries: Vec<(StatKey, StatCacheEntry)> = (1..=300)
            .map(|ino| {
                (
                    old_file(ino),
                    entry_at(&ino.to_string(), 10_000_000_000 + ino as i64),
                )
            })
            .collect();
        store.put_stat_cache_entries(&entries).unwrap();
        let keys: Vec<StatKey> = entries.iter().map(|(key, _)| *key).collect();
        let expected: Vec<Option<StatCacheEntry>> = entries
            .iter()
            .map(|(_, entry)| Some(entry.clone()))
            .collect();
        assert_eq!(store.get_stat_cache_many(&keys).unwrap(), expected);

        // The same inode with new content: the new entry replaces the old (one row per inode).
        let rewritten = StatKey {
            size: 1,
            mtime_ns: 2_000_000_000,
            ctime_ns: 2_000_000_000,
            ..old_file(1)
        };
        let newer = entry_at("new", 20_000_000_000);
        store
            .put_stat_cache_entries(&[(rewritten, newer.clone())])
            .unwrap();
        assert_eq!(
            store
                .get_stat_cache_many(&[old_file(1), rewritten])
                .unwrap(),
            vec![None, Some(newer)]
        );
    }
}

//! The stat cache: file identity and timestamps → content sha256, so that a rebuild without
//! changes costs one `lstat` per file instead of reading every byte.
//!
//! The store implements [`StatCache`] persistently; [`MemoryStatCache`] is the in-memory version.
//!
//! # The racy-entry rule
//!
//! A file can change without its `(dev, ino, size, mtime, ctime)` changing when the change lands
//! in the same timestamp tick as the previous one (coarse file system clocks, or a rewrite right
//! after the hash was taken). Git's index has the same problem and the same answer: a record is
//! trusted only if the file's mtime *and* ctime are strictly older than the moment the record was
//! taken minus a safety margin ([`DEFAULT_RACY_MARGIN`], larger than any common timestamp
//! granularity and than the kernel's coarse-clock lag). Anything newer is "racy": it is hashed
//! again every time, and not stored, until it has aged past the margin. The record time is taken
//! *before* the file is read, so a write that races with hashing always makes the record racy.
//! This costs a re-read of files touched in the last seconds and never returns stale content.
//!
//! # Extended attributes
//!
//! A record also holds the digest of the file's extended attributes ([`CachedXattrs`]), so that
//! an unchanged file costs no `llistxattr` either. This is sound for the same reason as the
//! content: setting or removing an attribute updates the file's ctime, which is part of the
//! [`StatKey`], and the racy-entry rule covers a change within the same timestamp tick.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default safety margin of the racy-entry rule.
pub const DEFAULT_RACY_MARGIN: Duration = Duration::from_secs(2);

/// What identifies a file version for the cache: its inode and its `lstat` size and timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    /// Device of the file system.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

/// What a stat cache record knows about a file's extended attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachedXattrs {
    /// Not recorded (a record written before attributes were cached): the caller reads them.
    #[default]
    Unknown,
    /// The file had none (apart from the ignored `security.selinux`).
    Absent,
    /// sha256 over the attributes, as in [`crate::EntryRecord::xattrs`].
    Digest([u8; 32]),
}

/// A cached content digest and when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDigest {
    /// sha256 of the file content.
    pub sha256: [u8; 32],
    /// When the digest was taken (before reading the file), nanoseconds since the epoch.
    pub recorded_at_ns: i64,
    /// The file's extended attributes at that time (see the module docs for why they can be
    /// trusted whenever the content can).
    pub xattrs: CachedXattrs,
}

impl CachedDigest {
    /// Whether this record may be trusted for a file with these timestamps (the racy-entry rule,
    /// see the module docs).
    pub fn is_trustworthy(&self, key: &StatKey, margin: Duration) -> bool {
        let margin_ns = i64::try_from(margin.as_nanos()).unwrap_or(i64::MAX);
        let newest_change = key.mtime_ns.max(key.ctime_ns);
        newest_change.saturating_add(margin_ns) < self.recorded_at_ns
    }
}

/// A store of content digests by [`StatKey`]. Implementations must be safe to share between
/// hashing threads. `get` returns what was `put`; trust decisions are the caller's (see
/// [`CachedDigest::is_trustworthy`]).
///
/// A checksum asks for the keys of every regular file it selected at once
/// ([`StatCache::get_many`]): a cache behind a database answers the whole context with one batch
/// query instead of one query per file.
pub trait StatCache: Send + Sync {
    /// The digests recorded for `keys`, one answer per key, in order. The default asks
    /// [`StatCache::get`] for each.
    fn get_many(&self, keys: &[StatKey]) -> Vec<Option<CachedDigest>> {
        keys.iter().map(|key| self.get(key)).collect()
    }
    /// The digest recorded for exactly this key, if any.
    fn get(&self, key: &StatKey) -> Option<CachedDigest>;
    /// Records a digest for this key (replacing any earlier one).
    fn put(&self, key: &StatKey, digest: CachedDigest);
}

/// A stat cache that remembers nothing (every file is hashed).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStatCache;

impl StatCache for NoStatCache {
    fn get(&self, _key: &StatKey) -> Option<CachedDigest> {
        None
    }
    fn put(&self, _key: &StatKey, _digest: CachedDigest) {}
}

/// An in-memory stat cache (for tests and one-shot tools).
#[derive(Debug, Default)]
pub struct MemoryStatCache {
    records: Mutex<HashMap<StatKey, CachedDigest>>,
}

impl MemoryStatCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.lock().map_or(0, |records| records.len())
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StatCache for MemoryStatCache {
    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.get(key).copied()
    }
    fn put(&self, key: &StatKey, digest: CachedDigest) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(*key, digest);
    }
}

/// The current time in nanoseconds since the epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mtime_ns: i64, ctime_ns: i64) -> StatKey {
        StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns,
        }
    }

    #[test]
    fn racy_rule_compares_newest_timestamp_with_margin() {
        let second = 1_000_000_000;
        let record = CachedDigest {
            sha256: [0; 32],
            recorded_at_ns: 100 * second,
            xattrs: CachedXattrs::Absent,
        };
        let margin = Duration::from_secs(2);
        assert!(record.is_trustworthy(&key(90 * second, 90 * second), margin));
        // Same tick as the record, or inside the margin: racy.
        assert!(!record.is_trustworthy(&key(100 * second, 100 * second), margin));
        assert!(!record.is_trustworthy(&key(98 * second, 98 * second), margin));
        // An old mtime does not help when ctime is recent (e.g. `touch -d` after a rewrite).
        assert!(!record.is_trustworthy(&key(10 * second, 99 * second), margin));
    }

    #[test]
    fn memory_cache_round_trip() {
        let cache = MemoryStatCache::new();
        assert!(cache.get(&key(1, 1)).is_none());
        let digest = CachedDigest {
            sha256: [7; 32],
            recorded_at_ns: 5,
            xattrs: CachedXattrs::Digest([1; 32]),
        };
        cache.put(&key(1, 1), digest);
        assert_eq!(cache.get(&key(1, 1)), Some(digest));
        assert!(cache.get(&key(1, 2)).is_none());
        assert_eq!(cache.len(), 1);
    }
}

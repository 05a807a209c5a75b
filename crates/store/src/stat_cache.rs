//! The stat cache: (device, inode, size, mtime, ctime) → content sha256, so that checksumming an
//! unchanged build context costs one `lstat` per file.
//!
//! It must never return stale content. A file modified within the same timestamp tick as the
//! moment it was hashed would keep its stat fields while its content changed ("racy", as git calls
//! it), so an entry whose mtime or ctime is not at least [`RACY_MARGIN_NS`] older than the moment it
//! was recorded is never returned: the caller re-hashes and re-records it, and once the file has
//! aged the entry becomes trustworthy.
//!
//! An entry also holds the digest of the file's extended attributes ([`StatXattrs`]): setting or
//! removing one changes the file's ctime, so an entry that is trusted for the content is trusted
//! for them too, and an unchanged file costs no `llistxattr`. The column was added after the
//! table (entries written before it say [`StatXattrs::Unknown`]); older kiln versions name their
//! columns and so keep working on the same database, leaving it unknown.
//!
//! A build looks up every file of its context at once ([`Store::get_stat_cache_many`]). The keys
//! are sorted by (device, inode) and nearby inodes — files created together usually are — are
//! read with one range scan of the primary key, merged with the keys in order.

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

/// What an entry knows about the file's extended attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StatXattrs {
    /// Not recorded (an entry from before the column existed, or from an older kiln).
    #[default]
    Unknown,
    /// The file had none that count.
    Absent,
    /// The digest over them, as the context checksum computes it.
    Digest(Digest),
}

impl StatXattrs {
    /// The column value: NULL, `''` or the digest.
    fn to_column(&self) -> Option<String> {
        match self {
            Self::Unknown => None,
            Self::Absent => Some(String::new()),
            Self::Digest(digest) => Some(digest.to_string()),
        }
    }

    fn from_column(value: Option<&str>) -> Result<Self, TxError> {
        Ok(match value {
            None => Self::Unknown,
            Some("") => Self::Absent,
            Some(text) => Self::Digest(parse_digest(text)?),
        })
    }
}

/// A trusted stat cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatCacheEntry {
    /// The sha256 of the file's content.
    pub sha256: Digest,
    /// When the hash was taken, ns since the epoch.
    pub recorded_at_ns: i64,
    /// The file's extended attributes at that time.
    pub xattrs: StatXattrs,
}

/// Two keys whose inodes are at most this far apart are read by one range scan: it then reads
/// at most this many rows per key, each far cheaper than a lookup of its own.
const MAX_SCAN_GAP: i64 = 8;

/// Adds the `xattrs` column to a `stat_cache` table made before it existed (run when the
/// database is opened; a no-op once done).
pub(crate) fn ensure_xattrs_column(conn: &Connection) -> Result<(), TxError> {
    let present: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('stat_cache') WHERE name = 'xattrs'",
        [],
        |row| row.get(0),
    )?;
    if present == 0 {
        conn.execute("ALTER TABLE stat_cache ADD COLUMN xattrs TEXT", [])?;
    }
    Ok(())
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
            // and runs of nearby inodes become range scans.
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_unstable_by_key(|&index| (keys[index].dev as i64, keys[index].ino as i64));
            let mut found = vec![None; keys.len()];
            let mut run_start = 0;
            while run_start < order.len() {
                let first = &keys[order[run_start]];
                let mut run_end = run_start + 1;
                while run_end < order.len() {
                    let (previous, next) = (&keys[order[run_end - 1]], &keys[order[run_end]]);
                    let gap = (next.ino as i64).checked_sub(previous.ino as i64);
                    if next.dev != first.dev || gap.is_none_or(|gap| gap > MAX_SCAN_GAP) {
                        break;
                    }
                    run_end += 1;
                }
                let run = &order[run_start..run_end];
                if run.len() == 1 {
                    found[run[0]] = lookup_entry(&snapshot, first)?;
                } else {
                    scan_run(&snapshot, keys, run, &mut found)?;
                }
                run_start = run_end;
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
            insert_entry(tx, key, sha256, hashed_at_ns, &StatXattrs::Unknown)
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
                insert_entry(tx, key, sha256, hashed_at_ns, &StatXattrs::Unknown)?;
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
                insert_entry(tx, key, &entry.sha256, entry.recorded_at_ns, &entry.xattrs)?;
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
        "SELECT sha256, recorded_at_ns, xattrs FROM stat_cache
         WHERE dev = ?1 AND ino = ?2 AND size = ?3 AND mtime_ns = ?4 AND ctime_ns = ?5",
    )?;
    let row: Option<(String, i64, Option<String>)> = statement
        .query_row(
            params![
                key.dev as i64,
                key.ino as i64,
                key.size as i64,
                key.mtime_ns,
                key.ctime_ns
            ],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    match row {
        Some((sha256, recorded_at_ns, xattrs)) => {
            trusted_entry(key, &sha256, recorded_at_ns, xattrs.as_deref())
        }
        None => Ok(None),
    }
}

/// Looks up the keys `run` (indexes into `keys`, sorted by inode, all on one device) with one
/// range scan over their inodes, merging the rows with the keys in order.
fn scan_run(
    conn: &Connection,
    keys: &[StatKey],
    run: &[usize],
    found: &mut [Option<StatCacheEntry>],
) -> Result<(), TxError> {
    let (first, last) = (&keys[run[0]], &keys[run[run.len() - 1]]);
    let mut statement = conn.prepare_cached(
        "SELECT ino, size, mtime_ns, ctime_ns, sha256, recorded_at_ns, xattrs FROM stat_cache
         WHERE dev = ?1 AND ino BETWEEN ?2 AND ?3 ORDER BY ino",
    )?;
    let mut rows = statement.query(params![first.dev as i64, first.ino as i64, last.ino as i64])?;
    let mut next = 0;
    while let Some(row) = rows.next()? {
        let ino: i64 = row.get(0)?;
        while next < run.len() && (keys[run[next]].ino as i64) < ino {
            next += 1;
        }
        // One row per inode; a key may be asked for more than once.
        let mut index = next;
        while index < run.len() && keys[run[index]].ino as i64 == ino {
            let key = &keys[run[index]];
            let (size, mtime_ns, ctime_ns): (i64, i64, i64) =
                (row.get(1)?, row.get(2)?, row.get(3)?);
            if (size, mtime_ns, ctime_ns) == (key.size as i64, key.mtime_ns, key.ctime_ns) {
                // Borrowed from the row: no copy of the text before it is parsed.
                let sha256 = text_column(row, 4)?.unwrap_or_default();
                let xattrs = text_column(row, 6)?;
                found[run[index]] = trusted_entry(key, sha256, row.get(5)?, xattrs)?;
            }
            index += 1;
        }
        if next == run.len() {
            break;
        }
    }
    Ok(())
}

/// A text (or NULL) column of `row`, borrowed.
fn text_column<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<Option<&'r str>, TxError> {
    let value = row.get_ref(index)?;
    value.as_str_or_null().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, value.data_type(), Box::new(error)).into()
    })
}

/// The entry of a matching row, unless it is racy.
fn trusted_entry(
    key: &StatKey,
    sha256: &str,
    recorded_at_ns: i64,
    xattrs: Option<&str>,
) -> Result<Option<StatCacheEntry>, TxError> {
    if key.is_racy_at(recorded_at_ns) {
        return Ok(None);
    }
    Ok(Some(StatCacheEntry {
        sha256: parse_digest(sha256)?,
        recorded_at_ns,
        xattrs: StatXattrs::from_column(xattrs)?,
    }))
}

fn insert_entry(
    conn: &Connection,
    key: &StatKey,
    sha256: &Digest,
    hashed_at_ns: i64,
    xattrs: &StatXattrs,
) -> Result<(), TxError> {
    let mut statement = conn.prepare_cached(
        "INSERT OR REPLACE INTO stat_cache
             (dev, ino, size, mtime_ns, ctime_ns, sha256, recorded_at_ns, xattrs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    statement.execute(params![
        // SQLite integers are signed; the bit pattern round-trips (overlayfs' xino uses high bits).
        key.dev as i64,
        key.ino as i64,
        key.size as i64,
        key.mtime_ns,
        key.ctime_ns,
        sha256.to_string(),
        hashed_at_ns,
        xattrs.to_column()
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
            size: 100 + ino % 1000,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        }
    }

    fn entry_at(name: &str, recorded_at_ns: i64) -> StatCacheEntry {
        StatCacheEntry {
            sha256: Digest::of(name.as_bytes()),
            recorded_at_ns,
            xattrs: StatXattrs::Absent,
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

    #[test]
    fn range_scans_and_single_lookups_agree_on_every_kind_of_key() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        // Recorded: every third inode of a dense block, a few far apart, high-bit inodes (as
        // i64 they are negative) and another device.
        let mut recorded = Vec::new();
        for ino in (100..400).step_by(3) {
            recorded.push((old_file(ino), entry_at(&format!("f{ino}"), 50_000_000_000)));
        }
        for ino in [10_000, 20_000, u64::MAX - 5, u64::MAX - 1, 1 << 63] {
            recorded.push((
                old_file(ino),
                entry_at(&format!("far{ino}"), 50_000_000_000),
            ));
        }
        recorded.push((
            StatKey {
                dev: 8,
                ..old_file(103)
            },
            entry_at("dev8", 50_000_000_000),
        ));
        let racy = StatKey {
            ino: 106,
            ..old_file(106)
        };
        recorded.retain(|(key, _)| *key != racy);
        recorded.push((racy, entry_at("racy", 1_500_000_000)));
        let with_xattrs = old_file(109);
        recorded.retain(|(key, _)| *key != with_xattrs);
        recorded.push((
            with_xattrs,
            StatCacheEntry {
                xattrs: StatXattrs::Digest(Digest::of(b"xattrs")),
                ..entry_at("x", 50_000_000_000)
            },
        ));
        store.put_stat_cache_entries(&recorded).unwrap();

        // Asked: every inode of the block (most not recorded), changed stat fields, repeats,
        // the far ones, the other device, in a scrambled order.
        let mut keys: Vec<StatKey> = (95..405).map(old_file).collect();
        keys.push(StatKey {
            mtime_ns: 5,
            ..old_file(112)
        });
        keys.push(StatKey {
            size: 1,
            ..old_file(115)
        });
        keys.extend([old_file(112), old_file(10_000), old_file(10_001)]);
        keys.extend([u64::MAX - 5, u64::MAX - 1, 1 << 63, 0].map(old_file));
        keys.push(StatKey {
            dev: 8,
            ..old_file(103)
        });
        keys.push(StatKey {
            dev: 9,
            ..old_file(103)
        });
        keys.reverse();
        keys.swap(3, 200);

        let batch = store.get_stat_cache_many(&keys).unwrap();
        let single: Vec<_> = keys
            .iter()
            .map(|key| store.get_stat_cache(key).unwrap())
            .collect();
        assert_eq!(batch, single);
        let hits = batch.iter().filter(|found| found.is_some()).count();
        // 100 dense ones minus the racy one, plus 112 again, 10_000, three high, dev 8.
        assert_eq!(hits, 99 + 1 + 1 + 3 + 1);
        let index = keys.iter().position(|key| *key == with_xattrs).unwrap();
        assert_eq!(
            batch[index].as_ref().map(|entry| &entry.xattrs),
            Some(&StatXattrs::Digest(Digest::of(b"xattrs")))
        );
    }

    #[test]
    fn a_database_from_before_the_xattrs_column_gets_it_and_reads_unknown() {
        let root = tempfile::tempdir().unwrap();
        drop(Store::open(root.path()).unwrap());
        {
            // The table as older versions made it, with a row they wrote.
            let conn = Connection::open(root.path().join("meta.db")).unwrap();
            conn.execute("ALTER TABLE stat_cache DROP COLUMN xattrs", [])
                .unwrap();
            conn.execute(
                "INSERT INTO stat_cache (dev, ino, size, mtime_ns, ctime_ns, sha256, recorded_at_ns)
                 VALUES (7, 1, 101, 1000000000, 1000000000, ?1, 50000000000)",
                [Digest::of(b"old").to_string()],
            )
            .unwrap();
        }
        let store = Store::open(root.path()).unwrap();
        let found = store.get_stat_cache(&old_file(1)).unwrap().unwrap();
        assert_eq!(found.xattrs, StatXattrs::Unknown);
        assert_eq!(found.sha256, Digest::of(b"old"));
        // And entries with attributes can be written again.
        let entry = StatCacheEntry {
            xattrs: StatXattrs::Absent,
            ..found
        };
        store
            .put_stat_cache_entries(&[(old_file(1), entry.clone())])
            .unwrap();
        assert_eq!(store.get_stat_cache(&old_file(1)).unwrap(), Some(entry));
    }
}

//! The metadata database: one SQLite file in WAL mode, shared by every kiln process on the root.
//!
//! WAL lets readers run while one writer commits; `busy_timeout` makes a second writer wait instead
//! of failing; every write runs in a `BEGIN IMMEDIATE` transaction, which takes the write lock up
//! front — a deferred transaction that reads and then writes can fail with `SQLITE_BUSY` without
//! ever waiting. `synchronous=NORMAL` is durable against a killed process (kill -9), which is the
//! failure that matters for a build tool; the blobs themselves are fsynced before they are recorded.
//!
//! The schema carries a version in `PRAGMA user_version`; a database from a newer kiln is refused
//! with [`StoreError::SchemaTooNew`] rather than misread.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_image::Digest;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Result, StoreError};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA_V1: &str = "
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_ns  INTEGER NOT NULL
);
CREATE TABLE images (
    name             TEXT PRIMARY KEY,
    manifest_digest  TEXT NOT NULL,
    config_digest    TEXT NOT NULL,
    created_ns       INTEGER NOT NULL,
    updated_ns       INTEGER NOT NULL
);
CREATE TABLE manifests (
    digest         TEXT PRIMARY KEY,
    config_digest  TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    created_ns     INTEGER NOT NULL
);
CREATE TABLE manifest_layers (
    manifest_digest  TEXT NOT NULL,
    position         INTEGER NOT NULL,
    blob_digest      TEXT NOT NULL,
    diff_id          TEXT NOT NULL,
    media_type       TEXT NOT NULL,
    size             INTEGER NOT NULL,
    PRIMARY KEY (manifest_digest, position)
) WITHOUT ROWID;
CREATE TABLE layer_blobs (
    diff_id      TEXT NOT NULL,
    compression  TEXT NOT NULL,
    blob_digest  TEXT NOT NULL,
    media_type   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    PRIMARY KEY (diff_id, compression)
) WITHOUT ROWID;
CREATE INDEX layer_blobs_by_blob ON layer_blobs (blob_digest);
CREATE TABLE layers (
    id               INTEGER PRIMARY KEY,
    chain_id         TEXT NOT NULL UNIQUE,
    diff_id          TEXT NOT NULL,
    parent_chain_id  TEXT,
    created_ns       INTEGER NOT NULL
);
CREATE TABLE cache_records (
    key           TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('json', 'bytes')),
    value         BLOB NOT NULL,
    created_ns    INTEGER NOT NULL,
    last_used_ns  INTEGER NOT NULL
);
CREATE TABLE stat_cache (
    dev             INTEGER NOT NULL,
    ino             INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    ctime_ns        INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    recorded_at_ns  INTEGER NOT NULL,
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
CREATE TABLE leases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    session     TEXT NOT NULL,
    created_ns  INTEGER NOT NULL
);
CREATE TABLE refs (
    owner   TEXT NOT NULL,
    target  TEXT NOT NULL,
    PRIMARY KEY (owner, target)
) WITHOUT ROWID;
CREATE INDEX refs_by_target ON refs (target);
";

/// An error inside a database closure: SQL failures get the action and db path attached by
/// [`MetaDb`]; store errors pass through unchanged.
#[derive(Debug)]
pub(crate) enum TxError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for TxError {
    fn from(error: rusqlite::Error) -> Self {
        TxError::Sql(error)
    }
}

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> Self {
        TxError::Store(error)
    }
}

/// The open metadata database of one store handle.
#[derive(Debug)]
pub(crate) struct MetaDb {
    path: PathBuf,
    // rusqlite connections are not Sync; the mutex lets a Store be shared across threads.
    conn: Mutex<Connection>,
}

impl MetaDb {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// Opening runs under an exclusive flock on `open_lock`: switching a fresh database to WAL
    /// needs an exclusive SQLite lock, and SQLite answers a second connection doing the same at
    /// that moment with an immediate `SQLITE_BUSY` (its deadlock rule skips the busy handler), so
    /// concurrent first opens of one store failed now and then. The lock makes them take turns;
    /// it is held for milliseconds, and only while opening.
    pub(crate) fn open(path: &Path, open_lock: &Path) -> Result<MetaDb> {
        let _opening = crate::lock::acquire(open_lock, crate::lock::LockMode::Exclusive, true)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Db {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let db = MetaDb {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        db.read("configure connection", |conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            // WAL mode is persistent: once set, later opens only read it and need no write lock.
            let mut mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                mode = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
            }
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(
                    mode,
                    "SQLite refused WAL mode; concurrent builds will serialise"
                );
            }
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(())
        })?;
        db.write("initialise schema", |tx| {
            let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found,
                    supported: SCHEMA_VERSION,
                }
                .into());
            }
            if found == 0 {
                tx.execute_batch(SCHEMA_V1)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            // Additive, so older kiln versions still read and write the table.
            crate::stat_cache::ensure_xattrs_column(tx)?;
            Ok(())
        })?;
        Ok(db)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection cannot leave a transaction open (rusqlite rolls
        // back on drop), so the connection is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs read-only work (or a single self-contained statement) on the connection.
    pub(crate) fn read<T>(
        &self,
        action: &'static str,
        work: impl FnOnce(&Connection) -> Result<T, TxError>,
    ) -> Result<T> {
        let conn = self.lock();
        work(&conn).map_err(|e| self.wrap(action, e))
    }

    /// Runs `work` in an immediate transaction, committed if `work` succeeds.
    pub(crate) fn write<T>(
        &self,
        action: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, TxError>,
    ) -> Result<T> {
        self.transaction(action, true, work)
    }

    /// Runs `work` in an immediate transaction that is committed if `commit` is true and `work`
    /// succeeds, and rolled back otherwise (a dry run sees exactly what a real run would do).
    pub(crate) fn transaction<T>(
        &self,
        action: &'static str,
        commit: bool,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, TxError>,
    ) -> Result<T> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| -> Result<T, TxError> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            if commit {
                tx.commit()?;
            } else {
                tx.rollback()?;
            }
            Ok(value)
        };
        run(&mut conn).map_err(|e| self.wrap(action, e))
    }

    fn wrap(&self, action: &'static str, error: TxError) -> StoreError {
        match error {
            TxError::Sql(source) if source.sqlite_error_code() == Some(ErrorCode::DiskFull) => {
                StoreError::DiskFull {
                    action,
                    path: self.path.clone(),
                    source: io::Error::new(io::ErrorKind::StorageFull, source),
                }
            }
            TxError::Sql(source) => StoreError::Db {
                action,
                path: self.path.clone(),
                source,
            },
            TxError::Store(error) => error,
        }
    }
}

/// Nanoseconds since the Unix epoch, the time unit of every timestamp in the database.
pub fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses a digest read from the database.
pub(crate) fn parse_digest(text: &str) -> Result<Digest, TxError> {
    text.parse().map_err(|_| {
        TxError::Store(StoreError::InvalidRecord {
            what: "digest",
            value: text.to_string(),
        })
    })
}

/// Converts a size read from the database (SQLite integers are signed).
pub(crate) fn to_u64(value: i64, what: &'static str) -> Result<u64, TxError> {
    u64::try_from(value).map_err(|_| {
        TxError::Store(StoreError::InvalidRecord {
            what,
            value: value.to_string(),
        })
    })
}

/// Converts a size for storage; sizes beyond i64 do not exist on real filesystems.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_keeps_the_schema_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let open_lock = dir.path().join("meta.lock");
        let db = MetaDb::open(&path, &open_lock).unwrap();
        db.write("insert", |tx| {
            tx.execute(
                "INSERT INTO blobs (digest, size, created_ns) VALUES ('x', 1, 2)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let db = MetaDb::open(&path, &open_lock).unwrap();
        let count: i64 = db
            .read("count", |c| {
                Ok(c.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(count, 1);
        db.write("bump", |tx| {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let error = MetaDb::open(&path, &open_lock).unwrap_err();
        assert!(
            matches!(error, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1)
        );
        assert!(error.to_string().contains("meta.db"), "{error}");
    }

    #[test]
    fn the_database_runs_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(&dir.path().join("meta.db"), &dir.path().join("meta.lock")).unwrap();
        let mode: String = db
            .read("mode", |c| {
                Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

//! Per-process working directories under `tmp/`, and reclaiming the ones dead processes left.
//!
//! Each open [`crate::Store`] owns a session: `tmp/<name>.lock`, flocked exclusively for the
//! session's life, and `tmp/<name>/`, where its ingests and layer extractions happen. A lock held
//! means a live owner (the kernel drops flocks when a process dies, even by kill -9), so reclaiming
//! is exact: a session whose lock can be taken is dead, and an entry with no lock file is an orphan.
//!
//! Ordering makes this race-free: an owner creates and locks the lock file (and checks it still
//! holds the file at that path) *before* creating its directory; a reclaimer removes the directory
//! *before* unlinking the lock file, holding the lock throughout.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Result, StoreError, io_err};

const LOCK_SUFFIX: &str = ".lock";

/// Distinguishes sessions opened by one process in the same nanosecond.
static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A live session: its lock is held until drop, when its directory is removed.
#[derive(Debug)]
pub(crate) struct Session {
    name: String,
    dir: PathBuf,
    lock_path: PathBuf,
    lock: Option<Flock<File>>,
    next_entry: AtomicU64,
}

impl Session {
    /// Creates a new session under `tmp`.
    pub(crate) fn create(tmp: &Path) -> Result<Session> {
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!(
                "s{}-{:x}-{}",
                std::process::id(),
                nanos,
                SESSION_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create session lock", &lock_path, e)),
            };
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                // A reclaimer grabbed the brand-new file; it will delete it. Pick another name.
                Err((_, Errno::EWOULDBLOCK)) => continue,
                Err((_, errno)) => {
                    return Err(StoreError::io(
                        "lock session file",
                        &lock_path,
                        io::Error::from(errno),
                    ));
                }
            };
            // A reclaimer may have locked and unlinked the file between create and flock: then we
            // hold a lock on a file no one else can see, which protects nothing.
            if !still_at_path(&lock, &lock_path)? {
                continue;
            }
            let dir = tmp.join(&name);
            fs::create_dir(&dir).map_err(io_err("create session directory", &dir))?;
            return Ok(Session {
                name,
                dir,
                lock_path,
                lock: Some(lock),
                next_entry: AtomicU64::new(0),
            });
        }
    }

    /// The session's name (recorded with leases so prune can tell live leases from dead ones).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The session's private directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, unused path inside the session directory.
    pub(crate) fn new_entry_path(&self, prefix: &str) -> PathBuf {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{prefix}-{n}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not remove session directory; the next store open reclaims it");
            return;
        }
        // Unlink while still holding the lock, then release it.
        if let Err(e) = fs::remove_file(&self.lock_path) {
            tracing::warn!(path = %self.lock_path.display(), error = %e, "could not remove session lock file");
        }
        drop(self.lock.take());
    }
}

/// Whether the session `name` under `tmp` belongs to a live process.
pub(crate) fn session_is_live(tmp: &Path, name: &str) -> Result<bool> {
    let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
    let file = match File::open(&lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("open session lock", &lock_path, e)),
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, errno)) => Err(StoreError::io(
            "test session lock",
            &lock_path,
            io::Error::from(errno),
        )),
    }
}

/// Removes every entry of `tmp` that belongs to no live session; returns the names removed.
///
/// # Errors
/// [`StoreError::Io`] when `tmp` cannot be listed or a dead entry cannot be removed.
pub(crate) fn reclaim_stale(tmp: &Path) -> Result<Vec<OsString>> {
    let mut removed = Vec::new();
    let entries = fs::read_dir(tmp).map_err(io_err("list temporary directory", tmp))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list temporary directory", tmp))?;
        let name = entry.file_name();
        if let Some(session) = strip_lock_suffix(&name) {
            if reclaim_session(tmp, session)? {
                removed.push(name);
            }
        } else {
            let mut lock_name = name.clone();
            lock_name.push(LOCK_SUFFIX);
            if tmp.join(&lock_name).exists() {
                continue; // handled through its lock file
            }
            let path = tmp.join(&name);
            if fs::symlink_metadata(&path).is_err() {
                continue; // already removed with its session earlier in this loop
            }
            remove_any(&path)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Removes session `name` if its owner is dead. Returns whether it was removed.
fn reclaim_session(tmp: &Path, name: &OsStr) -> Result<bool> {
    let mut lock_name = name.to_os_string();
    lock_name.push(LOCK_SUFFIX);
    let lock_path = tmp.join(&lock_name);
    let file = match File::open(&lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("open session lock", &lock_path, e)),
    };
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, errno)) => {
            return Err(StoreError::io(
                "lock session file",
                &lock_path,
                io::Error::from(errno),
            ));
        }
    };
    if !still_at_path(&lock, &lock_path)? {
        return Ok(false); // another reclaimer finished it
    }
    remove_any(&tmp.join(name))?;
    match fs::remove_file(&lock_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove session lock", &lock_path, e)),
    }
    drop(lock);
    Ok(true)
}

fn strip_lock_suffix(name: &OsStr) -> Option<&OsStr> {
    name.as_bytes()
        .strip_suffix(LOCK_SUFFIX.as_bytes())
        .map(OsStr::from_bytes)
}

/// Whether the open, locked `file` is still the one at `path`.
fn still_at_path(file: &File, path: &Path) -> Result<bool> {
    let held = file
        .metadata()
        .map_err(io_err("inspect session lock", path))?;
    match fs::metadata(path) {
        Ok(current) => Ok(current.dev() == held.dev() && current.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("inspect session lock", path, e)),
    }
}

/// Removes a file or a directory tree; a missing path is fine.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_session_survives_reclaim_and_a_dropped_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let session = Session::create(tmp.path()).unwrap();
        fs::write(session.new_entry_path("blob"), b"x").unwrap();
        assert!(reclaim_stale(tmp.path()).unwrap().is_empty());
        assert!(session.dir().is_dir());
        assert!(session_is_live(tmp.path(), session.name()).unwrap());
        let name = session.name().to_string();
        drop(session);
        assert!(!session_is_live(tmp.path(), &name).unwrap());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn dead_sessions_and_orphans_are_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        // A session whose process died: lock file present, nobody holds it.
        fs::write(tmp.path().join("s1-dead-0.lock"), b"").unwrap();
        fs::create_dir_all(tmp.path().join("s1-dead-0/layer-0/etc")).unwrap();
        // Leftovers that belong to no session at all.
        fs::write(tmp.path().join("stray-file"), b"x").unwrap();
        fs::create_dir(tmp.path().join("stray-dir")).unwrap();
        let live = Session::create(tmp.path()).unwrap();

        let mut removed = reclaim_stale(tmp.path()).unwrap();
        removed.sort();
        assert_eq!(removed, ["s1-dead-0.lock", "stray-dir", "stray-file"]);
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [live.name().to_string(), format!("{}.lock", live.name())]
        );
    }
}

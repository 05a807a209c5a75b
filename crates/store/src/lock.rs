//! The store-wide lock that keeps prune away from running builds.
//!
//! Builds (and anything else that writes blobs or layers it has not referenced yet) hold a shared
//! flock on `<root>/lock`; prune holds it exclusively. Between a blob's commit and the tag or cache
//! record that references it, a build's shared lock is what stops a prune from deleting it.
//! flock locks belong to an open file description, so two handles in one process also exclude each
//! other — a process holding a shared lock must not prune (it would wait for itself).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Result, StoreError, io_err};

/// Whether a [`StoreLock`] shares the store or owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once: builds, pulls, loads.
    Shared,
    /// One holder, no shared holders: prune.
    Exclusive,
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    mode: LockMode,
    _lock: Flock<File>,
}

impl StoreLock {
    /// The mode this lock was taken in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

/// Takes the lock at `path`. With `wait` false, a conflicting holder gives [`StoreError::Busy`].
pub(crate) fn acquire(path: &Path, mode: LockMode, wait: bool) -> Result<StoreLock> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open store lock", path))?;
    let arg = match (mode, wait) {
        (LockMode::Shared, true) => FlockArg::LockShared,
        (LockMode::Shared, false) => FlockArg::LockSharedNonblock,
        (LockMode::Exclusive, true) => FlockArg::LockExclusive,
        (LockMode::Exclusive, false) => FlockArg::LockExclusiveNonblock,
    };
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(StoreLock { mode, _lock: lock }),
            // Interrupted by a signal while waiting: wait again.
            Err((returned, Errno::EINTR)) => file = returned,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Busy {
                    path: PathBuf::from(path),
                    what: match mode {
                        LockMode::Shared => "a prune is running",
                        LockMode::Exclusive => "a build or another prune is running",
                    },
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::io("lock store", path, io::Error::from(errno)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = acquire(&path, LockMode::Shared, false).unwrap();
        let second = acquire(&path, LockMode::Shared, false).unwrap();
        assert!(matches!(
            acquire(&path, LockMode::Exclusive, false),
            Err(StoreError::Busy { .. })
        ));
        drop(first);
        drop(second);
        let exclusive = acquire(&path, LockMode::Exclusive, false).unwrap();
        assert_eq!(exclusive.mode(), LockMode::Exclusive);
        assert!(matches!(
            acquire(&path, LockMode::Shared, false),
            Err(StoreError::Busy { .. })
        ));
    }
}

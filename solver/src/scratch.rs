//! Temporary directories for one op (snapshots, staged contexts, sandbox files), created inside the
//! store's session scratch dir so that a crash leaves nothing the next `Store::open` does not reclaim.
//!
//! A RUN step that changed nothing leaves a scratch dir holding just an empty overlay `upper` and
//! `work` dir: [`ScratchDir::recycle`] keeps such a dir for the next step of the session
//! ([`ScratchDir::reuse_or_new`]) instead of removing it, sparing that step three `mkdir`s and its
//! end three `rmdir`s on the store's filesystem. Nothing else is ever recycled: a dir is checked to
//! hold exactly those empty dirs before it is kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_store::Store;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Recycled dirs, each ready for reuse: `(purpose, path)`. The paths lie inside a session dir, which
/// removes them with itself; one whose session is gone fails the existence check on reuse.
static RECYCLED: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// At most this many recycled dirs wait at once (enough for the steps running in parallel).
const MAX_RECYCLED: usize = 8;

/// A directory under the store's scratch dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    // Keeps the session (the parent dir) alive.
    _store: Store,
}

impl ScratchDir {
    /// Creates `<scratch>/solve-<purpose>-<n>`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(store: &Store, purpose: &str) -> io::Result<ScratchDir> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = store.scratch_dir().join(format!("solve-{purpose}-{n}"));
        fs::create_dir_all(&path)?;
        Ok(ScratchDir {
            path,
            _store: store.clone(),
        })
    }

    /// A dir of this session that [`ScratchDir::recycle`] kept for `purpose`, else a new one. A
    /// reused dir holds an empty `upper` dir and a `work` dir and nothing else.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn reuse_or_new(store: &Store, purpose: &str) -> io::Result<ScratchDir> {
        let session = store.scratch_dir();
        let reused = RECYCLED.lock().ok().and_then(|mut recycled| {
            let index = recycled
                .iter()
                .position(|(p, path)| p == purpose && path.parent() == Some(session))?;
            Some(recycled.swap_remove(index).1)
        });
        match reused {
            Some(path) if path.is_dir() => Ok(ScratchDir {
                path,
                _store: store.clone(),
            }),
            _ => ScratchDir::new(store, purpose),
        }
    }

    /// Keeps this dir for the next [`ScratchDir::reuse_or_new`] of `purpose` when it holds nothing but
    /// an empty `upper` dir and a `work` dir that is empty or holds only overlayfs's empty `work`
    /// dir (what an overlay snapshot leaves after a step that changed nothing); removes it otherwise.
    pub fn recycle(self, purpose: &str) {
        if !is_reusable_overlay_scratch(&self.path) {
            return;
        }
        let Ok(mut recycled) = RECYCLED.lock() else {
            return;
        };
        // Dirs of sessions that ended went with them: forget those first.
        recycled.retain(|(_, path)| path.is_dir());
        if recycled.len() >= MAX_RECYCLED {
            return;
        }
        recycled.push((purpose.to_string(), self.path.clone()));
        // Ownership moves to the pool: skip the removal in Drop (the session removes it at the end).
        std::mem::forget(self);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The names of the entries of `dir`, or None when it cannot be read.
fn entry_names(dir: &Path) -> Option<Vec<std::ffi::OsString>> {
    fs::read_dir(dir)
        .ok()?
        .map(|entry| entry.ok().map(|e| e.file_name()))
        .collect()
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && entry_names(dir).is_some_and(|names| names.is_empty())
}

fn is_reusable_overlay_scratch(dir: &Path) -> bool {
    let Some(mut names) = entry_names(dir) else {
        return false;
    };
    names.sort();
    if names != ["upper", "work"] {
        return false;
    }
    let work = dir.join("work");
    let work_ok = fs::symlink_metadata(&work).is_ok_and(|m| m.is_dir())
        && match entry_names(&work) {
            Some(names) if names.is_empty() => true,
            Some(names) => names == ["work"] && is_empty_dir(&work.join("work")),
            None => false,
        };
    work_ok && is_empty_dir(&dir.join("upper"))
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a scratch dir; the next store open reclaims it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_overlay_leftovers_are_reusable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        fs::create_dir_all(dir.join("upper")).unwrap();
        fs::create_dir_all(dir.join("work/work")).unwrap();
        assert!(is_reusable_overlay_scratch(&dir));

        fs::write(dir.join("upper/x"), "changed").unwrap();
        assert!(!is_reusable_overlay_scratch(&dir), "a non-empty upper dir");
        fs::remove_file(dir.join("upper/x")).unwrap();

        fs::create_dir(dir.join("work/work/leftover")).unwrap();
        assert!(!is_reusable_overlay_scratch(&dir), "overlayfs leftovers");
        fs::remove_dir(dir.join("work/work/leftover")).unwrap();

        fs::create_dir(dir.join("secrets")).unwrap();
        assert!(!is_reusable_overlay_scratch(&dir), "a mount's files");
        fs::remove_dir(dir.join("secrets")).unwrap();

        fs::remove_dir_all(dir.join("upper")).unwrap();
        fs::write(dir.join("upper"), "").unwrap();
        assert!(!is_reusable_overlay_scratch(&dir), "upper is not a dir");
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    #[test]
    fn a_recycled_dir_is_reused_only_by_its_session_and_purpose() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("a")).unwrap();
        let other = Store::open(&tmp.path().join("b")).unwrap();

        let scratch = ScratchDir::new(&store, "test-recycle").unwrap();
        fs::create_dir_all(scratch.path().join("upper")).unwrap();
        fs::create_dir_all(scratch.path().join("work/work")).unwrap();
        let path = scratch.path().to_path_buf();
        scratch.recycle("test-recycle");
        assert!(path.is_dir(), "kept");

        let elsewhere = ScratchDir::reuse_or_new(&other, "test-recycle").unwrap();
        assert_ne!(elsewhere.path(), path, "another store's session");
        let unrelated = ScratchDir::reuse_or_new(&store, "test-other").unwrap();
        assert_ne!(unrelated.path(), path, "another purpose");
        let reused = ScratchDir::reuse_or_new(&store, "test-recycle").unwrap();
        assert_eq!(reused.path(), path);

        // Dirty: removed, not kept.
        fs::write(reused.path().join("upper/changed"), "x").unwrap();
        reused.recycle("test-recycle");
        assert!(!path.exists());
        let fresh = ScratchDir::reuse_or_new(&store, "test-recycle").unwrap();
        assert_ne!(fresh.path(), path);
    }
}

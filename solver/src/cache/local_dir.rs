//! A local cache directory (`--cache-to type=local,dest=DIR`, `--cache-from type=local,src=DIR`)
//! that several builds share: the lock that keeps them from seeing each other half-done, and the
//! removal of the blobs no manifest or index in the directory references any more, so a CI cache
//! dir stops growing with every export (BuildKit's `reset=true`; on by default in kiln).
//!
//! The lock is `flock` on `DIR/.kiln-lock`: an export holds it exclusively from its first blob to
//! the end of its clean-up, so two exports never interleave and one never removes what the other
//! is writing (the race of buildkit#7102, whose clean-up runs outside its lock). An import holds it
//! shared only while it reads `index.json`, the manifest and the config; its layer blobs are
//! fetched later, lazily, without the lock. As a second guard, for writers that do not take the
//! lock (another tool, or a file system where `flock` is not shared between hosts), a blob is
//! removed only if it was last modified before the export started, measured in the file system's
//! own clock: the lock file's mtime, written when the lock is taken.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_image::Digest;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::transfer::{TransferError, io_error, read_json};

/// The lock file inside a cache directory.
pub const LOCK_FILE: &str = ".kiln-lock";

/// What the names of an export's temp files contain (`.<name>.kiln-tmp-<pid>`).
pub const TEMP_MARKER: &str = ".kiln-tmp-";

/// Media types of blobs that list further blobs (followed when finding what is referenced).
const NESTING_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The fields of a manifest or index that hold descriptors (one or a list).
const DESCRIPTOR_FIELDS: [&str; 5] = ["config", "layers", "manifests", "blobs", "subject"];

/// An export's exclusive hold on a cache directory; released on drop.
#[derive(Debug)]
pub struct ExportLock {
    _lock: Flock<File>,
    /// When the export started, in the file system's clock (the lock file's new mtime).
    started: SystemTime,
}

impl ExportLock {
    /// Waits for every other export and import of `dir` (which must exist) to finish, then holds
    /// the directory until dropped.
    ///
    /// # Errors
    /// [`TransferError::Io`] when the lock file cannot be created, locked or written.
    pub fn acquire(dir: &Path) -> Result<ExportLock, TransferError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open the cache lock", &path))?;
        let mut lock = flock(file, FlockArg::LockExclusive, &path)?;
        // Writing (not `set_times`) lets the file system stamp the time, in the same clock as
        // the blobs it stamps after this.
        lock.set_len(0)
            .and_then(|()| writeln!(&mut *lock, "{}", std::process::id()))
            .map_err(io_error("write the cache lock", &path))?;
        let started = lock
            .metadata()
            .and_then(|meta| meta.modified())
            .map_err(io_error("read the mtime of", &path))?;
        Ok(ExportLock {
            _lock: lock,
            started,
        })
    }

    /// When the export started (see [`ExportLock::acquire`]).
    pub fn started(&self) -> SystemTime {
        self.started
    }
}

/// A shared hold on `dir` while an import reads its index, if the directory has a lock file (a
/// directory no kiln exported with a lock, or a read-only one, is read without it). A lock that
/// cannot be taken is not an error: the import then reads as it would without one.
pub fn lock_for_import(dir: &Path) -> Option<Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "reading the cache without its lock");
            return None;
        }
    };
    flock(file, FlockArg::LockShared, &path)
        .inspect_err(|error| tracing::debug!(%error, "reading the cache without its lock"))
        .ok()
}

fn flock(mut file: File, arg: FlockArg, path: &Path) -> Result<Flock<File>, TransferError> {
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(lock),
            // A signal while waiting: wait again.
            Err((returned, Errno::EINTR)) => file = returned,
            Err((_, errno)) => {
                return Err(TransferError::Io {
                    action: "lock",
                    path: path.to_path_buf(),
                    source: io::Error::from(errno),
                });
            }
        }
    }
}

/// The hex digests of every sha256 blob that `dir/index.json` references, directly or through
/// the manifests and indexes it lists (recursively).
///
/// # Errors
/// [`TransferError`] when the index or a manifest or index it references is missing, too big,
/// damaged (its digest does not match) or not JSON: then nothing can safely be removed.
pub fn referenced_blobs(dir: &Path) -> Result<HashSet<String>, TransferError> {
    let blobs_dir = dir.join("blobs").join("sha256");
    let index_path = dir.join("index.json");
    let index: serde_json::Value = read_json(&index_path, None)?;
    let mut referenced = HashSet::new();
    let mut pending: Vec<serde_json::Value> = descriptors(&index);
    while let Some(descriptor) = pending.pop() {
        let text = descriptor.get("digest").and_then(|d| d.as_str());
        // Other algorithms live in other dirs, which are never cleaned.
        if text.is_some_and(|text| !text.starts_with("sha256:")) {
            continue;
        }
        let Some(digest) = text.and_then(|d| d.parse::<Digest>().ok()) else {
            return Err(TransferError::Format {
                path: index_path,
                reason: format!("a descriptor without a valid digest: {descriptor}"),
            });
        };
        let hex = digest.hex().to_string();
        if !referenced.insert(hex.clone()) {
            continue;
        }
        let nests = descriptor
            .get("mediaType")
            .and_then(|m| m.as_str())
            .is_some_and(|media_type| NESTING_MEDIA_TYPES.contains(&media_type));
        if nests {
            let nested: serde_json::Value = read_json(&blobs_dir.join(&hex), Some(&digest))?;
            pending.extend(descriptors(&nested));
        }
    }
    Ok(referenced)
}

/// The descriptors a manifest or index lists.
fn descriptors(document: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for field in DESCRIPTOR_FIELDS {
        match document.get(field) {
            Some(serde_json::Value::Array(items)) => found.extend(items.iter().cloned()),
            Some(item @ serde_json::Value::Object(_)) => found.push(item.clone()),
            _ => {}
        }
    }
    found
}

/// What a clean-up of a cache directory did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanUp {
    /// Files removed: unreferenced blobs, and temp files of exports that died.
    pub removed: usize,
    /// Bytes they held.
    pub bytes: u64,
    /// Unreferenced files kept because they changed after `started` (a writer that does not
    /// take the lock).
    pub kept_recent: usize,
}

/// Removes from `dir/blobs/sha256` every file not in `referenced` that was last modified before
/// `started`, and from `dir` itself the temp files (`.<name>.kiln-tmp-<pid>`) of exports that
/// died before their rename (older than `started` too: under the lock, no live export has any).
/// A file that cannot be removed is logged and left; the clean-up goes on.
///
/// # Errors
/// [`TransferError::Io`] when the blobs directory cannot be listed.
pub fn remove_unreferenced(
    dir: &Path,
    referenced: &HashSet<String>,
    started: SystemTime,
) -> Result<CleanUp, TransferError> {
    let blobs_dir = dir.join("blobs").join("sha256");
    let mut clean_up = CleanUp::default();
    let mut candidates: Vec<PathBuf> = Vec::new();
    let entries = fs::read_dir(&blobs_dir).map_err(io_error("list", &blobs_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", &blobs_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !referenced.contains(&name) {
            candidates.push(entry.path());
        }
    }
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TEMP_MARKER) {
            candidates.push(entry.path());
        }
    }
    for path in candidates {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let older = meta.modified().is_ok_and(|modified| modified < started);
        if !older {
            clean_up.kept_recent += 1;
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                clean_up.removed += 1;
                clean_up.bytes += meta.len();
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove an old cache blob");
            }
        }
    }
    Ok(clean_up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Writes `bytes` as a blob of `dir`, last modified `age` ago; returns its hex digest.
    fn blob(dir: &Path, bytes: &[u8], age: Duration) -> String {
        let hex = Digest::of(bytes).hex().to_string();
        let path = dir.join("blobs/sha256").join(&hex);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        let time = SystemTime::now() - age;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(time))
            .unwrap();
        hex
    }

    fn index(dir: &Path, manifests: &[serde_json::Value]) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }

    fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": Digest::of(bytes).to_string(),
            "size": bytes.len(),
        })
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn only_unreferenced_blobs_older_than_the_export_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let layer = blob(dir.path(), b"layer", HOUR);
        let config = blob(dir.path(), b"{}", HOUR);
        let manifest_json = serde_json::json!({
            "schemaVersion": 2,
            "config": descriptor("application/vnd.kiln.cache.config.v1+json", b"{}"),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", b"layer")],
        })
        .to_string();
        let manifest = blob(dir.path(), manifest_json.as_bytes(), HOUR);
        // An index listing the manifest, listed by index.json: references are followed through.
        let nested_json = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [descriptor(NESTING_MEDIA_TYPES[0], manifest_json.as_bytes())],
        })
        .to_string();
        let nested = blob(dir.path(), nested_json.as_bytes(), HOUR);
        // A blob of another algorithm is skipped, not an error (its dir is never cleaned).
        let other_algorithm = serde_json::json!({
            "mediaType": "application/octet-stream",
            "digest": format!("sha512:{}", "a".repeat(128)),
            "size": 1,
        });
        index(
            dir.path(),
            &[
                descriptor(NESTING_MEDIA_TYPES[1], nested_json.as_bytes()),
                other_algorithm,
            ],
        );
        let old = blob(dir.path(), b"old layer", HOUR);
        let recent = blob(dir.path(), b"being written", Duration::ZERO);
        // The temp file of an export killed before its rename.
        let stale = dir.path().join(format!(".index.json{TEMP_MARKER}999"));
        fs::write(&stale, b"partial").unwrap();
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(SystemTime::now() - HOUR))
            .unwrap();

        let referenced = referenced_blobs(dir.path()).unwrap();
        let expected: HashSet<String> = [&layer, &config, &manifest, &nested]
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(referenced, expected);
        let started = SystemTime::now() - Duration::from_secs(60);
        let clean_up = remove_unreferenced(dir.path(), &referenced, started).unwrap();
        assert_eq!(
            clean_up,
            CleanUp {
                removed: 2,
                bytes: 9 + 7,
                kept_recent: 1
            }
        );
        assert!(!stale.exists());
        let blobs = dir.path().join("blobs/sha256");
        assert!(!blobs.join(&old).exists());
        for kept in [&layer, &config, &manifest, &nested, &recent] {
            assert!(blobs.join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn a_damaged_manifest_stops_the_clean_up_before_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        index(dir.path(), &[descriptor(NESTING_MEDIA_TYPES[0], manifest)]);
        let hex = Digest::of(manifest).hex().to_string();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("blobs/sha256").join(&hex), b"{}").unwrap();
        let error = referenced_blobs(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&hex), "{error}");

        fs::remove_file(dir.path().join("blobs/sha256").join(&hex)).unwrap();
        assert!(referenced_blobs(dir.path()).is_err(), "a missing manifest");
    }

    #[test]
    fn the_export_lock_stamps_the_start_in_the_file_systems_clock() {
        let dir = tempfile::tempdir().unwrap();
        let before = SystemTime::now() - Duration::from_secs(1);
        let lock = ExportLock::acquire(dir.path()).unwrap();
        assert!(lock.started() >= before);
        assert!(dir.path().join(LOCK_FILE).is_file());
        // flock locks belong to the open file: another open of the file conflicts.
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(Flock::lock(other, FlockArg::LockSharedNonblock).is_err());
        drop(lock);
        assert!(lock_for_import(dir.path()).is_some());
        assert!(lock_for_import(&dir.path().join("missing")).is_none());
    }
}

//! Content checksums of exactly what a COPY/ADD selects, for cache keys.
//!
//! For every entry under the selected sources (after `.dockerignore` and `COPY --exclude`), in
//! walk order, an [`EntryRecord`] holds the root-relative path, type, permission and special
//! bits, uid, gid, size, extended attributes, and the content sha256 (regular files), link target
//! (symlinks) or device number (devices). Each record has its own digest, and the checksum is sha256 over the sources
//! and all record digests. Timestamps are deliberately left out: `touch` alone never invalidates
//! a step, and the records let the solver explain a miss ("src/main.rs content changed").
//!
//! File contents are streamed through the hasher in 64 KiB blocks, several files at a time on
//! rayon's pool; the [`StatCache`] skips reading files whose identity and timestamps are
//! unchanged, under the racy-entry rule described in [`crate::stat_cache`].
//!
//! The entries are exactly those of [`select_entries`], which the copy itself must use too.
//! `COPY --exclude` patterns use `.dockerignore` syntax and are matched against the path as it
//! lands in the destination: relative to a directory source, or the file name of a file source.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::dockerignore::{IgnorePatterns, PatternError};
use crate::sources::{ResolvedSource, SourceError, select_entries};
use crate::stat_cache::{CachedDigest, DEFAULT_RACY_MARGIN, StatCache, StatKey, now_ns};
use crate::walk::{Entry, FileKind};

/// Block size for streaming file contents into the hasher.
const READ_BLOCK: usize = 64 * 1024;

/// Why a checksum could not be computed.
#[derive(Debug, Error)]
pub enum ChecksumError {
    /// A `COPY --exclude` pattern is invalid.
    #[error("invalid --exclude pattern: {0}")]
    Exclude(#[source] PatternError),
    /// Selecting the entries under a source failed.
    #[error(transparent)]
    Select(#[from] SourceError),
    /// Reading a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file on disk.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Tuning of a checksum run.
#[derive(Debug, Clone, Copy)]
pub struct ChecksumOptions {
    /// Safety margin of the racy-entry rule (see [`crate::stat_cache`]).
    pub racy_margin: Duration,
}

impl Default for ChecksumOptions {
    fn default() -> Self {
        Self {
            racy_margin: DEFAULT_RACY_MARGIN,
        }
    }
}

/// What one entry contributes to a checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// Path relative to the root (`.` for the root itself).
    pub path: String,
    /// File type.
    pub kind: FileKind,
    /// Permission and special bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size of a regular file, 0 for everything else (directory sizes are file-system noise).
    pub size: u64,
    /// `sha256:<hex>` of a regular file, the target of a symlink, `major:minor` of a device,
    /// empty otherwise.
    pub content: String,
    /// `sha256:<hex>` over the extended attributes (name and value, sorted by name; the host's
    /// `security.selinux` label left out), empty when there are none.
    #[serde(default)]
    pub xattrs: String,
    /// `sha256:<hex>` over all fields above.
    pub digest: String,
}

/// Counters of one checksum run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumStats {
    /// Regular files seen.
    pub files: usize,
    /// Files whose content was read and hashed.
    pub files_hashed: usize,
    /// Files whose digest came from the stat cache without reading them.
    pub cache_hits: usize,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
}

/// The checksum of a selection, with the per-entry records behind it (serialisable, so that a
/// cache record can keep them for explaining a later miss).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentChecksum {
    /// `sha256:<hex>` over the sources and every entry.
    pub digest: String,
    /// One record per entry, in walk order (a path selected twice is listed once).
    pub entries: Vec<EntryRecord>,
    /// What the run did (not part of the identity of the content).
    #[serde(default, skip_serializing)]
    pub stats: ChecksumStats,
}

/// One difference between two checksums' records, for cache-miss explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    /// The path is new.
    Added(String),
    /// The path is gone.
    Removed(String),
    /// The path changed; `what` lists the fields (`type`, `content`, `mode`, `owner`, `link target`).
    Changed {
        /// The path.
        path: String,
        /// What changed.
        what: Vec<&'static str>,
    },
}

impl fmt::Display for EntryChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added(path) => write!(f, "{path} added"),
            Self::Removed(path) => write!(f, "{path} removed"),
            Self::Changed { path, what } => write!(f, "{path} {} changed", what.join(", ")),
        }
    }
}

/// Lists what differs between the records of an earlier checksum and a new one, in path order
/// of the new records (removed paths last).
pub fn diff_entries(old: &[EntryRecord], new: &[EntryRecord]) -> Vec<EntryChange> {
    use std::collections::HashMap;
    let old_by_path: HashMap<&str, &EntryRecord> =
        old.iter().map(|r| (r.path.as_str(), r)).collect();
    let new_paths: std::collections::HashSet<&str> = new.iter().map(|r| r.path.as_str()).collect();
    let mut changes = Vec::new();
    for record in new {
        let Some(before) = old_by_path.get(record.path.as_str()) else {
            changes.push(EntryChange::Added(record.path.clone()));
            continue;
        };
        if before.digest == record.digest {
            continue;
        }
        let mut what = Vec::new();
        if before.kind != record.kind {
            what.push("type");
        } else if before.content != record.content || before.size != record.size {
            what.push(if record.kind == FileKind::Symlink {
                "link target"
            } else {
                "content"
            });
        }
        if before.mode != record.mode {
            what.push("mode");
        }
        if (before.uid, before.gid) != (record.uid, record.gid) {
            what.push("owner");
        }
        if before.xattrs != record.xattrs {
            what.push("xattrs");
        }
        changes.push(EntryChange::Changed {
            path: record.path.clone(),
            what,
        });
    }
    for record in old {
        if !new_paths.contains(record.path.as_str()) {
            changes.push(EntryChange::Removed(record.path.clone()));
        }
    }
    changes
}

/// Checksums the selected sources under `root` with default options.
///
/// `ignore` is the `.dockerignore` of a build context (`None` for another stage's root), and
/// `excludes` the `COPY --exclude` patterns.
///
/// # Errors
/// [`ChecksumError`] when an exclude pattern is invalid or an entry cannot be read.
pub fn checksum(
    root: &Path,
    sources: &[ResolvedSource],
    ignore: Option<&IgnorePatterns>,
    excludes: &[String],
    stat_cache: &dyn StatCache,
) -> Result<ContentChecksum, ChecksumError> {
    checksum_with_options(
        root,
        sources,
        ignore,
        excludes,
        stat_cache,
        &ChecksumOptions::default(),
    )
}

/// [`checksum`] with explicit options.
///
/// # Errors
/// [`ChecksumError`] when an exclude pattern is invalid or an entry cannot be read.
pub fn checksum_with_options(
    root: &Path,
    sources: &[ResolvedSource],
    ignore: Option<&IgnorePatterns>,
    excludes: &[String],
    stat_cache: &dyn StatCache,
    options: &ChecksumOptions,
) -> Result<ContentChecksum, ChecksumError> {
    let excludes = IgnorePatterns::compile(excludes).map_err(ChecksumError::Exclude)?;

    // Collect entries per source first (cheap: metadata only), then hash in parallel.
    let selection = select_entries(root, sources, ignore, &excludes)?;
    let per_source: Vec<(usize, &ResolvedSource)> = selection
        .iter()
        .map(|selected| (selected.entries.len(), &selected.source))
        .collect();
    let entries: Vec<&Entry> = selection.iter().flat_map(|s| s.entries.iter()).collect();
    let file_keys: Vec<StatKey> = entries
        .iter()
        .filter(|entry| entry.kind == FileKind::File)
        .map(|entry| stat_key(entry))
        .collect();
    stat_cache.prefetch(&file_keys);

    let counters = Counters::default();
    let records: Vec<EntryRecord> = entries
        .par_iter()
        .map(|entry| record_entry(root, entry, stat_cache, options, &counters))
        .collect::<Result<_, _>>()?;

    let mut top = Sha256::new();
    top.update(b"kiln.context.checksum.v1\n");
    let mut offset = 0;
    for (count, source) in &per_source {
        top.update(format!("source\0{}\0{}\0{count}\n", source.requested, source.path).as_bytes());
        for record in &records[offset..offset + count] {
            top.update(format!("{}\0{}\n", record.path, record.digest).as_bytes());
        }
        offset += count;
    }
    let digest = format!("sha256:{}", hex::encode(top.finalize()));

    let mut seen = std::collections::HashSet::new();
    let unique: Vec<EntryRecord> = records
        .into_iter()
        .filter(|r| seen.insert(r.path.clone()))
        .collect();
    Ok(ContentChecksum {
        digest,
        entries: unique,
        stats: counters.snapshot(),
    })
}

#[derive(Default)]
struct Counters {
    files: AtomicUsize,
    files_hashed: AtomicUsize,
    cache_hits: AtomicUsize,
    bytes_hashed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ChecksumStats {
        ChecksumStats {
            files: self.files.load(Ordering::Relaxed),
            files_hashed: self.files_hashed.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            bytes_hashed: self.bytes_hashed.load(Ordering::Relaxed),
        }
    }
}

/// Builds the record of one entry, hashing file content (or taking it from the stat cache).
fn record_entry(
    root: &Path,
    entry: &Entry,
    stat_cache: &dyn StatCache,
    options: &ChecksumOptions,
    counters: &Counters,
) -> Result<EntryRecord, ChecksumError> {
    let (size, content) = match entry.kind {
        FileKind::File => {
            counters.files.fetch_add(1, Ordering::Relaxed);
            let sha = file_sha256(root, entry, stat_cache, options, counters)?;
            (entry.size, format!("sha256:{}", hex::encode(sha)))
        }
        FileKind::Symlink => (0, entry.link_target.clone().unwrap_or_default()),
        FileKind::CharDevice | FileKind::BlockDevice => {
            let (major, minor) = (libc::major(entry.rdev), libc::minor(entry.rdev));
            (0, format!("{major}:{minor}"))
        }
        FileKind::Dir | FileKind::Fifo | FileKind::Socket => (0, String::new()),
    };
    let path = root.join(&entry.path);
    let xattrs = xattrs_digest(&path).map_err(|source| ChecksumError::Io {
        action: "read extended attributes of",
        path,
        source,
    })?;
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "kiln.context.entry.v1\0{}\0{}\0{:o}\0{}\0{}\0{}\0{}\0{}",
            entry.path,
            entry.kind.as_str(),
            entry.mode,
            entry.uid,
            entry.gid,
            size,
            content,
            xattrs
        )
        .as_bytes(),
    );
    Ok(EntryRecord {
        path: entry.path.clone(),
        kind: entry.kind,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        size,
        content,
        xattrs,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

/// The stat cache key of a walked entry.
fn stat_key(entry: &Entry) -> StatKey {
    StatKey {
        dev: entry.dev,
        ino: entry.ino,
        size: entry.size,
        mtime_ns: entry.mtime_ns,
        ctime_ns: entry.ctime_ns,
    }
}

/// The content sha256 of a regular file: from the stat cache when the record is trustworthy,
/// otherwise by streaming the file (and recording the result when it is not racy and the file
/// did not change while being read).
fn file_sha256(
    root: &Path,
    entry: &Entry,
    stat_cache: &dyn StatCache,
    options: &ChecksumOptions,
    counters: &Counters,
) -> Result<[u8; 32], ChecksumError> {
    let key = stat_key(entry);
    if let Some(cached) = stat_cache.get(&key) {
        if cached.is_trustworthy(&key, options.racy_margin) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(cached.sha256);
        }
    }
    // Taken before reading: a write racing with the read makes the record racy.
    let recorded_at_ns = now_ns();
    let path = root.join(&entry.path);
    let io_error = |action: &'static str| {
        let path = path.clone();
        move |source| ChecksumError::Io {
            action,
            path,
            source,
        }
    };
    // O_NOFOLLOW: the entry was a regular file when walked; never read through a symlink
    // swapped in since.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_error("open"))?;
    let (sha256, bytes) = stream_sha256(&mut file).map_err(io_error("read"))?;
    counters.files_hashed.fetch_add(1, Ordering::Relaxed);
    counters.bytes_hashed.fetch_add(bytes, Ordering::Relaxed);

    let after = file.metadata().map_err(io_error("fstat"))?;
    let unchanged = after.dev() == key.dev
        && after.ino() == key.ino
        && after.size() == key.size
        && bytes == key.size
        && after.mtime() * 1_000_000_000 + after.mtime_nsec() == key.mtime_ns
        && after.ctime() * 1_000_000_000 + after.ctime_nsec() == key.ctime_ns;
    let record = CachedDigest {
        sha256,
        recorded_at_ns,
    };
    if unchanged && record.is_trustworthy(&key, options.racy_margin) {
        stat_cache.put(&key, record);
    }
    Ok(sha256)
}

/// Streams a file through sha256; returns the digest and the number of bytes read.
fn stream_sha256(file: &mut File) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BLOCK];
    let mut total = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// Extended attribute left out of checksums: the host's SELinux label says where the file sits
/// on this machine, not what it is.
const IGNORED_XATTR: &[u8] = b"security.selinux";

/// sha256 over a path's extended attributes (not following symlinks), sorted by name; empty
/// when it has none or the file system does not support them.
fn xattrs_digest(path: &Path) -> io::Result<String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let names = read_xattr_buffer(|buf, len| {
        // SAFETY: c_path is NUL-terminated; buf is valid for len bytes (or null with len 0).
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.cast(), len) }
    })?;
    let mut names: Vec<&[u8]> = names
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty() && *name != IGNORED_XATTR)
        .collect();
    if names.is_empty() {
        return Ok(String::new());
    }
    names.sort_unstable();
    let mut hasher = Sha256::new();
    for name in names {
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name with NUL"))?;
        let value = read_xattr_buffer(|buf, len| {
            // SAFETY: both strings are NUL-terminated; buf is valid for len bytes.
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len) }
        })?;
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Runs a size-query-then-fill xattr call, retrying when the value grows in between; "not
/// supported" and "no such attribute" read as empty.
fn read_xattr_buffer(call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return xattr_error_as_empty(io::Error::last_os_error());
        }
        let mut buffer = vec![0u8; size.unsigned_abs()];
        if buffer.is_empty() {
            return Ok(buffer);
        }
        let filled = call(buffer.as_mut_ptr(), buffer.len());
        if filled >= 0 {
            buffer.truncate(filled.unsigned_abs());
            return Ok(buffer);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return xattr_error_as_empty(err);
        }
    }
}

fn xattr_error_as_empty(err: io::Error) -> io::Result<Vec<u8>> {
    match err.raw_os_error() {
        Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    use super::*;
    use crate::sources::{SourceOptions, resolve_sources};
    use crate::stat_cache::MemoryStatCache;

    /// Records the order of prefetch and get calls, answering from an in-memory cache.
    #[derive(Default)]
    struct RecordingCache {
        inner: MemoryStatCache,
        calls: Mutex<Vec<(&'static str, Vec<StatKey>)>>,
    }

    impl StatCache for RecordingCache {
        fn prefetch(&self, keys: &[StatKey]) {
            self.calls.lock().unwrap().push(("prefetch", keys.to_vec()));
        }
        fn get(&self, key: &StatKey) -> Option<CachedDigest> {
            self.calls.lock().unwrap().push(("get", vec![*key]));
            self.inner.get(key)
        }
        fn put(&self, key: &StatKey, digest: CachedDigest) {
            self.inner.put(key, digest);
        }
    }

    fn lstat_key(path: &Path) -> StatKey {
        let meta = std::fs::symlink_metadata(path).unwrap();
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    #[test]
    fn the_selected_files_are_prefetched_once_before_any_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        std::fs::write(root.join("src/a.rs"), "a").unwrap();
        std::fs::write(root.join("src/deep/b.rs"), "bb").unwrap();
        std::fs::write(root.join("src/skip.log"), "ignored").unwrap();
        std::fs::write(root.join("src/deep/c.tmp"), "excluded").unwrap();
        std::fs::write(root.join("outside.txt"), "not selected").unwrap();
        symlink("a.rs", root.join("src/link")).unwrap();

        let ignore = IgnorePatterns::compile(&["**/*.log".to_string()]).unwrap();
        let options = SourceOptions {
            ignore: Some(&ignore),
            follow_symlinks: false,
            allow_wildcards: true,
        };
        let sources = resolve_sources(root, "src", &options).unwrap();
        let cache = RecordingCache::default();
        checksum(
            root,
            &sources,
            Some(&ignore),
            &["**/*.tmp".to_string()],
            &cache,
        )
        .unwrap();

        let calls = cache.calls.lock().unwrap();
        let (first, prefetched) = &calls[0];
        assert_eq!(*first, "prefetch");
        let prefetched: HashSet<StatKey> = prefetched.iter().copied().collect();
        let expected: HashSet<StatKey> = [root.join("src/a.rs"), root.join("src/deep/b.rs")]
            .iter()
            .map(|path| lstat_key(path))
            .collect();
        assert_eq!(prefetched, expected, "exactly the selected regular files");
        let looked_up: HashSet<StatKey> = calls[1..]
            .iter()
            .map(|(kind, keys)| {
                assert_eq!(*kind, "get", "one prefetch per checksum");
                keys[0]
            })
            .collect();
        assert_eq!(looked_up, expected);
    }
}

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
//! unchanged, under the racy-entry rule described in [`crate::stat_cache`]. Its records hold the
//! extended-attribute digest too, so an unchanged file costs its `statx` in the walk and nothing
//! else: no read, no `llistxattr`. All files are looked up in the cache in one batch.
//!
//! The entries are exactly those of [`select_entries`], which the copy itself must use too.
//! `COPY --exclude` patterns use `.dockerignore` syntax and are matched against the path as it
//! lands in the destination: relative to a directory source, or the file name of a file source.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
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
use crate::stat_cache::{
    CachedDigest, CachedXattrs, DEFAULT_RACY_MARGIN, StatCache, StatKey, now_ns,
};
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
///
/// Cache records keep one per file of a COPY to explain a later miss, so the serialised form is
/// compact: a JSON array of the fields in order, without `digest` (derived from the others, and
/// with the hex content the bulk of the record; it is computed again when read). Both that and
/// the older object form (with `digest`) read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredEntryRecord")]
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

impl EntryRecord {
    /// A record of these fields, with its digest.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: String,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        content: String,
        xattrs: String,
    ) -> Self {
        // `kiln.context.entry.v1 \0 path \0 kind \0 mode (octal) \0 uid \0 gid \0 size \0
        // content \0 xattrs`, written piece by piece (no formatting machinery: this runs once
        // per file).
        let mut text = Vec::with_capacity(64 + path.len() + content.len() + xattrs.len());
        text.extend_from_slice(b"kiln.context.entry.v1\0");
        text.extend_from_slice(path.as_bytes());
        text.push(0);
        text.extend_from_slice(kind.as_str().as_bytes());
        text.push(0);
        push_number(&mut text, u64::from(mode), 8);
        text.push(0);
        push_number(&mut text, u64::from(uid), 10);
        text.push(0);
        push_number(&mut text, u64::from(gid), 10);
        text.push(0);
        push_number(&mut text, size, 10);
        text.push(0);
        text.extend_from_slice(content.as_bytes());
        text.push(0);
        text.extend_from_slice(xattrs.as_bytes());
        let digest = sha256_text(&Sha256::digest(&text).into());
        Self {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            content,
            xattrs,
            digest,
        }
    }
}

/// An [`EntryRecord`] as read: the compact array or the older object, with or without a digest.
#[derive(Deserialize)]
struct StoredEntryRecord {
    path: String,
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: String,
    #[serde(default)]
    xattrs: String,
    #[serde(default)]
    digest: Option<String>,
}

impl From<StoredEntryRecord> for EntryRecord {
    fn from(stored: StoredEntryRecord) -> Self {
        let StoredEntryRecord {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            content,
            xattrs,
            digest,
        } = stored;
        match digest {
            Some(digest) => Self {
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                content,
                xattrs,
                digest,
            },
            None => Self::new(path, kind, mode, uid, gid, size, content, xattrs),
        }
    }
}

impl Serialize for EntryRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(8)?;
        tuple.serialize_element(&self.path)?;
        tuple.serialize_element(&self.kind)?;
        tuple.serialize_element(&self.mode)?;
        tuple.serialize_element(&self.uid)?;
        tuple.serialize_element(&self.gid)?;
        tuple.serialize_element(&self.size)?;
        tuple.serialize_element(&self.content)?;
        tuple.serialize_element(&self.xattrs)?;
        tuple.end()
    }
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
    diff_entries_by(old, new, |record| record.path.as_str(), entry_change)
}

/// [`diff_entries`] over earlier records of another shape (e.g. a stored form read without
/// building [`EntryRecord`]s): `path` names an earlier record, `change` compares it with the new
/// record of the same path. Same changes, same order.
pub fn diff_entries_by<Old>(
    old: &[Old],
    new: &[EntryRecord],
    path: impl Fn(&Old) -> &str,
    change: impl Fn(&Old, &EntryRecord) -> Option<EntryChange>,
) -> Vec<EntryChange> {
    use std::collections::{HashMap, HashSet};
    // Both lists are in walk order: usually the same paths, so compare them pairwise while they
    // agree and index only what is left (after the first added or removed path).
    let common = old
        .iter()
        .zip(new)
        .take_while(|(before, after)| path(before) == after.path)
        .count();
    let mut changes: Vec<EntryChange> = old[..common]
        .iter()
        .zip(&new[..common])
        .filter_map(|(before, after)| change(before, after))
        .collect();
    let (old, new) = (&old[common..], &new[common..]);
    let old_by_path: HashMap<&str, &Old> = old.iter().map(|r| (path(r), r)).collect();
    let new_paths: HashSet<&str> = new.iter().map(|r| r.path.as_str()).collect();
    for record in new {
        match old_by_path.get(record.path.as_str()) {
            Some(before) => changes.extend(change(before, record)),
            None => changes.push(EntryChange::Added(record.path.clone())),
        }
    }
    for record in old {
        if !new_paths.contains(path(record)) {
            changes.push(EntryChange::Removed(path(record).to_string()));
        }
    }
    changes
}

/// What changed between two records of the same path, if anything.
fn entry_change(before: &EntryRecord, record: &EntryRecord) -> Option<EntryChange> {
    // The digest covers every field.
    if before.digest == record.digest {
        return None;
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
    Some(EntryChange::Changed {
        path: record.path.clone(),
        what,
    })
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
    // Every regular file's record in one batch, then each entry with its own answer.
    let file_keys: Vec<StatKey> = entries
        .iter()
        .filter(|entry| entry.kind == FileKind::File)
        .map(|entry| stat_key(entry))
        .collect();
    let mut cached = stat_cache.get_many(&file_keys).into_iter();
    let work: Vec<(&Entry, Option<CachedDigest>)> = entries
        .iter()
        .map(|entry| {
            let found = match entry.kind {
                FileKind::File => cached.next().flatten(),
                _ => None,
            };
            (*entry, found)
        })
        .collect();

    let counters = Counters::default();
    let records: Vec<EntryRecord> = work
        .par_iter()
        .map(|(entry, cached)| record_entry(root, entry, *cached, stat_cache, options, &counters))
        .collect::<Result<_, _>>()?;

    let mut top = Sha256::new();
    top.update(b"kiln.context.checksum.v1\n");
    let mut offset = 0;
    for (count, source) in &per_source {
        top.update(format!("source\0{}\0{}\0{count}\n", source.requested, source.path).as_bytes());
        for record in &records[offset..offset + count] {
            top.update(record.path.as_bytes());
            top.update(b"\0");
            top.update(record.digest.as_bytes());
            top.update(b"\n");
        }
        offset += count;
    }
    let digest = sha256_text(&top.finalize().into());

    // One walk never lists a path twice; only several sources can overlap.
    let entries = if per_source.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        records
            .into_iter()
            .filter(|r| seen.insert(r.path.clone()))
            .collect()
    } else {
        records
    };
    Ok(ContentChecksum {
        digest,
        entries,
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

/// Builds the record of one entry, hashing file content unless `cached` (what the stat cache
/// holds for a regular file) can be trusted.
fn record_entry(
    root: &Path,
    entry: &Entry,
    cached: Option<CachedDigest>,
    stat_cache: &dyn StatCache,
    options: &ChecksumOptions,
    counters: &Counters,
) -> Result<EntryRecord, ChecksumError> {
    let xattrs_of_path = || {
        let path = root.join(&entry.path);
        xattrs_digest(XattrSource::Path(&path)).map_err(|source| ChecksumError::Io {
            action: "read extended attributes of",
            path,
            source,
        })
    };
    let (size, content, xattrs) = match entry.kind {
        FileKind::File => {
            counters.files.fetch_add(1, Ordering::Relaxed);
            let (sha, xattrs) = file_digests(root, entry, cached, stat_cache, options, counters)?;
            (entry.size, sha256_text(&sha), xattrs)
        }
        FileKind::Symlink => (
            0,
            entry.link_target.clone().unwrap_or_default(),
            xattrs_of_path()?,
        ),
        FileKind::CharDevice | FileKind::BlockDevice => {
            let (major, minor) = (libc::major(entry.rdev), libc::minor(entry.rdev));
            (0, format!("{major}:{minor}"), xattrs_of_path()?)
        }
        FileKind::Dir | FileKind::Fifo | FileKind::Socket => (0, String::new(), xattrs_of_path()?),
    };
    let xattrs = xattrs
        .map(|digest| sha256_text(&digest))
        .unwrap_or_default();
    Ok(EntryRecord::new(
        entry.path.clone(),
        entry.kind,
        entry.mode,
        entry.uid,
        entry.gid,
        size,
        content,
        xattrs,
    ))
}

/// Appends `value` in base `radix` (8 or 10), without leading zeros.
fn push_number(out: &mut Vec<u8>, mut value: u64, radix: u64) {
    let mut digits = [0u8; 22];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % radix) as u8;
        value /= radix;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `sha256:<hex>` of a digest.
fn sha256_text(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
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

/// The content sha256 and the extended-attribute digest of a regular file: from its stat cache
/// record (`cached`) when that is trustworthy, otherwise by streaming the file (and recording
/// the result when it is not racy and the file did not change while being read).
fn file_digests(
    root: &Path,
    entry: &Entry,
    cached: Option<CachedDigest>,
    stat_cache: &dyn StatCache,
    options: &ChecksumOptions,
    counters: &Counters,
) -> Result<([u8; 32], Option<[u8; 32]>), ChecksumError> {
    let key = stat_key(entry);
    let path = || root.join(&entry.path);
    let xattr_error = |path: PathBuf| {
        move |source| ChecksumError::Io {
            action: "read extended attributes of",
            path,
            source,
        }
    };
    if let Some(cached) = cached {
        if cached.is_trustworthy(&key, options.racy_margin) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return match cached.xattrs {
                CachedXattrs::Absent => Ok((cached.sha256, None)),
                CachedXattrs::Digest(xattrs) => Ok((cached.sha256, Some(xattrs))),
                CachedXattrs::Unknown => {
                    // A record from before attributes were cached: read them once, and complete
                    // the record so that the next build does not.
                    let path = path();
                    let xattrs =
                        xattrs_digest(XattrSource::Path(&path)).map_err(xattr_error(path))?;
                    stat_cache.put(
                        &key,
                        CachedDigest {
                            xattrs: cached_xattrs(xattrs),
                            ..cached
                        },
                    );
                    Ok((cached.sha256, xattrs))
                }
            };
        }
    }
    // Taken before reading: a write racing with the read makes the record racy.
    let recorded_at_ns = now_ns();
    let path = path();
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
    // Read before the `fstat` below: an attribute change meanwhile changes the ctime, so the
    // record is then not kept.
    let xattrs =
        xattrs_digest(XattrSource::Fd(file.as_raw_fd())).map_err(xattr_error(path.clone()))?;

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
        xattrs: cached_xattrs(xattrs),
    };
    if unchanged && record.is_trustworthy(&key, options.racy_margin) {
        stat_cache.put(&key, record);
    }
    Ok((sha256, xattrs))
}

/// The stat cache form of an attribute digest.
fn cached_xattrs(xattrs: Option<[u8; 32]>) -> CachedXattrs {
    match xattrs {
        Some(digest) => CachedXattrs::Digest(digest),
        None => CachedXattrs::Absent,
    }
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

/// Where extended attributes are read from: a path (not following a final symlink) or a file
/// that is open anyway.
enum XattrSource<'a> {
    Path(&'a Path),
    Fd(RawFd),
}

/// An [`XattrSource`] ready for the system calls.
enum XattrTarget {
    Path(std::ffi::CString),
    Fd(RawFd),
}

impl XattrTarget {
    fn new(source: XattrSource<'_>) -> io::Result<Self> {
        Ok(match source {
            XattrSource::Path(path) => Self::Path(
                std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte")
                })?,
            ),
            XattrSource::Fd(fd) => Self::Fd(fd),
        })
    }

    /// `llistxattr`/`flistxattr` into `buf` (null with `len` 0 asks for the size).
    fn list(&self, buf: *mut u8, len: usize) -> libc::ssize_t {
        match self {
            // SAFETY: the path is NUL-terminated; buf is valid for len bytes (or null with len 0).
            Self::Path(path) => unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) },
            // SAFETY: the descriptor is open for the whole call; buf as above.
            Self::Fd(fd) => unsafe { libc::flistxattr(*fd, buf.cast(), len) },
        }
    }

    /// `lgetxattr`/`fgetxattr` of `name` into `buf`.
    fn get(&self, name: &std::ffi::CStr, buf: *mut u8, len: usize) -> libc::ssize_t {
        match self {
            // SAFETY: both strings are NUL-terminated; buf is valid for len bytes.
            Self::Path(path) => unsafe {
                libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len)
            },
            // SAFETY: the descriptor is open; name is NUL-terminated; buf as above.
            Self::Fd(fd) => unsafe { libc::fgetxattr(*fd, name.as_ptr(), buf.cast(), len) },
        }
    }
}

/// sha256 over the extended attributes (name and value, sorted by name, `security.selinux` left
/// out); `None` when there are none or the file system does not support them.
fn xattrs_digest(source: XattrSource<'_>) -> io::Result<Option<[u8; 32]>> {
    let target = XattrTarget::new(source)?;
    let names = read_xattr_buffer(|buf, len| target.list(buf, len))?;
    let mut names: Vec<&[u8]> = names
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty() && *name != IGNORED_XATTR)
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort_unstable();
    let mut hasher = Sha256::new();
    for name in names {
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name with NUL"))?;
        let value = read_xattr_buffer(|buf, len| target.get(&c_name, buf, len))?;
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(Some(hasher.finalize().into()))
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
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    use super::*;
    use crate::sources::{SourceOptions, resolve_sources};
    use crate::stat_cache::{MemoryStatCache, NoStatCache};

    /// Records the stat cache calls, answering from an in-memory cache.
    #[derive(Default)]
    struct RecordingCache {
        inner: MemoryStatCache,
        calls: Mutex<Vec<(&'static str, Vec<StatKey>)>>,
    }

    impl StatCache for RecordingCache {
        fn get_many(&self, keys: &[StatKey]) -> Vec<Option<CachedDigest>> {
            self.calls.lock().unwrap().push(("get_many", keys.to_vec()));
            keys.iter().map(|key| self.inner.get(key)).collect()
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
    fn the_selected_files_are_looked_up_in_one_batch() {
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
        let sum = checksum(
            root,
            &sources,
            Some(&ignore),
            &["**/*.tmp".to_string()],
            &cache,
        )
        .unwrap();

        let calls = cache.calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "one batch, no single lookups: {calls:?}");
        let (kind, looked_up) = &calls[0];
        assert_eq!(*kind, "get_many");
        let expected: Vec<StatKey> = [root.join("src/a.rs"), root.join("src/deep/b.rs")]
            .iter()
            .map(|path| lstat_key(path))
            .collect();
        assert_eq!(
            looked_up, &expected,
            "exactly the selected regular files, in walk order"
        );
        assert_eq!(sum.stats.files, 2);
    }

    #[test]
    fn entry_digests_keep_their_documented_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let sources = resolve_sources(dir.path(), "f", &SourceOptions::default()).unwrap();
        let sum = checksum(dir.path(), &sources, None, &[], &NoStatCache).unwrap();
        let record = &sum.entries[0];
        // The layout keys were made with before it was written without `format!`: keeping it
        // keeps every existing cache record valid.
        let text = format!(
            "kiln.context.entry.v1\0{}\0{}\0{:o}\0{}\0{}\0{}\0{}\0{}",
            record.path,
            record.kind.as_str(),
            record.mode,
            record.uid,
            record.gid,
            record.size,
            record.content,
            record.xattrs
        );
        assert_eq!(
            record.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
        );
        assert_eq!(
            record.content,
            format!("sha256:{}", hex::encode(Sha256::digest(b"x")))
        );
    }

    #[test]
    fn numbers_are_written_like_format() {
        for value in [
            0,
            7,
            8,
            10,
            0o644,
            0o4755,
            65_534,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut octal = Vec::new();
            push_number(&mut octal, value, 8);
            assert_eq!(String::from_utf8(octal).unwrap(), format!("{value:o}"));
            let mut decimal = Vec::new();
            push_number(&mut decimal, value, 10);
            assert_eq!(String::from_utf8(decimal).unwrap(), value.to_string());
        }
    }

    fn file_record(path: &str, content: &str) -> EntryRecord {
        EntryRecord::new(
            path.into(),
            FileKind::File,
            0o644,
            0,
            0,
            content.len() as u64,
            content.into(),
            String::new(),
        )
    }

    #[test]
    fn differences_before_and_after_the_first_added_path_are_all_found_in_order() {
        let old = [
            file_record("a", "1"),
            file_record("b", "1"),
            file_record("c", "1"),
            file_record("d", "1"),
            file_record("e", "1"),
        ];
        let new = [
            file_record("a", "1"),
            file_record("b", "2"),
            file_record("b2", "1"),
            file_record("c", "1"),
            file_record("e", "2"),
        ];
        let shown: Vec<String> = diff_entries(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            vec![
                "b content changed",
                "b2 added",
                "e content changed",
                "d removed"
            ]
        );
        assert!(diff_entries(&old, &old).is_empty());
    }
}

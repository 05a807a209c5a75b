//! Content checksums: what changes them, what does not, and the stat cache's hit and racy paths.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use kiln_context::{
    CachedDigest, CachedXattrs, ChecksumOptions, ContentChecksum, IgnorePatterns, MemoryStatCache,
    NoStatCache, SourceOptions, StatCache, StatKey, checksum, checksum_with_options, diff_entries,
    resolve_sources,
};
use sha2::{Digest as _, Sha256};

/// A margin small enough for files written a moment ago to count as settled.
const TEST_MARGIN: Duration = Duration::from_millis(5);

fn quick() -> ChecksumOptions {
    ChecksumOptions {
        racy_margin: TEST_MARGIN,
    }
}

fn settle() {
    std::thread::sleep(Duration::from_millis(30));
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("src/nested")).expect("mkdir");
    fs::write(root.join("src/main.rs"), "fn main() {}\n").expect("write");
    fs::write(root.join("src/lib.rs"), "pub fn lib() {}\n").expect("write");
    fs::write(root.join("src/nested/notes.txt"), "notes\n").expect("write");
    fs::write(root.join("README.md"), "readme\n").expect("write");
    dir
}

fn sum_of(root: &Path, source: &str, excludes: &[&str], cache: &dyn StatCache) -> ContentChecksum {
    sum_with(root, source, None, excludes, cache, &quick())
}

fn sum_with(
    root: &Path,
    source: &str,
    ignore: Option<&IgnorePatterns>,
    excludes: &[&str],
    cache: &dyn StatCache,
    options: &ChecksumOptions,
) -> ContentChecksum {
    let sources = resolve_sources(
        root,
        source,
        &SourceOptions {
            ignore,
            follow_symlinks: true,
            allow_wildcards: true,
        },
    )
    .expect("resolve");
    let excludes: Vec<String> = excludes.iter().map(|s| (*s).to_owned()).collect();
    checksum_with_options(root, &sources, ignore, &excludes, cache, options).expect("checksum")
}

fn changes(before: &ContentChecksum, after: &ContentChecksum) -> Vec<String> {
    diff_entries(&before.entries, &after.entries)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn content_change_changes_the_checksum_and_is_explained() {
    let dir = context();
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    fs::write(dir.path().join("src/main.rs"), "fn main() { }\n").expect("write");
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_ne!(before.digest, after.digest);
    assert_eq!(
        changes(&before, &after),
        vec!["src/main.rs content changed"]
    );
}

#[test]
fn mode_change_changes_the_checksum() {
    let dir = context();
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    let file = dir.path().join("src/lib.rs");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod");
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_ne!(before.digest, after.digest);
    assert_eq!(changes(&before, &after), vec!["src/lib.rs mode changed"]);
    // Special bits count too.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o4755)).expect("chmod");
    let setuid = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_ne!(after.digest, setuid.digest);
}

#[test]
fn owner_change_changes_the_checksum() {
    let dir = context();
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    let file = dir.path().join("src/main.rs");
    match std::os::unix::fs::chown(&file, Some(4242), Some(4343)) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipping owner change: not root");
            return;
        }
        Err(err) => panic!("chown: {err}"),
    }
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_ne!(before.digest, after.digest);
    assert_eq!(changes(&before, &after), vec!["src/main.rs owner changed"]);
}

#[test]
fn touch_alone_does_not_change_the_checksum() {
    let dir = context();
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    let file = fs::File::options()
        .write(true)
        .open(dir.path().join("src/main.rs"))
        .expect("open");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_eq!(before.digest, after.digest);
    assert!(changes(&before, &after).is_empty());
}

#[test]
fn unrelated_and_ignored_files_do_not_change_the_checksum() {
    let dir = context();
    let ignore = IgnorePatterns::parse("**/*.tmp\n").expect("patterns");
    let sum = |d: &Path| sum_with(d, "src", Some(&ignore), &[], &NoStatCache, &quick());
    let before = sum(dir.path());
    fs::write(dir.path().join("README.md"), "changed\n").expect("write");
    fs::write(dir.path().join("src/scratch.tmp"), "tmp\n").expect("write");
    let after = sum(dir.path());
    assert_eq!(before.digest, after.digest);
    assert!(after.entries.iter().all(|e| !e.path.ends_with(".tmp")));
}

#[test]
fn excludes_apply_relative_to_the_source() {
    let dir = context();
    let all = sum_of(dir.path(), "src", &[], &NoStatCache);
    let without_txt = sum_of(dir.path(), "src", &["**/*.txt"], &NoStatCache);
    assert_ne!(all.digest, without_txt.digest);
    let paths: Vec<&str> = without_txt
        .entries
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        paths,
        vec!["src", "src/lib.rs", "src/main.rs", "src/nested"]
    );
    // `*.txt` is anchored at the source dir, so it does not reach src/nested/notes.txt.
    let shallow = sum_of(dir.path(), "src", &["*.txt"], &NoStatCache);
    assert_eq!(shallow.digest, all.digest);
    // A file source is matched by the name it lands under.
    let readme = sum_of(dir.path(), "*.md", &["README*"], &NoStatCache);
    assert!(readme.entries.is_empty());
    // Excluded files never influence the checksum.
    fs::write(dir.path().join("src/nested/notes.txt"), "other\n").expect("write");
    assert_eq!(
        sum_of(dir.path(), "src", &["**/*.txt"], &NoStatCache).digest,
        without_txt.digest
    );
}

#[test]
fn symlinks_are_hashed_by_target_not_followed() {
    let dir = context();
    symlink("main.rs", dir.path().join("src/link")).expect("symlink");
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    let link = before
        .entries
        .iter()
        .find(|e| e.path == "src/link")
        .expect("link entry");
    assert_eq!(link.content, "main.rs");
    fs::remove_file(dir.path().join("src/link")).expect("rm");
    symlink("lib.rs", dir.path().join("src/link")).expect("symlink");
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_eq!(
        changes(&before, &after),
        vec!["src/link link target changed"]
    );
}

#[test]
fn file_digest_is_the_sha256_of_its_streamed_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Larger than one read block, not a multiple of it.
    let content: Vec<u8> = (0..200_003u32).map(|i| (i % 251) as u8).collect();
    fs::write(dir.path().join("big"), &content).expect("write");
    let sum = sum_of(dir.path(), "big", &[], &NoStatCache);
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(&content)));
    assert_eq!(sum.entries[0].content, expected);
    assert_eq!(sum.entries[0].size, content.len() as u64);
    assert_eq!(sum.stats.bytes_hashed, content.len() as u64);
}

/// Counts calls, to show which path a checksum took.
#[derive(Default)]
struct CountingCache {
    inner: MemoryStatCache,
    gets: AtomicUsize,
    puts: AtomicUsize,
}

impl StatCache for CountingCache {
    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }
    fn put(&self, key: &StatKey, digest: CachedDigest) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put(key, digest);
    }
}

#[test]
fn second_run_is_served_from_the_stat_cache() {
    let dir = context();
    settle();
    let cache = CountingCache::default();
    let first = sum_of(dir.path(), ".", &[], &cache);
    assert_eq!(first.stats.files, 4);
    assert_eq!(first.stats.files_hashed, 4);
    assert_eq!(cache.puts.load(Ordering::Relaxed), 4);
    let second = sum_of(dir.path(), ".", &[], &cache);
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.stats.cache_hits, 4);
    assert_eq!(second.stats.files_hashed, 0);
    assert_eq!(second.stats.bytes_hashed, 0);
}

#[test]
fn cache_hit_does_not_read_the_file() {
    let dir = context();
    settle();
    let file = dir.path().join("README.md");
    let metadata = fs::symlink_metadata(&file).expect("lstat");
    use std::os::unix::fs::MetadataExt;
    let key = StatKey {
        dev: metadata.dev(),
        ino: metadata.ino(),
        size: metadata.size(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
    };
    // A digest no file has: if it shows up, the content was not read.
    let planted = [0xAB; 32];
    let cache = MemoryStatCache::new();
    cache.put(
        &key,
        CachedDigest {
            sha256: planted,
            recorded_at_ns: kiln_context::stat_cache::now_ns(),
            xattrs: CachedXattrs::Absent,
        },
    );
    let sum = sum_of(dir.path(), "README.md", &[], &cache);
    assert_eq!(
        sum.entries[0].content,
        format!("sha256:{}", hex::encode(planted))
    );
    assert_eq!((sum.stats.cache_hits, sum.stats.files_hashed), (1, 0));
}

/// Models a file system whose timestamps are too coarse to tell two writes apart: the key keeps
/// only the file identity and size.
#[derive(Default)]
struct CoarseTimestampCache(MemoryStatCache);

impl CoarseTimestampCache {
    fn coarse(key: &StatKey) -> StatKey {
        StatKey {
            mtime_ns: 0,
            ctime_ns: 0,
            ..*key
        }
    }
}

impl StatCache for CoarseTimestampCache {
    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        self.0.get(&Self::coarse(key))
    }
    fn put(&self, key: &StatKey, digest: CachedDigest) {
        self.0.put(&Self::coarse(key), digest);
    }
}

#[test]
fn racy_entry_is_rehashed_after_same_size_rewrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config");
    fs::write(&file, "version=1\n").expect("write");
    let cache = CoarseTimestampCache::default();
    let default = ChecksumOptions::default();
    let first = sum_with(dir.path(), "config", None, &[], &cache, &default);
    // Rewrite within the same moment, same size.
    fs::write(&file, "version=2\n").expect("rewrite");
    let second = sum_with(dir.path(), "config", None, &[], &cache, &default);
    assert_ne!(first.digest, second.digest, "racy entry must be re-hashed");
    assert_eq!(second.stats.files_hashed, 1);
    assert_eq!(
        second.entries[0].content,
        format!("sha256:{}", hex::encode(Sha256::digest(b"version=2\n")))
    );
}

#[test]
fn racy_records_are_neither_stored_nor_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("fresh"), "just written\n").expect("write");
    let cache = CountingCache::default();
    let default = ChecksumOptions::default();
    let first = sum_with(dir.path(), "fresh", None, &[], &cache, &default);
    let second = sum_with(dir.path(), "fresh", None, &[], &cache, &default);
    assert_eq!(first.digest, second.digest);
    // Written within the margin: hashed both times, never recorded.
    assert_eq!(
        (first.stats.files_hashed, second.stats.files_hashed),
        (1, 1)
    );
    assert_eq!(cache.puts.load(Ordering::Relaxed), 0);
    // A record planted by someone else for this very key is not trusted either.
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::symlink_metadata(dir.path().join("fresh")).expect("lstat");
    let key = StatKey {
        dev: metadata.dev(),
        ino: metadata.ino(),
        size: metadata.size(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
    };
    cache.put(
        &key,
        CachedDigest {
            sha256: [0xCD; 32],
            recorded_at_ns: kiln_context::stat_cache::now_ns(),
            xattrs: CachedXattrs::Absent,
        },
    );
    let third = sum_with(dir.path(), "fresh", None, &[], &cache, &default);
    assert_eq!(third.digest, first.digest);
    assert_eq!(third.stats.cache_hits, 0);
}

#[test]
fn invalid_exclude_pattern_is_an_error() {
    let dir = context();
    let sources = resolve_sources(dir.path(), "src", &SourceOptions::default()).expect("resolve");
    let err =
        checksum(dir.path(), &sources, None, &["!".to_owned()], &NoStatCache).expect_err("invalid");
    assert!(err.to_string().contains("--exclude"), "{err}");
}

/// Sets a user extended attribute; false (after saying so) where the file system has none.
fn set_user_xattr(file: &Path, value: &[u8]) -> bool {
    let c_path = std::ffi::CString::new(file.to_str().expect("utf-8")).expect("path");
    // SAFETY: NUL-terminated strings and a valid buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c"user.kiln.test".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        eprintln!(
            "skipping: user xattrs unsupported here: {}",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

fn lstat_key(file: &Path) -> StatKey {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::symlink_metadata(file).expect("lstat");
    StatKey {
        dev: metadata.dev(),
        ino: metadata.ino(),
        size: metadata.size(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
    }
}

#[test]
fn xattr_change_changes_the_checksum() {
    let dir = context();
    let file = dir.path().join("src/main.rs");
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    if !set_user_xattr(&file, b"v1") {
        return;
    }
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_ne!(before.digest, after.digest);
    assert_eq!(changes(&before, &after), vec!["src/main.rs xattrs changed"]);
}

#[test]
fn xattr_change_is_seen_through_the_stat_cache() {
    let dir = context();
    let file = dir.path().join("src/main.rs");
    if !set_user_xattr(&file, b"v1") {
        return;
    }
    settle();
    let cache = MemoryStatCache::new();
    let first = sum_of(dir.path(), "src", &[], &cache);
    let again = sum_of(dir.path(), "src", &[], &cache);
    assert_eq!(again.digest, first.digest);
    assert_eq!((again.stats.cache_hits, again.stats.files_hashed), (3, 0));
    // Only the attribute changes: same content, size and mtime, a new ctime.
    assert!(set_user_xattr(&file, b"v2"));
    let after = sum_of(dir.path(), "src", &[], &cache);
    assert_eq!(changes(&first, &after), vec!["src/main.rs xattrs changed"]);
}

#[test]
fn a_cache_hit_takes_the_xattrs_from_the_record() {
    let dir = context();
    settle();
    let file = dir.path().join("README.md");
    let content = Sha256::digest(b"readme\n").into();
    let cache = MemoryStatCache::new();
    // A digest no attributes have: if it shows up, the attributes were not read.
    cache.put(
        &lstat_key(&file),
        CachedDigest {
            sha256: content,
            recorded_at_ns: kiln_context::stat_cache::now_ns(),
            xattrs: CachedXattrs::Digest([0xEF; 32]),
        },
    );
    let sum = sum_of(dir.path(), "README.md", &[], &cache);
    assert_eq!(
        sum.entries[0].xattrs,
        format!("sha256:{}", hex::encode([0xEF; 32]))
    );
    assert_eq!((sum.stats.cache_hits, sum.stats.files_hashed), (1, 0));
}

#[test]
fn a_record_without_xattrs_is_completed_once() {
    let dir = context();
    let file = dir.path().join("README.md");
    let with_xattrs = set_user_xattr(&file, b"v1");
    settle();
    let reference = sum_of(dir.path(), "README.md", &[], &NoStatCache);
    let key = lstat_key(&file);
    let cache = MemoryStatCache::new();
    let recorded_at_ns = kiln_context::stat_cache::now_ns();
    // As written before attributes were cached.
    cache.put(
        &key,
        CachedDigest {
            sha256: Sha256::digest(b"readme\n").into(),
            recorded_at_ns,
            xattrs: CachedXattrs::Unknown,
        },
    );
    let sum = sum_of(dir.path(), "README.md", &[], &cache);
    assert_eq!(
        sum.digest, reference.digest,
        "attributes read for an old record"
    );
    assert_eq!((sum.stats.cache_hits, sum.stats.files_hashed), (1, 0));
    let completed = cache.get(&key).expect("record kept");
    assert_eq!(completed.recorded_at_ns, recorded_at_ns);
    if with_xattrs {
        assert!(matches!(completed.xattrs, CachedXattrs::Digest(_)));
    } else {
        assert_eq!(completed.xattrs, CachedXattrs::Absent);
    }
}

#[test]
fn records_survive_serialisation_for_later_explanations() {
    let dir = context();
    let before = sum_of(dir.path(), "src", &[], &NoStatCache);
    let stored = serde_json::to_string(&before).expect("serialise");
    let restored: ContentChecksum = serde_json::from_str(&stored).expect("deserialise");
    assert_eq!(restored.digest, before.digest);
    // The compact form leaves the entry digests out; they are computed again.
    assert_eq!(restored.entries, before.entries);
    assert!(changes(&restored, &before).is_empty(), "nothing changed");
    fs::remove_file(dir.path().join("src/lib.rs")).expect("rm");
    fs::write(dir.path().join("src/new.rs"), "new").expect("write");
    fs::write(dir.path().join("src/main.rs"), "fn main() { }\n").expect("write");
    let after = sum_of(dir.path(), "src", &[], &NoStatCache);
    assert_eq!(
        changes(&restored, &after),
        vec![
            "src/main.rs content changed",
            "src/new.rs added",
            "src/lib.rs removed"
        ]
    );
}

#[test]
fn records_are_stored_compactly_and_the_older_form_still_reads() {
    let dir = context();
    let sum = sum_of(dir.path(), "src/main.rs", &[], &NoStatCache);
    let record = &sum.entries[0];
    let stored = serde_json::to_value(record).expect("serialise");
    assert_eq!(
        stored,
        serde_json::json!([
            "src/main.rs",
            "file",
            record.mode,
            record.uid,
            record.gid,
            13,
            record.content,
            ""
        ])
    );
    // As records were written before: an object with the digest.
    let older = serde_json::json!({
        "path": "src/main.rs",
        "kind": "file",
        "mode": record.mode,
        "uid": record.uid,
        "gid": record.gid,
        "size": 13,
        "content": record.content,
        "xattrs": "",
        "digest": record.digest,
    });
    let read: kiln_context::EntryRecord = serde_json::from_value(older).expect("older form");
    assert_eq!(&read, record);
}

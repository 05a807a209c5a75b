//! The store's stat cache on the cache-key path of a big build context: an unchanged context is
//! keyed without reading any file (one lstat per file, no extended-attribute calls), one changed
//! file costs reading that file alone, the lookups go to the database in one batch, and a changed
//! extended attribute still changes the key. The `#[ignore]`d measurement prints how
//! long keying a 20,000-file context takes with the batch and with per-file lookups (timings are
//! printed, never asserted):
//!
//! ```sh
//! cargo test -p kiln-solver --test stat_cache -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_context::{CachedDigest, ChecksumStats, StatCache, StatKey};
use kiln_image::Digest;
use kiln_llb::{CopyAction, FileAction, FileOp, Op, OpKind};
use kiln_solver::LocalSource;
use kiln_solver::cache::key::chain_identity;
use kiln_solver::cache::{InputComponent, InputKind, KeyComponents, StoreStatCache, compute_key};
use kiln_store::Store;

/// Longer than the racy margin (2 s): entries recorded after it are trusted.
const SETTLE: Duration = Duration::from_millis(2100);

/// `dirs` directories of `per_dir` small files under `tree/`.
fn make_context(root: &Path, dirs: usize, per_dir: usize) {
    for dir in 0..dirs {
        let path = root.join("tree").join(format!("d{dir}"));
        std::fs::create_dir_all(&path).unwrap();
        for file in 0..per_dir {
            std::fs::write(
                path.join(format!("f{file}.txt")),
                format!("file {dir}/{file}\n"),
            )
            .unwrap();
        }
    }
}

/// `COPY tree/ /tree/` from the local `context` onto scratch.
fn copy_op() -> Op {
    Op {
        inputs: Vec::new(),
        kind: OpKind::File(FileOp {
            base: Some(0),
            actions: vec![FileAction::Copy(CopyAction::new(1, "/tree/", "/tree/"))],
        }),
    }
}

fn inputs() -> Vec<InputComponent> {
    vec![
        InputComponent {
            kind: InputKind::Scratch,
            identity: chain_identity(None),
            key: None,
            description: None,
            local_excludes: Vec::new(),
        },
        InputComponent {
            kind: InputKind::Local,
            identity: "local:context".into(),
            key: None,
            description: None,
            local_excludes: Vec::new(),
        },
    ]
}

fn locals(dir: &Path) -> BTreeMap<String, LocalSource> {
    BTreeMap::from([(
        "context".to_string(),
        LocalSource {
            dir: dir.to_path_buf(),
            excludes: Vec::new(),
        },
    )])
}

/// Keys the COPY as one build does: a fresh stat cache over the store, flushed at the end.
fn key_as_a_build(store: &Store, context: &Path) -> KeyComponents {
    let stat_cache = StoreStatCache::new(store);
    let components = compute_key(&copy_op(), "", inputs(), &locals(context), &stat_cache).unwrap();
    stat_cache.flush();
    components
}

fn stats(components: &KeyComponents) -> ChecksumStats {
    components.contents[0].checksum.stats
}

fn lstat_key(path: &Path) -> kiln_store::StatKey {
    kiln_store::StatKey::from_metadata(&std::fs::symlink_metadata(path).unwrap())
}

#[test]
fn an_unchanged_big_context_is_keyed_from_the_stat_cache_and_one_change_reads_one_file() {
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    make_context(context.path(), 20, 50);
    std::thread::sleep(SETTLE);
    let store = Store::open(root.path()).unwrap();

    let first = key_as_a_build(&store, context.path());
    assert_eq!(
        (stats(&first).files, stats(&first).files_hashed),
        (1000, 1000)
    );

    // Plant a digest no file has for one file: if it shows up, that file was not read.
    let planted_file = context.path().join("tree/d3/f9.txt");
    let planted = Digest::of(b"not the content of any file");
    let file_key = lstat_key(&planted_file);
    let recorded_at = file_key.mtime_ns.max(file_key.ctime_ns) + 10_000_000_000;
    store
        .put_stat_cache_many(&[(file_key, planted.clone())], recorded_at)
        .unwrap();
    let unchanged = key_as_a_build(&store, context.path());
    let second = stats(&unchanged);
    assert_eq!(
        (second.files_hashed, second.bytes_hashed, second.cache_hits),
        (0, 0, 1000),
        "{second:?}"
    );
    let planted_entry = unchanged.contents[0]
        .checksum
        .entries
        .iter()
        .find(|entry| entry.path == "tree/d3/f9.txt")
        .unwrap();
    assert_eq!(planted_entry.content, planted.to_string());

    // One file changes: only it is read, and the key changes.
    std::fs::write(context.path().join("tree/d7/f7.txt"), "changed\n").unwrap();
    let changed = key_as_a_build(&store, context.path());
    let third = stats(&changed);
    assert_eq!(
        (third.files_hashed, third.cache_hits),
        (1, 999),
        "{third:?}"
    );
    assert_eq!(third.bytes_hashed, "changed\n".len() as u64);
    assert_ne!(changed.key(), unchanged.key());
}

/// Sets `user.kiln.test`; false where the file system has no user attributes.
fn set_user_xattr(file: &Path, value: &[u8]) -> bool {
    let c_path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a valid buffer.
    let rc = unsafe {
        nix::libc::lsetxattr(
            c_path.as_ptr(),
            c"user.kiln.test".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        eprintln!(
            "skipping: no user xattrs here: {}",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

#[test]
fn attributes_come_from_the_store_and_a_changed_one_changes_the_key() {
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    make_context(context.path(), 2, 3);
    let tagged = context.path().join("tree/d1/f2.txt");
    if !set_user_xattr(&tagged, b"one") {
        return;
    }
    std::thread::sleep(SETTLE);
    let store = Store::open(root.path()).unwrap();
    let first = key_as_a_build(&store, context.path());
    let tagged_entry = |components: &KeyComponents| {
        components.contents[0]
            .checksum
            .entries
            .iter()
            .find(|entry| entry.path == "tree/d1/f2.txt")
            .unwrap()
            .xattrs
            .clone()
    };
    assert!(tagged_entry(&first).starts_with("sha256:"));

    // Served from the store, attributes included: the same key, nothing read.
    let again = key_as_a_build(&store, context.path());
    assert_eq!(
        (stats(&again).cache_hits, stats(&again).files_hashed),
        (6, 0)
    );
    assert_eq!(again.key(), first.key());
    assert_eq!(tagged_entry(&again), tagged_entry(&first));

    // Only the attribute's value changes (same content, size and mtime).
    assert!(set_user_xattr(&tagged, b"two"));
    let changed = key_as_a_build(&store, context.path());
    assert_ne!(changed.key(), first.key());
    assert_ne!(tagged_entry(&changed), tagged_entry(&first));
    let changes = kiln_context::diff_entries(
        &first.contents[0].checksum.entries,
        &changed.contents[0].checksum.entries,
    );
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["tree/d1/f2.txt xattrs changed"]
    );
}

/// Forwards to a [`StoreStatCache`] but hides its batch: every `get` is a database query, as
/// before the batch existed.
struct PerFileLookups<'a>(StoreStatCache<'a>);

impl StatCache for PerFileLookups<'_> {
    fn get(&self, key: &StatKey) -> Option<CachedDigest> {
        self.0.get(key)
    }
    fn put(&self, key: &StatKey, digest: CachedDigest) {
        self.0.put(key, digest);
    }
}

#[test]
fn batched_and_per_file_lookups_give_the_same_key() {
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    make_context(context.path(), 5, 20);
    std::thread::sleep(SETTLE);
    let store = Store::open(root.path()).unwrap();
    let batched = key_as_a_build(&store, context.path());

    let per_file = PerFileLookups(StoreStatCache::new(&store));
    let components =
        compute_key(&copy_op(), "", inputs(), &locals(context.path()), &per_file).unwrap();
    assert_eq!(components.key(), batched.key());
    assert_eq!(stats(&components).cache_hits, 100);
}

#[test]
#[ignore = "measurement: prints timings of keying a 20,000-file context"]
fn measure_keying_a_20000_file_context() {
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    make_context(context.path(), 200, 100);
    std::thread::sleep(SETTLE);
    let store = Store::open(root.path()).unwrap();
    let timed = |label: &str, run: &dyn Fn() -> KeyComponents| {
        let started = Instant::now();
        let components = run();
        eprintln!(
            "{label}: {:.3} s ({:?})",
            started.elapsed().as_secs_f64(),
            stats(&components)
        );
    };
    timed("cold (hash every file)", &|| {
        key_as_a_build(&store, context.path())
    });
    for round in 1..=3 {
        timed(&format!("no change, batched lookups #{round}"), &|| {
            key_as_a_build(&store, context.path())
        });
    }
    for round in 1..=3 {
        timed(&format!("no change, per-file lookups #{round}"), &|| {
            let per_file = PerFileLookups(StoreStatCache::new(&store));
            let components =
                compute_key(&copy_op(), "", inputs(), &locals(context.path()), &per_file).unwrap();
            per_file.0.flush();
            components
        });
    }
    std::fs::write(context.path().join("tree/d7/f7.txt"), "changed\n").unwrap();
    timed("one file changed, batched lookups", &|| {
        key_as_a_build(&store, context.path())
    });
}

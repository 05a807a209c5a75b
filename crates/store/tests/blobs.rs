//! Blob ingest, commit and verified reads, including corruption on disk, crashes and concurrent
//! writers (threads and processes).

use std::fs::{self, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use kiln_image::Digest;
use kiln_store::{Store, StoreError};

fn ingest(
    store: &Store,
    content: &[u8],
    expected: Option<&Digest>,
) -> kiln_store::Result<kiln_store::BlobInfo> {
    let mut writer = store.ingest()?;
    writer.write_all(content).unwrap();
    writer.commit(expected)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Opens a committed (read-only) blob file for tampering.
fn tamper(path: &Path) -> fs::File {
    fs::set_permissions(path, Permissions::from_mode(0o644)).unwrap();
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn read_all(store: &Store, digest: &Digest) -> Result<Vec<u8>, std::io::Error> {
    let mut reader = store.open_blob(digest).unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map(|_| bytes)
}

#[test]
fn commit_then_read_round_trips_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let content = b"hello, kiln".repeat(10_000);
    let expected = Digest::of(&content);

    let info = ingest(&store, &content, Some(&expected)).unwrap();
    assert_eq!(info.digest, expected);
    assert_eq!(info.size, content.len() as u64);
    assert!(store.has_blob(&expected));
    assert_eq!(store.blob_size(&expected).unwrap(), content.len() as u64);
    assert_eq!(
        store.blob_path(&expected),
        root.path().join("blobs/sha256").join(expected.hex())
    );
    assert_eq!(read_all(&store, &expected).unwrap(), content);
    assert_eq!(store.verify_blob(&expected).unwrap(), info);
    assert_eq!(
        store
            .read_blob_to_vec(&expected, content.len() as u64)
            .unwrap(),
        content
    );
    // Nothing is left in the session dir once the blob is committed.
    assert!(entries(store.scratch_dir()).is_empty());
}

#[test]
fn commit_without_expected_digest_reports_the_digest() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let info = ingest(&store, b"", None).unwrap();
    assert_eq!(info.digest, Digest::of(b""));
    assert_eq!(info.size, 0);
    assert_eq!(read_all(&store, &info.digest).unwrap(), b"");
}

#[test]
fn wrong_expected_digest_is_an_error_and_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let claimed = Digest::of(b"something else");
    let error = ingest(&store, b"actual content", Some(&claimed)).unwrap_err();
    match &error {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &claimed);
            assert_eq!(actual, &Digest::of(b"actual content"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!store.has_blob(&claimed));
    assert!(!store.has_blob(&Digest::of(b"actual content")));
    assert!(entries(&root.path().join("blobs/sha256")).is_empty());
    assert!(
        entries(store.scratch_dir()).is_empty(),
        "temp file left behind"
    );
}

#[test]
fn dropping_an_uncommitted_writer_removes_its_temp_file() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let mut writer = store.ingest().unwrap();
    writer.write_all(b"partial").unwrap();
    writer.flush().unwrap();
    assert_eq!(entries(store.scratch_dir()).len(), 1);
    drop(writer);
    assert!(entries(store.scratch_dir()).is_empty());
    assert!(entries(&root.path().join("blobs/sha256")).is_empty());
}

#[test]
fn a_flipped_byte_on_disk_fails_the_read_naming_the_path() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let content = vec![7u8; 100_000];
    let info = ingest(&store, &content, None).unwrap();
    let path = store.blob_path(&info.digest);
    {
        let mut file = tamper(&path);
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(50_000)).unwrap();
        file.write_all(&[8]).unwrap();
    }
    let error = read_all(&store, &info.digest).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    let error = store.verify_blob(&info.digest).unwrap_err();
    assert!(
        matches!(error, StoreError::BlobCorrupted { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(matches!(
        store.read_blob_to_vec(&info.digest, 1 << 20),
        Err(StoreError::BlobCorrupted { .. })
    ));
}

#[test]
fn a_truncated_or_extended_blob_is_reported_with_its_path() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let info = ingest(&store, b"0123456789", None).unwrap();
    let path = store.blob_path(&info.digest);
    tamper(&path).set_len(5).unwrap();
    let error = store.open_blob(&info.digest).unwrap_err();
    assert!(
        matches!(error, StoreError::BlobCorrupted { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );

    tamper(&path).set_len(20).unwrap();
    assert!(matches!(
        store.verify_blob(&info.digest),
        Err(StoreError::BlobCorrupted { .. })
    ));
}

#[test]
fn truncation_after_open_is_caught_at_eof() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let info = ingest(&store, &[1u8; 4096], None).unwrap();
    let path = store.blob_path(&info.digest);
    let mut reader = store.open_blob(&info.digest).unwrap();
    tamper(&path).set_len(100).unwrap();
    let mut bytes = Vec::new();
    let error = reader.read_to_end(&mut bytes).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("100 bytes read, 4096 bytes expected"),
        "{error}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn recommitting_content_repairs_a_corrupted_copy() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let info = ingest(&store, b"precious", None).unwrap();
    tamper(&store.blob_path(&info.digest))
        .write_all(b"X")
        .unwrap();
    assert!(store.verify_blob(&info.digest).is_err());
    ingest(&store, b"precious", Some(&info.digest)).unwrap();
    assert_eq!(store.verify_blob(&info.digest).unwrap(), info);
}

#[test]
fn missing_blobs_and_oversized_reads_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let absent = Digest::of(b"absent");
    assert!(!store.has_blob(&absent));
    assert!(matches!(
        store.open_blob(&absent),
        Err(StoreError::BlobNotFound { .. })
    ));
    assert!(matches!(
        store.blob_size(&absent),
        Err(StoreError::BlobNotFound { .. })
    ));
    let info = ingest(&store, &[0u8; 1000], None).unwrap();
    assert!(matches!(
        store.read_blob_to_vec(&info.digest, 999),
        Err(StoreError::BlobTooLarge {
            size: 1000,
            limit: 999,
            ..
        })
    ));
}

#[test]
fn a_temp_file_left_by_a_dead_process_is_reclaimed_and_never_a_blob() {
    let root = tempfile::tempdir().unwrap();
    drop(Store::open(root.path()).unwrap());
    // What a process killed mid-ingest leaves: its session lock (no longer held) and a partial
    // temp file holding exactly the bytes of a valid blob.
    let tmp = root.path().join("tmp");
    let content = b"complete content, never committed";
    fs::write(tmp.join("s999999-dead-0.lock"), b"").unwrap();
    fs::create_dir(tmp.join("s999999-dead-0")).unwrap();
    fs::write(tmp.join("s999999-dead-0/ingest-0"), content).unwrap();
    fs::write(tmp.join("leftover-from-an-old-version"), b"x").unwrap();

    let store = Store::open(root.path()).unwrap();
    assert!(!store.has_blob(&Digest::of(content)));
    let session = store
        .scratch_dir()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(entries(&tmp), [session.clone(), format!("{session}.lock")]);
}

#[test]
fn a_second_handle_does_not_reclaim_a_live_handles_temp_files() {
    let root = tempfile::tempdir().unwrap();
    let first = Store::open(root.path()).unwrap();
    let mut writer = first.ingest().unwrap();
    writer.write_all(b"in flight").unwrap();
    writer.flush().unwrap();
    let _second = Store::open(root.path()).unwrap();
    let info = writer.commit(Some(&Digest::of(b"in flight"))).unwrap();
    assert!(first.has_blob(&info.digest));
}

#[test]
fn two_threads_ingesting_the_same_content_both_succeed() {
    let root = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let expected = Digest::of(&content);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let path = root.path().to_path_buf();
            let content = content.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                // One thread shares nothing with the other: its own handle on the root.
                let store = Store::open(&path).unwrap();
                for _ in 0..5 {
                    let mut writer = store.ingest().unwrap();
                    for chunk in content.chunks(1000 + i * 37) {
                        writer.write_all(chunk).unwrap();
                    }
                    writer.commit(Some(&expected)).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let store = Store::open(root.path()).unwrap();
    assert_eq!(
        store.verify_blob(&expected).unwrap().size,
        content.len() as u64
    );
}

const CHILD_ROOT_ENV: &str = "KILN_STORE_TEST_CHILD_ROOT";

fn child_content() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

/// Run by `two_processes_ingesting_the_same_content_both_succeed` in child processes.
#[test]
#[ignore = "helper: run in a child process by two_processes_ingesting_the_same_content_both_succeed"]
fn child_process_ingest() {
    let root = std::env::var_os(CHILD_ROOT_ENV).expect("run by the parent test only");
    let store = Store::open(Path::new(&root)).unwrap();
    let content = child_content();
    for _ in 0..5 {
        let mut writer = store.ingest().unwrap();
        for chunk in content.chunks(4096) {
            writer.write_all(chunk).unwrap();
        }
        writer.commit(Some(&Digest::of(&content))).unwrap();
        store
            .tag(
                &format!("child-{}", std::process::id()),
                &Digest::of(&content),
                &Digest::of(&content),
            )
            .unwrap();
    }
}

#[test]
fn two_processes_ingesting_the_same_content_both_succeed() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_process_ingest", "--ignored", "--quiet"])
                .env(CHILD_ROOT_ENV, root.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The helper really ran (a filter matching nothing would also exit 0).
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let store = Store::open(root.path()).unwrap();
    let digest = Digest::of(&child_content());
    assert_eq!(store.verify_blob(&digest).unwrap().size, 300_000);
    assert_eq!(store.list_images().unwrap().len(), 2);
    // Both children exited: their sessions are gone and nothing but ours is in tmp/.
    assert_eq!(entries(&root.path().join("tmp")).len(), 2);
}

#[test]
fn ingest_from_streams_a_reader_and_checks_the_digest() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let content = vec![3u8; 700_000];
    let info = store
        .ingest_from(&mut &content[..], Some(&Digest::of(&content)))
        .unwrap();
    assert_eq!(info.size, 700_000);
    assert!(matches!(
        store.ingest_from(&mut &b"abc"[..], Some(&Digest::of(b"abd"))),
        Err(StoreError::DigestMismatch { .. })
    ));

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("network went away"))
        }
    }
    let error = store.ingest_from(&mut Failing, None).unwrap_err();
    assert!(matches!(error, StoreError::ReadSource(_)), "{error:?}");
    assert!(entries(store.scratch_dir()).is_empty());
}

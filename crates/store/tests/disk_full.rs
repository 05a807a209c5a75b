//! A full disk surfaces as `StoreError::DiskFull` (or an `io::Error` of kind `StorageFull` from the
//! writer) and leaves nothing half-committed. Needs root to mount a small tmpfs; skipped otherwise.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use kiln_image::Digest;
use kiln_store::{Store, StoreError};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size}");
        match mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        ) {
            Ok(()) => Some(SmallFs { dir }),
            Err(errno) => {
                eprintln!("skipping: cannot mount a tmpfs ({errno}); run the tests as root");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_full_disk_is_reported_as_such_and_commits_nothing() {
    let Some(small) = SmallFs::mount("2m") else {
        return;
    };
    let store = Store::open(small.path()).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];

    let mut writer = store.ingest().unwrap();
    let mut failure = None;
    for _ in 0..64 {
        if let Err(e) = writer.write_all(&chunk) {
            failure = Some(e);
            break;
        }
    }
    let commit_result = match failure {
        Some(error) => {
            assert_eq!(error.kind(), ErrorKind::StorageFull, "{error}");
            assert!(error.to_string().contains("no space left"), "{error}");
            drop(writer);
            None
        }
        // The last bytes may still sit in the writer's buffer: then commit meets the full disk.
        None => Some(writer.commit(None)),
    };
    if let Some(result) = commit_result {
        let error = result.unwrap_err();
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error:?}");
    }
    assert!(entries(&small.path().join("blobs/sha256")).is_empty());
    assert!(
        entries(store.scratch_dir()).is_empty(),
        "temp file left behind"
    );

    // With the temp file gone the space is back: a small blob commits fine.
    let mut writer = store.ingest().unwrap();
    writer.write_all(b"fits").unwrap();
    let info = writer.commit(Some(&Digest::of(b"fits"))).unwrap();
    assert_eq!(store.verify_blob(&info.digest).unwrap().size, 4);
}

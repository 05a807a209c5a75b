//! kill -9 safety: a process killed mid-ingest and mid-extraction leaves nothing visible, its
//! temp files stay untouched while it lives, and they are reclaimed once it is dead.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::Digest;
use kiln_store::{PruneOptions, Resource, Store, chain_id};

const ROOT_ENV: &str = "KILN_STORE_TEST_CRASH_ROOT";
const READY_ENV: &str = "KILN_STORE_TEST_CRASH_READY";

fn content() -> Vec<u8> {
    (0..500_000u32).map(|i| (i % 253) as u8).collect()
}

/// Run by `a_process_killed_mid_ingest_leaves_nothing_visible`: starts an ingest, a layer
/// extraction and a lease, signals readiness, then waits to be killed.
#[test]
#[ignore = "helper: run in a child process by a_process_killed_mid_ingest_leaves_nothing_visible"]
fn child_killed_mid_work() {
    let root = std::env::var_os(ROOT_ENV).expect("run by the parent test only");
    let ready = std::env::var_os(READY_ENV).expect("run by the parent test only");
    let store = Store::open(Path::new(&root)).unwrap();
    let content = content();
    // Every byte written, but never committed.
    let mut writer = store.ingest().unwrap();
    writer.write_all(&content).unwrap();
    writer.flush().unwrap();
    let layer = store.prepare_layer_dir().unwrap();
    fs::write(layer.path().join("half-extracted"), b"x").unwrap();
    let lease = store.create_lease("pull").unwrap();
    lease
        .protect(&Resource::Blob(Digest::of(b"leased by the child")))
        .unwrap();
    // Written then renamed, so the parent never reads a half-written file.
    let staging = Path::new(&ready).with_extension("staging");
    fs::write(&staging, store.scratch_dir().as_os_str().as_encoded_bytes()).unwrap();
    fs::rename(&staging, &ready).unwrap();
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent test should have killed this process");
}

#[test]
fn a_process_killed_mid_ingest_leaves_nothing_visible() {
    let root = tempfile::tempdir().unwrap();
    let ready = root.path().join("child-ready");
    let store_root = root.path().join("store");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_killed_mid_work", "--ignored", "--quiet"])
        .env(ROOT_ENV, &store_root)
        .env(READY_ENV, &ready)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("child exited early ({status}): {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let child_session = std::path::PathBuf::from(fs::read_to_string(&ready).unwrap());
    assert!(child_session.is_dir());

    // While the child lives, opening the store (which reclaims) leaves its work alone, and prune
    // keeps its lease.
    let digest = Digest::of(&content());
    {
        let store = Store::open(&store_root).unwrap();
        assert!(child_session.is_dir());
        assert_eq!(fs::read_dir(&child_session).unwrap().count(), 2);
        let report = store.prune(&PruneOptions::default()).unwrap();
        assert_eq!(report.removed_stale_leases, 0);
        assert!(!store.has_blob(&digest));
    }

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = Store::open(&store_root).unwrap();
    assert!(
        !child_session.exists(),
        "the dead child's session was not reclaimed"
    );
    assert!(!store.has_blob(&digest));
    assert_eq!(
        fs::read_dir(store_root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(store_root.join("layers")).unwrap().count(), 0);
    assert!(
        store
            .layer_path(&chain_id(None, &digest))
            .unwrap()
            .is_none()
    );
    // Only our own session remains in tmp/.
    assert_eq!(fs::read_dir(store_root.join("tmp")).unwrap().count(), 2);
    // The dead child's lease no longer protects anything.
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_stale_leases, 1);
    assert!(store.list_leases().unwrap().is_empty());
}

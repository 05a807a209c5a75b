//! Garbage collection: prune removes exactly what no image, manifest, cache record or live lease
//! references, and stays away from running builds.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use kiln_image::Digest;
use kiln_store::{
    CacheValue, ManifestLayer, ManifestRecord, PruneOptions, Resource, Store, StoreError, chain_id,
};

fn blob(store: &Store, content: &[u8]) -> Digest {
    let mut writer = store.ingest().unwrap();
    writer.write_all(content).unwrap();
    writer.commit(None).unwrap().digest
}

fn layer(
    store: &Store,
    diff_id: &Digest,
    parent: Option<&Digest>,
    bytes: usize,
) -> (Digest, PathBuf) {
    let chain = chain_id(parent, diff_id);
    let temp = store.prepare_layer_dir().unwrap();
    fs::write(temp.path().join("file"), vec![b'x'; bytes]).unwrap();
    let path = store.commit_layer(temp, &chain, diff_id, parent).unwrap();
    (chain, path)
}

/// An image with a manifest, a config and one layer (blob and extracted form).
struct Image {
    manifest: Digest,
    config: Digest,
    layer_blob: Digest,
    chain: Digest,
}

fn image(store: &Store, name: &str) -> Image {
    let config = blob(store, format!("config of {name}").as_bytes());
    let layer_blob = blob(store, format!("layer of {name}").as_bytes());
    let diff_id = Digest::of(format!("diff of {name}").as_bytes());
    let (chain, _) = layer(store, &diff_id, None, 10);
    let manifest = blob(store, format!("manifest of {name}").as_bytes());
    store
        .record_manifest(&ManifestRecord {
            digest: manifest.clone(),
            config_digest: config.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            layers: vec![ManifestLayer {
                blob_digest: layer_blob.clone(),
                diff_id,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: 1,
            }],
        })
        .unwrap();
    store.tag(name, &manifest, &config).unwrap();
    Image {
        manifest,
        config,
        layer_blob,
        chain,
    }
}

#[test]
fn prune_removes_only_unreferenced_blobs_and_layers() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let img = image(&store, "app:1");
    let loose_blob = blob(&store, b"nobody wants me");
    let (loose_layer, loose_layer_path) = layer(&store, &Digest::of(b"loose"), None, 1000);
    // A cache record keeps a two-layer chain: the top layer directly, the base through it.
    let (cached_base, _) = layer(&store, &Digest::of(b"cbase"), None, 5);
    let (cached_top, _) = layer(&store, &Digest::of(b"ctop"), Some(&cached_base), 5);
    store
        .put_cache_record(
            "step-key",
            &CacheValue::Json(serde_json::json!({"chain": cached_top.to_string()})),
            &[Resource::Layer(cached_top.clone())],
        )
        .unwrap();
    // A live lease keeps a blob.
    let lease = store.create_lease("pull").unwrap();
    let leased = blob(&store, b"being pulled");
    lease.protect(&Resource::Blob(leased.clone())).unwrap();

    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_blobs, std::slice::from_ref(&loose_blob));
    assert_eq!(report.removed_layers, std::slice::from_ref(&loose_layer));
    assert_eq!(report.removed_orphan_layer_dirs, 0);
    assert_eq!(report.bytes_freed, b"nobody wants me".len() as u64 + 1000);
    assert!(!store.has_blob(&loose_blob));
    assert!(!loose_layer_path.exists());
    assert!(store.layer_path(&loose_layer).unwrap().is_none());
    for kept in [&img.manifest, &img.config, &img.layer_blob, &leased] {
        assert!(store.has_blob(kept), "{kept} was pruned");
    }
    for kept in [&img.chain, &cached_base, &cached_top] {
        assert!(
            store.layer_path(kept).unwrap().is_some(),
            "{kept} was pruned"
        );
    }

    // A second prune finds nothing more.
    let again = store.prune(&PruneOptions::default()).unwrap();
    assert!(again.removed_blobs.is_empty() && again.removed_layers.is_empty());

    // Dropping the lease, untagging the image and deleting the cache record free the rest.
    drop(lease);
    store.untag("app:1").unwrap();
    store.delete_cache_record("step-key").unwrap();
    let report = store.prune(&PruneOptions::default()).unwrap();
    let mut expected_blobs = vec![img.manifest.clone(), img.config, img.layer_blob, leased];
    expected_blobs.sort();
    assert_eq!(report.removed_blobs, expected_blobs);
    assert_eq!(report.removed_layers.len(), 3);
    assert!(store.manifest(&img.manifest).unwrap().is_none());
    assert_eq!(
        fs::read_dir(root.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(root.path().join("layers")).unwrap().count(), 0);
}

#[test]
fn a_dry_run_reports_without_removing() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let loose = blob(&store, b"loose");
    let (chain, path) = layer(&store, &Digest::of(b"l"), None, 3);
    let options = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    let report = store.prune(&options).unwrap();
    assert_eq!(report.removed_blobs, std::slice::from_ref(&loose));
    assert_eq!(report.removed_layers, std::slice::from_ref(&chain));
    assert_eq!(report.bytes_freed, 5 + 3);
    assert!(store.has_blob(&loose));
    assert!(path.exists());
    assert_eq!(store.layer_path(&chain).unwrap(), Some(path));
    assert_eq!(store.verify_blob(&loose).unwrap().size, 5);
}

#[test]
fn a_forgotten_lease_of_a_live_process_keeps_protecting() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let protected = blob(&store, b"protected by a lease");
    let lease = store.create_lease("build").unwrap();
    lease.protect(&Resource::Blob(protected.clone())).unwrap();
    // Leaked, not released: the row stays, and so does this process's session.
    std::mem::forget(lease);
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_stale_leases, 0);
    assert!(report.removed_blobs.is_empty());
    assert!(store.has_blob(&protected));
    assert_eq!(store.list_leases().unwrap().len(), 1);
}

#[test]
fn leases_of_exited_processes_are_removed_by_prune() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let protected = blob(&store, b"protected by a lease");
    // Simulate a process that took a lease and was killed: the lease row names a session whose
    // lock is free (the kernel released it with the process).
    let dead_session = "s4242-dead-0";
    fs::write(
        root.path().join("tmp").join(format!("{dead_session}.lock")),
        b"",
    )
    .unwrap();
    let lease = store.create_lease("pull").unwrap();
    lease.protect(&Resource::Blob(protected.clone())).unwrap();
    let lease_id = lease.id();
    std::mem::forget(lease);
    rusqlite_set_session(root.path(), lease_id, dead_session);

    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_stale_leases, 1);
    assert_eq!(report.removed_blobs, std::slice::from_ref(&protected));
    assert!(store.list_leases().unwrap().is_empty());
}

/// Rewrites a lease's session in the database, as if another process had created it.
fn rusqlite_set_session(root: &std::path::Path, lease_id: i64, session: &str) {
    let conn = rusqlite::Connection::open(root.join("meta.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = conn
        .execute(
            "UPDATE leases SET session = ?1 WHERE id = ?2",
            rusqlite::params![session, lease_id],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[test]
fn a_lease_protects_content_written_after_it_was_taken() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let lease = store.create_lease("pull").unwrap();
    let digest = Digest::of(b"arriving");
    let chain = chain_id(None, &Digest::of(b"arriving layer"));
    lease.protect(&Resource::Blob(digest.clone())).unwrap();
    lease.protect(&Resource::Layer(chain.clone())).unwrap();
    assert_eq!(blob(&store, b"arriving"), digest);
    layer(&store, &Digest::of(b"arriving layer"), None, 1);
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert!(report.removed_blobs.is_empty());
    assert!(report.removed_layers.is_empty());
    lease.release().unwrap();
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_blobs, [digest]);
    assert_eq!(report.removed_layers, [chain]);
}

#[test]
fn prune_cleans_files_the_database_never_recorded() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    // A blob renamed into place by a process killed before it recorded it.
    let unrecorded = Digest::of(b"unrecorded");
    fs::write(store.blob_path(&unrecorded), b"unrecorded").unwrap();
    // A layer directory whose commit transaction never landed.
    let orphan = root.path().join("layers").join("999");
    fs::create_dir_all(orphan.join("usr")).unwrap();
    fs::write(orphan.join("usr/f"), b"1234").unwrap();
    // Not named like a blob: not ours to delete.
    fs::write(root.path().join("blobs/sha256/README"), b"?").unwrap();

    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.removed_blobs, std::slice::from_ref(&unrecorded));
    assert_eq!(report.removed_orphan_layer_dirs, 1);
    assert_eq!(report.bytes_freed, 10 + 4);
    assert!(!orphan.exists());
    assert!(!store.has_blob(&unrecorded));
    assert!(root.path().join("blobs/sha256/README").exists());
}

#[test]
fn prune_can_expire_cache_records_and_empty_cache_mounts() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (chain, _) = layer(&store, &Digest::of(b"cached"), None, 7);
    store
        .put_cache_record(
            "old",
            &CacheValue::Bytes(vec![1]),
            &[Resource::Layer(chain.clone())],
        )
        .unwrap();
    let mount = store.cache_mount_dir("apt").unwrap();
    fs::write(mount.join("pkg.deb"), b"123").unwrap();

    // Recently used records survive a one-hour expiry.
    let report = store
        .prune(&PruneOptions {
            cache_unused_for: Some(Duration::from_secs(3600)),
            ..PruneOptions::default()
        })
        .unwrap();
    assert_eq!(report.removed_cache_records, 0);
    assert!(report.removed_layers.is_empty());

    let report = store
        .prune(&PruneOptions {
            cache_unused_for: Some(Duration::ZERO),
            cache_mounts: true,
            ..PruneOptions::default()
        })
        .unwrap();
    assert_eq!(report.removed_cache_records, 1);
    assert_eq!(report.removed_layers, [chain]);
    assert_eq!(report.removed_cache_mounts, 1);
    assert_eq!(report.bytes_freed, 7 + 3);
    assert!(store.get_cache_record("old").unwrap().is_none());
    assert!(!mount.exists());
}

#[test]
fn prune_waits_for_builds_or_reports_busy() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let build = store.lock_shared().unwrap();
    let other = Store::open(root.path()).unwrap();
    let second_build = other.try_lock_shared().unwrap();
    let no_wait = PruneOptions {
        no_wait: true,
        ..PruneOptions::default()
    };
    assert!(matches!(
        store.prune(&no_wait),
        Err(StoreError::Busy { .. })
    ));
    drop(second_build);

    // A waiting prune proceeds once the build ends; the build's fresh blob is gone only then.
    let fresh = blob(&store, b"written by the build, not yet tagged");
    let pruner = {
        let root = root.path().to_path_buf();
        std::thread::spawn(move || Store::open(&root).unwrap().prune(&PruneOptions::default()))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        store.has_blob(&fresh),
        "prune ran while a build held the lock"
    );
    assert!(!pruner.is_finished());
    drop(build);
    let report = pruner.join().unwrap().unwrap();
    assert_eq!(report.removed_blobs, [fresh]);
}

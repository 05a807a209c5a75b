//! The metadata database through the store's typed methods: images and tags, manifests, the
//! diff id → blob index, cache records, the stat cache, and several handles writing at once.

use std::fs;
use std::io::Write;
use std::time::Duration;

use kiln_image::Digest;
use kiln_store::{
    CacheValue, Compression, ManifestLayer, ManifestRecord, Owner, Resource, StatKey, Store,
    chain_id, unix_now_ns,
};

fn digest(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

#[test]
fn tag_list_resolve_and_untag_images() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    assert!(store.list_images().unwrap().is_empty());

    store
        .tag(
            "docker.io/library/alpine:3.20",
            &digest("m1"),
            &digest("c1"),
        )
        .unwrap();
    store
        .tag("kiln.test/app:latest", &digest("m2"), &digest("c2"))
        .unwrap();
    let images = store.list_images().unwrap();
    assert_eq!(
        images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["docker.io/library/alpine:3.20", "kiln.test/app:latest"]
    );
    let app = store
        .resolve_image("kiln.test/app:latest")
        .unwrap()
        .unwrap();
    assert_eq!(app.manifest_digest, digest("m2"));
    assert_eq!(app.config_digest, digest("c2"));

    // Re-pointing a tag replaces it and its references.
    store
        .tag("kiln.test/app:latest", &digest("m3"), &digest("c3"))
        .unwrap();
    let app = store
        .resolve_image("kiln.test/app:latest")
        .unwrap()
        .unwrap();
    assert_eq!(app.manifest_digest, digest("m3"));
    assert_eq!(
        store
            .references_of(&Owner::Image("kiln.test/app:latest".into()))
            .unwrap()
            .len(),
        2
    );
    assert!(
        store
            .references_of(&Owner::Image("kiln.test/app:latest".into()))
            .unwrap()
            .contains(&Resource::Blob(digest("m3")))
    );

    assert!(store.untag("kiln.test/app:latest").unwrap());
    assert!(!store.untag("kiln.test/app:latest").unwrap());
    assert!(
        store
            .resolve_image("kiln.test/app:latest")
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .references_of(&Owner::Image("kiln.test/app:latest".into()))
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_images().unwrap().len(), 1);
}

#[test]
fn images_resolve_by_id_prefix_unless_ambiguous() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let config = digest("config");
    store.tag("a:1", &digest("m"), &config).unwrap();
    store.tag("a:2", &digest("m"), &config).unwrap();
    let by_full_id = store.resolve_image(&config.to_string()).unwrap().unwrap();
    assert_eq!(by_full_id.config_digest, config);
    let by_prefix = store.resolve_image(&config.hex()[..12]).unwrap().unwrap();
    assert_eq!(by_prefix.config_digest, config);
    assert!(store.resolve_image(&config.hex()[..3]).unwrap().is_none());
    assert!(store.resolve_image("zzzz").unwrap().is_none());

    // A second image whose id shares the first 4 hex characters makes that prefix ambiguous.
    let other = (0u32..)
        .map(|i| digest(&format!("other{i}")))
        .find(|d| d.hex()[..4] == config.hex()[..4])
        .unwrap();
    store.tag("b:1", &digest("m2"), &other).unwrap();
    assert!(store.resolve_image(&config.hex()[..4]).unwrap().is_none());
    assert_eq!(
        store
            .resolve_image(&config.hex()[..12])
            .unwrap()
            .unwrap()
            .config_digest,
        config
    );
}

#[test]
fn manifests_record_layers_and_the_diff_id_index() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let layers = vec![
        ManifestLayer {
            blob_digest: digest("blob1"),
            diff_id: digest("diff1"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 100,
        },
        ManifestLayer {
            blob_digest: digest("blob2"),
            diff_id: digest("diff2"),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            size: 200,
        },
    ];
    let manifest = ManifestRecord {
        digest: digest("manifest"),
        config_digest: digest("config"),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        layers,
    };
    store.record_manifest(&manifest).unwrap();
    store.record_manifest(&manifest).unwrap(); // idempotent
    assert_eq!(store.manifest(&manifest.digest).unwrap().unwrap(), manifest);
    assert!(store.manifest(&digest("nope")).unwrap().is_none());

    let refs = store
        .references_of(&Owner::Blob(manifest.digest.clone()))
        .unwrap();
    let chain2 = chain_id(Some(&digest("diff1")), &digest("diff2"));
    for expected in [
        Resource::Blob(digest("config")),
        Resource::Blob(digest("blob1")),
        Resource::Blob(digest("blob2")),
        Resource::Layer(digest("diff1")),
        Resource::Layer(chain2),
    ] {
        assert!(refs.contains(&expected), "{expected} missing from {refs:?}");
    }

    // The index only hands out blobs that are actually present.
    assert!(
        store
            .blob_for_diff_id(&digest("diff1"), Compression::Gzip)
            .unwrap()
            .is_none()
    );
    let mut writer = store.ingest().unwrap();
    writer.write_all(b"a gzip layer").unwrap();
    let gz = writer.commit(None).unwrap();
    store
        .record_layer_blob(
            &digest("diff1"),
            &gz.digest,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            gz.size,
        )
        .unwrap();
    let found = store
        .blob_for_diff_id(&digest("diff1"), Compression::Gzip)
        .unwrap()
        .unwrap();
    assert_eq!(found.blob_digest, gz.digest);
    assert_eq!(found.size, gz.size);
    assert!(
        store
            .blob_for_diff_id(&digest("diff1"), Compression::Zstd)
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .record_layer_blob(&digest("d"), &gz.digest, "application/json", 1)
            .is_err()
    );
}

#[test]
fn cache_records_store_json_and_bytes_and_track_use() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    assert!(store.get_cache_record("k1").unwrap().is_none());

    let json = CacheValue::Json(serde_json::json!({"layers": ["a", "b"], "n": 2}));
    store
        .put_cache_record("k1", &json, &[Resource::Layer(digest("l1"))])
        .unwrap();
    store
        .put_cache_record("k2", &CacheValue::Bytes(vec![0, 1, 255]), &[])
        .unwrap();
    let first = store.get_cache_record("k1").unwrap().unwrap();
    assert_eq!(first.value, json);
    assert!(first.last_used_ns >= first.created_ns);
    std::thread::sleep(Duration::from_millis(2));
    let second = store.get_cache_record("k1").unwrap().unwrap();
    assert!(second.last_used_ns > first.last_used_ns);
    assert_eq!(second.created_ns, first.created_ns);
    assert_eq!(
        store.get_cache_record("k2").unwrap().unwrap().value,
        CacheValue::Bytes(vec![0, 1, 255])
    );
    assert_eq!(
        store
            .cache_keys_referencing(&Resource::Layer(digest("l1")))
            .unwrap(),
        ["k1"]
    );

    // Replacing a record replaces its references.
    store
        .put_cache_record("k1", &json, &[Resource::Blob(digest("b"))])
        .unwrap();
    assert!(
        store
            .cache_keys_referencing(&Resource::Layer(digest("l1")))
            .unwrap()
            .is_empty()
    );
    assert!(store.delete_cache_record("k1").unwrap());
    assert!(!store.delete_cache_record("k1").unwrap());
    assert!(store.get_cache_record("k1").unwrap().is_none());
    assert!(
        store
            .references_of(&Owner::CacheRecord("k1".into()))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn stat_cache_hits_only_exact_and_non_racy_entries() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let file = root.path().join("file");
    fs::write(&file, b"content").unwrap();
    let key = StatKey::from_metadata(&fs::symlink_metadata(&file).unwrap());
    let sha = Digest::of(b"content");

    // Hashed just now: the file is younger than the racy margin, so the entry is not trusted.
    store.put_stat_cache(&key, &sha, unix_now_ns()).unwrap();
    assert!(store.get_stat_cache(&key).unwrap().is_none());

    // Recorded well after the file's last change: trusted.
    let later = key.mtime_ns.max(key.ctime_ns) + 10_000_000_000;
    store.put_stat_cache(&key, &sha, later).unwrap();
    let entry = store.get_stat_cache(&key).unwrap().unwrap();
    assert_eq!(entry.sha256, sha);
    assert_eq!(entry.recorded_at_ns, later);

    // Any change in the stat fields misses.
    for changed in [
        StatKey {
            size: key.size + 1,
            ..key
        },
        StatKey {
            mtime_ns: key.mtime_ns + 1,
            ..key
        },
        StatKey {
            ctime_ns: key.ctime_ns + 1,
            ..key
        },
        StatKey {
            ino: key.ino + 1,
            ..key
        },
    ] {
        assert!(store.get_stat_cache(&changed).unwrap().is_none());
    }

    // Inode numbers with the high bit set (overlayfs xino) round-trip.
    let big = StatKey {
        dev: u64::MAX,
        ino: u64::MAX - 1,
        ..key
    };
    store
        .put_stat_cache_many(&[(big, digest("big"))], later)
        .unwrap();
    assert_eq!(
        store.get_stat_cache(&big).unwrap().unwrap().sha256,
        digest("big")
    );
}

#[test]
fn two_handles_on_one_root_write_at_the_same_time() {
    let root = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let path = root.path().to_path_buf();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                for i in 0..100 {
                    store
                        .tag(&format!("t{t}/image:{i}"), &digest("m"), &digest("c"))
                        .unwrap();
                    store
                        .put_cache_record(
                            &format!("t{t}-{i}"),
                            &CacheValue::Bytes(vec![t as u8]),
                            &[Resource::Blob(digest("m"))],
                        )
                        .unwrap();
                    store
                        .get_cache_record(&format!("t{t}-{i}"))
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let store = Store::open(root.path()).unwrap();
    assert_eq!(store.list_images().unwrap().len(), 200);
    assert_eq!(
        store
            .cache_keys_referencing(&Resource::Blob(digest("m")))
            .unwrap()
            .len(),
        200
    );
}

#[test]
fn cache_mount_dirs_are_created_per_id() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let go = store.cache_mount_dir("go-build").unwrap();
    assert!(go.is_dir());
    assert!(go.starts_with(root.path().join("cache-mounts")));
    assert_eq!(store.cache_mount_dir("go-build").unwrap(), go);
    assert_ne!(store.cache_mount_dir("npm").unwrap(), go);
}

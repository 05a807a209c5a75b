//! Push and pull against a real registry, checked with skopeo.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{TempStore, TestRegistry, have, make_image};
use kiln_registry::{
    Anonymous, ClientOptions, RegistryClient, RegistryError, Repository, TransferEvent,
    WantedPlatform,
};

fn client() -> RegistryClient {
    RegistryClient::new(Arc::new(Anonymous), ClientOptions::default()).expect("client")
}

fn amd64() -> WantedPlatform {
    WantedPlatform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn events() -> (
    Arc<Mutex<Vec<TransferEvent>>>,
    impl Fn(TransferEvent) + Sync,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |event| sink.lock().unwrap().push(event))
}

#[tokio::test]
async fn push_then_pull_round_trip_keeps_digests_and_second_push_uploads_nothing() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let store_a = TempStore::new();
    let manifest_digest = make_image(&store_a, "example/app:1", 3, "round-trip");
    let repo = Repository {
        registry: registry.host(),
        name: "example/app".into(),
    };
    let client = client();

    let (seen, sink) = events();
    let pushed = kiln_registry::push(&client, &store_a, &manifest_digest, &repo, "1", &[], &sink)
        .await
        .expect("push");
    assert_eq!(pushed, manifest_digest);
    let uploads = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, TransferEvent::Done { .. }))
        .count();
    assert_eq!(uploads, 4, "3 layers and the config are uploaded");

    if have("skopeo") {
        let output = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{}/example/app:1", registry.host()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            kiln_image::Digest::of(&output.stdout),
            manifest_digest,
            "skopeo sees exactly the manifest kiln pushed"
        );
    } else {
        eprintln!("SKIP skopeo check: skopeo is not installed");
    }

    // A second push of the same image uploads no blob: only HEADs and the manifest.
    let uploads_before = registry.log_count("POST /v2/example/app/blobs/uploads/");
    let (seen, sink) = events();
    kiln_registry::push(&client, &store_a, &manifest_digest, &repo, "1", &[], &sink)
        .await
        .expect("second push");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|e| matches!(e, TransferEvent::Skipped { .. })),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        registry.log_count("POST /v2/example/app/blobs/uploads/"),
        uploads_before
    );

    // Pull into an empty store: same manifest digest, every blob verified into the store.
    let store_b = TempStore::new();
    let (_seen, sink) = events();
    let pulled = kiln_registry::pull(&client, &store_b, &repo, "1", &amd64(), &sink)
        .await
        .expect("pull");
    assert_eq!(pulled.manifest.digest, manifest_digest);
    assert_eq!(pulled.manifest.layers.len(), 3);
    for layer in &pulled.manifest.layers {
        store_b
            .verify_blob(&layer.blob_digest)
            .expect("layer blob stored intact");
    }
    let original = store_a.manifest(&manifest_digest).unwrap().unwrap();
    assert_eq!(pulled.manifest, original);
}

#[tokio::test]
async fn pull_of_what_skopeo_pushed_including_a_multi_platform_index() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed");
        return;
    }
    let store = TempStore::new();
    let client = client();
    let source = make_image(&store, "src:1", 2, "skopeo-source");
    let source_repo = Repository {
        registry: registry.host(),
        name: "src".into(),
    };
    let (_seen, sink) = events();
    kiln_registry::push(&client, &store, &source, &source_repo, "1", &[], &sink)
        .await
        .unwrap();

    // skopeo copies it to another repository as an OCI image; kiln pulls that.
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "oci",
        ])
        .arg(format!("docker://{}/src:1", registry.host()))
        .arg(format!("docker://{}/copied:oci", registry.host()))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let fresh = TempStore::new();
    let copied_repo = Repository {
        registry: registry.host(),
        name: "copied".into(),
    };
    let pulled = kiln_registry::pull(&client, &fresh, &copied_repo, "oci", &amd64(), &sink)
        .await
        .expect("pull skopeo's OCI copy");
    assert_eq!(
        pulled.manifest.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(pulled.manifest.layers.len(), 2);

    // An index with two platforms, pushed as raw JSON; kiln picks the amd64 entry.
    let arm = make_image(&store, "src:arm", 1, "arm-variant");
    let (_seen, sink2) = events();
    kiln_registry::push(&client, &store, &arm, &source_repo, "arm", &[], &sink2)
        .await
        .unwrap();
    let size_of = |digest: &kiln_image::Digest| store.blob_size(digest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": arm.to_string(),
             "size": size_of(&arm), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": source.to_string(),
             "size": size_of(&source), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    client
        .put_manifest(
            &source_repo,
            "multi",
            "application/vnd.oci.image.index.v1+json",
            &index_bytes,
        )
        .await
        .expect("push index");
    let pulled = kiln_registry::pull(&client, &fresh, &source_repo, "multi", &amd64(), &sink)
        .await
        .expect("pull index");
    assert_eq!(pulled.manifest.digest, source);
    assert_eq!(
        pulled.index_digest,
        Some(kiln_image::Digest::of(&index_bytes))
    );
    let arm64 = WantedPlatform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    let pulled = kiln_registry::pull(&client, &fresh, &source_repo, "multi", &arm64, &sink)
        .await
        .expect("pull arm64 from index");
    assert_eq!(pulled.manifest.digest, arm);
    let s390x = WantedPlatform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let error = kiln_registry::pull(&client, &fresh, &source_repo, "multi", &s390x, &sink)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::NoMatchingPlatform { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("linux/amd64"), "{error}");
}

#[tokio::test]
async fn errors_name_what_failed() {
    let Some(mut registry) = TestRegistry::start("") else {
        return;
    };
    let client = client();
    let store = TempStore::new();
    let repo = Repository {
        registry: registry.host(),
        name: "absent".into(),
    };
    let (_seen, sink) = events();
    let error = kiln_registry::pull(&client, &store, &repo, "nope", &amd64(), &sink)
        .await
        .unwrap_err();
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains("absent"), "{error}");

    registry.stop();
    let quick = RegistryClient::new(
        Arc::new(Anonymous),
        ClientOptions {
            attempts: 2,
            backoff: std::time::Duration::from_millis(10),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let error = kiln_registry::pull(&quick, &store, &repo, "nope", &amd64(), &sink)
        .await
        .unwrap_err();
    assert!(matches!(error, RegistryError::Connection { .. }), "{error}");
    assert!(error.to_string().contains(&registry.host()), "{error}");
}

#[tokio::test]
async fn blobs_are_mounted_across_repositories_and_big_blobs_go_in_chunks() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let store = TempStore::new();
    let digest = make_image(&store, "mount/a:1", 2, "mounting");
    // Chunks far smaller than the blobs, so every upload takes several PATCH requests.
    let chunked = RegistryClient::new(
        Arc::new(Anonymous),
        ClientOptions {
            chunk_size: 40,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let first = Repository {
        registry: registry.host(),
        name: "mount/a".into(),
    };
    let (_seen, sink) = events();
    kiln_registry::push(&chunked, &store, &digest, &first, "1", &[], &sink)
        .await
        .expect("chunked push");
    assert!(
        registry.log_count("PATCH /v2/mount/a/blobs/uploads/") >= 6,
        "uploads were chunked"
    );
    let fresh = TempStore::new();
    let pulled = kiln_registry::pull(&client(), &fresh, &first, "1", &amd64(), &sink)
        .await
        .expect("pull of a chunked upload");
    assert_eq!(pulled.manifest.digest, digest);

    let second = Repository {
        registry: registry.host(),
        name: "mount/b".into(),
    };
    let (seen, sink) = events();
    kiln_registry::push(
        &client(),
        &store,
        &digest,
        &second,
        "1",
        std::slice::from_ref(&first),
        &sink,
    )
    .await
    .expect("push with mounts");
    let events = seen.lock().unwrap().clone();
    let mounted = events
        .iter()
        .filter(|e| matches!(e, TransferEvent::Mounted { .. }))
        .count();
    assert_eq!(
        mounted, 3,
        "config and both layers mounted, none uploaded: {events:?}"
    );
    assert_eq!(registry.log_count("PATCH /v2/mount/b/"), 0);
    assert_eq!(registry.log_count("PUT /v2/mount/b/blobs/"), 0);
}

//! OCI layout and docker archives checked by skopeo and umoci, loaded back, and compressed layers
//! checked by gzip and zstd.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use common::{build_rich_tree, have, run};
use kiln_image::Digest;
use kiln_oci::blobs::{BlobSink, BlobSource, LayoutDir};
use kiln_oci::compress::{Compression, GZIP_CHUNK_SIZE, compress_dir_layer, compress_layer};
use kiln_oci::diff::DiffOptions;
use kiln_oci::export::{ArchiveFormat, ExportImage, export_archive};
use kiln_oci::import::{ArchiveKind, ImportError, load_archive};
use kiln_oci::manifest::{MediaTypeSet, build_manifest, descriptor};
use kiln_oci::tar_writer::{EntryKind, TarEntry, TarWriter};
use oci_spec::image::Descriptor;

/// Builds an image with one layer made from a small tree (plus `marker` as a file) into `layout`;
/// returns the manifest descriptor and the layer's diff id.
fn build_image(layout: &LayoutDir, media: MediaTypeSet, marker: &str) -> (Descriptor, Digest) {
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir_all(tree.path().join("etc")).unwrap();
    fs::write(tree.path().join("etc/marker"), marker).unwrap();
    fs::write(tree.path().join("hello"), b"hello from kiln\n").unwrap();
    // Over GZIP_CHUNK_SIZE, so the layer is multi-member gzip and Go's decompressors (umoci) read it.
    fs::write(tree.path().join("big"), pseudo_random(3 * GZIP_CHUNK_SIZE)).unwrap();
    let compression = Compression::Gzip { level: 6 };
    let (blob, digests) =
        compress_dir_layer(tree.path(), &DiffOptions::plain(), compression, Vec::new()).unwrap();
    layout
        .write_blob(Some(&digests.blob_digest), &mut &blob[..])
        .unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/hello"],"Labels":{{"marker":"{marker}"}}}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created_by":"kiln test"}}]}}"#,
        digests.diff_id
    );
    let config_digest = layout.write_blob(None, &mut config.as_bytes()).unwrap();
    let (_, manifest_bytes, manifest_descriptor) = build_manifest(
        media,
        descriptor(media.config(), &config_digest, config.len() as u64).unwrap(),
        vec![descriptor(media.layer(compression), &digests.blob_digest, digests.size).unwrap()],
        None,
    )
    .unwrap();
    layout.write_blob(None, &mut &manifest_bytes[..]).unwrap();
    (manifest_descriptor, digests.diff_id)
}

/// Bytes that compress poorly, deterministically.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn skopeo_inspect(target: &str) -> serde_json::Value {
    assert!(
        have("skopeo"),
        "skopeo is required (apt-get install skopeo)"
    );
    let out = run(Command::new("skopeo").arg("inspect").arg(target));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn oci_layout_tar_passes_skopeo_and_umoci() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutDir::create(&work.path().join("store")).unwrap();
    let (one, _) = build_image(&layout, MediaTypeSet::Oci, "one");
    let (two, _) = build_image(&layout, MediaTypeSet::Oci, "two");
    let images = [
        ExportImage {
            names: vec![
                "docker.io/library/kiln-one:v1".into(),
                "docker.io/library/kiln-one:latest".into(),
            ],
            descriptor: one.clone(),
        },
        ExportImage {
            names: vec!["registry.example:5000/team/kiln-two:v2".into()],
            descriptor: two.clone(),
        },
    ];
    let archive = work.path().join("image.tar");
    let file = fs::File::create(&archive).unwrap();
    export_archive(&layout, &images, ArchiveFormat::OciLayout, file).unwrap();

    // Deterministic: the same images give the same archive bytes.
    let again = export_archive(&layout, &images, ArchiveFormat::OciLayout, Vec::new()).unwrap();
    assert_eq!(fs::read(&archive).unwrap(), again);

    let inspected = skopeo_inspect(&format!("oci-archive:{}:v2", archive.display()));
    assert_eq!(inspected["Labels"]["marker"], "two");
    assert_eq!(inspected["Digest"], two.digest().to_string());
    let inspected = skopeo_inspect(&format!("oci-archive:{}:latest", archive.display()));
    assert_eq!(inspected["Labels"]["marker"], "one");

    assert!(have("umoci"), "umoci is required (apt-get install umoci)");
    let unpacked = work.path().join("layout");
    fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked));
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:v1", unpacked.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/marker")).unwrap(),
        "one"
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/hello")).unwrap(),
        "hello from kiln\n"
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/big")).unwrap(),
        pseudo_random(3 * GZIP_CHUNK_SIZE)
    );

    // And it loads back: names, manifests, configs and every blob.
    let target = LayoutDir::create(&work.path().join("loaded")).unwrap();
    let loaded = load_archive(fs::File::open(&archive).unwrap(), &target).unwrap();
    assert_eq!(loaded.kind, ArchiveKind::OciLayout);
    assert_eq!(loaded.images.len(), 2);
    assert_eq!(
        loaded.images[0].names,
        [
            "docker.io/library/kiln-one:v1",
            "docker.io/library/kiln-one:latest"
        ]
    );
    assert_eq!(
        loaded.images[1].names,
        ["registry.example:5000/team/kiln-two:v2"]
    );
    for image in &loaded.images {
        let manifest = &image.manifests[0];
        assert!(String::from_utf8_lossy(&manifest.config).contains("marker"));
        for layer in manifest.manifest.layers() {
            let digest: Digest = layer.digest().to_string().parse().unwrap();
            assert_eq!(target.blob_size(&digest).unwrap(), layer.size());
        }
    }
}

#[test]
fn docker_archive_passes_skopeo_and_loads_back() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutDir::create(&work.path().join("store")).unwrap();
    let (one, _) = build_image(&layout, MediaTypeSet::Docker, "one");
    let (two, _) = build_image(&layout, MediaTypeSet::Docker, "two");
    let images = [
        ExportImage {
            names: vec!["docker.io/library/kiln-one:v1".into()],
            descriptor: one.clone(),
        },
        ExportImage {
            names: vec!["docker.io/me/kiln-two:v2".into()],
            descriptor: two.clone(),
        },
    ];
    let archive = work.path().join("docker.tar");
    export_archive(
        &layout,
        &images,
        ArchiveFormat::DockerArchive,
        fs::File::create(&archive).unwrap(),
    )
    .unwrap();

    let inspected = skopeo_inspect(&format!("docker-archive:{}:kiln-one:v1", archive.display()));
    assert_eq!(inspected["Labels"]["marker"], "one");
    let inspected = skopeo_inspect(&format!(
        "docker-archive:{}:me/kiln-two:v2",
        archive.display()
    ));
    assert_eq!(inspected["Labels"]["marker"], "two");
    assert_eq!(inspected["RepoTags"], serde_json::json!([]));

    let listing = run(Command::new("tar").arg("-tf").arg(&archive));
    for file in ["oci-layout", "index.json", "manifest.json", "repositories"] {
        assert!(
            listing.lines().any(|l| l == file),
            "{file} missing: {listing}"
        );
    }
    let loaded = load_archive(
        fs::File::open(&archive).unwrap(),
        &LayoutDir::create(&work.path().join("l")).unwrap(),
    )
    .unwrap();
    assert_eq!(loaded.kind, ArchiveKind::OciLayout);
    assert_eq!(loaded.images[0].descriptor.digest(), one.digest());
    assert_eq!(loaded.images[1].names, ["docker.io/me/kiln-two:v2"]);
}

#[test]
fn legacy_docker_archive_loads_with_a_made_manifest() {
    let work = tempfile::tempdir().unwrap();
    // Two uncompressed layers, one of them over the small-file limit so it streams into the sink.
    let small_layer = {
        let mut w = TarWriter::new(Vec::new());
        let mut e = TarEntry::new("small", EntryKind::File);
        e.mode = 0o644;
        e.size = 5;
        w.append(&e, Some(&mut &b"small"[..])).unwrap();
        w.finish().unwrap()
    };
    let big_layer = {
        let mut w = TarWriter::new(Vec::new());
        let mut e = TarEntry::new("big", EntryKind::File);
        e.mode = 0o644;
        e.size = 5 << 20;
        w.append(&e, Some(&mut std::io::repeat(7).take(5 << 20)))
            .unwrap();
        w.finish().unwrap()
    };
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        Digest::of(&small_layer),
        Digest::of(&big_layer)
    );
    let config_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    let manifest_json = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["legacy:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}}]"#
    );
    let mut w = TarWriter::new(Vec::new());
    let mut add = |path: &str, content: &[u8]| {
        let mut e = TarEntry::new(path, EntryKind::File);
        e.mode = 0o644;
        e.size = content.len() as u64;
        w.append(&e, Some(&mut &content[..])).unwrap();
    };
    add("aaa/layer.tar", &small_layer);
    add("ccc/layer.tar", &big_layer);
    add(&config_name, config.as_bytes());
    add("manifest.json", manifest_json.as_bytes());
    let mut symlink = TarEntry::new("bbb/layer.tar", EntryKind::Symlink);
    symlink.link_target = b"../ccc/layer.tar".to_vec();
    w.append(&symlink, None).unwrap();
    let archive = w.finish().unwrap();

    let sink = LayoutDir::create(&work.path().join("l")).unwrap();
    let loaded = load_archive(&archive[..], &sink).unwrap();
    assert_eq!(loaded.kind, ArchiveKind::LegacyDocker);
    let image = &loaded.images[0];
    assert_eq!(image.names, ["legacy:1"]);
    let layers = image.manifests[0].manifest.layers();
    assert_eq!(
        layers[0].digest().to_string(),
        Digest::of(&small_layer).to_string()
    );
    assert_eq!(
        layers[1].digest().to_string(),
        Digest::of(&big_layer).to_string()
    );
    assert_eq!(
        layers[0].media_type().to_string(),
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    // The made manifest and every blob it names are in the sink.
    let manifest_digest: Digest = image.descriptor.digest().to_string().parse().unwrap();
    assert!(sink.blob_size(&manifest_digest).is_ok());
    assert!(sink.blob_size(&Digest::of(config.as_bytes())).is_ok());
    assert!(sink.blob_size(&Digest::of(&big_layer)).is_ok());

    // A layer that does not match the config's diff ids is refused.
    let wrong_config = config.replace(
        &Digest::of(&small_layer).to_string(),
        &Digest::of(b"x").to_string(),
    );
    let wrong_name = format!("{}.json", Digest::of(wrong_config.as_bytes()).hex());
    let mut w = TarWriter::new(Vec::new());
    for (path, content) in [
        ("aaa/layer.tar", &small_layer[..]),
        ("bbb/layer.tar", &big_layer[..]),
        (wrong_name.as_str(), wrong_config.as_bytes()),
        (
            "manifest.json",
            manifest_json.replace(&config_name, &wrong_name).as_bytes(),
        ),
    ] {
        let mut e = TarEntry::new(path, EntryKind::File);
        e.mode = 0o644;
        e.size = content.len() as u64;
        w.append(&e, Some(&mut &content[..])).unwrap();
    }
    let err = load_archive(&w.finish().unwrap()[..], &sink).unwrap_err();
    assert!(matches!(err, ImportError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains("aaa/layer.tar"), "{err}");
}

#[test]
fn a_tampered_blob_is_refused_on_load() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutDir::create(&work.path().join("store")).unwrap();
    let (one, _) = build_image(&layout, MediaTypeSet::Oci, "one");
    let archive = export_archive(
        &layout,
        &[ExportImage {
            names: vec!["kiln:t".into()],
            descriptor: one,
        }],
        ArchiveFormat::OciLayout,
        Vec::new(),
    )
    .unwrap();
    // A single-image archive needs no reference for skopeo.
    let path = work.path().join("single.tar");
    fs::write(&path, &archive).unwrap();
    let inspected = skopeo_inspect(&format!("oci-archive:{}", path.display()));
    assert_eq!(inspected["Labels"]["marker"], "one");
    // Flip one byte inside the gzip layer: find the layer by its magic.
    let mut tampered = archive.clone();
    let gzip_at = tampered
        .windows(3)
        .position(|w| w == [0x1f, 0x8b, 0x08])
        .unwrap();
    tampered[gzip_at + 40] ^= 0xff;
    let sink = LayoutDir::create(&work.path().join("l")).unwrap();
    let err = load_archive(&tampered[..], &sink).unwrap_err();
    assert!(matches!(err, ImportError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("blobs/sha256/"), "{err}");
}

#[test]
fn export_refuses_a_blob_whose_bytes_changed() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutDir::create(&work.path().join("store")).unwrap();
    let (one, _) = build_image(&layout, MediaTypeSet::Oci, "one");
    // Corrupt the config blob in place (same size).
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(
        &fs::read(layout.blob_path(&one.digest().to_string().parse().unwrap())).unwrap(),
    )
    .unwrap();
    let config_path = layout.blob_path(&manifest.config().digest().to_string().parse().unwrap());
    let mut bytes = fs::read(&config_path).unwrap();
    bytes[10] ^= 1;
    fs::write(&config_path, bytes).unwrap();
    let images = [ExportImage {
        names: vec![],
        descriptor: one,
    }];
    let err = export_archive(&layout, &images, ArchiveFormat::OciLayout, Vec::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&manifest.config().digest().to_string()),
        "{err}"
    );
}

#[test]
fn parallel_gzip_and_zstd_layers_decompress_with_the_real_tools() {
    assert!(have("gzip") && have("zstd"), "gzip and zstd are required");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build_rich_tree(&tree);
    // Enough content for several gzip members.
    let mut big = fs::File::create(tree.join("big")).unwrap();
    for i in 0..(4 * GZIP_CHUNK_SIZE / 64) {
        writeln!(
            big,
            "{i:020} some text that compresses well {:08}",
            i * 31 % 977
        )
        .unwrap();
    }
    drop(big);
    let (tar, _) =
        kiln_oci::diff::write_layer_tar(&tree, &DiffOptions::plain(), Vec::new()).unwrap();
    assert!(tar.len() > 3 * GZIP_CHUNK_SIZE);
    for (compression, tool, ext) in [
        (Compression::Gzip { level: 1 }, "gzip", "gz"),
        (Compression::Zstd { level: 3 }, "zstd", "zst"),
    ] {
        let (blob, digests) = compress_layer(&tar[..], compression, Vec::new()).unwrap();
        assert_eq!(digests.diff_id, Digest::of(&tar));
        let path = work.path().join(format!("layer.tar.{ext}"));
        fs::write(&path, &blob).unwrap();
        run(Command::new(tool).arg("-d").arg("-f").arg(&path));
        assert_eq!(
            fs::read(work.path().join("layer.tar")).unwrap(),
            tar,
            "{tool} -d output differs"
        );
        fs::remove_file(work.path().join("layer.tar")).unwrap();
    }
    // Several members really were written (each starts with the gzip magic and deflate method).
    let (blob, _) = compress_layer(&tar[..], Compression::Gzip { level: 1 }, Vec::new()).unwrap();
    let members = blob
        .windows(10)
        .filter(|w| w[..4] == [0x1f, 0x8b, 8, 0] && w[4..8] == [0, 0, 0, 0])
        .count();
    assert!(
        members >= 4,
        "expected several gzip members, found {members}"
    );
}

#[test]
fn archives_written_by_skopeo_load() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutDir::create(&work.path().join("store")).unwrap();
    let (manifest, diff_id) = build_image(&layout, MediaTypeSet::Oci, "conv");
    let ours = work.path().join("ours.tar");
    let images = [ExportImage {
        names: vec!["docker.io/library/conv:v1".into()],
        descriptor: manifest,
    }];
    export_archive(
        &layout,
        &images,
        ArchiveFormat::OciLayout,
        fs::File::create(&ours).unwrap(),
    )
    .unwrap();
    let source = format!("oci-archive:{}", ours.display());

    // containers/image's docker-archive: `<hex>.json` config, uncompressed `<hex>.tar` layers, symlinks.
    let docker = work.path().join("skopeo-docker.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .arg(&source)
        .arg(format!("docker-archive:{}:conv:v1", docker.display())));
    let sink = LayoutDir::create(&work.path().join("l1")).unwrap();
    let loaded = load_archive(fs::File::open(&docker).unwrap(), &sink).unwrap();
    assert_eq!(loaded.kind, ArchiveKind::LegacyDocker);
    assert_eq!(loaded.images[0].names, ["docker.io/library/conv:v1"]);
    let layers = loaded.images[0].manifests[0].manifest.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].digest().to_string(), diff_id.to_string());
    assert!(String::from_utf8_lossy(&loaded.images[0].manifests[0].config).contains("conv"));

    // containers/image's OCI archive: only `org.opencontainers.image.ref.name`.
    let oci = work.path().join("skopeo-oci.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .arg(&source)
        .arg(format!("oci-archive:{}:v9", oci.display())));
    let sink = LayoutDir::create(&work.path().join("l2")).unwrap();
    let loaded = load_archive(fs::File::open(&oci).unwrap(), &sink).unwrap();
    assert_eq!(loaded.kind, ArchiveKind::OciLayout);
    assert_eq!(loaded.images[0].names, ["v9"]);
    let layer = &loaded.images[0].manifests[0].manifest.layers()[0];
    let digest: Digest = layer.digest().to_string().parse().unwrap();
    assert_eq!(sink.blob_size(&digest).unwrap(), layer.size());
}

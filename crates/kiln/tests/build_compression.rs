//! `--output …,compression=gzip|zstd|uncompressed[,compression-level=N]`: the layer media types and
//! bytes follow the request, and independent tools (skopeo, umoci, zstd, gzip) read the result.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Kiln, have, stderr};

/// The layer media types of the single image in an OCI archive, read with skopeo.
fn layer_media_types(archive: &Path) -> Vec<String> {
    let output = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("manifest JSON");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("mediaType").to_string())
        .collect()
}

fn build_to(kiln: &Kiln, context: &Path, output: &str) -> std::process::Output {
    kiln.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "compressed:1",
        "--output",
        output,
        context.to_str().expect("utf-8 path"),
    ])
}

#[test]
fn layer_compression_follows_the_output_option() {
    if !have("skopeo") || !have("umoci") || !have("zstd") {
        eprintln!("SKIP: skopeo, umoci and zstd are needed");
        return;
    }
    let kiln = Kiln::new();
    let payload = "compress me ".repeat(4096);
    let context = kiln.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n",
            ),
            ("a.txt", &payload),
            ("b.txt", "small\n"),
        ],
    );
    for (option, suffix) in [
        ("", "tar+gzip"),
        (",compression=gzip,compression-level=9", "tar+gzip"),
        (",compression=zstd", "tar+zstd"),
        (",compression=zstd,compression-level=19", "tar+zstd"),
        (",compression=uncompressed", "tar"),
    ] {
        let archive = kiln
            .work
            .path()
            .join(format!("out{}.tar", option.replace([',', '='], "_")));
        let spec = format!("type=oci,dest={}{option}", archive.display());
        let output = build_to(&kiln, &context, &spec);
        assert!(output.status.success(), "{spec}: {}", stderr(&output));
        let types = layer_media_types(&archive);
        assert_eq!(types.len(), 2, "{spec}: {types:?}");
        for media_type in &types {
            assert_eq!(
                media_type,
                &format!("application/vnd.oci.image.layer.v1.{suffix}"),
                "{spec}"
            );
        }
        let layout = kiln
            .work
            .path()
            .join(format!("layout{}", option.replace([',', '='], "_")));
        std::fs::create_dir_all(&layout).expect("layout dir");
        let untar = Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .status()
            .expect("tar");
        assert!(untar.success());
        check_diff_ids_with_real_decompressors(&layout, suffix);
        if suffix == "tar+zstd" {
            continue; // Debian's umoci predates zstd layers; the zstd CLI checked them above.
        }
        // umoci reads every layer (it decompresses and checks each diff id).
        let bundle = kiln
            .work
            .path()
            .join(format!("bundle{}", option.replace([',', '='], "_")));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
                .expect("json");
        let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or("latest")
            .to_string();
        let unpack = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle)
            .output()
            .expect("umoci");
        assert!(
            unpack.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&unpack.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/a.txt")).expect("a.txt unpacked"),
            payload
        );
    }
}

/// Decompresses every layer blob of the layout's image with the standard tool for its compression
/// (gzip, zstd, or none) and checks the result's sha256 against the config's diff ids.
fn check_diff_ids_with_real_decompressors(layout: &Path, suffix: &str) {
    let read_json = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob"))
            .expect("json")
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    let manifest = read_json(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    );
    let config = read_json(
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    for (layer, diff_id) in manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .zip(diff_ids)
    {
        let blob = layout.join("blobs/sha256").join(
            layer["digest"]
                .as_str()
                .expect("digest")
                .trim_start_matches("sha256:"),
        );
        let pipeline = match suffix {
            "tar+gzip" => format!("gzip -dc {} | sha256sum", blob.display()),
            "tar+zstd" => format!("zstd -dcq {} | sha256sum", blob.display()),
            _ => format!("sha256sum < {}", blob.display()),
        };
        let output = Command::new("sh")
            .arg("-c")
            .arg(&pipeline)
            .output()
            .expect("decompress");
        assert!(
            output.status.success(),
            "{pipeline}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let hex = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            format!("sha256:{hex}"),
            diff_id.as_str().expect("diff id"),
            "{pipeline}"
        );
    }
}

#[test]
fn a_bad_compression_option_is_refused_before_building() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let dest = kiln.work.path().join("x.tar");
    let output = build_to(
        &kiln,
        &context,
        &format!("type=oci,dest={},compression=lz4", dest.display()),
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("lz4"), "{}", stderr(&output));
    assert!(!dest.exists());
}

//! Test set-up shared by the registry tests: the real registry, temp stores and `have` from
//! kiln-testsupport, and small images written into a store without any other kiln crate.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub use kiln_testsupport::{TempStore, TestRegistry, have};

use kiln_image::Digest;
use kiln_store::Store;
use kiln_testsupport::{MediaTypes, write_files, write_image};

/// Writes an image of `layer_count` small layers (`layer<i>/file.txt` holding `<seed> layer <i>`)
/// into `store` under `name`; returns its manifest digest. Docker media types, as `docker save`
/// would have them.
pub fn make_image(store: &Store, name: &str, layer_count: usize, seed: &str) -> Digest {
    let work = tempfile::tempdir().expect("work");
    let dirs: Vec<_> = (0..layer_count)
        .map(|i| {
            let dir = work.path().join(format!("layer{i}"));
            write_files(
                &dir,
                &[(&format!("layer{i}/file.txt"), format!("{seed} layer {i}\n"))],
            );
            dir
        })
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "history": [],
    });
    write_image(store, name, &dirs, config, MediaTypes::Docker).manifest
}

//! Fixtures shared by the integration tests of several kiln crates; a dev-dependency only, never
//! part of kiln itself.
//!
//! - [`registry`]: a real CNCF distribution registry (Debian's `docker-registry`) on 127.0.0.1.
//! - [`busybox`]: a busybox root filesystem from Debian's `busybox-static` (base images are made
//!   locally, never downloaded).
//! - [`image`]: images written straight into a store with layers made by GNU tar and gzip (tools
//!   independent of kiln), and a store in a temp directory.
//! - [`have`]: whether a tool a test needs is installed.
//!
//! Helpers panic on failure, as test code does: a broken fixture is a failed test.

pub mod busybox;
pub mod image;
pub mod registry;

pub use busybox::{busybox_binary, busybox_rootfs};
pub use image::{
    MediaTypes, TempStore, TestImage, ingest_bytes, tar_gz_dir, temp_store, write_files,
    write_image,
};
pub use registry::{TestRegistry, free_port};

use std::process::{Command, Stdio};

/// Whether an external tool is on PATH; tests that need a missing tool say so and skip.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

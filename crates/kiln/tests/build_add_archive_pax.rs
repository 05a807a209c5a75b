//! End-to-end `ADD local.tar` of a PAX archive made by GNU tar, with the real `kiln` binary: the
//! owner beyond the 7-digit octal ustar field (uid 3000000, only in a PAX `uid` record) and an
//! mtime beyond the 11-digit octal field (2242-03-16, only in a PAX `mtime` record) survive into
//! the built image, read back from `--output type=local` and from the layer of `--output type=oci`
//! (extracted by GNU tar); with `--chown` the given owner replaces the archive's, as in Docker.
//! Layers record whole seconds (kiln-oci's layer writer, like Docker's), so only the seconds of
//! the mtime are compared; the nanoseconds ADD keeps are checked in kiln-fileop's tests.

mod common;
mod layout_helpers;

use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::Path;
use std::process::Command;

use common::{Kiln, read};
use layout_helpers::Layout;

const UID: u32 = 3_000_000;
const GID: u32 = 3_000_001;
/// Past 2^33 - 1 seconds, the most the ustar mtime field holds.
const MTIME_SECS: i64 = 8_589_934_600;

/// A context holding `app.tar` (a file, a directory and a symlink owned by 3000000:3000001 with
/// mtime 8589934600.5, PAX format) and a Dockerfile adding it twice, the second time with
/// `--chown=5:6`.
fn context(kiln: &Kiln) -> std::path::PathBuf {
    let dir = kiln.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nADD app.tar /opt/\nADD --chown=5:6 app.tar /chowned/\n",
        )],
    );
    let tree = kiln.work.path().join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("f"), "from the archive").unwrap();
    std::fs::write(tree.join("d/inner"), "inner").unwrap();
    symlink("f", tree.join("link")).unwrap();
    let status = Command::new("tar")
        .args([
            "--format=pax",
            "--owner=alice:3000000",
            "--group=staff:3000001",
            "--mtime=@8589934600.5",
            "-C",
        ])
        .arg(&tree)
        .arg("-cf")
        .arg(dir.join("app.tar"))
        .arg(".")
        .status()
        .expect("GNU tar must be installed");
    assert!(status.success(), "tar failed");
    dir
}

/// Owner and mtime (whole seconds) of `path`, not following a symlink.
fn owner_and_mtime(path: &Path) -> ((u32, u32), i64) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    ((meta.uid(), meta.gid()), meta.mtime())
}

#[test]
fn added_pax_tar_keeps_large_owner_and_late_mtime_in_local_output() {
    let kiln = Kiln::new();
    let ctx = context(&kiln);
    let rootfs = kiln.build_rootfs(&ctx, "rootfs", &[]);
    assert_eq!(read(rootfs.join("opt/f")), "from the archive");
    for rel in ["opt/f", "opt/d", "opt/d/inner", "opt/link"] {
        assert_eq!(
            owner_and_mtime(&rootfs.join(rel)),
            ((UID, GID), MTIME_SECS),
            "owner and mtime of /{rel}"
        );
    }
    for rel in ["chowned/f", "chowned/d/inner", "chowned/link"] {
        assert_eq!(
            owner_and_mtime(&rootfs.join(rel)),
            ((5, 6), MTIME_SECS),
            "--chown owner and archive mtime of /{rel}"
        );
    }
}

#[test]
fn added_pax_tar_keeps_large_owner_and_mtime_in_the_image_layer() {
    let kiln = Kiln::new();
    let ctx = context(&kiln);
    let archive = kiln.work.path().join("image.tar");
    kiln.ok(&[
        "build",
        "-q",
        "-t",
        "pax:v1",
        "--output",
        &format!("type=oci,dest={}", archive.display()),
        ctx.to_str().unwrap(),
    ]);
    let layout = Layout::open(&archive, &kiln.work.path().join("layout"));
    let layers = layout.extract_layers(&kiln.work.path().join("layers"));
    let with_opt = layers
        .iter()
        .find(|dir| dir.join("opt/f").exists())
        .expect("a layer holding /opt/f");
    for rel in ["opt/f", "opt/d/inner", "opt/link"] {
        assert_eq!(
            owner_and_mtime(&with_opt.join(rel)),
            ((UID, GID), MTIME_SECS),
            "owner and mtime of /{rel} in the layer"
        );
    }
}

//! The design's premise, checked for real: file operations applied to an overlay mount of an image
//! (lower dir) with a fresh upper dir leave exactly the step's changes in the upper dir — new files,
//! copied-up directories, and whiteouts for removals — without ever touching the lower layer.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};

use common::*;
use kiln_fileop::{Chown, CopyOptions, copy, mkdir, rm};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// An overlay mount that is detached when dropped.
struct Overlay {
    _tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    fn new(populate: impl FnOnce(&Path)) -> Overlay {
        let tmp = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|d| tmp.path().join(d));
        for dir in [&lower, &upper, &work, &merged] {
            fs::create_dir(dir).unwrap();
        }
        populate(&lower);
        let options = format!(
            "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .expect("mounting overlayfs needs root");
        Overlay {
            _tmp: tmp,
            lower,
            upper,
            merged,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
    }
}

fn image(lower: &Path) {
    write(
        lower,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    write(lower, "etc/group", "root:x:0:\napp:x:1000:\n");
    write(lower, "usr/lib/libc.so", "libc");
    symlink("usr/lib", lower.join("lib")).unwrap();
    write(lower, "app/old.txt", "old");
    write(lower, "app/keep.txt", "keep");
}

#[test]
fn copy_into_overlay_writes_only_the_changes_to_the_upper_dir() {
    let ov = Overlay::new(image);
    let r = roots();
    write(&r.src, "site/index.html", "<html>");
    write(&r.src, "site/old.txt", "replaced");
    let mut o = CopyOptions::new(strings(&["site"]), "/app");
    o.chown = Some(Chown::Spec("app".into()));
    copy(&r.src, &ov.merged, &o).unwrap();

    assert_eq!(read(&ov.merged, "app/index.html"), "<html>");
    assert_eq!(read(&ov.merged, "app/old.txt"), "replaced");
    assert_eq!(read(&ov.merged, "app/keep.txt"), "keep");
    assert_eq!(owner(&ov.merged, "app/index.html"), (1000, 1000));
    // The upper dir holds the new and replaced files only; the lower layer is untouched.
    assert_eq!(read(&ov.upper, "app/index.html"), "<html>");
    assert_eq!(read(&ov.upper, "app/old.txt"), "replaced");
    assert!(!exists(&ov.upper, "app/keep.txt"));
    assert!(!exists(&ov.upper, "etc"));
    assert_eq!(read(&ov.lower, "app/old.txt"), "old");
}

#[test]
fn rm_in_overlay_becomes_a_whiteout() {
    let ov = Overlay::new(image);
    rm(&ov.merged, "/app/old.txt", false, false).unwrap();
    assert!(!exists(&ov.merged, "app/old.txt"));
    let whiteout = fs::symlink_metadata(ov.upper.join("app/old.txt")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(exists(&ov.lower, "app/old.txt"));
}

#[test]
fn copy_and_mkdir_through_lower_layer_symlink_land_in_its_target() {
    let ov = Overlay::new(image);
    let r = roots();
    write(&r.src, "rootfs/lib/libx.so", "x");
    copy(
        &r.src,
        &ov.merged,
        &CopyOptions::new(strings(&["rootfs"]), "/"),
    )
    .unwrap();
    assert_eq!(read(&ov.upper, "usr/lib/libx.so"), "x");
    assert!(
        fs::symlink_metadata(ov.merged.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    mkdir(&ov.merged, "/lib/sub", 0o755, true, None, None).unwrap();
    assert!(is_dir(&ov.upper, "usr/lib/sub"));
}

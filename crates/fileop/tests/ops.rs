//! mkdir, mkfile and rm on a destination root.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::time::{Duration, SystemTime};

use common::*;
use kiln_fileop::{Chown, FileOpError, mkdir, mkfile, rm};

#[test]
fn mkdir_with_parents_creates_all_with_mode_owner_and_time() {
    let r = roots();
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567);
    mkdir(
        &r.dst,
        "/a/b/c",
        0o750,
        true,
        Some(&Chown::Ids { uid: 3, gid: 4 }),
        Some(time),
    )
    .unwrap();
    for dir in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&r.dst, dir), 0o750, "{dir}");
        assert_eq!(owner(&r.dst, dir), (3, 4), "{dir}");
        assert_eq!(
            fs::metadata(r.dst.join(dir)).unwrap().mtime(),
            1_234_567,
            "{dir}"
        );
    }
}

#[test]
fn mkdir_existing_dir_is_left_alone() {
    let r = roots();
    fs::create_dir(r.dst.join("keep")).unwrap();
    chmod(&r.dst.join("keep"), 0o700);
    mkdir(
        &r.dst,
        "keep",
        0o755,
        true,
        Some(&Chown::Ids { uid: 9, gid: 9 }),
        None,
    )
    .unwrap();
    assert_eq!(mode(&r.dst, "keep"), 0o700);
    assert_eq!(owner(&r.dst, "keep"), (0, 0));
}

#[test]
fn mkdir_without_parents_requires_parent() {
    let r = roots();
    let err = mkdir(&r.dst, "/missing/child", 0o755, false, None, None).unwrap_err();
    assert!(matches!(err, FileOpError::Io { .. }), "{err}");
    mkdir(&r.dst, "/single", 0o711, false, None, None).unwrap();
    assert_eq!(mode(&r.dst, "single"), 0o711);
}

#[test]
fn mkdir_follows_image_symlinks_inside_root() {
    let r = roots();
    let outside = r.outside.to_str().unwrap().to_string();
    symlink(&outside, r.dst.join("work")).unwrap();
    mkdir(&r.dst, "/work/app", 0o755, true, None, None).unwrap();
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
    assert!(is_dir(
        &r.dst,
        &format!("{}/app", outside.trim_start_matches('/'))
    ));
}

#[test]
fn mkdir_through_a_file_fails() {
    let r = roots();
    write(&r.dst, "file", "x");
    let err = mkdir(&r.dst, "/file/sub", 0o755, true, None, None).unwrap_err();
    assert!(
        matches!(err, FileOpError::NotADirectory { ref path, .. } if path == "/file"),
        "{err}"
    );
}

#[test]
fn mkfile_writes_data_mode_owner() {
    let r = roots();
    fs::create_dir(r.dst.join("etc")).unwrap();
    mkfile(
        &r.dst,
        "/etc/motd",
        b"hello\n",
        0o640,
        Some(&Chown::Ids { uid: 7, gid: 8 }),
        None,
    )
    .unwrap();
    assert_eq!(read(&r.dst, "etc/motd"), "hello\n");
    assert_eq!(mode(&r.dst, "etc/motd"), 0o640);
    assert_eq!(owner(&r.dst, "etc/motd"), (7, 8));
    // Nothing temporary is left behind.
    assert_eq!(fs::read_dir(r.dst.join("etc")).unwrap().count(), 1);
}

#[test]
fn mkfile_replaces_fifo_instead_of_writing_through() {
    let r = roots();
    nix::unistd::mkfifo(
        &r.dst.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    mkfile(&r.dst, "pipe", b"data", 0o644, None, None).unwrap();
    let meta = fs::symlink_metadata(r.dst.join("pipe")).unwrap();
    assert!(!meta.file_type().is_fifo());
    assert_eq!(read(&r.dst, "pipe"), "data");
}

#[test]
fn mkfile_through_absolute_symlink_stays_in_root() {
    let r = roots();
    let victim = write(&r.outside, "victim", "untouched");
    symlink(&victim, r.dst.join("link")).unwrap();
    fs::create_dir_all(
        r.dst
            .join(victim.parent().unwrap().strip_prefix("/").unwrap()),
    )
    .unwrap();
    mkfile(&r.dst, "/link", b"new", 0o644, None, None).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    assert_eq!(
        read(&r.dst, victim.strip_prefix("/").unwrap().to_str().unwrap()),
        "new"
    );
}

#[test]
fn mkfile_at_root_is_invalid() {
    let r = roots();
    let err = mkfile(&r.dst, "/", b"x", 0o644, None, None).unwrap_err();
    assert!(matches!(err, FileOpError::InvalidPath { .. }), "{err}");
}

#[test]
fn rm_removes_tree() {
    let r = roots();
    write(&r.dst, "tree/a/b/c", "c");
    rm(&r.dst, "/tree", false, false).unwrap();
    assert!(!exists(&r.dst, "tree"));
}

#[test]
fn rm_missing_errors_unless_allowed() {
    let r = roots();
    let err = rm(&r.dst, "/nothing", false, false).unwrap_err();
    assert!(matches!(err, FileOpError::Io { .. }), "{err}");
    rm(&r.dst, "/nothing", true, false).unwrap();
    rm(&r.dst, "/no/such/parent", true, false).unwrap();
}

#[test]
fn rm_wildcard_removes_matches_only() {
    let r = roots();
    write(&r.dst, "tmp/a.log", "a");
    write(&r.dst, "tmp/b.log", "b");
    write(&r.dst, "tmp/c.txt", "c");
    rm(&r.dst, "/tmp/*.log", false, true).unwrap();
    assert!(!exists(&r.dst, "tmp/a.log"));
    assert!(!exists(&r.dst, "tmp/b.log"));
    assert!(exists(&r.dst, "tmp/c.txt"));
}

#[test]
fn rm_symlink_removes_link_not_target() {
    let r = roots();
    let victim = write(&r.outside, "victim", "keep");
    write(&r.dst, "inside/target", "keep too");
    symlink(&victim, r.dst.join("abs")).unwrap();
    symlink("inside", r.dst.join("rel")).unwrap();
    rm(&r.dst, "/abs", true, false).unwrap();
    rm(&r.dst, "/rel", false, false).unwrap();
    assert!(!exists(&r.dst, "abs"));
    assert!(!exists(&r.dst, "rel"));
    assert!(victim.exists());
    assert_eq!(read(&r.dst, "inside/target"), "keep too");
}

#[test]
fn rm_through_parent_symlink_stays_in_root() {
    let r = roots();
    let victim = write(&r.outside, "victim", "keep");
    symlink(&r.outside, r.dst.join("out")).unwrap();
    rm(&r.dst, "/out/victim", true, false).unwrap();
    assert!(victim.exists());
}

#[test]
fn rm_root_is_refused() {
    let r = roots();
    let err = rm(&r.dst, "/", true, false).unwrap_err();
    assert!(matches!(err, FileOpError::InvalidPath { .. }), "{err}");
}

//! ADD of local archives: detection by content, the compressions Docker supports, and refusal of
//! entries that would land outside the destination.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_fileop::{Chown, CopyOptions, FileOpError, copy};

fn add(sources: &[&str], dest: &str) -> CopyOptions {
    let mut o = CopyOptions::new(strings(sources), dest);
    o.op = "ADD".into();
    o.attempt_unpack = true;
    o
}

/// Builds `name` in `dir` from a tree with GNU tar, then compresses it with `compressor` (if any).
fn tar_cli(dir: &Path, name: &str, compressor: Option<&str>) {
    let tree = dir.join("tree");
    write(&tree, "top.txt", "top");
    write(&tree, "sub/inner.txt", "inner");
    chmod(&tree.join("sub/inner.txt"), 0o640);
    symlink("inner.txt", tree.join("sub/link")).unwrap();
    let plain = dir.join("plain.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=1000", "--group=1000", "-C"])
        .arg(&tree)
        .args(["-cf"])
        .arg(&plain)
        .arg(".")
        .status()
        .expect("GNU tar must be installed");
    assert!(status.success());
    let out = dir.join(name);
    match compressor {
        None => {
            fs::rename(&plain, &out).unwrap();
        }
        Some(tool) => {
            let compressed = Command::new(tool)
                .arg("-c")
                .arg(&plain)
                .output()
                .unwrap_or_else(|e| panic!("{tool} must be installed: {e}"));
            assert!(compressed.status.success(), "{tool} failed");
            fs::write(&out, compressed.stdout).unwrap();
            fs::remove_file(&plain).unwrap();
        }
    }
    fs::remove_dir_all(&tree).unwrap();
}

fn assert_unpacked(dst: &Path, dir: &str) {
    assert_eq!(read(dst, &format!("{dir}/top.txt")), "top");
    assert_eq!(read(dst, &format!("{dir}/sub/inner.txt")), "inner");
    assert_eq!(mode(dst, &format!("{dir}/sub/inner.txt")), 0o640);
    assert_eq!(
        fs::read_link(dst.join(format!("{dir}/sub/link")))
            .unwrap()
            .to_str(),
        Some("inner.txt")
    );
    // Archive ownership is kept without --chown.
    assert_eq!(owner(dst, &format!("{dir}/top.txt")), (1000, 1000));
}

#[test]
fn add_tar_unpacks() {
    let r = roots();
    tar_cli(&r.src, "a.tar", None);
    let report = copy(&r.src, &r.dst, &add(&["a.tar"], "/out")).unwrap();
    assert_unpacked(&r.dst, "out");
    assert_eq!(report.unpacked, vec!["a.tar".to_string()]);
}

#[test]
fn add_tar_gz_unpacks() {
    let r = roots();
    tar_cli(&r.src, "a.tar.gz", Some("gzip"));
    copy(&r.src, &r.dst, &add(&["a.tar.gz"], "/out/")).unwrap();
    assert_unpacked(&r.dst, "out");
}

#[test]
fn add_tar_bz2_unpacks() {
    let r = roots();
    tar_cli(&r.src, "a.tar.bz2", Some("bzip2"));
    copy(&r.src, &r.dst, &add(&["a.tar.bz2"], "/out/")).unwrap();
    assert_unpacked(&r.dst, "out");
}

#[test]
fn add_tar_xz_unpacks() {
    let r = roots();
    tar_cli(&r.src, "a.tar.xz", Some("xz"));
    copy(&r.src, &r.dst, &add(&["a.tar.xz"], "/out/")).unwrap();
    assert_unpacked(&r.dst, "out");
}

#[test]
fn add_tar_zst_unpacks() {
    let r = roots();
    tar_cli(&r.src, "a.tar.zst", Some("zstd"));
    copy(&r.src, &r.dst, &add(&["a.tar.zst"], "/out/")).unwrap();
    assert_unpacked(&r.dst, "out");
}

#[test]
fn add_detects_archives_by_content_not_name() {
    let r = roots();
    tar_cli(&r.src, "innocent.txt", Some("gzip"));
    write(&r.src, "fake.tar.gz", "just text, not an archive");
    copy(&r.src, &r.dst, &add(&["innocent.txt"], "/a/")).unwrap();
    assert_unpacked(&r.dst, "a");
    copy(&r.src, &r.dst, &add(&["fake.tar.gz"], "/b/")).unwrap();
    assert_eq!(read(&r.dst, "b/fake.tar.gz"), "just text, not an archive");
}

#[test]
fn add_gzip_of_non_tar_is_copied_as_is() {
    let r = roots();
    write(&r.src, "plain", "hello hello hello");
    let gz = Command::new("gzip")
        .arg("-c")
        .arg(r.src.join("plain"))
        .output()
        .unwrap();
    fs::write(r.src.join("data.gz"), &gz.stdout).unwrap();
    copy(&r.src, &r.dst, &add(&["data.gz"], "/x/")).unwrap();
    assert_eq!(fs::read(r.dst.join("x/data.gz")).unwrap(), gz.stdout);
}

#[test]
fn add_without_unpack_copies_archive() {
    let r = roots();
    tar_cli(&r.src, "a.tar", None);
    let mut o = add(&["a.tar"], "/x/");
    o.attempt_unpack = false;
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(fs::metadata(r.dst.join("x/a.tar")).unwrap().is_file());
}

#[test]
fn add_tar_chown_overrides_archive_owner() {
    let r = roots();
    tar_cli(&r.src, "a.tar", None);
    let mut o = add(&["a.tar"], "/out");
    o.chown = Some(Chown::Ids { uid: 5, gid: 6 });
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "out/top.txt"), (5, 6));
    assert_eq!(owner(&r.dst, "out/sub/link"), (5, 6));
    assert_eq!(owner(&r.dst, "out"), (5, 6));
}

#[test]
fn add_tar_merges_into_existing_dir_and_replaces_files() {
    let r = roots();
    tar_cli(&r.src, "a.tar", None);
    write(&r.dst, "out/top.txt", "old");
    write(&r.dst, "out/keep", "k");
    copy(&r.src, &r.dst, &add(&["a.tar"], "/out")).unwrap();
    assert_eq!(read(&r.dst, "out/top.txt"), "top");
    assert_eq!(read(&r.dst, "out/keep"), "k");
}

/// Writes a raw tar whose entries are (name, type, link target, content); names are written
/// verbatim (the `tar` crate's `set_path` refuses `..`, which is the point here).
fn raw_tar(path: &Path, entries: &[(&str, tar::EntryType, &str, &str)]) {
    let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, kind, link, content) in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_size(content.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, content.as_bytes()).unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn add_tar_with_dotdot_rejected() {
    let r = roots();
    raw_tar(
        &r.src.join("evil.tar"),
        &[
            ("ok.txt", tar::EntryType::Regular, "", "fine"),
            ("../../escaped.txt", tar::EntryType::Regular, "", "bad"),
        ],
    );
    let err = copy(&r.src, &r.dst, &add(&["evil.tar"], "/app/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::ArchiveEscape { ref entry, .. } if entry == "../../escaped.txt"),
        "{err}"
    );
    assert!(err.to_string().contains("outside the destination"), "{err}");
    assert!(!exists(&r.dst, "escaped.txt"));
    assert!(!exists(r.dst.parent().unwrap(), "escaped.txt"));
}

#[test]
fn add_tar_with_absolute_symlink_then_write_through_rejected() {
    let r = roots();
    let target = r.outside.to_str().unwrap().to_string();
    raw_tar(
        &r.src.join("evil.tar"),
        &[
            ("link", tar::EntryType::Symlink, &target, ""),
            ("link/pwned", tar::EntryType::Regular, "", "bad"),
        ],
    );
    let err = copy(&r.src, &r.dst, &add(&["evil.tar"], "/app/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::ArchiveEscape { ref entry, .. } if entry == "link/pwned"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
}

#[test]
fn add_tar_with_relative_symlink_climbing_out_then_write_through_rejected() {
    let r = roots();
    raw_tar(
        &r.src.join("evil.tar"),
        &[
            ("up", tar::EntryType::Symlink, "../..", ""),
            ("up/etc/pwned", tar::EntryType::Regular, "", "bad"),
        ],
    );
    let err = copy(&r.src, &r.dst, &add(&["evil.tar"], "/app/")).unwrap_err();
    assert!(matches!(err, FileOpError::ArchiveEscape { .. }), "{err}");
    assert!(!exists(&r.dst, "etc/pwned"));
}

#[test]
fn add_tar_symlink_inside_then_write_through_allowed() {
    let r = roots();
    raw_tar(
        &r.src.join("ok.tar"),
        &[
            ("real/", tar::EntryType::Directory, "", ""),
            ("alias", tar::EntryType::Symlink, "real", ""),
            ("alias/file", tar::EntryType::Regular, "", "through"),
        ],
    );
    copy(&r.src, &r.dst, &add(&["ok.tar"], "/app/")).unwrap();
    assert_eq!(read(&r.dst, "app/real/file"), "through");
}

#[test]
fn add_tar_hardlink_escaping_rejected_and_inside_kept() {
    let r = roots();
    raw_tar(
        &r.src.join("links.tar"),
        &[
            ("a", tar::EntryType::Regular, "", "data"),
            ("b", tar::EntryType::Link, "a", ""),
        ],
    );
    copy(&r.src, &r.dst, &add(&["links.tar"], "/app/")).unwrap();
    let a = fs::metadata(r.dst.join("app/a")).unwrap();
    let b = fs::metadata(r.dst.join("app/b")).unwrap();
    assert_eq!(a.ino(), b.ino());

    raw_tar(
        &r.src.join("evil.tar"),
        &[("x", tar::EntryType::Link, "../../../etc/passwd", "")],
    );
    let err = copy(&r.src, &r.dst, &add(&["evil.tar"], "/app2/")).unwrap_err();
    assert!(matches!(err, FileOpError::ArchiveEscape { .. }), "{err}");
}

#[test]
fn add_archive_into_dest_symlink_stays_in_root() {
    let r = roots();
    tar_cli(&r.src, "a.tar", None);
    let outside = r.outside.to_str().unwrap().to_string();
    symlink(&outside, r.dst.join("app")).unwrap();
    copy(&r.src, &r.dst, &add(&["a.tar"], "/app")).unwrap();
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
    assert_unpacked(&r.dst, outside.trim_start_matches('/'));
}

#[test]
fn add_tar_restores_pax_xattrs() {
    let r = roots();
    let tree = r.outside.join("tree");
    let f = write(&tree, "with_xattr", "x");
    let path = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and buffer.
    let res = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.kiln".as_ptr(),
            b"tagged".as_ptr().cast(),
            6,
            0,
        )
    };
    assert_eq!(res, 0, "this test needs a filesystem with user xattrs");
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "--format=pax", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(r.src.join("x.tar"))
        .arg("with_xattr")
        .status()
        .unwrap();
    assert!(status.success());
    copy(&r.src, &r.dst, &add(&["x.tar"], "/out/")).unwrap();
    let out = std::ffi::CString::new(r.dst.join("out/with_xattr").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid strings and a buffer of the given size.
    let n = unsafe {
        libc::getxattr(
            out.as_ptr(),
            c"user.kiln".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 6);
    assert_eq!(&buf[..6], b"tagged");
}

#[test]
fn add_rootfs_tar_into_root_follows_absolute_symlinks_inside_root() {
    let r = roots();
    raw_tar(
        &r.src.join("rootfs.tar"),
        &[
            ("run/", tar::EntryType::Directory, "", ""),
            ("var/", tar::EntryType::Directory, "", ""),
            ("var/run", tar::EntryType::Symlink, "/run", ""),
            ("var/run/app.pid", tar::EntryType::Regular, "", "42"),
        ],
    );
    copy(&r.src, &r.dst, &add(&["rootfs.tar"], "/")).unwrap();
    assert_eq!(read(&r.dst, "run/app.pid"), "42");
    assert_eq!(
        fs::read_link(r.dst.join("var/run")).unwrap().to_str(),
        Some("/run")
    );
}

#[test]
fn add_tar_into_root_still_rejects_dotdot() {
    let r = roots();
    raw_tar(
        &r.src.join("evil.tar"),
        &[("../escaped", tar::EntryType::Regular, "", "bad")],
    );
    let err = copy(&r.src, &r.dst, &add(&["evil.tar"], "/")).unwrap_err();
    assert!(matches!(err, FileOpError::ArchiveEscape { .. }), "{err}");
    assert!(!exists(r.dst.parent().unwrap(), "escaped"));
}

#[test]
fn add_tar_into_subdir_rejects_write_through_image_absolute_symlink() {
    let r = roots();
    // The image has /app/cache -> /var/cache (absolute): outside the extraction directory /app.
    fs::create_dir_all(r.dst.join("app")).unwrap();
    fs::create_dir_all(r.dst.join("var/cache")).unwrap();
    symlink("/var/cache", r.dst.join("app/cache")).unwrap();
    raw_tar(
        &r.src.join("a.tar"),
        &[("cache/x", tar::EntryType::Regular, "", "x")],
    );
    let err = copy(&r.src, &r.dst, &add(&["a.tar"], "/app")).unwrap_err();
    assert!(
        matches!(err, FileOpError::ArchiveEscape { ref entry, .. } if entry == "cache/x"),
        "{err}"
    );
    assert!(!exists(&r.dst, "var/cache/x"));
}

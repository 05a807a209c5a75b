//! ADD of archives whose metadata lives in PAX extended headers or GNU long-name/long-link records:
//! owners beyond the 7-digit octal field, sub-second and out-of-range mtimes, long names and link
//! targets, xattrs. The archives come from real GNU tar where it can express the case, from the
//! `tar` crate (with hand-written PAX records) where it cannot. Docker (moby's `archive.Untar`,
//! Go's `archive/tar`) is the reference: the archive's uid/gid unless `--chown`, the archive's
//! mtime with its nanoseconds, and an mtime before 1970 or after 2262 replaced by the epoch.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_fileop::{Chown, CopyOptions, FileOpError, copy};

const BIG_UID: u32 = 3_000_000;
const BIG_GID: u32 = 3_000_001;

fn add(source: &str, dest: &str) -> CopyOptions {
    let mut o = CopyOptions::new(strings(&[source]), dest);
    o.op = "ADD".into();
    o.attempt_unpack = true;
    o
}

/// A 150-byte symlink target: more than the 100 bytes of the ustar `linkname` field.
fn long_target() -> String {
    format!("target-{}", "t".repeat(143))
}

/// Three directories of 100 bytes and a file: a 313-byte name, past ustar's 255 (prefix + name).
fn long_dir() -> String {
    ["a", "b", "c"]
        .iter()
        .map(|c| c.repeat(100))
        .collect::<Vec<_>>()
        .join("/")
}

/// A tree with a file (carrying a `user.` xattr when `xattr` is set), a directory, a symlink with a
/// long target, a file with a long name and a hard link to it.
fn make_tree(tree: &Path, xattr: bool) {
    let f = write(tree, "f", "file");
    write(tree, "d/inner", "inner");
    symlink(long_target(), tree.join("longlink")).unwrap();
    let deep = write(tree, &format!("{}/deep", long_dir()), "deep");
    fs::hard_link(&deep, tree.join("hard")).unwrap();
    if xattr {
        let status = Command::new("setfattr")
            .args(["-n", "user.kiln", "-v", "tagged"])
            .arg(&f)
            .status()
            .expect("setfattr (package attr) must be installed");
        assert!(
            status.success(),
            "this test needs a filesystem with user xattrs"
        );
    }
}

/// Archives `tree` into `out` with GNU tar, adding `args` (format, owner, mtime).
fn gnu_tar(tree: &Path, out: &Path, args: &[&str]) {
    let status = Command::new("tar")
        // Sorted, so the long-named file comes before its hard link, whose target is then long.
        .arg("--sort=name")
        .args(args)
        .arg("-C")
        .arg(tree)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("GNU tar must be installed");
    assert!(status.success(), "tar {args:?} failed");
}

/// Makes the [`make_tree`] tree (no xattrs) outside `r.src` and archives it into `r.src/<name>`
/// with GNU tar in `format`, owned by [`BIG_UID`] and group [`BIG_GID`], every mtime `mtime`
/// (`@seconds[.fraction]`).
fn big_owner_tar(r: &Roots, name: &str, format: &str, mtime: &str) {
    let tree = r.outside.join("tree");
    make_tree(&tree, false);
    gnu_tar(
        &tree,
        &r.src.join(name),
        &[
            &format!("--format={format}"),
            &format!("--owner=alice:{BIG_UID}"),
            &format!("--group=staff:{BIG_GID}"),
            &format!("--mtime={mtime}"),
        ],
    );
}

/// (seconds, nanoseconds) of the mtime of `rel`, not following a symlink.
fn mtime(root: &Path, rel: &str) -> (i64, i64) {
    let meta = fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (meta.mtime(), meta.mtime_nsec())
}

fn xattr(root: &Path, rel: &str, name: &str) -> Option<String> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(root.join(rel))
        .output()
        .expect("getfattr (package attr) must be installed");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every entry of [`make_tree`] under `out`, with the owner and mtime the archive gave.
fn assert_tree(dst: &Path, owner_ids: (u32, u32), time: (i64, i64)) {
    let deep = format!("out/{}/deep", long_dir());
    assert_eq!(read(dst, "out/f"), "file");
    assert_eq!(read(dst, "out/d/inner"), "inner");
    assert_eq!(read(dst, &deep), "deep");
    assert_eq!(
        fs::read_link(dst.join("out/longlink")).unwrap().to_str(),
        Some(long_target().as_str())
    );
    assert_eq!(
        fs::metadata(dst.join(&deep)).unwrap().ino(),
        fs::metadata(dst.join("out/hard")).unwrap().ino(),
        "the hard link (long target) must share the inode of its target"
    );
    for rel in ["out/f", "out/d", "out/d/inner", "out/longlink", &deep] {
        assert_eq!(owner(dst, rel), owner_ids, "owner of {rel}");
        assert_eq!(mtime(dst, rel), time, "mtime of {rel}");
    }
}

#[test]
fn add_pax_tar_keeps_large_owner_subsecond_mtime_long_names_links_and_xattrs() {
    let r = roots();
    let tree = r.outside.join("tree");
    make_tree(&tree, true);
    gnu_tar(
        &tree,
        &r.src.join("p.tar"),
        &[
            "--format=pax",
            "--xattrs",
            "--xattrs-include=user.*",
            "--owner=alice:3000000",
            "--group=staff:3000001",
            "--mtime=@1234567890.5",
        ],
    );
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert_tree(&r.dst, (BIG_UID, BIG_GID), (1_234_567_890, 500_000_000));
    assert_eq!(
        xattr(&r.dst, "out/f", "user.kiln").as_deref(),
        Some("tagged")
    );
}

#[test]
fn add_gnu_tar_keeps_base256_owner_long_names_and_long_links() {
    let r = roots();
    big_owner_tar(&r, "g.tar", "gnu", "@1234567890");
    copy(&r.src, &r.dst, &add("g.tar", "/out")).unwrap();
    assert_tree(&r.dst, (BIG_UID, BIG_GID), (1_234_567_890, 0));
}

#[test]
fn add_pax_tar_after_2242_keeps_mtime() {
    let r = roots();
    // 2^33 s (2242-03-16) no longer fits the 11 octal digits of the ustar mtime field.
    big_owner_tar(&r, "p.tar", "pax", "@8589934600.25");
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert_tree(&r.dst, (BIG_UID, BIG_GID), (8_589_934_600, 250_000_000));
}

#[test]
fn add_pax_tar_before_1970_gets_the_epoch_like_docker() {
    let r = roots();
    big_owner_tar(&r, "p.tar", "pax", "@-86400.25");
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    // moby bounds every time to [epoch, 2262]: an earlier one becomes the epoch.
    assert_tree(&r.dst, (BIG_UID, BIG_GID), (0, 0));
}

#[test]
fn add_pax_tar_with_chown_overrides_large_archive_owner() {
    let r = roots();
    big_owner_tar(&r, "p.tar", "pax", "@1234567890.5");
    let mut o = add("p.tar", "/out");
    o.chown = Some(Chown::Ids { uid: 5, gid: 6 });
    copy(&r.src, &r.dst, &o).unwrap();
    assert_tree(&r.dst, (5, 6), (1_234_567_890, 500_000_000));
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// An entry for [`pax_tar`]: PAX records, then the ustar header fields.
struct Entry<'a> {
    pax: &'a [(&'a str, &'a str)],
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    content: &'a str,
}

/// Writes a tar whose entries each get a PAX extended header (type `x`) with their records.
fn pax_tar(path: &Path, entries: &[Entry<'_>]) {
    let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
    for entry in entries {
        if !entry.pax.is_empty() {
            let records: Vec<u8> = entry
                .pax
                .iter()
                .flat_map(|(k, v)| pax_record(k, v))
                .collect();
            let mut header = tar::Header::new_ustar();
            header.set_path("PaxHeaders/entry").unwrap();
            header.set_entry_type(tar::EntryType::XHeader);
            header.set_mode(0o644);
            header.set_size(records.len() as u64);
            header.set_cksum();
            builder.append(&header, records.as_slice()).unwrap();
        }
        let mut header = tar::Header::new_ustar();
        {
            // Written verbatim: `set_path` refuses `..`.
            let raw = header.as_ustar_mut().unwrap();
            raw.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            raw.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(if entry.kind.is_dir() { 0o755 } else { 0o644 });
        header.set_size(entry.content.len() as u64);
        header.set_uid(1);
        header.set_gid(1);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, entry.content.as_bytes()).unwrap();
    }
    builder.finish().unwrap();
}

fn regular<'a>(pax: &'a [(&'a str, &'a str)], name: &'a str, content: &'a str) -> Entry<'a> {
    Entry {
        pax,
        name,
        kind: tar::EntryType::Regular,
        link: "",
        content,
    }
}

#[test]
fn add_pax_records_set_owner_and_times_of_every_entry_kind() {
    let r = roots();
    let records = [
        ("uid", "3000000"),
        ("gid", "3000001"),
        ("mtime", "1234567890.123456789"),
    ];
    pax_tar(
        &r.src.join("p.tar"),
        &[
            Entry {
                pax: &records,
                name: "dir/",
                kind: tar::EntryType::Directory,
                link: "",
                content: "",
            },
            regular(&records, "dir/file", "data"),
            Entry {
                pax: &records,
                name: "dir/link",
                kind: tar::EntryType::Symlink,
                link: "file",
                content: "",
            },
            Entry {
                pax: &records,
                name: "fifo",
                kind: tar::EntryType::Fifo,
                link: "",
                content: "",
            },
        ],
    );
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    for rel in ["out/dir", "out/dir/file", "out/dir/link", "out/fifo"] {
        assert_eq!(owner(&r.dst, rel), (BIG_UID, BIG_GID), "owner of {rel}");
        assert_eq!(
            mtime(&r.dst, rel),
            (1_234_567_890, 123_456_789),
            "mtime of {rel}"
        );
    }
}

#[test]
fn add_pax_mtime_before_1970_or_after_2262_gets_the_epoch_and_header_mtime_is_kept_without_pax() {
    let r = roots();
    pax_tar(
        &r.src.join("p.tar"),
        &[
            // Past what a signed 64-bit count of nanoseconds holds: moby's bound.
            regular(&[("mtime", "9223372037")], "late", "l"),
            regular(&[("mtime", "9223372036.5")], "edge", "e"),
            // Before the epoch (the header says 2023): the epoch too.
            regular(&[("mtime", "-1.5")], "early", "e"),
            regular(&[], "plain", "p"),
        ],
    );
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert_eq!(mtime(&r.dst, "out/late"), (0, 0));
    assert_eq!(mtime(&r.dst, "out/edge"), (9_223_372_036, 500_000_000));
    assert_eq!(mtime(&r.dst, "out/early"), (0, 0));
    assert_eq!(mtime(&r.dst, "out/plain"), (1_700_000_000, 0));
    assert_eq!(owner(&r.dst, "out/plain"), (1, 1));
}

#[test]
fn add_pax_path_and_linkpath_replace_header_names() {
    let r = roots();
    let long_name = format!("{}/named-by-pax", long_dir());
    let target = long_target();
    pax_tar(
        &r.src.join("p.tar"),
        &[
            regular(&[("path", &long_name)], "short-file", "by pax"),
            Entry {
                pax: &[("linkpath", &target)],
                name: "sym",
                kind: tar::EntryType::Symlink,
                link: "short-target",
                content: "",
            },
            Entry {
                pax: &[("linkpath", &long_name)],
                name: "hard",
                kind: tar::EntryType::Link,
                link: "short-file",
                content: "",
            },
        ],
    );
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert_eq!(read(&r.dst, &format!("out/{long_name}")), "by pax");
    assert!(!exists(&r.dst, "out/short-file"));
    assert_eq!(
        fs::read_link(r.dst.join("out/sym")).unwrap().to_str(),
        Some(target.as_str())
    );
    assert_eq!(read(&r.dst, "out/hard"), "by pax");
}

#[test]
fn add_pax_size_record_decides_the_content_length() {
    let r = roots();
    // The header says 0 bytes; the PAX size record (which Go's reader obeys) says 5.
    let path = r.src.join("p.tar");
    let mut builder = tar::Builder::new(fs::File::create(&path).unwrap());
    let records = pax_record("size", "5");
    let mut x = tar::Header::new_ustar();
    x.set_path("PaxHeaders/sized").unwrap();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(records.len() as u64);
    x.set_cksum();
    builder.append(&x, records.as_slice()).unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("sized").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(0);
    header.set_cksum();
    builder.append(&header, &[][..]).unwrap();
    // append() writes as many bytes as the header says (none): the 5 go in raw, padded to a block.
    let mut block = [0u8; 512];
    block[..5].copy_from_slice(b"hello");
    builder.get_mut().write_all(&block).unwrap();
    builder.finish().unwrap();
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert_eq!(read(&r.dst, "out/sized"), "hello");
}

#[test]
fn add_pax_path_climbing_out_is_refused() {
    let r = roots();
    pax_tar(
        &r.src.join("p.tar"),
        &[regular(&[("path", "../../escaped")], "innocent", "bad")],
    );
    let err = copy(&r.src, &r.dst, &add("p.tar", "/app/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::ArchiveEscape { ref entry, .. } if entry == "../../escaped"),
        "{err}"
    );
    assert!(!exists(r.dst.parent().unwrap(), "escaped"));
}

#[test]
fn add_pax_hardlink_linkpath_climbing_out_is_refused() {
    let r = roots();
    pax_tar(
        &r.src.join("p.tar"),
        &[Entry {
            pax: &[("linkpath", "../../../etc/passwd")],
            name: "x",
            kind: tar::EntryType::Link,
            link: "innocent",
            content: "",
        }],
    );
    let err = copy(&r.src, &r.dst, &add("p.tar", "/app/")).unwrap_err();
    assert!(matches!(err, FileOpError::ArchiveEscape { .. }), "{err}");
}

#[test]
fn add_pax_owner_beyond_32_bits_or_bad_mtime_fails_naming_the_entry() {
    let r = roots();
    pax_tar(
        &r.src.join("uid.tar"),
        &[regular(&[("uid", "4294967296")], "big", "x")],
    );
    let err = copy(&r.src, &r.dst, &add("uid.tar", "/a/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::Archive { ref entry, .. } if entry == "big"),
        "{err}"
    );
    assert!(err.to_string().contains("4294967296"), "{err}");

    pax_tar(
        &r.src.join("mtime.tar"),
        &[regular(&[("mtime", "12.x")], "garbled", "x")],
    );
    let err = copy(&r.src, &r.dst, &add("mtime.tar", "/b/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::Archive { ref entry, .. } if entry == "garbled"),
        "{err}"
    );
    assert!(err.to_string().contains("mtime"), "{err}");
}

#[test]
fn add_ignores_pax_global_header_and_uname() {
    let r = roots();
    let global = String::from_utf8(pax_record("uid", "77")).unwrap();
    pax_tar(
        &r.src.join("p.tar"),
        &[
            // A global header (as `git archive` writes) applies to no entry in Go's reader, and
            // its name is no path to extract.
            Entry {
                pax: &[],
                name: "pax_global_header",
                kind: tar::EntryType::XGlobalHeader,
                link: "",
                content: &global,
            },
            regular(&[("uname", "root"), ("gname", "root")], "f", "x"),
        ],
    );
    copy(&r.src, &r.dst, &add("p.tar", "/out")).unwrap();
    assert!(!exists(&r.dst, "out/pax_global_header"));
    // Docker uses the numeric ids; names are not looked up.
    assert_eq!(owner(&r.dst, "out/f"), (1, 1));
    assert_eq!(read(&r.dst, "out/f"), "x");
}

//! Layer diff and apply against real trees, GNU tar and a real overlay mount (runs as root).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_image::Digest;
use kiln_oci::apply::{ApplyOptions, WhiteoutMode, apply_layer};
use kiln_oci::diff::{DiffOptions, DiffSource, write_layer_tar};

const MERGED: ApplyOptions = ApplyOptions {
    whiteouts: WhiteoutMode::Merged,
    chown: true,
};
const LOWER: ApplyOptions = ApplyOptions {
    whiteouts: WhiteoutMode::OverlayLower,
    chown: true,
};

fn diff(root: &Path, options: &DiffOptions) -> Vec<u8> {
    write_layer_tar(root, options, Vec::new()).unwrap().0
}

#[test]
fn rich_tree_round_trips_through_diff_and_apply() {
    let src = tempfile::tempdir().unwrap();
    build_rich_tree(src.path());
    let tar = diff(src.path(), &DiffOptions::plain());
    let dst = tempfile::tempdir().unwrap();
    let stats = apply_layer(&tar[..], dst.path(), &MERGED).unwrap();
    assert!(
        stats.skipped_xattrs.is_empty(),
        "{:?}",
        stats.skipped_xattrs
    );
    let expected = snapshot(src.path());
    assert!(expected["usr/bin/b-link"].hardlink_of.as_deref() == Some("home/c-link"));
    assert_same_tree(&expected, &snapshot(dst.path()));
}

#[test]
fn same_tree_gives_same_bytes_and_epoch_clamps_mtimes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    build_rich_tree(a.path());
    build_rich_tree(b.path());
    let first = diff(a.path(), &DiffOptions::plain());
    assert_eq!(
        Digest::of(&first),
        Digest::of(&diff(a.path(), &DiffOptions::plain()))
    );
    // A second tree built the same way (other inodes, other temp dir) gives the same layer.
    assert_eq!(
        Digest::of(&first),
        Digest::of(&diff(b.path(), &DiffOptions::plain()))
    );

    let clamp = DiffOptions {
        source: DiffSource::Plain,
        source_date_epoch: Some(1_600_000_500),
    };
    let clamped = diff(a.path(), &clamp);
    assert_ne!(Digest::of(&first), Digest::of(&clamped));
    let mut archive = tar::Archive::new(&clamped[..]);
    for entry in archive.entries().unwrap() {
        assert!(entry.unwrap().header().mtime().unwrap() <= 1_600_000_500);
    }
}

#[test]
fn gnu_tar_lists_and_extracts_our_layers() {
    assert!(have("tar"), "GNU tar is required (apt-get install tar)");
    let src = tempfile::tempdir().unwrap();
    build_rich_tree(src.path());
    let work = tempfile::tempdir().unwrap();
    let tar_path = work.path().join("layer.tar");
    fs::write(&tar_path, diff(src.path(), &DiffOptions::plain())).unwrap();

    let listing = run(Command::new("tar")
        .arg("--xattrs")
        .arg("-tvf")
        .arg(&tar_path));
    assert!(
        listing.contains(&"f".repeat(255)),
        "long name missing: {listing}"
    );
    assert!(listing.contains("ünïcødé-名前.txt"), "{listing}");
    assert!(
        listing.contains("usr/bin/b-link link to home/c-link"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("-> /{}", "t".repeat(150))),
        "{listing}"
    );
    assert!(
        listing.contains("3000000/4000000"),
        "numeric big ids: {listing}"
    );
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");
    assert!(
        !listing.contains("root/root"),
        "user names must not be recorded: {listing}"
    );

    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    run(Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--same-owner")
        .arg("-xpf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&out));
    assert_same_tree(&snapshot(src.path()), &snapshot(&out));
}

#[test]
fn gnu_tar_output_applies_to_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    build_rich_tree(src.path());
    let work = tempfile::tempdir().unwrap();
    let tar_path = work.path().join("gnu.tar");
    run(Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("--format=pax")
        .arg("-cf")
        .arg(&tar_path)
        .arg("-C")
        .arg(src.path())
        .arg("."));
    let dst = tempfile::tempdir().unwrap();
    apply_layer(fs::File::open(&tar_path).unwrap(), dst.path(), &MERGED).unwrap();
    let expected = snapshot(src.path());
    let actual = snapshot(dst.path());
    // GNU tar may pick another path of a hard-linked inode as the first; compare the rest exactly.
    let strip = |tree: &std::collections::BTreeMap<String, Node>| {
        tree.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Node {
                        hardlink_of: None,
                        ..v.clone()
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_same_tree(&strip(&expected), &strip(&actual));
}

struct OverlayMount {
    merged: std::path::PathBuf,
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> OverlayMount {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut options = format!("lowerdir={lower}");
    if let Some((upper, work)) = upper {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    options.push_str(",index=off,metacopy=off,redirect_dir=off");
    nix::mount::mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount -t overlay -o {options}: {e}"));
    OverlayMount {
        merged: merged.to_path_buf(),
    }
}

#[test]
fn overlay_upper_dir_diffs_to_whiteouts_and_applies_in_both_modes() {
    let base = tempfile::tempdir().unwrap();
    let b = |rel: &str| base.path().join(rel);
    for dir in [
        "lower",
        "upper",
        "work",
        "merged",
        "out-merged",
        "layer1",
        "layer2",
        "view",
    ] {
        fs::create_dir(b(dir)).unwrap();
    }
    // The lower layer.
    fs::write(b("lower/gone"), b"deleted later").unwrap();
    fs::create_dir_all(b("lower/recreated")).unwrap();
    fs::write(b("lower/recreated/old-a"), b"a").unwrap();
    fs::write(b("lower/recreated/old-b"), b"b").unwrap();
    fs::create_dir_all(b("lower/renamed-dir/sub")).unwrap();
    fs::write(b("lower/renamed-dir/sub/file"), b"moved").unwrap();
    fs::write(b("lower/renamed-file"), b"file moved").unwrap();
    fs::write(b("lower/kept"), b"kept").unwrap();

    let mounted = mount_overlay(
        &[&b("lower")],
        Some((&b("upper"), &b("work"))),
        &b("merged"),
    );
    fs::remove_file(b("merged/gone")).unwrap();
    fs::remove_dir_all(b("merged/recreated")).unwrap();
    fs::create_dir(b("merged/recreated")).unwrap();
    fs::write(b("merged/recreated/new"), b"new").unwrap();
    // redirect_dir=off: renaming a lower dir fails with EXDEV and mv copies it, as in a real build.
    run(Command::new("mv")
        .arg(b("merged/renamed-dir"))
        .arg(b("merged/moved-dir")));
    fs::rename(b("merged/renamed-file"), b("merged/moved-file")).unwrap();
    let merged_view = snapshot(&b("merged"));
    drop(mounted);

    let lower_tar = diff(&b("lower"), &DiffOptions::plain());
    let upper_tar = diff(&b("upper"), &DiffOptions::overlay_upper());
    let names: Vec<String> = tar::Archive::new(&upper_tar[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect();
    for expected in [
        ".wh.gone",
        "recreated/",
        "recreated/.wh..wh..opq",
        "recreated/new",
        ".wh.renamed-dir",
        "moved-dir/",
        "moved-dir/sub/file",
        ".wh.renamed-file",
        "moved-file",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // The opaque marker directly follows its directory.
    let dir_at = names.iter().position(|n| n == "recreated/").unwrap();
    assert_eq!(names[dir_at + 1], "recreated/.wh..wh..opq");
    assert!(!names.iter().any(|n| n.contains("kept")));

    // (b) merged form: apply both layers onto one tree.
    apply_layer(&lower_tar[..], &b("out-merged"), &MERGED).unwrap();
    apply_layer(&upper_tar[..], &b("out-merged"), &MERGED).unwrap();
    assert_same_tree(&merged_view, &snapshot(&b("out-merged")));

    // (a) lower-dir form: each layer in its own dir, stacked by a real overlay mount.
    apply_layer(&lower_tar[..], &b("layer1"), &LOWER).unwrap();
    apply_layer(&upper_tar[..], &b("layer2"), &LOWER).unwrap();
    let meta = fs::symlink_metadata(b("layer2/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &meta.file_type()
    ));
    let view = mount_overlay(&[&b("layer2"), &b("layer1")], None, &b("view"));
    assert_same_tree(&merged_view, &snapshot(&b("view")));
    drop(view);
}

#[test]
fn opaque_marker_keeps_what_the_same_layer_wrote_before_it() {
    // `-` sorts before `.`, so `d/-early` precedes `d/.wh..wh..opq` in a sorted layer.
    let base = tempfile::tempdir().unwrap();
    fs::create_dir_all(base.path().join("d")).unwrap();
    fs::write(base.path().join("d/old"), b"old").unwrap();
    fs::create_dir_all(base.path().join("d/-early-dir")).unwrap();
    fs::write(
        base.path().join("d/-early-dir/lower-child"),
        b"hidden by the opaque dir",
    )
    .unwrap();
    let mut w = kiln_oci::tar_writer::TarWriter::new(Vec::new());
    let mut dir =
        kiln_oci::tar_writer::TarEntry::new("d/", kiln_oci::tar_writer::EntryKind::Directory);
    dir.mode = 0o755;
    w.append(&dir, None).unwrap();
    let mut early =
        kiln_oci::tar_writer::TarEntry::new("d/-early", kiln_oci::tar_writer::EntryKind::File);
    early.mode = 0o644;
    early.size = 1;
    w.append(&early, Some(&mut &b"e"[..])).unwrap();
    let mut early_dir = kiln_oci::tar_writer::TarEntry::new(
        "d/-early-dir/",
        kiln_oci::tar_writer::EntryKind::Directory,
    );
    early_dir.mode = 0o755;
    w.append(&early_dir, None).unwrap();
    let opq = kiln_oci::tar_writer::TarEntry::new(
        "d/.wh..wh..opq",
        kiln_oci::tar_writer::EntryKind::File,
    );
    w.append(&opq, None).unwrap();
    let tar = w.finish().unwrap();
    apply_layer(&tar[..], base.path(), &MERGED).unwrap();
    assert!(base.path().join("d/-early").exists());
    assert!(base.path().join("d/-early-dir").is_dir());
    assert!(!base.path().join("d/-early-dir/lower-child").exists());
    assert!(!base.path().join("d/old").exists());
}

#[test]
fn compressed_layers_apply_by_magic_bytes() {
    use kiln_oci::compress::{Compression, compress_dir_layer};
    let src = tempfile::tempdir().unwrap();
    build_rich_tree(src.path());
    let expected = snapshot(src.path());
    for compression in [
        Compression::Gzip { level: 1 },
        Compression::Zstd { level: 3 },
    ] {
        let (blob, digests) =
            compress_dir_layer(src.path(), &DiffOptions::plain(), compression, Vec::new()).unwrap();
        assert_eq!(
            digests.diff_id,
            Digest::of(&diff(src.path(), &DiffOptions::plain()))
        );
        let dst = tempfile::tempdir().unwrap();
        apply_layer(&blob[..], dst.path(), &MERGED).unwrap();
        assert_same_tree(&expected, &snapshot(dst.path()));
    }
}

/// Drops CAP_MKNOD from the calling thread's effective set (capabilities are per thread in Linux,
/// so the rest of the test process keeps it).
fn drop_mknod_capability_of_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_MKNOD: u32 = 27;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_MKNOD);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn without_mknod_rights_devices_are_skipped_and_reported_but_fifos_made() {
    let src = tempfile::tempdir().unwrap();
    mknod_at(
        &src.path().join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        0o666,
        1,
        3,
    );
    mknod_at(
        &src.path().join("pipe"),
        nix::sys::stat::SFlag::S_IFIFO,
        0o644,
        0,
        0,
    );
    let tar = diff(src.path(), &DiffOptions::plain());
    let dst = tempfile::tempdir().unwrap();
    let dst_path = dst.path().to_path_buf();
    let rootless = ApplyOptions {
        whiteouts: WhiteoutMode::Merged,
        chown: false,
    };
    let stats = std::thread::spawn(move || {
        drop_mknod_capability_of_this_thread();
        apply_layer(&tar[..], &dst_path, &rootless)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(stats.skipped_devices, ["null"]);
    assert!(!dst.path().join("null").exists());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(dst.path().join("pipe"))
            .unwrap()
            .file_type()
    ));

    // With chown on (root), a refused mknod is an error naming the entry.
    let tar = diff(src.path(), &DiffOptions::plain());
    let dst2 = tempfile::tempdir().unwrap();
    let dst2_path = dst2.path().to_path_buf();
    let err = std::thread::spawn(move || {
        drop_mknod_capability_of_this_thread();
        apply_layer(&tar[..], &dst2_path, &MERGED)
    })
    .join()
    .unwrap()
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("layer entry null: creating the device node"),
        "{err}"
    );
}

//! Hostile layers: nothing may be written outside the extraction root.

mod common;

use std::fs;
use std::path::Path;

use common::snapshot;
use kiln_oci::apply::{ApplyError, ApplyOptions, WhiteoutMode, apply_layer};
use kiln_oci::tar_writer::{EntryKind, TarEntry, TarWriter};

const OPTIONS: ApplyOptions = ApplyOptions {
    whiteouts: WhiteoutMode::Merged,
    chown: true,
};

/// A sandbox: `root` to extract into and `outside/secret`, a file that must never change.
struct Sandbox {
    _base: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"original").unwrap();
        Sandbox {
            root,
            outside,
            _base: base,
        }
    }

    fn assert_outside_untouched(&self) {
        let tree = snapshot(&self.outside);
        assert_eq!(
            tree.len(),
            1,
            "outside dir changed: {:?}",
            tree.keys().collect::<Vec<_>>()
        );
        assert_eq!(tree["secret"].content, b"original");
        assert_eq!(fs::metadata(self.outside.join("secret")).unwrap().len(), 8);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(self.outside.join("secret")).unwrap().nlink(),
            1
        );
    }
}

fn file(path: &str, content: &[u8]) -> (TarEntry, Vec<u8>) {
    let mut entry = TarEntry::new(path, EntryKind::File);
    entry.mode = 0o644;
    entry.size = content.len() as u64;
    (entry, content.to_vec())
}

fn link(path: &str, kind: EntryKind, target: &str) -> (TarEntry, Vec<u8>) {
    let mut entry = TarEntry::new(path, kind);
    entry.mode = 0o777;
    entry.link_target = target.as_bytes().to_vec();
    (entry, Vec::new())
}

fn dir(path: &str) -> (TarEntry, Vec<u8>) {
    let mut entry = TarEntry::new(path, EntryKind::Directory);
    entry.mode = 0o755;
    (entry, Vec::new())
}

fn layer(entries: &[(TarEntry, Vec<u8>)]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new());
    for (entry, content) in entries {
        w.append(entry, Some(&mut &content[..])).unwrap();
    }
    w.finish().unwrap()
}

fn outside_rel(sandbox: &Sandbox, levels: usize) -> String {
    format!("{}outside/secret", "../".repeat(levels)).replace(
        "outside",
        sandbox.outside.file_name().unwrap().to_str().unwrap(),
    )
}

#[test]
fn dot_dot_entries_are_rejected_with_the_entry_named() {
    let s = Sandbox::new();
    let path = outside_rel(&s, 1);
    let err = apply_layer(&layer(&[file(&path, b"pwned")])[..], &s.root, &OPTIONS).unwrap_err();
    assert!(matches!(err, ApplyError::EscapesRoot { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("layer entry {path} escapes the root")
    );
    let err = apply_layer(
        &layer(&[file("a/../../../etc/passwd", b"x")])[..],
        &s.root,
        &OPTIONS,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry a/../../../etc/passwd escapes the root"
    );
    s.assert_outside_untouched();
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let s = Sandbox::new();
    let absolute = s.outside.join("secret").display().to_string();
    apply_layer(&layer(&[file(&absolute, b"pwned")])[..], &s.root, &OPTIONS).unwrap();
    let inside = s.root.join(absolute.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    s.assert_outside_untouched();
}

#[test]
fn writes_through_a_symlink_stay_inside_the_root() {
    let absolute = |s: &Sandbox| s.outside.display().to_string();
    let climbing = |s: &Sandbox| format!("../../../../../../../..{}", s.outside.display());
    for make_target in [absolute, climbing] {
        // Resolved inside the root, the target does not exist: rejected, naming the entry.
        let s = Sandbox::new();
        let target = make_target(&s);
        let entries = [
            link("escape", EntryKind::Symlink, &target),
            file("escape/secret", b"pwned"),
        ];
        let err = apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap_err();
        assert!(
            err.to_string().contains("layer entry escape/secret"),
            "{err}"
        );
        s.assert_outside_untouched();

        // With the target directory present inside the root, the write is confined to it.
        let s = Sandbox::new();
        let target = make_target(&s);
        let inside_target = s.root.join(s.outside.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside_target).unwrap();
        let entries = [
            link("escape", EntryKind::Symlink, &target),
            file("escape/secret", b"pwned"),
        ];
        apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap();
        assert_eq!(fs::read(inside_target.join("secret")).unwrap(), b"pwned");
        assert_eq!(
            fs::read_link(s.root.join("escape")).unwrap(),
            Path::new(&target)
        );
        s.assert_outside_untouched();
    }
}

#[test]
fn a_file_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let s = Sandbox::new();
    let target = s.outside.join("secret").display().to_string();
    let entries = [
        link("etc-passwd", EntryKind::Symlink, &target),
        file("etc-passwd", b"pwned"),
    ];
    apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap();
    assert_eq!(fs::read(s.root.join("etc-passwd")).unwrap(), b"pwned");
    assert!(
        !fs::symlink_metadata(s.root.join("etc-passwd"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    s.assert_outside_untouched();

    // A directory entry over a symlink to outside replaces the symlink too.
    let s = Sandbox::new();
    let entries = [
        link("d", EntryKind::Symlink, &s.outside.display().to_string()),
        dir("d/"),
        file("d/secret", b"pwned"),
    ];
    apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap();
    assert!(fs::symlink_metadata(s.root.join("d")).unwrap().is_dir());
    s.assert_outside_untouched();
}

#[test]
fn hard_links_cannot_reach_outside() {
    let s = Sandbox::new();
    let relative = outside_rel(&s, 1);
    let err = apply_layer(
        &layer(&[link("hl", EntryKind::HardLink, &relative)])[..],
        &s.root,
        &OPTIONS,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::LinkEscapesRoot { .. }), "{err}");
    assert!(err.to_string().contains("hl"), "{err}");

    // An absolute target is resolved inside the root, where it does not exist.
    let absolute = s.outside.join("secret").display().to_string();
    let err = apply_layer(
        &layer(&[link("hl", EntryKind::HardLink, &absolute)])[..],
        &s.root,
        &OPTIONS,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("layer entry hl: linking to"),
        "{err}"
    );

    // Through a symlinked directory: also resolved inside the root.
    let entries = [
        link("via", EntryKind::Symlink, &s.outside.display().to_string()),
        link("hl2", EntryKind::HardLink, "via/secret"),
    ];
    assert!(apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).is_err());
    s.assert_outside_untouched();
}

#[test]
fn whiteouts_cannot_delete_outside() {
    let s = Sandbox::new();
    let err = apply_layer(
        &layer(&[file(
            &outside_rel(&s, 1).replace("secret", ".wh.secret"),
            b"",
        )])[..],
        &s.root,
        &OPTIONS,
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::EscapesRoot { .. }), "{err}");
    let entries = [
        link("via", EntryKind::Symlink, &s.outside.display().to_string()),
        file("via/.wh.secret", b""),
    ];
    apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap();
    let entries = [
        link("via2", EntryKind::Symlink, &s.outside.display().to_string()),
        file("via2/.wh..wh..opq", b""),
    ];
    apply_layer(&layer(&entries)[..], &s.root, &OPTIONS).unwrap();
    s.assert_outside_untouched();
}

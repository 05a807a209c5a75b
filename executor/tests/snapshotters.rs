//! One suite every snapshotter must pass (containerd style): each case runs real sandboxes over a busybox
//! layer (plus layers the case builds) and checks both the diff (overlay upper-dir form) and what a
//! sandbox over `layers + diff` sees. Named after what they prove.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{Fixture, is_root, run_capture};
use kiln_executor::{NativeSnapshotter, OverlaySnapshotter, Snapshotter, mount_stubs};

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn is_opaque(path: &Path) -> bool {
    xattr::get(path, "trusted.overlay.opaque")
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

/// Runs `script` over the fixture, asserts success, returns the diff dir.
fn run_step(snapshotter: &dyn Snapshotter, fixture: &Fixture, script: &str) -> PathBuf {
    let (status, _, stderr) = run_capture(&fixture.spec(script));
    assert!(status.success(), "{script}: {stderr}");
    snapshotter.diff(&fixture.snapshot).unwrap()
}

/// What a fresh sandbox over `layers` + `diff` prints for `script`.
fn view(snapshotter: &dyn Snapshotter, fixture: &Fixture, diff: &Path, script: &str) -> String {
    let mut layers = fixture.layers.clone();
    layers.push(diff.to_path_buf());
    let scratch = fixture.tmp.path().join(format!("view-{}", rand_suffix()));
    let snapshot = snapshotter
        .prepare(&layers, &scratch, &mount_stubs(&[]))
        .unwrap();
    let mut spec = fixture.spec(script);
    spec.rootfs = snapshot.mount().clone();
    spec.scratch_dir = scratch.join("sandbox");
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{script}: {stderr}");
    stdout
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn writes_land_in_the_diff(s: &dyn Snapshotter) {
    let fixture = Fixture::new(s);
    let diff = run_step(
        s,
        &fixture,
        "echo new > /new.txt; echo extra >> /etc/passwd; mkdir -p /opt/a/b; ln -s /new.txt /opt/link",
    );
    assert_eq!(fs::read_to_string(diff.join("new.txt")).unwrap(), "new\n");
    assert!(
        fs::read_to_string(diff.join("etc/passwd"))
            .unwrap()
            .ends_with("extra\n")
    );
    assert!(diff.join("opt/a/b").is_dir());
    assert_eq!(
        fs::read_link(diff.join("opt/link")).unwrap(),
        Path::new("/new.txt")
    );
    assert!(
        fs::symlink_metadata(diff.join("bin")).is_err(),
        "untouched dirs stay out of the diff"
    );
    assert_eq!(
        view(s, &fixture, &diff, "cat /new.txt; tail -n1 /etc/passwd"),
        "new\nextra\n"
    );
}

fn deleted_files_in_lower_become_whiteouts(s: &dyn Snapshotter) {
    let fixture = Fixture::new(s);
    let diff = run_step(s, &fixture, "rm /etc/group /bin/vi");
    assert!(is_whiteout(&diff.join("etc/group")));
    assert!(is_whiteout(&diff.join("bin/vi")));
    assert_eq!(
        view(
            s,
            &fixture,
            &diff,
            "test -e /etc/group || echo gone; test -e /etc/passwd && echo kept"
        ),
        "gone\nkept\n"
    );
}

fn remove_directory_in_lower_layer(s: &dyn Snapshotter) {
    let fixture = Fixture::with_layers(s, |dir| {
        let layer = dir.join("layer-data");
        fs::create_dir_all(layer.join("data/sub")).unwrap();
        fs::write(layer.join("data/sub/f"), "x").unwrap();
        vec![layer]
    });
    let diff = run_step(s, &fixture, "rm -rf /data");
    assert!(is_whiteout(&diff.join("data")));
    assert!(fs::symlink_metadata(diff.join("data/sub")).is_err());
    assert_eq!(
        view(s, &fixture, &diff, "test -e /data || echo gone"),
        "gone\n"
    );
}

fn replaced_directory_becomes_opaque(s: &dyn Snapshotter) {
    let fixture = Fixture::with_layers(s, |dir| {
        let layer = dir.join("layer-data");
        fs::create_dir_all(layer.join("data")).unwrap();
        fs::write(layer.join("data/old"), "old").unwrap();
        vec![layer]
    });
    let diff = run_step(
        s,
        &fixture,
        "rm -rf /data && mkdir /data && echo n > /data/new",
    );
    assert!(is_opaque(&diff.join("data")), "replaced dir must be opaque");
    assert_eq!(fs::read_to_string(diff.join("data/new")).unwrap(), "n\n");
    assert_eq!(view(s, &fixture, &diff, "ls /data"), "new\n");
}

fn whiteouts_and_opaque_dirs_in_lower_layers_apply(s: &dyn Snapshotter) {
    let fixture = Fixture::with_layers(s, |dir| {
        let one = dir.join("layer-one");
        fs::create_dir_all(one.join("conf")).unwrap();
        fs::write(one.join("conf/a"), "a").unwrap();
        fs::write(one.join("conf/b"), "b").unwrap();
        let two = dir.join("layer-two");
        fs::create_dir_all(two.join("conf")).unwrap();
        fs::create_dir_all(two.join("bin")).unwrap();
        xattr::set(two.join("conf"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(two.join("conf/c"), "c").unwrap();
        nix::sys::stat::mknod(
            &two.join("bin/vi"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        vec![one, two]
    });
    let (status, stdout, _) = run_capture(&fixture.spec("ls /conf; test -e /bin/vi || echo no-vi"));
    assert!(status.success());
    assert_eq!(stdout, "c\nno-vi\n");
    let diff = s.diff(&fixture.snapshot).unwrap();
    assert_eq!(
        fs::read_dir(&diff).unwrap().count(),
        0,
        "reading changes nothing"
    );
}

fn modified_file_keeps_metadata_and_hardlinks(s: &dyn Snapshotter) {
    let fixture = Fixture::new(s);
    let diff = run_step(
        s,
        &fixture,
        "echo data > /f; chown 1000:50 /f; chmod 4750 /f; ln /f /g; touch -d '2001-02-03 04:05:06' /f; chmod 700 /root",
    );
    let f = fs::symlink_metadata(diff.join("f")).unwrap();
    let g = fs::symlink_metadata(diff.join("g")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1000, 50, 0o4750));
    assert_eq!(f.ino(), g.ino(), "hardlinks stay hardlinks");
    assert_eq!(f.mtime(), 981_173_106);
    assert_eq!(
        fs::symlink_metadata(diff.join("root")).unwrap().mode() & 0o777,
        0o700
    );
}

fn mount_stubs_stay_out_of_the_diff(s: &dyn Snapshotter) {
    let fixture = Fixture::new(s);
    let diff = run_step(
        s,
        &fixture,
        "cat /etc/hosts >/dev/null; ls /proc/self >/dev/null",
    );
    assert_eq!(
        fs::read_dir(&diff).unwrap().count(),
        0,
        "{:?}",
        fs::read_dir(&diff).unwrap().collect::<Vec<_>>()
    );
}

macro_rules! suite {
    ($module:ident, $snapshotter:expr) => {
        mod $module {
            use super::*;
            suite!(@case $snapshotter, writes_land_in_the_diff);
            suite!(@case $snapshotter, deleted_files_in_lower_become_whiteouts);
            suite!(@case $snapshotter, remove_directory_in_lower_layer);
            suite!(@case $snapshotter, replaced_directory_becomes_opaque);
            suite!(@case $snapshotter, whiteouts_and_opaque_dirs_in_lower_layers_apply);
            suite!(@case $snapshotter, modified_file_keeps_metadata_and_hardlinks);
            suite!(@case $snapshotter, mount_stubs_stay_out_of_the_diff);
        }
    };
    (@case $snapshotter:expr, $name:ident) => {
        #[test]
        fn $name() {
            if is_root() {
                super::$name(&$snapshotter);
            }
        }
    };
}

suite!(overlay, OverlaySnapshotter);
suite!(native, NativeSnapshotter);

#[test]
fn overlay_is_detected_here() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(kiln_executor::snapshot::overlay_supported(tmp.path()));
    assert_eq!(
        kiln_executor::default_snapshotter(tmp.path()).name(),
        "overlay"
    );
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the probe cleans up"
    );
}

/// 130 lower dirs with store-like 64-character names: far beyond a page of mount options, so this
/// takes the fsopen/`lowerdir+` path.
#[test]
fn overlay_mounts_130_lower_dirs() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::with_layers(&OverlaySnapshotter, |dir| {
        (0..130)
            .map(|i| {
                let layer = dir.join(format!("{i:064x}"));
                fs::create_dir_all(layer.join("layers")).unwrap();
                fs::write(layer.join("layers").join(i.to_string()), "").unwrap();
                fs::write(layer.join("value"), i.to_string()).unwrap();
                layer
            })
            .collect()
    });
    let kiln_executor::RootMount::Overlay { lower_dirs, .. } = fixture.root() else {
        panic!()
    };
    assert_eq!(
        lower_dirs.len(),
        131,
        "130 + busybox (the sandbox adds the stub layer)"
    );
    let (status, stdout, stderr) =
        run_capture(&fixture.spec("ls /layers | wc -l; cat /value; echo; echo top > /value"));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "130\n129\n");
    let diff = OverlaySnapshotter.diff(&fixture.snapshot).unwrap();
    assert_eq!(fs::read_to_string(diff.join("value")).unwrap(), "top\n");
}

#[test]
fn overlay_upper_root_takes_the_image_root_metadata() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::with_layers(&OverlaySnapshotter, |dir| {
        let layer = dir.join("layer-root");
        fs::create_dir_all(&layer).unwrap();
        std::os::unix::fs::chown(&layer, Some(12), Some(34)).unwrap();
        fs::set_permissions(&layer, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        vec![layer]
    });
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
        panic!()
    };
    let meta = fs::metadata(upper_dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (12, 34, 0o750)
    );
}

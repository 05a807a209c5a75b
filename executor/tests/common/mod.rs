//! Shared helpers for the executor's integration tests: a busybox root filesystem built from Debian's
//! `busybox-static` (as the lower layer of every test), and run helpers.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_executor::{
    ExitStatus, Input, Output, RootMount, SandboxIo, SandboxSpec, Snapshot, Snapshotter,
    mount_stubs, run,
};

pub const BUSYBOX: &str = "/bin/busybox";

/// True when the tests can do real mounts (root). The tests run as root in CI; elsewhere they skip.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Builds a busybox root in `dir`: `bin/busybox` plus its applets as symlinks, `/etc/passwd` with
/// root and `app` (1000), `/etc/group` with `app` (1000) and `staff` (50, member app), `/tmp`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).exists(),
        "apt-get install -y busybox-static"
    );
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let applets = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(applets.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    let etc = dir.join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        etc.join("group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("root")).unwrap();
    dir.to_path_buf()
}

/// A prepared snapshot over one busybox layer, plus the temp dir holding everything.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub layers: Vec<PathBuf>,
    pub snapshot: Snapshot,
}

impl Fixture {
    pub fn new(snapshotter: &dyn Snapshotter) -> Fixture {
        Fixture::with_layers(snapshotter, |_| Vec::new())
    }

    /// `extra` may create more layers (above busybox) under the given dir and return them bottom first.
    pub fn with_layers(
        snapshotter: &dyn Snapshotter,
        extra: impl FnOnce(&Path) -> Vec<PathBuf>,
    ) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = busybox_rootfs(&tmp.path().join("layer-busybox"));
        let mut layers = vec![base];
        layers.extend(extra(tmp.path()));
        let snapshot = snapshotter
            .prepare(&layers, &tmp.path().join("snapshot"), &mount_stubs(&[]))
            .unwrap();
        Fixture {
            tmp,
            layers,
            snapshot,
        }
    }

    pub fn spec(&self, script: &str) -> SandboxSpec {
        SandboxSpec::new(
            self.snapshot.mount().clone(),
            self.tmp.path().join("sandbox"),
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        )
    }

    pub fn root(&self) -> &RootMount {
        self.snapshot.mount()
    }
}

/// Runs `spec`, returning (status, stdout, stderr).
pub fn run_capture(spec: &SandboxSpec) -> (ExitStatus, String, String) {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let io = SandboxIo {
        stdin: Input::Null,
        stdout: Output::Writer(&mut stdout),
        stderr: Output::Writer(&mut stderr),
        ..SandboxIo::default()
    };
    let status = run(spec, io).unwrap();
    (
        status,
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

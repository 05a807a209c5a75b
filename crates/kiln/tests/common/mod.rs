//! Shared helpers for end-to-end tests: a temp store root, a way to run the real `kiln` binary on a
//! context written by the test, and a busybox root filesystem laid out from Debian's
//! `busybox-static` (base images are made locally, never downloaded).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A kiln with its own store root, removed when dropped.
pub struct Kiln {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Kiln {
    pub fn new() -> Kiln {
        Kiln {
            root: tempfile::tempdir().expect("temp store root"),
            work: tempfile::tempdir().expect("temp work dir"),
        }
    }

    /// `kiln --root <root>` with the given arguments, not yet run.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("--root").arg(self.root.path());
        command.env_remove("KILN_ROOT");
        command.stdin(Stdio::null());
        command
    }

    /// Runs kiln with `args`; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running kiln")
    }

    /// Runs kiln with `args` and panics with its output when it fails.
    pub fn ok(&self, args: &[&str]) -> Output {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kiln {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// A new context directory under the work dir, with `files` (path, content) written into it.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("file has a parent")).expect("mkdir");
            std::fs::write(&file, content).expect("write context file");
        }
        std::fs::create_dir_all(&dir).expect("mkdir context");
        dir
    }
}

/// The workspace's `testdata/` directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether an external tool is on PATH; tests that need a missing tool say so and skip.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Lays out a busybox root filesystem in `dir`: `/bin/busybox` from Debian's busybox-static with a
/// symlink per applet, `/etc/passwd` and `/etc/group` with root, a user `app` (1000) and a group
/// `staff` (50), and the usual empty directories.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static is installed (./setup.sh deps)");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet symlink");
        }
    }
    for empty in ["etc", "tmp", "root", "home/app", "var", "proc", "sys", "dev"] {
        std::fs::create_dir_all(dir.join(empty)).expect("mkdir");
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .expect("group");
}

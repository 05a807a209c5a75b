//! A busybox root filesystem laid out from Debian's `busybox-static`: the one base every test image
//! is made of.

use std::path::Path;
use std::process::Command;

/// The host's static busybox (`apt-get install -y busybox-static`).
pub fn busybox_binary() -> &'static Path {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static is installed (apt-get install -y busybox-static)")
}

/// Lays out a busybox root filesystem in `dir`: `/bin/busybox` with a symlink per applet,
/// `/etc/passwd` and `/etc/group` with root, a user `app` (1000) and a group `staff` (50), and the
/// usual empty directories.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = busybox_binary();
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
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
    for empty in [
        "etc", "tmp", "root", "home/app", "var", "proc", "sys", "dev",
    ] {
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

//! Helpers shared by the integration tests: a tree snapshot that captures everything a layer must
//! preserve, tree builders and tar crafting.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

/// What a layer must preserve about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub link: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in walk order) sharing this inode, for hard links.
    pub hardlink_of: Option<String>,
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr_list(path) else {
        return Vec::new();
    };
    let mut out: Vec<_> = names
        .into_iter()
        .filter(|n| !n.starts_with(b"trusted.overlay.") && n != b"security.selinux")
        .filter_map(|n| xattr_get(path, &n).map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

fn xattr_list(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect())
}

fn xattr_get(path: &Path, name: &[u8]) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Every path below `root` (not `root` itself) with its metadata and content.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut HashMap<(u64, u64), String>,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let hardlink_of = if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            match inodes.get(&key) {
                Some(first) => Some(first.clone()),
                None => {
                    inodes.insert(key, rel.clone());
                    None
                }
            }
        } else {
            None
        };
        let node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            content: if ft.is_file() {
                fs::read(&path).unwrap()
            } else {
                Vec::new()
            },
            link: if ft.is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            },
            rdev: if ft.is_char_device() || ft.is_block_device() {
                meta.rdev()
            } else {
                0
            },
            xattrs: xattrs_of(&path),
            hardlink_of,
        };
        out.insert(rel, node);
        if ft.is_dir() {
            walk(root, &path, out, inodes);
        }
    }
}

/// Asserts two snapshots are equal, printing the first differing path.
pub fn assert_same_tree(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>) {
    for (path, node) in expected {
        match actual.get(path) {
            None => panic!("missing in result: {path}"),
            Some(other) => assert_eq!(node, other, "differs at {path}"),
        }
    }
    for path in actual.keys() {
        assert!(expected.contains_key(path), "unexpected in result: {path}");
    }
}

pub fn set_mtime(path: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mknod_at(path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) {
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .unwrap();
}

/// A valid `security.capability` value (revision 2) granting cap_net_raw, effective.
pub const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A tree with every kind of entry a layer must carry.
pub fn build_rich_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("usr/bin")).unwrap();
    fs::create_dir_all(p("empty")).unwrap();
    fs::create_dir_all(p("tmp")).unwrap();
    chmod(&p("tmp"), 0o1777);
    fs::write(p("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    chmod(&p("usr/bin/tool"), 0o4755);
    fs::write(p("usr/bin/sgid"), b"sgid").unwrap();
    chmod(&p("usr/bin/sgid"), 0o2711);
    fs::write(p("usr/bin/ping"), vec![7u8; 5000]).unwrap();
    set_xattr(&p("usr/bin/ping"), "security.capability", &CAP_NET_RAW);
    set_xattr(&p("usr/bin/ping"), "user.comment", b"binary \x00\x01 value");
    fs::create_dir_all(p("home/user")).unwrap();
    fs::write(p("home/user/notes"), b"owned by 1000").unwrap();
    chown(&p("home/user/notes"), 1000, 1000);
    chown(&p("home/user"), 1000, 100);
    fs::write(p("home/big-ids"), b"ids over the ustar range").unwrap();
    chown(&p("home/big-ids"), 3_000_000, 4_000_000);
    // Hard links: the first path in walk order (home/c-link) becomes the link target.
    fs::write(p("usr/bin/a-original"), b"shared content").unwrap();
    fs::hard_link(p("usr/bin/a-original"), p("usr/bin/b-link")).unwrap();
    fs::hard_link(p("usr/bin/a-original"), p("home/c-link")).unwrap();
    std::os::unix::fs::symlink("tool", p("usr/bin/relative-link")).unwrap();
    std::os::unix::fs::symlink("/etc/does-not-exist-on-host", p("usr/bin/absolute-link")).unwrap();
    let long_target = format!("/{}", "t".repeat(150));
    std::os::unix::fs::symlink(&long_target, p("usr/bin/long-target")).unwrap();
    fs::create_dir_all(p("dev")).unwrap();
    mknod_at(&p("dev/null"), SFlag::S_IFCHR, 0o666, 1, 3);
    mknod_at(&p("dev/loop9"), SFlag::S_IFBLK, 0o660, 7, 9);
    mknod_at(&p("dev/fifo"), SFlag::S_IFIFO, 0o644, 0, 0);
    // Long and unicode names.
    let long_dir = p(&format!("deep/{}/{}", "d".repeat(120), "e".repeat(90)));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(255)), b"long path").unwrap();
    fs::write(p("ünïcødé-名前.txt"), "unicode".as_bytes()).unwrap();
    // Fixed mtimes, children first so directory times stay put.
    let snapshot_paths: Vec<_> = walkdir_paths(root);
    for (i, path) in snapshot_paths.iter().rev().enumerate() {
        set_mtime(path, 1_600_000_000 + i as i64 * 1000);
    }
}

fn walkdir_paths(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    // Parents before children, so reversing sets children first.
    out.sort_by_key(|p| p.components().count());
    out
}

pub fn run(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

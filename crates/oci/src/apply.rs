//! Layer apply: a layer tar stream (plain, or compressed as [`decompressing_reader`] detects) → a
//! directory, confined to that directory.
//!
//! Confinement: every path is resolved with `openat2(RESOLVE_IN_ROOT)` against a descriptor of the root,
//! so `..` and symlinks (absolute or relative) met while resolving a parent directory stay inside the
//! root, as if it were a chroot; the final component is always created or changed with `*at` calls that
//! do not follow it. On top of that, entry paths are checked lexically:
//! - a leading `/` is dropped (Docker and GNU tar do the same: `/etc/passwd` lands in `<root>/etc/passwd`);
//! - `..` that climbs above the root is rejected with [`ApplyError::EscapesRoot`] ("layer entry
//!   ../../etc/passwd escapes the root"), and so is a hard link whose target does.
//!
//! Symlink targets are stored verbatim (an absolute target is resolved at run time inside the
//! container, never on the host). Ownership is applied with `chown` when [`ApplyOptions::chown`] is set
//! (running as root), then the mode (chown clears setuid/setgid), then xattrs (chown also clears
//! `security.capability`), then mtimes; directory mtimes are set at the end, deepest first, because
//! writing their children changes them.
//!
//! Whiteouts come in two forms ([`WhiteoutMode`]): overlay lower-dir form for `layers/` (a `.wh.x` entry
//! becomes a char device 0:0 named `x`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its
//! directory), or applied onto a merged tree (the path is removed; an opaque directory loses every child
//! not written by this layer). `trusted.overlay.*` xattrs inside an archive are never applied: they would
//! change what overlayfs shows.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, makedev, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

use crate::compress::decompressing_reader;
use crate::diff::{OPAQUE_WHITEOUT, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
use crate::xattrs;

/// How whiteout entries are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Overlay lower-dir form: whiteouts become char devices 0:0, opaque markers the
    /// `trusted.overlay.opaque=y` xattr. For `layers/<chain id>/`.
    OverlayLower,
    /// Applied onto a merged tree: whiteouts remove paths, opaque markers empty their directory of
    /// everything this layer did not write. For the copying snapshotter and `type=local` export.
    Merged,
}

/// How to apply a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutMode,
    /// Set owners from the archive (needs root); otherwise files belong to the caller.
    pub chown: bool,
}

impl ApplyOptions {
    /// Merged-tree whiteouts; owners applied when running as root.
    pub fn merged() -> ApplyOptions {
        ApplyOptions {
            whiteouts: WhiteoutMode::Merged,
            chown: nix::unistd::geteuid().is_root(),
        }
    }

    /// Overlay lower-dir whiteouts; owners applied when running as root.
    pub fn overlay_lower() -> ApplyOptions {
        ApplyOptions {
            whiteouts: WhiteoutMode::OverlayLower,
            chown: nix::unistd::geteuid().is_root(),
        }
    }
}

/// What happened while applying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub whiteouts: u64,
    /// Xattrs the filesystem refused with "not supported" or "not permitted": (entry, xattr name).
    /// Docker tolerates the same two errors.
    pub skipped_xattrs: Vec<(String, String)>,
    /// Device nodes not created because the caller may not (`mknod` refused without root, i.e. when
    /// [`ApplyOptions::chown`] is off), as rootless Docker skips them.
    pub skipped_devices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("opening the extraction root {root}: {source}")]
    Root { root: PathBuf, source: io::Error },
    #[error("reading the layer stream: {0}")]
    Read(#[source] io::Error),
    #[error("layer entry {entry} escapes the root")]
    EscapesRoot { entry: String },
    #[error("layer entry {entry}: hard link target {target} escapes the root")]
    LinkEscapesRoot { entry: String, target: String },
    #[error("layer entry {entry}: unsupported entry type {kind}")]
    UnsupportedType { entry: String, kind: String },
    #[error("layer entry {entry}: invalid whiteout")]
    InvalidWhiteout { entry: String },
    #[error("layer entry {entry}: invalid header: {reason}")]
    BadHeader { entry: String, reason: String },
    #[error("layer entry {entry}: {action}: {source}")]
    Entry {
        entry: String,
        action: String,
        source: io::Error,
    },
}

/// Applies the layer read from `layer` (a tar, plain or compressed: detected by magic bytes) to
/// the existing directory `root`, and reads the stream to its end (so that a caller hashing the stream
/// sees every byte).
///
/// # Errors
/// [`ApplyError::EscapesRoot`]/[`ApplyError::LinkEscapesRoot`] for paths leaving the root,
/// [`ApplyError::Entry`] naming the entry and the failed action, [`ApplyError::Read`] for a broken
/// stream. The directory is left partly written on error.
pub fn apply_layer<R: Read>(
    layer: R,
    root: &Path,
    options: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    let (_, reader) = decompressing_reader(layer).map_err(ApplyError::Read)?;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::Root {
        root: root.to_path_buf(),
        source: e.into(),
    })?;
    let mut applier = Applier {
        root: root_fd,
        options: *options,
        stats: ApplyStats::default(),
        written: HashSet::new(),
        dir_times: Vec::new(),
        copy_buffer: vec![0; 256 * 1024],
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ApplyError::Read)? {
        let entry = entry.map_err(ApplyError::Read)?;
        applier.apply_entry(entry)?;
    }
    applier.set_dir_times()?;
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(ApplyError::Read)?;
    Ok(applier.stats)
}

/// The path of an entry as components inside the root, or `None` when `..` climbs above the root.
/// A leading `/` and `.` components are dropped; `a/../b` becomes `b`. Also how `ADD` (kiln-fileop)
/// reads the names in a local archive.
pub fn clean_path(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut components: Vec<Vec<u8>> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                components.pop()?;
            }
            name => components.push(name.to_vec()),
        }
    }
    Some(components)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Metadata of an entry, from its header and PAX records.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Applier {
    root: OwnedFd,
    options: ApplyOptions,
    stats: ApplyStats,
    /// Paths written by this layer (merged mode only): an opaque marker keeps them.
    written: HashSet<Vec<u8>>,
    /// Directories whose mtime is set at the end.
    dir_times: Vec<(Vec<Vec<u8>>, TimeSpec)>,
    /// Reused for file contents: bigger than `io::copy`'s 8 KiB, so a compressed stream is decoded
    /// in fewer, larger steps.
    copy_buffer: Vec<u8>,
}

/// Copies `from` to its end into `to` through `buffer`.
fn copy_with(buffer: &mut [u8], from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        total += n as u64;
    }
}

/// A PAX time `secs[.fraction]`, possibly negative (`-1.5` is 1.5 s before the epoch). Also how
/// `ADD` (kiln-fileop) reads the PAX times in a local archive.
pub fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let negative = value.starts_with('-');
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos_text: String = frac.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: i64 = nanos_text.parse().ok()?;
    if negative && nanos > 0 {
        // timespec wants 0 <= tv_nsec < 1e9: borrow one second.
        Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos))
    } else {
        Some(TimeSpec::new(secs, nanos))
    }
}

impl Applier {
    fn entry_error(entry: &[u8], action: impl Into<String>) -> impl FnOnce(Errno) -> ApplyError {
        let entry = lossy(entry);
        let action = action.into();
        move |errno| ApplyError::Entry {
            entry,
            action,
            source: errno.into(),
        }
    }

    fn how() -> OpenHow {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    }

    /// Opens the directory `components` inside the root (an `O_PATH` descriptor), creating missing
    /// directories (mode 0755, owned by the caller) when `create` is set.
    fn open_dir(&self, components: &[Vec<u8>], create: bool) -> Result<OwnedFd, Errno> {
        let path = if components.is_empty() {
            b".".to_vec()
        } else {
            components.join(&b'/')
        };
        let mut attempts = 0;
        loop {
            match openat2(self.root.as_fd(), os(&path), Self::how()) {
                // The kernel asks to retry when a rename raced with an in-root resolution.
                Err(Errno::EAGAIN) if attempts < 8 => attempts += 1,
                Err(Errno::ENOENT) if create && !components.is_empty() => {
                    let (last, parent) = components.split_last().ok_or(Errno::ENOENT)?;
                    let parent_fd = self.open_dir(parent, true)?;
                    match mkdirat(parent_fd.as_fd(), os(last), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    // A dangling symlink in the way makes this fail again with ENOENT: give up then.
                    return openat2(self.root.as_fd(), os(&path), Self::how());
                }
                other => return other,
            }
        }
    }

    fn entry_meta(
        entry: &mut tar::Entry<'_, impl Read>,
        display: &[u8],
    ) -> Result<EntryMeta, ApplyError> {
        let bad = |reason: String| ApplyError::BadHeader {
            entry: lossy(display),
            reason,
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        let mut uid = header.uid().map_err(|e| bad(e.to_string()))?;
        let mut gid = header.gid().map_err(|e| bad(e.to_string()))?;
        let mtime = header.mtime().map_err(|e| bad(e.to_string()))?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(|e| bad(e.to_string()))? {
            for extension in extensions {
                let extension = extension.map_err(|e| bad(e.to_string()))?;
                let key = extension.key_bytes();
                let value = extension.value_bytes();
                let text = || std::str::from_utf8(value).unwrap_or("");
                match key {
                    b"uid" => {
                        uid = text()
                            .parse()
                            .map_err(|_| bad(format!("PAX uid {:?}", text())))?
                    }
                    b"gid" => {
                        gid = text()
                            .parse()
                            .map_err(|_| bad(format!("PAX gid {:?}", text())))?
                    }
                    b"mtime" => {
                        mtime = parse_pax_time(text())
                            .ok_or_else(|| bad(format!("PAX mtime {:?}", text())))?
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            if !name.starts_with(b"trusted.overlay.") {
                                xattrs.push((name.to_vec(), value.to_vec()));
                            }
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} out of range")))?;
        Ok(EntryMeta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn apply_entry(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), ApplyError> {
        let raw = entry.path_bytes().into_owned();
        let Some(components) = clean_path(&raw) else {
            return Err(ApplyError::EscapesRoot { entry: lossy(&raw) });
        };
        let Some((name, parent)) = components.split_last() else {
            // The root itself (`./`): its metadata belongs to whoever owns the extraction dir.
            return Ok(());
        };
        let entry_type = entry.header().entry_type();
        if entry_type == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.apply_whiteout(&raw, parent, name);
        }
        let meta = Self::entry_meta(&mut entry, &raw)?;
        let parent_fd = self.open_dir(parent, true).map_err(Self::entry_error(
            &raw,
            "opening its parent directory inside the root",
        ))?;
        let parent_fd = parent_fd.as_fd();

        let is_dir = entry_type == tar::EntryType::Directory;
        // Replace whatever is there, except a directory by a directory (their contents merge).
        match nix::sys::stat::fstatat(parent_fd, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let existing_dir =
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
                if !(existing_dir && is_dir) {
                    if entry_type == tar::EntryType::Link
                        && entry
                            .link_name_bytes()
                            .and_then(|t| clean_path(&t))
                            .as_ref()
                            == Some(&components)
                    {
                        return Ok(()); // a hard link to itself
                    }
                    remove_all_at(parent_fd, os(name))
                        .map_err(Self::entry_error(&raw, "removing the existing path"))?;
                }
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(Self::entry_error(&raw, "inspecting the existing path")(e)),
        }

        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = openat(
                    parent_fd,
                    os(name),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(Self::entry_error(&raw, "creating the file"))?;
                let mut file = File::from(fd);
                copy_with(&mut self.copy_buffer, &mut entry, &mut file).map_err(|source| {
                    ApplyError::Entry {
                        entry: lossy(&raw),
                        action: "writing its content".into(),
                        source,
                    }
                })?;
                self.set_fd_metadata(file.as_fd(), &raw, &meta)?;
                futimens(file.as_fd(), &meta.mtime, &meta.mtime)
                    .map_err(Self::entry_error(&raw, "setting the mtime"))?;
            }
            tar::EntryType::Directory => {
                match mkdirat(parent_fd, os(name), Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Self::entry_error(&raw, "creating the directory")(e)),
                }
                let fd = openat(
                    parent_fd,
                    os(name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(Self::entry_error(&raw, "opening the directory"))?;
                self.set_fd_metadata(fd.as_fd(), &raw, &meta)?;
                self.dir_times.push((components.clone(), meta.mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ApplyError::BadHeader {
                        entry: lossy(&raw),
                        reason: "symlink without a target".into(),
                    })?;
                symlinkat(os(&target), parent_fd, os(name))
                    .map_err(Self::entry_error(&raw, "creating the symlink"))?;
                self.set_at_metadata(parent_fd, name, &raw, &meta, false)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| ApplyError::BadHeader {
                        entry: lossy(&raw),
                        reason: "hard link without a target".into(),
                    })?;
                let target = clean_path(&target_raw)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ApplyError::LinkEscapesRoot {
                        entry: lossy(&raw),
                        target: lossy(&target_raw),
                    })?;
                let (target_name, target_parent) =
                    target
                        .split_last()
                        .ok_or_else(|| ApplyError::LinkEscapesRoot {
                            entry: lossy(&raw),
                            target: lossy(&target_raw),
                        })?;
                let action = format!("linking to {}", lossy(&target_raw));
                let target_dir = self
                    .open_dir(target_parent, false)
                    .map_err(Self::entry_error(&raw, action.clone()))?;
                linkat(
                    target_dir.as_fd(),
                    os(target_name),
                    parent_fd,
                    os(name),
                    AtFlags::empty(),
                )
                .map_err(Self::entry_error(&raw, action))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind = match entry_type {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let created = mknodat(
                    parent_fd,
                    os(name),
                    kind,
                    Mode::from_bits_truncate(0o600),
                    makedev(u64::from(major), u64::from(minor)),
                );
                match created {
                    Ok(()) => {}
                    Err(Errno::EPERM) if !self.options.chown && kind != SFlag::S_IFIFO => {
                        self.stats.skipped_devices.push(lossy(&raw));
                        return Ok(());
                    }
                    Err(e) => return Err(Self::entry_error(&raw, "creating the device node")(e)),
                }
                self.set_at_metadata(parent_fd, name, &raw, &meta, true)?;
            }
            other => {
                return Err(ApplyError::UnsupportedType {
                    entry: lossy(&raw),
                    kind: format!("{other:?}"),
                });
            }
        }
        if self.options.whiteouts == WhiteoutMode::Merged {
            self.written.insert(components.join(&b'/'));
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// Owner, then mode, then xattrs of an open file or directory.
    fn set_fd_metadata(
        &mut self,
        fd: BorrowedFd<'_>,
        raw: &[u8],
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        if self.options.chown {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(Self::entry_error(raw, "setting the owner"))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(Self::entry_error(raw, "setting the mode"))?;
        for (name, value) in &meta.xattrs {
            let result = xattrs::set_fd(fd, name, value);
            self.xattr_result(raw, name, result)?;
        }
        Ok(())
    }

    /// Owner, mode (unless a symlink), xattrs and mtime of the entry `name` of `dir`, never following it.
    fn set_at_metadata(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        raw: &[u8],
        meta: &EntryMeta,
        chmod: bool,
    ) -> Result<(), ApplyError> {
        if self.options.chown {
            fchownat(
                dir,
                os(name),
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(Self::entry_error(raw, "setting the owner"))?;
        }
        if chmod {
            // Only device nodes and fifos get here, which this applier just created: not a symlink.
            fchmodat(
                dir,
                os(name),
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(Self::entry_error(raw, "setting the mode"))?;
        }
        for (xattr, value) in &meta.xattrs {
            let result = xattrs::set_at(dir, name, xattr, value);
            self.xattr_result(raw, xattr, result)?;
        }
        utimensat(
            dir,
            os(name),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(Self::entry_error(raw, "setting the mtime"))
    }

    fn xattr_result(
        &mut self,
        raw: &[u8],
        name: &[u8],
        result: io::Result<()>,
    ) -> Result<(), ApplyError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                self.stats.skipped_xattrs.push((lossy(raw), lossy(name)));
                Ok(())
            }
            Err(source) => Err(ApplyError::Entry {
                entry: lossy(raw),
                action: format!("setting xattr {}", lossy(name)),
                source,
            }),
        }
    }

    fn apply_whiteout(
        &mut self,
        raw: &[u8],
        parent: &[Vec<u8>],
        name: &[u8],
    ) -> Result<(), ApplyError> {
        self.stats.whiteouts += 1;
        let mode = self.options.whiteouts;
        if name == OPAQUE_WHITEOUT.as_bytes() {
            let dir = self
                .open_dir(parent, mode == WhiteoutMode::OverlayLower)
                .map_err(Self::entry_error(raw, "opening the opaque directory"));
            let dir = match (dir, mode) {
                (Ok(dir), _) => dir,
                // Nothing below to hide in a merged tree without this directory.
                (Err(ApplyError::Entry { source, .. }), WhiteoutMode::Merged)
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Ok(());
                }
                (Err(e), _) => return Err(e),
            };
            let readable = openat(
                dir.as_fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(Self::entry_error(raw, "opening the opaque directory"))?;
            return match mode {
                WhiteoutMode::OverlayLower => {
                    xattrs::set_fd(readable.as_fd(), OVERLAY_OPAQUE_XATTR.as_bytes(), b"y").map_err(
                        |source| ApplyError::Entry {
                            entry: lossy(raw),
                            action: format!("setting {OVERLAY_OPAQUE_XATTR}"),
                            source,
                        },
                    )
                }
                WhiteoutMode::Merged => {
                    prune_unwritten(readable.as_fd(), &parent.join(&b'/'), &self.written)
                        .map_err(Self::entry_error(raw, "emptying the opaque directory"))
                }
            };
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, as Docker treats it.
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(ApplyError::InvalidWhiteout { entry: lossy(raw) });
        }
        match mode {
            WhiteoutMode::OverlayLower => {
                let dir = self.open_dir(parent, true).map_err(Self::entry_error(
                    raw,
                    "opening its parent directory inside the root",
                ))?;
                remove_all_at(dir.as_fd(), os(target))
                    .map_err(Self::entry_error(raw, "removing the whited-out path"))?;
                mknodat(
                    dir.as_fd(),
                    os(target),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    makedev(0, 0),
                )
                .map_err(Self::entry_error(
                    raw,
                    "creating the overlay whiteout device",
                ))
            }
            WhiteoutMode::Merged => match self.open_dir(parent, false) {
                Ok(dir) => remove_all_at(dir.as_fd(), os(target))
                    .map_err(Self::entry_error(raw, "removing the whited-out path")),
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(()),
                Err(e) => Err(Self::entry_error(
                    raw,
                    "opening its parent directory inside the root",
                )(e)),
            },
        }
    }

    /// Sets directory mtimes, deepest first, once nothing more is written inside them.
    fn set_dir_times(&mut self) -> Result<(), ApplyError> {
        let mut dir_times = std::mem::take(&mut self.dir_times);
        dir_times.sort_by_key(|(components, _)| std::cmp::Reverse(components.len()));
        for (components, mtime) in dir_times {
            let Some((name, parent)) = components.split_last() else {
                continue;
            };
            let raw = components.join(&b'/');
            let dir = match self.open_dir(parent, false) {
                Ok(dir) => dir,
                // Removed again by a later entry of the same layer.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(Self::entry_error(&raw, "setting the directory mtime")(e)),
            };
            match utimensat(
                dir.as_fd(),
                os(name),
                &mtime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(Self::entry_error(&raw, "setting the directory mtime")(e)),
            }
        }
        Ok(())
    }
}

/// Removes `name` in `dir` and, for a directory, everything below it; never follows symlinks. A
/// missing path is not an error.
fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let child = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    empty_dir(child.as_fd())?;
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

/// Removes everything below the directory `dir` (at archive path `prefix`) that this layer did not
/// write; directories this layer wrote are kept and pruned in turn, as Docker does for opaque dirs.
fn prune_unwritten(
    dir: BorrowedFd<'_>,
    prefix: &[u8],
    written: &HashSet<Vec<u8>>,
) -> Result<(), Errno> {
    let mut listing = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for child in listing.iter() {
        let child = child?;
        let name = child.file_name().to_bytes();
        if name != b"." && name != b".." {
            children.push(name.to_vec());
        }
    }
    for name in children {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            [prefix, b"/", &name].concat()
        };
        if !written.contains(&path) {
            remove_all_at(dir, os(&name))?;
            continue;
        }
        match openat(
            dir,
            os(&name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(child) => prune_unwritten(child.as_fd(), &path, written)?,
            // Not a directory (or a symlink): nothing below it.
            Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes every child of the directory `dir`.
fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut listing = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for child in listing.iter() {
        let child = child?;
        let name = child.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    for name in names {
        remove_all_at(dir, os(&name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_drops_leading_slash_and_dots_and_rejects_escapes() {
        let c = |s: &str| {
            clean_path(s.as_bytes()).map(|v| v.iter().map(|p| lossy(p)).collect::<Vec<_>>())
        };
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("./a/./b/").unwrap(), ["a", "b"]);
        assert_eq!(c("a/../b").unwrap(), ["b"]);
        assert_eq!(c("./").unwrap(), Vec::<String>::new());
        assert!(c("../../etc/passwd").is_none());
        assert!(c("a/../../b").is_none());
    }

    #[test]
    fn pax_times_with_fractions_parse() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("-0.5"), Some(TimeSpec::new(-1, 500_000_000)));
        assert_eq!(parse_pax_time("1.x"), None);
        assert_eq!(parse_pax_time("x"), None);
    }
}

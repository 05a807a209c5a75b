//! `ADD` of a local archive: detection by content (gzip, bzip2, xz and zstd magic bytes, then a
//! valid tar header — never by file name) and extraction into the destination directory.
//!
//! As in BuildKit, a file that is not a tar (after decompression) is copied as-is, a leading `/` in
//! entry names is dropped, entries keep their archive owner and mode unless `--chown` is given, and
//! an entry replaces whatever was at its path. As in moby's extractor (Go's `archive/tar` merges
//! PAX records into the header), PAX `uid`, `gid`, `mtime` (with its nanoseconds), `path`,
//! `linkpath`, `size` and `SCHILY.xattr.*` records, and GNU long-name/long-link records, override
//! the header fields; mtimes outside 1970..2262 become the epoch, as moby bounds them.
//!
//! Extraction resolves every path with `openat2(RESOLVE_BENEATH)` from the destination directory,
//! so an entry that climbs out with `../`, or that is written through a symlink leading outside the
//! destination (an absolute one, or a relative one that climbs out) — whether the archive planted
//! it or the image had it — is
//! refused with [`FileOpError::ArchiveEscape`] instead of being written. Extracting into the
//! image's root (`ADD rootfs.tar.xz /`, how base images are made) is the one case where absolute
//! symlinks such as `/var/run -> /run` are followed — inside the root, with
//! `openat2(RESOLVE_IN_ROOT)` — since there is nothing of the image outside the root to protect;
//! `../` names are refused there too, as BuildKit does.
//!
//! The extractor is not kiln-oci's `apply_layer` (they share [`kiln_image::magic`], decompression and
//! entry-name cleaning, and PAX time parsing):
//! ADD reads no whiteouts, resolves beneath the destination, makes implied parents root-owned, applies
//! `--chown` and fails on xattr and device errors; layer apply does whiteouts, opaque directories and
//! rootless skips. One function would need a switch for each difference, so there are two.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, linkat, symlinkat};

use kiln_image::magic::{TAR_BLOCK_SIZE, is_tar_header};
use kiln_oci::apply::{clean_path, parse_pax_time};
use kiln_oci::compress::decompressing_reader;

use crate::error::{FileOpError, Result, io_err, sys_err};
use crate::ops::remove_all_at;
use crate::root::{Root, display, file_type, set_metadata_at};

/// If source `rel` (symlinks followed, as BuildKit does) is a regular file holding a tar archive,
/// returns its real path in the source root.
pub(crate) fn detect(src: &Root, op: &str, rel: &str) -> Result<Option<String>> {
    let real = match src.resolve_follow(rel) {
        Ok(real) => real,
        Err(_) => return Ok(None),
    };
    let fd = match src.open_in(
        &real,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    let st = fstat(fd.as_fd()).map_err(|e| sys_err(op, "stat", rel, e))?;
    if file_type(&st) != SFlag::S_IFREG {
        return Ok(None);
    }
    let mut reader = match decompressing_reader(File::from(fd)) {
        Ok((_, reader)) => reader,
        Err(_) => return Ok(None),
    };
    let mut block = [0u8; TAR_BLOCK_SIZE];
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    Ok(if filled == block.len() && is_tar_header(&block) {
        Some(real)
    } else {
        None
    })
}

/// How paths below the extraction directory are resolved.
#[derive(Debug, Clone, Copy)]
enum Confinement {
    /// Extracting into a directory of the image: nothing may resolve outside it (`..` or a
    /// symlink that leaves it, absolute symlinks included).
    Beneath,
    /// Extracting into the image's root (`ADD rootfs.tar /`): absolute symlinks (`/var/run ->
    /// /run`) mean the image's own paths, so they are followed inside the root.
    InRoot,
}

impl Confinement {
    fn flags(self) -> ResolveFlag {
        let scope = match self {
            Confinement::Beneath => ResolveFlag::RESOLVE_BENEATH,
            Confinement::InRoot => ResolveFlag::RESOLVE_IN_ROOT,
        };
        scope | ResolveFlag::RESOLVE_NO_MAGICLINKS
    }
}

fn open_confined(
    confinement: Confinement,
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let path = if path.is_empty() {
        b".".as_slice()
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(confinement.flags());
    loop {
        match openat2(dir, OsStr::from_bytes(path), how) {
            Err(Errno::EAGAIN) => continue,
            other => return other,
        }
    }
}

/// State of one extraction.
struct Extractor<'a> {
    op: &'a str,
    archive: &'a str,
    dest_shown: String,
    dest: OwnedFd,
    confinement: Confinement,
    owner: Option<(u32, u32)>,
    /// Directories extracted, with their times, applied at the end so later entries do not bump them.
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
}

impl Extractor<'_> {
    fn escape(&self, entry: &[u8]) -> FileOpError {
        FileOpError::ArchiveEscape {
            op: self.op.to_string(),
            archive: self.archive.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            dest: self.dest_shown.clone(),
        }
    }

    fn fail(&self, entry: &[u8], reason: impl std::fmt::Display) -> FileOpError {
        FileOpError::Archive {
            op: self.op.to_string(),
            archive: self.archive.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.to_string(),
        }
    }

    /// Maps a resolution error: leaving the destination is an escape, the rest a failure.
    fn resolve_err(&self, entry: &[u8], errno: Errno) -> FileOpError {
        match errno {
            Errno::EXDEV | Errno::ELOOP => self.escape(entry),
            other => self.fail(entry, io::Error::from(other)),
        }
    }

    /// Opens (creating as needed, 0755 root-owned like BuildKit's implied parents) the directory
    /// holding an entry.
    fn parent_dir(&self, entry: &[u8], parents: &[Vec<u8>]) -> Result<OwnedFd> {
        let joined = parents.join(&b'/');
        match open_confined(
            self.confinement,
            self.dest.as_fd(),
            &joined,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.resolve_err(entry, e)),
        }
        let mut prefix: Vec<u8> = Vec::new();
        let mut current = open_confined(
            self.confinement,
            self.dest.as_fd(),
            b"",
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        )
        .map_err(|e| self.resolve_err(entry, e))?;
        for component in parents {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(component);
            current = match open_confined(
                self.confinement,
                self.dest.as_fd(),
                &prefix,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let name = OsStr::from_bytes(component);
                    match mkdirat(current.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.fail(entry, io::Error::from(e))),
                    }
                    set_metadata_at(
                        self.op,
                        current.as_fd(),
                        name,
                        &String::from_utf8_lossy(&prefix),
                        Some((0, 0)),
                        Some(0o755),
                        None,
                        false,
                    )?;
                    open_confined(
                        self.confinement,
                        self.dest.as_fd(),
                        &prefix,
                        OFlag::O_PATH | OFlag::O_DIRECTORY,
                    )
                    .map_err(|e| self.resolve_err(entry, e))?
                }
                Err(e) => return Err(self.resolve_err(entry, e)),
            };
        }
        Ok(current)
    }

    fn apply_xattrs(
        &self,
        entry: &[u8],
        fd: BorrowedFd<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        for (name, value) in xattrs {
            crate::xattr::set_xattr(fd, name, value)
                .map_err(|e| self.fail(entry, io::Error::from(e)))?;
        }
        Ok(())
    }

    fn extract<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        // A global PAX header describes no file (its name is no path) and, as in Go's reader,
        // applies to no entry; the tar crate folds per-entry ones into the entry that follows.
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        // The name and link target with PAX `path`/`linkpath` and GNU long-name/long-link records
        // already applied by the tar crate.
        let raw = entry.path_bytes().into_owned();
        let Some(mut parts) = clean_path(&raw) else {
            return Err(self.escape(&raw));
        };
        let Some(name) = parts.pop() else {
            return Ok(());
        };
        let header = entry.header().clone();
        let meta = EntryMeta::read(&mut entry, &header).map_err(|e| self.fail(&raw, e))?;
        let xattrs = meta.xattrs;
        // Go's archive/tar reads an empty numeric field as 0; so do we.
        let mode = header.mode().unwrap_or(0) & 0o7777;
        let owner = self.owner.unwrap_or((meta.uid, meta.gid));
        let mtime = meta.mtime;
        let parent = self.parent_dir(&raw, &parts)?;
        let name_os = OsStr::from_bytes(&name);
        let shown = String::from_utf8_lossy(&raw).into_owned();

        // Whatever is in the way goes, except a directory that a directory entry merges into.
        match fstatat(parent.as_fd(), name_os, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFDIR && kind.is_dir() => {}
            Ok(_) => remove_all_at(self.op, parent.as_fd(), name_os, &shown)?,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.fail(&raw, io::Error::from(e))),
        }

        match kind {
            tar::EntryType::Directory => {
                match mkdirat(parent.as_fd(), name_os, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.fail(&raw, io::Error::from(e))),
                }
                set_metadata_at(
                    self.op,
                    parent.as_fd(),
                    name_os,
                    &shown,
                    Some(owner),
                    Some(mode),
                    None,
                    false,
                )?;
                parts.push(name);
                self.dir_times.push((parts.join(&b'/'), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = openat(
                    parent.as_fd(),
                    name_os,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| self.fail(&raw, e))?;
                fchown(
                    file.as_fd(),
                    Some(Uid::from_raw(owner.0)),
                    Some(Gid::from_raw(owner.1)),
                )
                .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
                fchmod(file.as_fd(), Mode::from_bits_truncate(mode))
                    .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
                self.apply_xattrs(&raw, file.as_fd(), &xattrs)?;
                futimens(file.as_fd(), &mtime, &mtime)
                    .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.fail(&raw, "symlink without a target"))?;
                symlinkat(OsStr::from_bytes(&target), parent.as_fd(), name_os)
                    .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
                set_metadata_at(
                    self.op,
                    parent.as_fd(),
                    name_os,
                    &shown,
                    Some(owner),
                    None,
                    Some(mtime),
                    true,
                )?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.fail(&raw, "hardlink without a target"))?;
                let Some(mut target_parts) = clean_path(&target) else {
                    return Err(self.escape(&raw));
                };
                let Some(target_name) = target_parts.pop() else {
                    return Err(self.fail(&raw, "hardlink to the extraction directory itself"));
                };
                let target_parent = open_confined(
                    self.confinement,
                    self.dest.as_fd(),
                    &target_parts.join(&b'/'),
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                )
                .map_err(|e| self.resolve_err(&raw, e))?;
                linkat(
                    target_parent.as_fd(),
                    OsStr::from_bytes(&target_name),
                    parent.as_fd(),
                    name_os,
                    AtFlags::empty(),
                )
                .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                mknodat(
                    parent.as_fd(),
                    name_os,
                    flag,
                    Mode::from_bits_truncate(0o600),
                    libc::makedev(major, minor),
                )
                .map_err(|e| self.fail(&raw, io::Error::from(e)))?;
                set_metadata_at(
                    self.op,
                    parent.as_fd(),
                    name_os,
                    &shown,
                    Some(owner),
                    Some(mode),
                    Some(mtime),
                    false,
                )?;
            }
            other => {
                return Err(self.fail(
                    &raw,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        }
        Ok(())
    }
}

/// Owner, mtime and xattrs of an entry: its header, overridden by its PAX records.
#[derive(Debug)]
struct EntryMeta {
    uid: u32,
    gid: u32,
    /// Already bounded as moby does (see [`bound_time`]).
    mtime: TimeSpec,
    /// `SCHILY.xattr.*` records (how GNU tar and Docker store xattrs).
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    /// Reads `entry`'s metadata; `header` is its header. The tar crate already merges PAX `size`,
    /// `path` and `linkpath` (and `uid`/`gid` when they parse); `uid`, `gid` and `mtime` are read
    /// here so that a malformed record fails, as Go's reader does, instead of being skipped.
    /// `uname`/`gname` are ignored: Docker applies the numeric ids, never looks names up.
    fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        header: &tar::Header,
    ) -> std::result::Result<EntryMeta, String> {
        // Go's archive/tar reads an empty numeric field as 0; so do we. A GNU base-256 field holds
        // a negative mtime in two's complement, which the cast to i64 restores.
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut mtime = TimeSpec::new(header.mtime().unwrap_or(0) as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(|e| e.to_string())? {
            for extension in extensions {
                let extension = extension.map_err(|e| e.to_string())?;
                let key = extension.key_bytes();
                let value = extension.value_bytes();
                let text = String::from_utf8_lossy(value);
                let bad = || {
                    format!(
                        "invalid PAX record {}={text:?}",
                        String::from_utf8_lossy(key)
                    )
                };
                match key {
                    b"uid" => uid = text.parse().map_err(|_| bad())?,
                    b"gid" => gid = text.parse().map_err(|_| bad())?,
                    b"mtime" => mtime = parse_pax_time(&text).ok_or_else(bad)?,
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        // chown(2) takes 32-bit ids: the kernel would silently keep the low bits (Docker's
        // result, root for 2^32), so a larger id is refused instead.
        let id = |what: &str, value: u64| {
            u32::try_from(value).map_err(|_| format!("{what} {value} does not fit in 32 bits"))
        };
        Ok(EntryMeta {
            uid: id("uid", uid)?,
            gid: id("gid", gid)?,
            mtime: bound_time(mtime),
            xattrs,
        })
    }
}

/// The latest time moby's extractor keeps: `time.Unix(0, math.MaxInt64)`, 2262-04-11.
const MAX_TIME: TimeSpec = TimeSpec::new(i64::MAX / 1_000_000_000, i64::MAX % 1_000_000_000);

/// moby (`boundTime` in `archive.createTarFile`) replaces a time before the epoch or after
/// [`MAX_TIME`] with the epoch, for every entry kind; ADD matches it.
fn bound_time(time: TimeSpec) -> TimeSpec {
    if time < TimeSpec::new(0, 0) || time > MAX_TIME {
        TimeSpec::new(0, 0)
    } else {
        time
    }
}

/// Extracts source archive `archive_rel` (`shown` as the user named it) into destination directory
/// `dest_fd` (at `dest_rel`). `owner` (from `--chown`) replaces the archive's owners. Entries keep
/// the archive's times: as in BuildKit, an `mtime` override only applies to the created directory.
pub(crate) fn unpack(
    src: &Root,
    archive_rel: &str,
    shown: &str,
    dest_fd: OwnedFd,
    dest_rel: &str,
    op: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let fd = src
        .open_in(archive_rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW)
        .map_err(|e| sys_err(op, "open", shown, e))?;
    let (_, reader) = decompressing_reader(io::BufReader::with_capacity(64 * 1024, File::from(fd)))
        .map_err(|e| io_err(op, "read archive", shown, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        op,
        archive: shown,
        dest_shown: display(dest_rel),
        dest: dest_fd,
        // The destination root itself has nothing outside it to protect inside the image.
        confinement: if dest_rel.is_empty() {
            Confinement::InRoot
        } else {
            Confinement::Beneath
        },
        owner,
        dir_times: Vec::new(),
    };
    let entries = archive.entries().map_err(|e| extractor.fail(b"", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| extractor.fail(b"", e))?;
        extractor.extract(entry)?;
    }
    for (path, time) in std::mem::take(&mut extractor.dir_times).into_iter().rev() {
        let fd = open_confined(
            extractor.confinement,
            extractor.dest.as_fd(),
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| extractor.resolve_err(&path, e))?;
        futimens(fd.as_fd(), &time, &time)
            .map_err(|e| extractor.fail(&path, io::Error::from(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ADD reads entry names with kiln-oci's rule; these are the cases ADD depends on.
    #[test]
    fn entry_names_are_cleaned_and_escapes_caught() {
        assert_eq!(
            clean_path(b"/abs/file"),
            Some(vec![b"abs".to_vec(), b"file".to_vec()])
        );
        assert_eq!(clean_path(b"./a/../b"), Some(vec![b"b".to_vec()]));
        assert_eq!(clean_path(b"../x"), None);
        assert_eq!(clean_path(b"a/../../x"), None);
    }

    #[test]
    fn times_outside_1970_to_2262_become_the_epoch() {
        let epoch = TimeSpec::new(0, 0);
        assert_eq!(bound_time(TimeSpec::new(5, 7)), TimeSpec::new(5, 7));
        assert_eq!(bound_time(epoch), epoch);
        assert_eq!(bound_time(MAX_TIME), MAX_TIME);
        assert_eq!(
            bound_time(TimeSpec::new(MAX_TIME.tv_sec(), MAX_TIME.tv_nsec() + 1)),
            epoch
        );
        assert_eq!(bound_time(TimeSpec::new(-1, 999_999_999)), epoch);
        assert_eq!(
            bound_time(TimeSpec::new(8_589_934_600, 1)),
            TimeSpec::new(8_589_934_600, 1)
        );
    }

    #[test]
    fn zero_block_is_not_a_tar_header() {
        assert!(!is_tar_header(&[0u8; 512]));
        let mut header = tar::Header::new_gnu();
        header.set_path("x").unwrap();
        header.set_size(0);
        header.set_cksum();
        assert!(is_tar_header(header.as_bytes()));
    }
}

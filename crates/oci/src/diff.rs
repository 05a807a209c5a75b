//! Layer diff: a directory → a layer tar stream.
//!
//! Two inputs: a plain directory (every entry becomes part of the layer, e.g. the result of a file op)
//! and an overlayfs upper directory, whose whiteouts (char device 0:0) become `.wh.<name>` entries and
//! whose opaque directories (`trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry right after their
//! own entry. The stream is deterministic: the walk visits each directory's children in byte order of
//! their names (depth first, so a parent always precedes its children — the order of Go's
//! `filepath.Walk` that Docker and BuildKit use), ids are numeric, mtimes whole seconds (optionally
//! clamped to `SOURCE_DATE_EPOCH`), and the header bytes are fixed by [`crate::tar_writer`].
//!
//! Xattrs are kept except `trusted.overlay.*` (overlayfs bookkeeping) and `security.selinux` (a host
//! label, not image content). Sockets are skipped, as Docker does: tar cannot represent them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::tar_writer::{EntryKind, TarEntry, TarWriter};
use crate::xattrs;

/// The name prefix of a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the entry that marks its directory opaque.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs sets on an opaque directory.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What kind of directory the diff reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffSource {
    /// Every entry is new content (a layer made by a file op, or a whole root filesystem).
    Plain,
    /// An overlayfs upper directory: whiteouts and opaque directories become tar whiteouts.
    OverlayUpper,
}

/// How to write a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffOptions {
    pub source: DiffSource,
    /// When set, mtimes later than this (seconds since the epoch) are clamped to it.
    pub source_date_epoch: Option<i64>,
}

impl DiffOptions {
    /// Options for a plain directory, mtimes as they are.
    pub fn plain() -> DiffOptions {
        DiffOptions {
            source: DiffSource::Plain,
            source_date_epoch: None,
        }
    }

    /// Options for an overlay upper directory, mtimes as they are.
    pub fn overlay_upper() -> DiffOptions {
        DiffOptions {
            source: DiffSource::OverlayUpper,
            source_date_epoch: None,
        }
    }
}

/// Counts of what a diff wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub hardlinks: u64,
    pub skipped_sockets: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("reading {path} for the layer: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing layer entry {entry}: {source}")]
    Write { entry: String, source: io::Error },
    #[error(
        "layer entry {entry}: overlay redirect/metacopy xattr {xattr} cannot be represented in a \
         layer tar (mount the overlay with redirect_dir=off,metacopy=off)"
    )]
    UnsupportedOverlayFeature { entry: String, xattr: String },
}

/// Writes the layer tar of the directory `root` to `out`, ending the archive.
///
/// # Errors
/// [`DiffError::Read`] for a file that cannot be read (or that changed size while being read),
/// [`DiffError::Write`] when `out` fails, [`DiffError::UnsupportedOverlayFeature`] for an upper dir that
/// uses overlay redirects or metacopy.
pub fn write_layer_tar<W: Write>(
    root: &Path,
    options: &DiffOptions,
    out: W,
) -> Result<(W, DiffStats), DiffError> {
    let mut walker = Walker {
        options: *options,
        tar: TarWriter::new(out),
        first_paths_by_inode: HashMap::new(),
        stats: DiffStats::default(),
    };
    walker.walk_dir(root, b"")?;
    let out = walker.tar.finish().map_err(|source| DiffError::Write {
        entry: "(end of archive)".into(),
        source,
    })?;
    Ok((out, walker.stats))
}

struct Walker<W: Write> {
    options: DiffOptions,
    tar: TarWriter<W>,
    /// (dev, ino) → the first archive path of a file with several links.
    first_paths_by_inode: HashMap<(u64, u64), Vec<u8>>,
    stats: DiffStats,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> DiffError + '_ {
    move |source| DiffError::Read {
        path: path.to_path_buf(),
        source,
    }
}

impl<W: Write> Walker<W> {
    /// Emits the children of `dir` (whose archive path prefix is `prefix`, empty or ending in `/`).
    fn walk_dir(&mut self, dir: &Path, prefix: &[u8]) -> Result<(), DiffError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(read_err(dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut archive_path = prefix.to_vec();
            archive_path.extend_from_slice(name.as_bytes());
            self.emit(&path, archive_path)?;
        }
        Ok(())
    }

    fn clamp(&self, mtime: i64) -> i64 {
        match self.options.source_date_epoch {
            Some(epoch) if mtime > epoch => epoch,
            _ => mtime,
        }
    }

    fn append(
        &mut self,
        entry: &TarEntry,
        content: Option<&mut dyn io::Read>,
    ) -> Result<(), DiffError> {
        self.tar
            .append(entry, content)
            .map_err(|source| DiffError::Write {
                entry: String::from_utf8_lossy(&entry.path).into_owned(),
                source,
            })?;
        self.stats.entries += 1;
        Ok(())
    }

    /// The xattrs to record for `path`: all but overlay bookkeeping and SELinux labels.
    fn xattrs_of(&self, path: &Path, archive_path: &[u8]) -> Result<xattrs::XattrList, DiffError> {
        let all = xattrs::list(path).map_err(read_err(path))?;
        let mut kept = Vec::new();
        for (name, value) in all {
            if let Some(rest) = name.strip_prefix(b"trusted.overlay.") {
                if self.options.source == DiffSource::OverlayUpper
                    && matches!(rest, b"redirect" | b"metacopy")
                {
                    return Err(DiffError::UnsupportedOverlayFeature {
                        entry: String::from_utf8_lossy(archive_path).into_owned(),
                        xattr: String::from_utf8_lossy(&name).into_owned(),
                    });
                }
                continue;
            }
            if name == b"security.selinux" {
                continue;
            }
            kept.push((name, value));
        }
        Ok(kept)
    }

    fn emit(&mut self, path: &Path, archive_path: Vec<u8>) -> Result<(), DiffError> {
        let meta = fs::symlink_metadata(path).map_err(read_err(path))?;
        let file_type = meta.file_type();
        let overlay = self.options.source == DiffSource::OverlayUpper;

        if overlay && file_type.is_char_device() && meta.rdev() == 0 {
            return self.emit_whiteout(&archive_path, &meta);
        }
        if file_type.is_socket() {
            self.stats.skipped_sockets += 1;
            return Ok(());
        }

        let mut entry = TarEntry::new(archive_path, EntryKind::File);
        entry.mode = meta.mode() & 0o7777;
        entry.uid = u64::from(meta.uid());
        entry.gid = u64::from(meta.gid());
        entry.mtime = self.clamp(meta.mtime());
        entry.xattrs = self.xattrs_of(path, &entry.path)?.into_iter().collect();

        if file_type.is_dir() {
            entry.kind = EntryKind::Directory;
            entry.path.push(b'/');
            self.append(&entry, None)?;
            let opaque = overlay
                && xattrs::get(path, OVERLAY_OPAQUE_XATTR.as_bytes())
                    .map_err(read_err(path))?
                    .is_some_and(|v| v == b"y");
            if opaque {
                // Docker's form: a 0-byte file with the directory's permissions and owner, mtime 0.
                let mut marker = TarEntry::new(
                    [&entry.path[..], OPAQUE_WHITEOUT.as_bytes()].concat(),
                    EntryKind::File,
                );
                marker.mode = entry.mode & 0o777;
                marker.uid = entry.uid;
                marker.gid = entry.gid;
                self.append(&marker, None)?;
                self.stats.whiteouts += 1;
            }
            let prefix = entry.path.clone();
            return self.walk_dir(path, &prefix);
        }

        if !file_type.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.first_paths_by_inode.get(&key) {
                entry.kind = EntryKind::HardLink;
                entry.link_target = first.clone();
                self.stats.hardlinks += 1;
                return self.append(&entry, None);
            }
            self.first_paths_by_inode.insert(key, entry.path.clone());
        }

        if file_type.is_file() {
            entry.size = meta.len();
            let mut file = File::open(path).map_err(read_err(path))?;
            // A read error of the file surfaces as a write error of the entry; name the source file.
            return self
                .tar
                .append(&entry, Some(&mut file))
                .map_err(|source| DiffError::Read {
                    path: path.to_path_buf(),
                    source,
                })
                .map(|()| self.stats.entries += 1);
        }
        if file_type.is_symlink() {
            entry.kind = EntryKind::Symlink;
            entry.link_target = fs::read_link(path)
                .map_err(read_err(path))?
                .into_os_string()
                .into_encoded_bytes();
        } else if file_type.is_char_device() || file_type.is_block_device() {
            entry.kind = if file_type.is_char_device() {
                EntryKind::CharDevice
            } else {
                EntryKind::BlockDevice
            };
            let rdev = meta.rdev();
            entry.device = (libc::major(rdev), libc::minor(rdev));
        } else if file_type.is_fifo() {
            entry.kind = EntryKind::Fifo;
        }
        self.append(&entry, None)
    }

    /// A `.wh.<name>` entry for an overlay whiteout device, in Docker's form (0-byte file, mode 0600).
    fn emit_whiteout(&mut self, archive_path: &[u8], meta: &fs::Metadata) -> Result<(), DiffError> {
        let (dir, name) = match archive_path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&archive_path[..=i], &archive_path[i + 1..]),
            None => (&b""[..], archive_path),
        };
        let path = [dir, WHITEOUT_PREFIX.as_bytes(), name].concat();
        let mut entry = TarEntry::new(path, EntryKind::File);
        entry.mode = 0o600;
        entry.uid = u64::from(meta.uid());
        entry.gid = u64::from(meta.gid());
        entry.mtime = self.clamp(meta.mtime());
        self.append(&entry, None)?;
        self.stats.whiteouts += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn entries_are_depth_first_in_byte_order_with_directories_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/z"), "z").unwrap();
        fs::write(dir.path().join("a-c"), "c").unwrap();
        fs::write(dir.path().join("B"), "B").unwrap();
        let (tar, stats) = write_layer_tar(dir.path(), &DiffOptions::plain(), Vec::new()).unwrap();
        assert_eq!(entry_names(&tar), ["B", "a/", "a/b/", "a/b/z", "a-c"]);
        assert_eq!(stats.entries, 5);
    }

    #[test]
    fn source_date_epoch_clamps_only_later_mtimes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("new"), "n").unwrap();
        fs::write(dir.path().join("old"), "o").unwrap();
        let old = File::options()
            .write(true)
            .open(dir.path().join("old"))
            .unwrap();
        old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(100))
            .unwrap();
        let options = DiffOptions {
            source: DiffSource::Plain,
            source_date_epoch: Some(1000),
        };
        let (tar, _) = write_layer_tar(dir.path(), &options, Vec::new()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mtimes: Vec<u64> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().mtime().unwrap())
            .collect();
        assert_eq!(mtimes, [1000, 100]);
    }
}

//! A build context read from stdin (`kiln build - < input`), as Docker reads it: if the stream is
//! an archive — gzip, bzip2, xz or zstd compressed, or a plain tar — it is unpacked and becomes
//! the context; anything else is the Dockerfile itself, with an empty context.
//!
//! Unpacking is streamed into a directory the caller provides (empty, e.g. under the store's
//! `tmp/`). Entries are confined to it: a path with `..` is refused, absolute paths are made
//! relative, and nothing is written through a symlink that leads outside (the `tar` crate
//! checks each parent after canonicalising it). Device nodes and FIFOs have no place in a
//! context and are refused rather than silently turned into regular files.

use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use kiln_image::magic::{TAR_BLOCK_SIZE, is_tar_header};
use thiserror::Error;

/// The largest Dockerfile accepted on stdin (it is held in memory).
pub const MAX_STDIN_DOCKERFILE: u64 = 16 * 1024 * 1024;

/// Why stdin could not be used as a context.
#[derive(Debug, Error)]
pub enum StdinContextError {
    /// Reading the stream failed.
    #[error("read build context from stdin: {0}")]
    Read(#[source] io::Error),
    /// The archive is corrupt or an entry could not be written.
    #[error("unpack build context from stdin: {context}: {source}")]
    Unpack {
        /// Which entry or step.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry tries to leave the context directory.
    #[error("unpack build context from stdin: entry {path:?} points outside the context")]
    Escape {
        /// The entry's path as stored.
        path: String,
    },
    /// An entry of a type a context cannot hold.
    #[error(
        "unpack build context from stdin: entry {path:?} is a {kind}, which a build context cannot contain"
    )]
    UnsupportedEntry {
        /// The entry's path as stored.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The stream is not an archive and too large to be a Dockerfile.
    #[error("Dockerfile from stdin is larger than {MAX_STDIN_DOCKERFILE} bytes")]
    DockerfileTooLarge,
}

/// What stdin turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinContext {
    /// An archive, unpacked into the destination directory.
    Archive {
        /// The compression it came with.
        compression: Compression,
        /// Number of entries unpacked.
        entries: u64,
    },
    /// A Dockerfile (the context is empty).
    Dockerfile(Vec<u8>),
}

/// Compression of an archive on stdin, told by its first bytes with kiln-image's detector (Docker's
/// `DetectCompression` magic numbers), the one every archive reader in kiln uses.
pub use kiln_image::StreamCompression as Compression;

/// Reads up to `limit` bytes (fewer only at end of stream).
fn read_prefix(input: &mut impl Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut prefix = Vec::with_capacity(limit);
    input.take(limit as u64).read_to_end(&mut prefix)?;
    Ok(prefix)
}

/// Reads stdin (or any stream) as Docker does for `build -`: an archive is unpacked into
/// `dest`, anything else is returned as the Dockerfile.
///
/// # Errors
/// [`StdinContextError`] on read errors, corrupt archives, entries escaping `dest`, device or
/// FIFO entries, or a non-archive larger than [`MAX_STDIN_DOCKERFILE`].
pub fn read_stdin_context(
    mut input: impl Read,
    dest: &Path,
) -> Result<StdinContext, StdinContextError> {
    let prefix = read_prefix(&mut input, TAR_BLOCK_SIZE).map_err(StdinContextError::Read)?;
    let compression = Compression::detect(&prefix);
    let stream = Cursor::new(prefix).chain(input);
    let entries = match compression {
        Compression::Gzip => unpack(flate2::read::MultiGzDecoder::new(stream), dest)?,
        Compression::Bzip2 => unpack(bzip2::read::MultiBzDecoder::new(stream), dest)?,
        Compression::Xz => unpack(liblzma::read::XzDecoder::new_multi_decoder(stream), dest)?,
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(stream).map_err(StdinContextError::Read)?;
            unpack(decoder, dest)?
        }
        Compression::Uncompressed => {
            if !is_tar_header(stream.get_ref().0.get_ref()) {
                let mut dockerfile = Vec::new();
                stream
                    .take(MAX_STDIN_DOCKERFILE + 1)
                    .read_to_end(&mut dockerfile)
                    .map_err(StdinContextError::Read)?;
                if dockerfile.len() as u64 > MAX_STDIN_DOCKERFILE {
                    return Err(StdinContextError::DockerfileTooLarge);
                }
                return Ok(StdinContext::Dockerfile(dockerfile));
            }
            unpack(stream, dest)?
        }
    };
    Ok(StdinContext::Archive {
        compression,
        entries,
    })
}

/// Unpacks a tar stream into `dest`; returns the number of entries.
fn unpack(stream: impl Read, dest: &Path) -> Result<u64, StdinContextError> {
    let unpack_error =
        |context: String| move |source| StdinContextError::Unpack { context, source };
    let mut archive = tar::Archive::new(stream);
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    archive.set_preserve_ownerships(is_root);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Directories whose mode would stop us writing into them get it applied at the end.
    let mut deferred_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut count = 0;
    for entry in archive
        .entries()
        .map_err(unpack_error("read archive".to_owned()))?
    {
        let mut entry = entry.map_err(unpack_error("read archive entry".to_owned()))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let refused = match kind {
            tar::EntryType::Char => Some("character device"),
            tar::EntryType::Block => Some("block device"),
            tar::EntryType::Fifo => Some("FIFO"),
            _ => None,
        };
        if let Some(kind) = refused {
            return Err(StdinContextError::UnsupportedEntry {
                path: raw_path,
                kind,
            });
        }
        let path = entry
            .path()
            .map_err(unpack_error(format!("entry {raw_path:?}")))?
            .into_owned();
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(StdinContextError::Escape { path: raw_path });
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(unpack_error(format!("entry {raw_path:?}")))?;
        if !unpacked {
            return Err(StdinContextError::Escape { path: raw_path });
        }
        if kind == tar::EntryType::Directory {
            let mode = entry
                .header()
                .mode()
                .map_err(unpack_error(format!("mode of {raw_path:?}")))?;
            if !is_root && mode & 0o700 != 0o700 {
                let on_disk = dest.join(relative(&path));
                fs::set_permissions(&on_disk, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(unpack_error(format!("chmod {}", on_disk.display())))?;
                deferred_modes.push((on_disk, mode & 0o7777));
            }
        }
        count += 1;
    }
    for (dir, mode) in deferred_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(unpack_error(format!("chmod {}", dir.display())))?;
    }
    Ok(count)
}

/// An archive path without its root or `.` components.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A header with every numeric field set, as real archivers write them.
    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = header(tar::EntryType::Regular, data.len() as u64, 0o644);
            builder
                .append_data(&mut header, path, *data)
                .expect("append");
        }
        builder.into_inner().expect("finish")
    }

    #[test]
    fn plain_text_is_a_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = read_stdin_context(&b"FROM scratch\n"[..], dir.path()).expect("read");
        assert_eq!(got, StdinContext::Dockerfile(b"FROM scratch\n".to_vec()));
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn plain_and_gzip_tars_are_unpacked() {
        let archive = tar_with(&[("Dockerfile", b"FROM scratch\n"), ("src/a", b"a")]);
        let dir = tempfile::tempdir().expect("tempdir");
        let got = read_stdin_context(&archive[..], dir.path()).expect("tar");
        assert!(matches!(
            got,
            StdinContext::Archive {
                compression: Compression::Uncompressed,
                entries: 2
            }
        ));
        assert_eq!(fs::read(dir.path().join("src/a")).expect("read"), b"a");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let dir = tempfile::tempdir().expect("tempdir");
        let got = read_stdin_context(&gz[..], dir.path()).expect("tar.gz");
        assert!(matches!(
            got,
            StdinContext::Archive {
                compression: Compression::Gzip,
                ..
            }
        ));
        assert_eq!(
            fs::read(dir.path().join("Dockerfile")).expect("read"),
            b"FROM scratch\n"
        );
    }

    #[test]
    fn zstd_tar_is_unpacked() {
        let archive = tar_with(&[("f", b"zstd")]);
        let compressed = zstd::stream::encode_all(&archive[..], 1).expect("zstd");
        let dir = tempfile::tempdir().expect("tempdir");
        let got = read_stdin_context(&compressed[..], dir.path()).expect("tar.zst");
        assert!(matches!(
            got,
            StdinContext::Archive {
                compression: Compression::Zstd,
                ..
            }
        ));
        assert_eq!(fs::read(dir.path().join("f")).expect("read"), b"zstd");
    }

    #[test]
    fn parent_dir_entries_are_refused() {
        // The tar crate's builder refuses `..`, so write the name into the header by hand.
        let mut header = header(tar::EntryType::Regular, 1, 0o644);
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        let mut archive = header.as_bytes().to_vec();
        archive.extend_from_slice(b"x");
        archive.resize(archive.len() + 511 + 1024, 0);
        let outer = tempfile::tempdir().expect("tempdir");
        let dest = outer.path().join("ctx");
        fs::create_dir(&dest).expect("mkdir");
        let err = read_stdin_context(&archive[..], &dest).expect_err("escape");
        assert!(matches!(err, StdinContextError::Escape { .. }), "{err}");
        assert!(!outer.path().join("escape").exists());
    }

    #[test]
    fn symlink_escape_is_refused() {
        let outer = tempfile::tempdir().expect("tempdir");
        let dest = outer.path().join("ctx");
        fs::create_dir(&dest).expect("mkdir");
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = header(tar::EntryType::Symlink, 0, 0o777);
        builder
            .append_link(&mut link, "out", outer.path())
            .expect("link");
        let mut file = header(tar::EntryType::Regular, 1, 0o644);
        builder
            .append_data(&mut file, "out/pwned", &b"x"[..])
            .expect("file");
        let archive = builder.into_inner().expect("finish");
        let err = read_stdin_context(&archive[..], &dest).expect_err("escape through symlink");
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(!outer.path().join("pwned").exists());
    }

    #[test]
    fn device_entries_are_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = header(tar::EntryType::Char, 0, 0o644);
        builder
            .append_data(&mut header, "null", &b""[..])
            .expect("append");
        let archive = builder.into_inner().expect("finish");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_stdin_context(&archive[..], dir.path()).expect_err("device");
        assert!(
            matches!(err, StdinContextError::UnsupportedEntry { .. }),
            "{err}"
        );
    }

    #[test]
    fn tar_header_detection() {
        let archive = tar_with(&[("x", b"1")]);
        assert!(is_tar_header(&archive[..512]));
        assert!(!is_tar_header(&[0u8; 512]));
        let mut corrupt = archive[..512].to_vec();
        corrupt[0] ^= 1;
        assert!(!is_tar_header(&corrupt));
    }
}

//! Content-addressed blobs: ingest (hash while writing, commit only on a digest match) and verified
//! reads.
//!
//! A blob becomes visible in `blobs/sha256/` only through [`BlobWriter::commit`]: the temp file is
//! fsynced, its digest compared with the expected one, and only then renamed into place and the
//! directory fsynced — so a crash or a full disk never leaves a partial blob under its digest.
//! Readers never trust the file: [`BlobReader`] re-hashes what it hands out and fails at EOF if the
//! bytes (or their count) are not what the digest promises, naming the file so it can be removed.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_image::Digest;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest as _, Sha256};

use crate::Store;
use crate::db::{to_i64, to_u64, unix_now_ns};
use crate::error::{Result, StoreError, io_err};

/// Size of the writer's buffer: callers often write in small pieces (tar headers, decoder output).
const WRITE_BUFFER: usize = 256 * 1024;

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's sha256 digest.
    pub digest: Digest,
    /// The blob's length in bytes.
    pub size: u64,
}

/// Writes a new blob into the store; see [`Store::ingest`]. Dropping it without committing removes
/// the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    temp_path: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    size: u64,
}

impl Store {
    /// Starts writing a blob. Write the content, then [`BlobWriter::commit`] it.
    ///
    /// # Errors
    /// [`StoreError::Io`] (or [`StoreError::DiskFull`]) when the temp file cannot be created.
    pub fn ingest(&self) -> Result<BlobWriter> {
        let temp_path = self.session().new_entry_path("ingest");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(io_err("create ingest file", &temp_path))?;
        Ok(BlobWriter {
            store: self.clone(),
            temp_path,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Streams everything `source` yields into a new blob and commits it against `expected`.
    ///
    /// # Errors
    /// [`StoreError::ReadSource`] when `source` fails; otherwise as [`Store::ingest`] and
    /// [`BlobWriter::commit`]. Nothing is stored on error.
    pub fn ingest_from(
        &self,
        source: &mut impl Read,
        expected: Option<&Digest>,
    ) -> Result<BlobInfo> {
        let mut writer = self.ingest()?;
        let mut buffer = vec![0u8; WRITE_BUFFER];
        loop {
            let n = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::ReadSource(e)),
            };
            writer
                .write_all(&buffer[..n])
                .map_err(|e| store_error_from_io(e, "write ingest file", &writer.temp_path))?;
        }
        writer.commit(expected)
    }

    /// Where the blob `digest` lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout().blob_path(digest)
    }

    /// Whether the blob `digest` is present (not verified; reading it verifies).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// The size of the blob `digest` as recorded at commit (or on disk, for a blob the database
    /// does not know).
    ///
    /// # Errors
    /// [`StoreError::BlobNotFound`] when the blob is absent, [`StoreError::Db`] on a database error.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        if let Some(size) = self.recorded_blob_size(digest)? {
            if self.has_blob(digest) {
                return Ok(size);
            }
            return Err(self.blob_not_found(digest));
        }
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => Err(self.blob_not_found(digest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.blob_not_found(digest)),
            Err(e) => Err(StoreError::io("inspect blob", &path, e)),
        }
    }

    /// Opens the blob `digest` for a verified read.
    ///
    /// # Errors
    /// [`StoreError::BlobNotFound`] when absent; [`StoreError::BlobCorrupted`] when the file's size
    /// already differs from the recorded one; [`StoreError::Io`] when it cannot be opened.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.blob_not_found(digest));
            }
            Err(e) => return Err(StoreError::io("open blob", &path, e)),
        };
        let on_disk = file
            .metadata()
            .map_err(io_err("inspect blob", &path))?
            .len();
        let expected_size = match self.recorded_blob_size(digest)? {
            Some(recorded) if recorded != on_disk => {
                return Err(StoreError::BlobCorrupted {
                    digest: digest.clone(),
                    path,
                    reason: format!("{on_disk} bytes on disk, {recorded} bytes recorded"),
                });
            }
            Some(recorded) => recorded,
            None => on_disk,
        };
        Ok(BlobReader {
            file,
            path,
            digest: digest.clone(),
            expected_size,
            read: 0,
            hasher: Sha256::new(),
            verified: false,
        })
    }

    /// Reads the whole blob and checks it against its digest and recorded size.
    ///
    /// # Errors
    /// [`StoreError::BlobCorrupted`] naming the file on a mismatch; as [`Store::open_blob`] otherwise.
    pub fn verify_blob(&self, digest: &Digest) -> Result<BlobInfo> {
        let mut reader = self.open_blob(digest)?;
        let path = reader.path().to_path_buf();
        let size = io::copy(&mut reader, &mut io::sink())
            .map_err(|e| store_error_from_io(e, "read blob", &path))?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size,
        })
    }

    /// Reads a small blob (a manifest, a config) into memory, verified.
    ///
    /// # Errors
    /// [`StoreError::BlobTooLarge`] when it is bigger than `limit` bytes; as
    /// [`Store::verify_blob`] otherwise.
    pub fn read_blob_to_vec(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let mut reader = self.open_blob(digest)?;
        if reader.size() > limit {
            return Err(StoreError::BlobTooLarge {
                digest: digest.clone(),
                size: reader.size(),
                limit,
            });
        }
        let path = reader.path().to_path_buf();
        let mut bytes = Vec::with_capacity(usize::try_from(reader.size()).unwrap_or(0));
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| store_error_from_io(e, "read blob", &path))?;
        Ok(bytes)
    }

    fn recorded_blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.db().read("look up blob size", |conn| {
            let size: Option<i64> = conn
                .query_row(
                    "SELECT size FROM blobs WHERE digest = ?1",
                    params![digest.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            size.map(|s| to_u64(s, "blob size")).transpose()
        })
    }

    fn blob_not_found(&self, digest: &Digest) -> StoreError {
        StoreError::BlobNotFound {
            digest: digest.clone(),
            path: self.blob_path(digest),
        }
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finishes the blob: flushes and fsyncs it, checks its digest against `expected` (when given),
    /// and moves it into `blobs/sha256/`. Committing content that is already present is fine.
    ///
    /// # Errors
    /// [`StoreError::DigestMismatch`] when the content is not `expected` (nothing is stored);
    /// [`StoreError::DiskFull`] / [`StoreError::Io`] when writing, syncing or renaming fails (the
    /// temp file is removed and nothing is stored); [`StoreError::Db`] when the blob cannot be
    /// recorded (the blob itself is then present but unrecorded, which reads tolerate).
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<BlobInfo> {
        let buffered = self.file.take().ok_or_else(|| self.writer_gone())?;
        let file = buffered
            .into_inner()
            .map_err(|e| StoreError::io("write ingest file", &self.temp_path, e.into_error()))?;
        let digest = Digest::from_hasher(self.hasher.clone());
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
                size: self.size,
            });
        }
        // Blobs are immutable; read-only files guard against accidental edits in place.
        file.set_permissions(Permissions::from_mode(0o444))
            .map_err(io_err("set permissions of ingest file", &self.temp_path))?;
        file.sync_all()
            .map_err(io_err("sync ingest file", &self.temp_path))?;
        drop(file);

        let blobs_dir = self.store.layout().blobs_dir();
        let final_path = blobs_dir.join(digest.hex());
        // Renaming over an existing copy is atomic and harmless (same bytes, verified just now), and
        // it repairs a copy that was corrupted on disk.
        fs::rename(&self.temp_path, &final_path).map_err(io_err("commit blob to", &final_path))?;
        sync_dir(&blobs_dir)?;

        let size = self.size;
        self.store.db().write("record blob", |tx| {
            tx.execute(
                "INSERT INTO blobs (digest, size, created_ns) VALUES (?1, ?2, ?3)
                 ON CONFLICT (digest) DO UPDATE SET size = excluded.size",
                params![digest.to_string(), to_i64(size), unix_now_ns()],
            )?;
            Ok(())
        })?;
        Ok(BlobInfo { digest, size })
    }

    fn writer_gone(&self) -> StoreError {
        StoreError::io(
            "write ingest file",
            &self.temp_path,
            io::Error::other("the writer failed earlier and was closed"),
        )
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other(self.writer_gone()));
        };
        let written = file.write(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                StoreError::io("write ingest file", &self.temp_path, e),
            )
        })?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    StoreError::io("write ingest file", &self.temp_path, e),
                )
            }),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Either never committed, or commit moved the file away (then this finds nothing).
        drop(self.file.take());
        match fs::remove_file(&self.temp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.temp_path.display(), error = %e, "could not remove abandoned ingest file");
            }
        }
    }
}

/// Reads a blob and verifies it: at EOF, the bytes read must hash to the blob's digest and number
/// exactly its recorded size, or the read fails with an `InvalidData` error wrapping
/// [`StoreError::BlobCorrupted`].
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    path: PathBuf,
    digest: Digest,
    expected_size: u64,
    read: u64,
    hasher: Sha256,
    verified: bool,
}

impl BlobReader {
    /// The blob's size (as recorded at commit).
    pub fn size(&self) -> u64 {
        self.expected_size
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupted(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            StoreError::BlobCorrupted {
                digest: self.digest.clone(),
                path: self.path.clone(),
                reason,
            },
        )
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self
            .file
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), StoreError::io("read blob", &self.path, e)))?;
        if n == 0 {
            if !self.verified {
                if self.read != self.expected_size {
                    return Err(self.corrupted(format!(
                        "{} bytes read, {} bytes expected",
                        self.read, self.expected_size
                    )));
                }
                let actual = Digest::from_hasher(self.hasher.clone());
                if actual != self.digest {
                    return Err(self.corrupted(format!("content hashes to {actual}")));
                }
                self.verified = true;
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(self.corrupted(format!(
                "more than the expected {} bytes",
                self.expected_size
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unwraps a [`StoreError`] carried inside an `io::Error` (as the readers and writers produce),
/// or wraps a plain one.
pub(crate) fn store_error_from_io(
    error: io::Error,
    action: &'static str,
    path: &Path,
) -> StoreError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<StoreError>())
    {
        let kind = error.kind();
        match error
            .into_inner()
            .map(|inner| inner.downcast::<StoreError>())
        {
            Some(Ok(store_error)) => return *store_error,
            Some(Err(other)) => return StoreError::io(action, path, io::Error::new(kind, other)),
            None => return StoreError::io(action, path, io::Error::from(kind)),
        }
    }
    StoreError::io(action, path, error)
}

/// fsyncs a directory so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

//! The two small blob interfaces export and import work over — [`BlobSource`] to read blobs by digest,
//! [`BlobSink`] to store streamed blobs — so that this crate does not depend on the store's API; the
//! store implements them. [`LayoutDir`] implements both over an OCI image layout directory
//! (`blobs/sha256/<hex>`), which is also what `--output type=oci,tar=false` writes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_image::Digest;
use sha2::{Digest as _, Sha256};

/// Reads blobs by digest.
pub trait BlobSource {
    /// A reader of the blob's bytes. Callers verify what they read.
    ///
    /// # Errors
    /// `NotFound` when the blob is absent; other I/O errors.
    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + '_>>;

    /// The blob's size in bytes.
    ///
    /// # Errors
    /// `NotFound` when the blob is absent; other I/O errors.
    fn blob_size(&self, digest: &Digest) -> io::Result<u64>;
}

/// Stores streamed blobs.
pub trait BlobSink {
    /// Stores the blob read from `content` to its end and returns its digest. With `expected`, a blob
    /// whose digest differs must not become visible and the call fails with `InvalidData`.
    ///
    /// # Errors
    /// Read errors of `content`, storage errors, `InvalidData` on a digest mismatch.
    fn write_blob(&self, expected: Option<&Digest>, content: &mut dyn Read) -> io::Result<Digest>;
}

/// A reader that hashes and counts what is read through it.
pub(crate) struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }

    pub fn digest(self) -> Digest {
        Digest::from_hasher(self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// An OCI image layout directory used as a blob store: `<root>/blobs/sha256/<hex>`.
#[derive(Clone, Debug)]
pub struct LayoutDir {
    root: PathBuf,
}

impl LayoutDir {
    /// A layout at `root`, creating `blobs/sha256/` and the `oci-layout` file when missing.
    ///
    /// # Errors
    /// I/O errors creating them.
    pub fn create(root: &Path) -> io::Result<LayoutDir> {
        fs::create_dir_all(root.join("blobs/sha256"))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomically(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(LayoutDir {
            root: root.to_path_buf(),
        })
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Writes `index.json` (atomically).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_index(&self, index_json: &[u8]) -> io::Result<()> {
        write_atomically(&self.root.join("index.json"), index_json)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

impl BlobSource for LayoutDir {
    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(File::open(self.blob_path(digest))?))
    }

    fn blob_size(&self, digest: &Digest) -> io::Result<u64> {
        Ok(fs::metadata(self.blob_path(digest))?.len())
    }
}

impl BlobSink for LayoutDir {
    fn write_blob(&self, expected: Option<&Digest>, content: &mut dyn Read) -> io::Result<Digest> {
        let tmp_dir = self.root.join("blobs/sha256");
        let tmp = tmp_dir.join(format!(
            ".ingest-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            let mut hashing = HashingReader::new(content);
            io::copy(&mut hashing, &mut file)?;
            file.sync_all()?;
            let digest = hashing.digest();
            if let Some(expected) = expected {
                if *expected != digest {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("blob digest {digest} does not match the expected {expected}"),
                    ));
                }
            }
            fs::rename(&tmp, self.blob_path(&digest))?;
            Ok(digest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dir_stores_verifies_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = LayoutDir::create(dir.path()).unwrap();
        let digest = layout.write_blob(None, &mut &b"hello"[..]).unwrap();
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(layout.blob_size(&digest).unwrap(), 5);
        let mut back = String::new();
        layout
            .open_blob(&digest)
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello");

        let wrong = Digest::of(b"other");
        let err = layout
            .write_blob(Some(&wrong), &mut &b"hello2"[..])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!layout.blob_path(&wrong).exists());
        assert!(!layout.blob_path(&Digest::of(b"hello2")).exists());
        assert!(dir.path().join("oci-layout").exists());
    }
}

//! The store seen through `kiln-oci`'s two blob interfaces, so archive export reads blobs from the
//! store and archive import writes into it without `kiln-oci` knowing the store.
//!
//! Reads go through the store's verifying reader: a blob whose bytes no longer match its digest
//! fails at its end, so a corrupted blob is never exported silently. Writes go through the store's
//! ingest, which makes a blob visible only once its digest checked out.

use std::io::{self, Read};

use kiln_image::Digest;
use kiln_oci::blobs::{BlobSink, BlobSource};
use kiln_store::{Store, StoreError};

/// A [`Store`] as a [`BlobSource`] and a [`BlobSink`].
#[derive(Debug, Clone)]
pub struct StoreBlobs {
    store: Store,
}

impl StoreBlobs {
    pub fn new(store: &Store) -> StoreBlobs {
        StoreBlobs {
            store: store.clone(),
        }
    }
}

/// The `io::Error` a blob interface reports for a store error: `NotFound` for a missing blob,
/// `InvalidData` for corrupted or mismatching content, with the store's message kept as the source.
fn to_io_error(error: StoreError) -> io::Error {
    let kind = match &error {
        StoreError::BlobNotFound { .. } => io::ErrorKind::NotFound,
        StoreError::BlobCorrupted { .. } | StoreError::DigestMismatch { .. } => {
            io::ErrorKind::InvalidData
        }
        StoreError::ReadSource(source) => source.kind(),
        StoreError::Io { source, .. } | StoreError::DiskFull { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}

impl BlobSource for StoreBlobs {
    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + '_>> {
        let reader = self.store.open_blob(digest).map_err(to_io_error)?;
        Ok(Box::new(reader))
    }

    fn blob_size(&self, digest: &Digest) -> io::Result<u64> {
        self.store.blob_size(digest).map_err(to_io_error)
    }
}

impl BlobSink for StoreBlobs {
    fn write_blob(&self, expected: Option<&Digest>, content: &mut dyn Read) -> io::Result<Digest> {
        let mut content = content;
        self.store
            .ingest_from(&mut content, expected)
            .map(|info| info.digest)
            .map_err(to_io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_mismatches_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let blobs = StoreBlobs::new(&store);
        let digest = blobs.write_blob(None, &mut &b"hello"[..]).unwrap();
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(blobs.blob_size(&digest).unwrap(), 5);
        let mut back = Vec::new();
        blobs
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"hello");

        let wrong = Digest::of(b"something else");
        let error = blobs
            .write_blob(Some(&wrong), &mut &b"hello again"[..])
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(!store.has_blob(&Digest::of(b"hello again")));

        let missing = blobs.blob_size(&wrong).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            blobs.open_blob(&wrong).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_corrupted_blob_fails_when_read() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let blobs = StoreBlobs::new(&store);
        let digest = blobs.write_blob(None, &mut &b"original"[..]).unwrap();
        let path = store.blob_path(&digest);
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&path, permissions).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        let mut back = Vec::new();
        let error = blobs
            .open_blob(&digest)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}

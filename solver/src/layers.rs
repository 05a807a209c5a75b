//! Layers in and out of the store.
//!
//! - [`commit_diff`]: a snapshot's changes (overlay upper-dir form) → a compressed blob (diff id and
//!   blob digest from one streaming pass) recorded against its diff id, and the same directory moved
//!   into `layers/` as the extracted layer (it already is in overlay lower-dir form).
//! - [`ensure_extracted`]: an image's layer blobs → `layers/<n>` dirs, applied in overlay whiteout
//!   form, each checked against its diff id while it streams.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;

use kiln_image::Digest;
use kiln_image::media_types::{LayerCompression, layer_compression};
use kiln_oci::apply::{ApplyOptions, WhiteoutMode, apply_layer};
use kiln_oci::compress::{Compression, LayerDigests, compress_dir_layer, decompressing_reader};
use kiln_oci::diff::{DiffOptions, DiffSource};
use kiln_store::{BlobInfo, ManifestLayer, Store, chain_id};
use sha2::{Digest as _, Sha256};

use crate::error::OpError;
use crate::result::Layer;

/// How new layers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: file mtimes in new layers are clamped to it.
    pub source_date_epoch: Option<i64>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip { level: 1 },
            source_date_epoch: None,
        }
    }
}

/// The OCI media type of a layer blob compressed with `compression`.
pub fn layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::Uncompressed => LayerCompression::Uncompressed.oci_media_type(),
        Compression::Gzip { .. } => LayerCompression::Gzip.oci_media_type(),
        Compression::Zstd { .. } => LayerCompression::Zstd.oci_media_type(),
    }
}

/// The compression a layer media type names (gzip when unknown, the only one older tools write).
pub fn compression_of(media_type: &str) -> LayerCompression {
    layer_compression(media_type).unwrap_or(LayerCompression::Gzip)
}

/// The digests of the empty layer (a tar of no entries) per [`LayerOptions`], as this process
/// computed them the first time. The differ never emits the upper dir's root, so an empty upper dir
/// always gives these same bytes: steps that change nothing (`RUN true`, a `RUN` that only reads)
/// reuse them instead of writing and compressing the tar again.
static EMPTY_LAYERS: Mutex<Vec<(LayerOptions, LayerDigests)>> = Mutex::new(Vec::new());

fn known_empty_layer(options: &LayerOptions) -> Option<LayerDigests> {
    let known = EMPTY_LAYERS.lock().ok()?;
    known
        .iter()
        .find(|(o, _)| o == options)
        .map(|(_, digests)| digests.clone())
}

fn remember_empty_layer(options: &LayerOptions, digests: &LayerDigests) {
    if let Ok(mut known) = EMPTY_LAYERS.lock()
        && !known.iter().any(|(o, _)| o == options)
    {
        known.push((*options, digests.clone()));
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool, OpError> {
    let mut entries = fs::read_dir(dir).map_err(OpError::io("read", dir))?;
    Ok(entries.next().is_none())
}

/// Turns the changes in `upper` (overlay upper-dir form) into a layer on top of `parent`: writes the
/// compressed blob, records it, and moves `upper` into `layers/`. A step that changed nothing still
/// gets a layer (an empty tar), as in BuildKit, so every history entry with a layer has one; once
/// the store holds that empty blob, such a step writes and compresses nothing.
///
/// # Errors
/// Reading the tree, writing the blob, or committing the layer failed.
pub fn commit_diff(
    store: &Store,
    upper: &Path,
    parent: Option<&Layer>,
    options: &LayerOptions,
) -> Result<Layer, OpError> {
    let empty = is_empty_dir(upper)?;
    let reusable = empty
        .then(|| known_empty_layer(options))
        .flatten()
        .filter(|d| store.blob_size(&d.blob_digest).ok() == Some(d.size));
    let (digests, blob) = match reusable {
        Some(digests) => {
            let blob = BlobInfo {
                digest: digests.blob_digest.clone(),
                size: digests.size,
            };
            (digests, blob)
        }
        None => write_blob(store, upper, options)?,
    };
    if empty {
        remember_empty_layer(options, &digests);
    }
    let media_type = layer_media_type(options.compression);
    store.record_layer_blob(&digests.diff_id, &blob.digest, media_type, blob.size)?;
    let parent_chain = parent.map(|layer| &layer.chain_id);
    let chain = chain_id(parent_chain, &digests.diff_id);
    let dir = match store.layer_path(&chain)? {
        Some(existing) => existing,
        None => {
            let temp = store.prepare_layer_dir()?;
            // The upper dir is already in lower-dir form: move it instead of copying.
            fs::remove_dir(temp.path()).map_err(OpError::io("replace layer dir", temp.path()))?;
            fs::rename(upper, temp.path())
                .map_err(OpError::io("move the diff into", temp.path()))?;
            store.commit_layer(temp, &chain, &digests.diff_id, parent_chain)?
        }
    };
    Ok(Layer {
        diff_id: digests.diff_id,
        chain_id: chain,
        dir,
        blob_digest: blob.digest,
        media_type: media_type.to_string(),
        size: blob.size,
    })
}

/// Writes the layer tar of `upper` compressed into the store (one streaming pass for both digests).
fn write_blob(
    store: &Store,
    upper: &Path,
    options: &LayerOptions,
) -> Result<(LayerDigests, BlobInfo), OpError> {
    let diff_options = DiffOptions {
        source: DiffSource::OverlayUpper,
        source_date_epoch: options.source_date_epoch,
    };
    let writer = store.ingest()?;
    let (writer, digests) = compress_dir_layer(upper, &diff_options, options.compression, writer)?;
    // Steps that change the same thing produce the same blob again: when the store already holds it
    // at that size, dropping the ingest (which removes its temp file) skips a fsync, a rename and a
    // dir fsync per step. The stored copy was fsynced before it was renamed into place, so it is as
    // durable as a fresh commit would be.
    let blob = if store.blob_size(&digests.blob_digest).ok() == Some(digests.size) {
        drop(writer);
        BlobInfo {
            digest: digests.blob_digest.clone(),
            size: digests.size,
        }
    } else {
        writer.commit(Some(&digests.blob_digest))?
    };
    Ok((digests, blob))
}

/// Makes sure every layer of a manifest is extracted under `layers/` and returns the chain.
///
/// # Errors
/// A blob is missing or corrupted (the store's error names its path), it unpacks to another diff
/// id, or extraction fails.
pub fn ensure_extracted(
    store: &Store,
    manifest_layers: &[ManifestLayer],
) -> Result<Vec<Layer>, OpError> {
    let mut chain: Vec<Layer> = Vec::with_capacity(manifest_layers.len());
    for layer in manifest_layers {
        let parent = chain.last().map(|l| l.chain_id.clone());
        let id = chain_id(parent.as_ref(), &layer.diff_id);
        let dir = match store.layer_path(&id)? {
            Some(dir) => dir,
            None => extract_layer(store, layer, &id, parent.as_ref())?,
        };
        chain.push(Layer {
            diff_id: layer.diff_id.clone(),
            chain_id: id,
            dir,
            blob_digest: layer.blob_digest.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
    }
    Ok(chain)
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn extract_layer(
    store: &Store,
    layer: &ManifestLayer,
    id: &Digest,
    parent: Option<&Digest>,
) -> Result<std::path::PathBuf, OpError> {
    let temp = store.prepare_layer_dir()?;
    let blob = store.open_blob(&layer.blob_digest)?;
    let blob_path = blob.path().to_path_buf();
    let (_, decompressed) =
        decompressing_reader(blob).map_err(OpError::io("read layer blob", &blob_path))?;
    let mut hashing = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let options = ApplyOptions {
        whiteouts: WhiteoutMode::OverlayLower,
        chown: nix::unistd::geteuid().is_root(),
    };
    apply_layer(&mut hashing, temp.path(), &options).map_err(|error| OpError::Io {
        action: "extract layer blob",
        path: blob_path.clone(),
        source: io::Error::other(error),
    })?;
    // apply_layer reads to the end of the archive; drain any padding so the hash covers it all.
    io::copy(&mut hashing, &mut io::sink()).map_err(OpError::io("read layer blob", &blob_path))?;
    let actual = Digest::from_hasher(hashing.hasher);
    if actual != layer.diff_id {
        return Err(OpError::DiffIdMismatch {
            blob: layer.blob_digest.clone(),
            expected: layer.diff_id.clone(),
            actual,
        });
    }
    Ok(store.commit_layer(temp, id, &layer.diff_id, parent)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_options(level: u32) -> LayerOptions {
        LayerOptions {
            compression: Compression::Gzip { level },
            source_date_epoch: None,
        }
    }

    /// Commits `upper` (a fresh dir made by `fill`) on top of nothing.
    fn commit(store: &Store, name: &str, options: &LayerOptions, fill: impl Fn(&Path)) -> Layer {
        let upper = store.scratch_dir().join(name);
        fs::create_dir_all(&upper).unwrap();
        fill(&upper);
        commit_diff(store, &upper, None, options).unwrap()
    }

    #[test]
    fn an_empty_diff_gives_the_same_layer_whether_written_or_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        // Level 2: an options value no other test of this process uses, so the first commit
        // really writes the tar.
        let options = layer_options(2);
        let written = commit(&store, "a", &options, |_| {});
        assert!(known_empty_layer(&options).is_some(), "remembered");
        let reused = commit(&store, "b", &options, |_| {});
        assert_eq!(
            (&written.diff_id, &written.blob_digest, written.size),
            (&reused.diff_id, &reused.blob_digest, reused.size)
        );
        // The empty tar is 1024 zero bytes whatever the upper dir's own metadata.
        assert_eq!(written.diff_id, Digest::of(&[0u8; 1024]));
        assert_eq!(store.blob_size(&written.blob_digest).unwrap(), written.size);
    }

    #[test]
    fn a_diff_with_content_is_never_taken_for_the_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let options = layer_options(1);
        let empty = commit(&store, "a", &options, |_| {});
        let full = commit(&store, "b", &options, |dir| {
            fs::write(dir.join("file"), "content").unwrap();
        });
        assert_ne!(empty.diff_id, full.diff_id);
        assert!(full.dir.join("file").is_file());
    }
}

//! Images and what they are made of: tags (name → manifest and config), manifests → layers, and
//! the index from a layer's diff id to its blob in each compression.
//!
//! Writing these records also writes the reference edges prune follows: a tag keeps its manifest
//! and config blobs alive, a manifest keeps its config blob, its layer blobs and its extracted
//! layers (by chain id) alive.

use kiln_image::Digest;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::Store;
use crate::db::{TxError, parse_digest, to_i64, to_u64, unix_now_ns};
use crate::error::{Result, StoreError};
use crate::layer::chain_id;
use crate::refs::{Owner, Resource, add_ref, clear_refs};

/// A tagged image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image name, as the caller normalised it (e.g. `docker.io/library/alpine:3.20`).
    pub name: String,
    /// The digest of the image's manifest blob.
    pub manifest_digest: Digest,
    /// The digest of the image's config blob (Docker's "image id").
    pub config_digest: Digest,
    /// When the name first pointed at this manifest, in ns since the epoch.
    pub created_ns: i64,
    /// When the tag was last written, in ns since the epoch.
    pub updated_ns: i64,
}

/// One layer of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestLayer {
    /// The digest of the (usually compressed) layer blob.
    pub blob_digest: Digest,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The layer's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// A manifest and its layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    /// The manifest blob's digest.
    pub digest: Digest,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The layers, bottom first.
    pub layers: Vec<ManifestLayer>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    Uncompressed,
    /// gzip (the default for compatibility).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type implies (OCI, OCI non-distributable, and Docker
    /// schema 2 types); `None` for a media type that is not a layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::Uncompressed),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A layer blob found by diff id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// The blob's digest.
    pub blob_digest: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

impl Store {
    /// Points `name` at an image (replacing what it pointed at before). The tag keeps the manifest
    /// and config blobs from being pruned, and the manifest's layers too once the manifest is
    /// recorded with [`Store::record_manifest`] (for an index, link its manifests with
    /// [`Store::add_reference`]).
    ///
    /// # Errors
    /// [`StoreError::Db`] when the tag cannot be written.
    pub fn tag(&self, name: &str, manifest_digest: &Digest, config_digest: &Digest) -> Result<()> {
        self.db().write("tag image", |tx| {
            let now = unix_now_ns();
            let previous: Option<String> = tx
                .query_row(
                    "SELECT manifest_digest FROM images WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()?;
            let manifest = manifest_digest.to_string();
            if previous.as_deref() == Some(manifest.as_str()) {
                tx.execute(
                    "UPDATE images SET config_digest = ?2, updated_ns = ?3 WHERE name = ?1",
                    params![name, config_digest.to_string(), now],
                )?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO images (name, manifest_digest, config_digest, created_ns, updated_ns)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![name, manifest, config_digest.to_string(), now],
                )?;
            }
            let owner = Owner::Image(name.to_string());
            clear_refs(tx, &owner)?;
            add_ref(tx, &owner, &Resource::Blob(manifest_digest.clone()))?;
            add_ref(tx, &owner, &Resource::Blob(config_digest.clone()))?;
            Ok(())
        })
    }

    /// Removes the tag `name`; returns whether it existed. Its content becomes prunable unless
    /// something else references it.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the tag cannot be removed.
    pub fn untag(&self, name: &str) -> Result<bool> {
        self.db().write("untag image", |tx| {
            let removed = tx.execute("DELETE FROM images WHERE name = ?1", params![name])?;
            clear_refs(tx, &Owner::Image(name.to_string()))?;
            Ok(removed > 0)
        })
    }

    /// Every tagged image, sorted by name.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::InvalidRecord`] on a damaged row.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        self.db().read("list images", |conn| {
            let mut statement = conn.prepare(
                "SELECT name, manifest_digest, config_digest, created_ns, updated_ns
                 FROM images ORDER BY name",
            )?;
            let rows = statement.query_map([], raw_image_row)?;
            let mut images = Vec::new();
            for row in rows {
                images.push(image_from_raw(row?)?);
            }
            Ok(images)
        })
    }

    /// Finds an image by exact name, or else by image id: `sha256:<hex>` or a prefix of the config
    /// digest's hex of at least 4 characters, as `docker` accepts. An id prefix that matches two
    /// different images finds nothing.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::InvalidRecord`] on a damaged row.
    pub fn resolve_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.db().read("resolve image", |conn| {
            let exact = conn
                .query_row(
                    "SELECT name, manifest_digest, config_digest, created_ns, updated_ns
                     FROM images WHERE name = ?1",
                    params![name],
                    raw_image_row,
                )
                .optional()?;
            if let Some(raw) = exact {
                return Ok(Some(image_from_raw(raw)?));
            }
            let prefix = name.strip_prefix("sha256:").unwrap_or(name);
            let is_id_prefix = prefix.len() >= 4
                && prefix.len() <= 64
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_id_prefix {
                return Ok(None);
            }
            let mut statement = conn.prepare(
                "SELECT name, manifest_digest, config_digest, created_ns, updated_ns
                 FROM images WHERE substr(config_digest, 8, ?2) = ?1 ORDER BY name",
            )?;
            let rows = statement.query_map(
                params![prefix, i64::try_from(prefix.len()).unwrap_or(64)],
                raw_image_row,
            )?;
            let mut found: Option<ImageRecord> = None;
            for row in rows {
                let image = image_from_raw(row?)?;
                match &found {
                    Some(first) if first.config_digest != image.config_digest => return Ok(None),
                    Some(_) => {}
                    None => found = Some(image),
                }
            }
            Ok(found)
        })
    }

    /// Records a manifest and its layers: the manifest → layers table, the diff id → blob index
    /// for each layer, and the references that keep the config blob, the layer blobs and the
    /// extracted layers (by chain id) alive as long as the manifest blob is. Idempotent.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure.
    pub fn record_manifest(&self, manifest: &ManifestRecord) -> Result<()> {
        self.db().write("record manifest", |tx| {
            let digest = manifest.digest.to_string();
            tx.execute(
                "INSERT INTO manifests (digest, config_digest, media_type, created_ns)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE
                 SET config_digest = excluded.config_digest, media_type = excluded.media_type",
                params![
                    digest,
                    manifest.config_digest.to_string(),
                    manifest.media_type,
                    unix_now_ns()
                ],
            )?;
            tx.execute(
                "DELETE FROM manifest_layers WHERE manifest_digest = ?1",
                params![digest],
            )?;
            let owner = Owner::Blob(manifest.digest.clone());
            clear_refs(tx, &owner)?;
            add_ref(tx, &owner, &Resource::Blob(manifest.config_digest.clone()))?;
            let mut parent: Option<Digest> = None;
            for (position, layer) in manifest.layers.iter().enumerate() {
                tx.execute(
                    "INSERT INTO manifest_layers
                     (manifest_digest, position, blob_digest, diff_id, media_type, size)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        digest,
                        i64::try_from(position).unwrap_or(i64::MAX),
                        layer.blob_digest.to_string(),
                        layer.diff_id.to_string(),
                        layer.media_type,
                        to_i64(layer.size)
                    ],
                )?;
                if let Some(compression) = Compression::from_media_type(&layer.media_type) {
                    insert_layer_blob(tx, &layer.diff_id, compression, layer)?;
                }
                add_ref(tx, &owner, &Resource::Blob(layer.blob_digest.clone()))?;
                let chain = chain_id(parent.as_ref(), &layer.diff_id);
                add_ref(tx, &owner, &Resource::Layer(chain.clone()))?;
                parent = Some(chain);
            }
            Ok(())
        })
    }

    /// The recorded manifest `digest`, if any.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::InvalidRecord`] on a damaged row.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>> {
        self.db().read("look up manifest", |conn| {
            let head: Option<(String, String)> = conn
                .query_row(
                    "SELECT config_digest, media_type FROM manifests WHERE digest = ?1",
                    params![digest.to_string()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((config_digest, media_type)) = head else {
                return Ok(None);
            };
            let mut statement = conn.prepare(
                "SELECT blob_digest, diff_id, media_type, size FROM manifest_layers
                 WHERE manifest_digest = ?1 ORDER BY position",
            )?;
            let rows = statement.query_map(params![digest.to_string()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            let mut layers = Vec::new();
            for row in rows {
                let (blob_digest, diff_id, media_type, size) = row?;
                layers.push(ManifestLayer {
                    blob_digest: parse_digest(&blob_digest)?,
                    diff_id: parse_digest(&diff_id)?,
                    media_type,
                    size: to_u64(size, "layer size")?,
                });
            }
            Ok(Some(ManifestRecord {
                digest: digest.clone(),
                config_digest: parse_digest(&config_digest)?,
                media_type,
                layers,
            }))
        })
    }

    /// Records that the layer with `diff_id` is stored as `blob_digest` (compressed as its media
    /// type says), so a later export or push can reuse the blob instead of recompressing.
    ///
    /// # Errors
    /// [`StoreError::InvalidRecord`] when `media_type` is not a layer media type;
    /// [`StoreError::Db`] on a database failure.
    pub fn record_layer_blob(
        &self,
        diff_id: &Digest,
        blob_digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<()> {
        let compression =
            Compression::from_media_type(media_type).ok_or_else(|| StoreError::InvalidRecord {
                what: "layer media type",
                value: media_type.to_string(),
            })?;
        let layer = LayerBlobRef {
            blob_digest,
            media_type,
            size,
        };
        self.db().write("record layer blob", |tx| {
            insert_layer_blob(tx, diff_id, compression, layer)
        })
    }

    /// The blob holding the layer `diff_id` in `compression`, if one was recorded and is present.
    ///
    /// # Errors
    /// [`StoreError::Db`] on a database failure; [`StoreError::InvalidRecord`] on a damaged row.
    pub fn blob_for_diff_id(
        &self,
        diff_id: &Digest,
        compression: Compression,
    ) -> Result<Option<LayerBlob>> {
        let found = self.db().read("look up layer blob", |conn| {
            let row: Option<(String, String, i64)> = conn
                .query_row(
                    "SELECT blob_digest, media_type, size FROM layer_blobs
                     WHERE diff_id = ?1 AND compression = ?2",
                    params![diff_id.to_string(), compression.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            row.map(|(blob, media_type, size)| {
                Ok::<_, TxError>(LayerBlob {
                    blob_digest: parse_digest(&blob)?,
                    media_type,
                    size: to_u64(size, "layer blob size")?,
                })
            })
            .transpose()
        })?;
        // The index may outlive a pruned blob until the next prune tidies it; never hand that out.
        Ok(found.filter(|layer| self.has_blob(&layer.blob_digest)))
    }
}

/// The parts of a layer blob the diff id index stores.
#[derive(Clone, Copy)]
struct LayerBlobRef<'a> {
    blob_digest: &'a Digest,
    media_type: &'a str,
    size: u64,
}

impl<'a> From<&'a ManifestLayer> for LayerBlobRef<'a> {
    fn from(layer: &'a ManifestLayer) -> Self {
        LayerBlobRef {
            blob_digest: &layer.blob_digest,
            media_type: &layer.media_type,
            size: layer.size,
        }
    }
}

fn insert_layer_blob<'a>(
    conn: &Connection,
    diff_id: &Digest,
    compression: Compression,
    layer: impl Into<LayerBlobRef<'a>>,
) -> Result<(), TxError> {
    let layer = layer.into();
    conn.execute(
        "INSERT OR REPLACE INTO layer_blobs (diff_id, compression, blob_digest, media_type, size)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            diff_id.to_string(),
            compression.as_str(),
            layer.blob_digest.to_string(),
            layer.media_type,
            to_i64(layer.size)
        ],
    )?;
    Ok(())
}

type RawImage = (String, String, String, i64, i64);

fn raw_image_row(row: &Row<'_>) -> rusqlite::Result<RawImage> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn image_from_raw(
    (name, manifest, config, created_ns, updated_ns): RawImage,
) -> Result<ImageRecord, TxError> {
    Ok(ImageRecord {
        name,
        manifest_digest: parse_digest(&manifest)?,
        config_digest: parse_digest(&config)?,
        created_ns,
        updated_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_the_media_type() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::Uncompressed)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
    }
}

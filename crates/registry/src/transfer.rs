//! Pull and push: whole images moved between a registry and the store.
//!
//! A pull resolves the reference (an index picks the platform), then fetches the config and layers
//! concurrently straight into the store's ingest, which checks every digest before a blob becomes
//! visible; blobs already present are skipped. A push HEADs each blob first and uploads only what
//! the repository lacks, streaming from the store's files, and puts the manifest last, so a
//! registry never holds a manifest whose blobs are missing.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use kiln_image::Digest;
use kiln_store::{ManifestLayer, ManifestRecord, Store, StoreError};
use serde::Deserialize;

use crate::client::{Access, RegistryClient, Repository, error_chain};
use crate::error::RegistryError;

/// How many blobs move at once.
const CONCURRENT_BLOBS: usize = 4;

/// The platform a pull wants from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::fmt::Display for WantedPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Progress of a transfer, for the display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// The reference resolved to this manifest.
    Resolved {
        digest: Digest,
    },
    /// A blob is already where it needs to be.
    Skipped {
        digest: Digest,
    },
    /// A blob was mounted from another repository instead of uploaded.
    Mounted {
        digest: Digest,
    },
    Started {
        digest: Digest,
        size: u64,
    },
    Done {
        digest: Digest,
        size: u64,
    },
}

/// The result of a pull: the manifest as recorded in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub manifest: ManifestRecord,
    /// The digest of the index the platform was picked from, when the reference named one.
    pub index_digest: Option<Digest>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<DescriptorPlatform>,
}

#[derive(Debug, Deserialize)]
struct DescriptorPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IndexDocument {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ManifestDocument {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigDocument {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

fn parse_digest(text: &str, what: &str) -> Result<Digest, RegistryError> {
    text.parse().map_err(|e| RegistryError::InvalidManifest {
        reference: what.to_string(),
        reason: format!("bad digest {text:?}: {e}"),
    })
}

/// Picks the manifest for `wanted` from an index: an exact match, else the same os/architecture
/// with the variant unset on either side (arm64 images often omit `v8`).
fn pick_platform<'a>(index: &'a IndexDocument, wanted: &WantedPlatform) -> Option<&'a Descriptor> {
    let candidates = || {
        index
            .manifests
            .iter()
            .filter(|d| !is_index(&d.media_type))
            .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
            .filter(|(_, p)| p.os == wanted.os && p.architecture == wanted.architecture)
    };
    candidates()
        .find(|(_, p)| p.variant == wanted.variant)
        .or_else(|| candidates().find(|(_, p)| p.variant.is_none() || wanted.variant.is_none()))
        .map(|(d, _)| d)
}

fn store_error(error: StoreError) -> RegistryError {
    RegistryError::Store(error.to_string())
}

/// Pulls `reference` (a tag or digest) of `repo` into the store and records its manifest. The
/// caller tags it.
///
/// # Errors
/// The reference or a blob cannot be fetched, no manifest matches the platform, a digest does
/// not match (nothing partial is stored), or the store fails.
pub async fn pull(
    client: &RegistryClient,
    store: &Store,
    repo: &Repository,
    reference: &str,
    platform: &WantedPlatform,
    progress: &(dyn Fn(TransferEvent) + Sync),
) -> Result<PulledImage, RegistryError> {
    let name = format!("{repo}:{reference}");
    let mut fetched = client.get_manifest(repo, reference).await?;
    let mut index_digest = None;
    if is_index(&fetched.media_type) {
        let index: IndexDocument =
            serde_json::from_slice(&fetched.bytes).map_err(|e| RegistryError::InvalidManifest {
                reference: name.clone(),
                reason: format!("index is not valid JSON: {e}"),
            })?;
        let chosen =
            pick_platform(&index, platform).ok_or_else(|| RegistryError::NoMatchingPlatform {
                reference: name.clone(),
                platform: platform.to_string(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        index_digest = Some(fetched.digest.clone());
        let digest = parse_digest(&chosen.digest, &name)?;
        fetched = client.get_manifest(repo, &digest.to_string()).await?;
    }
    progress(TransferEvent::Resolved {
        digest: fetched.digest.clone(),
    });
    let manifest: ManifestDocument =
        serde_json::from_slice(&fetched.bytes).map_err(|e| RegistryError::InvalidManifest {
            reference: name.clone(),
            reason: format!("not an image manifest: {e}"),
        })?;
    let media_type = manifest
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| fetched.media_type.clone());

    let config_digest = parse_digest(&manifest.config.digest, &name)?;
    let mut blobs = vec![(config_digest.clone(), manifest.config.size)];
    for layer in &manifest.layers {
        blobs.push((parse_digest(&layer.digest, &name)?, layer.size));
    }
    let mut pending = FuturesUnordered::new();
    let mut queue = blobs.into_iter();
    loop {
        while pending.len() < CONCURRENT_BLOBS {
            let Some((digest, size)) = queue.next() else {
                break;
            };
            if store.has_blob(&digest) {
                progress(TransferEvent::Skipped { digest });
                continue;
            }
            pending.push(async move {
                progress(TransferEvent::Started {
                    digest: digest.clone(),
                    size,
                });
                fetch_blob(client, store, repo, &digest).await?;
                progress(TransferEvent::Done { digest, size });
                Ok::<(), RegistryError>(())
            });
        }
        match pending.next().await {
            Some(result) => result?,
            None => break,
        }
    }

    // The manifest goes in last: a stored manifest always has its blobs.
    write_small_blob(store, &fetched.bytes, &fetched.digest)?;
    let config_bytes = store
        .read_blob_to_vec(&config_digest, 16 * 1024 * 1024)
        .map_err(store_error)?;
    let config: ConfigDocument =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::InvalidManifest {
            reference: name.clone(),
            reason: format!("image config is not valid: {e}"),
        })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::InvalidManifest {
            reference: name,
            reason: format!(
                "{} layers but the config lists {} diff ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        layers.push(ManifestLayer {
            blob_digest: parse_digest(&layer.digest, &name)?,
            diff_id: parse_digest(diff_id, &name)?,
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
    }
    let record = ManifestRecord {
        digest: fetched.digest.clone(),
        config_digest,
        media_type,
        layers,
    };
    store.record_manifest(&record).map_err(store_error)?;
    Ok(PulledImage {
        manifest: record,
        index_digest,
    })
}

fn write_small_blob(store: &Store, bytes: &[u8], digest: &Digest) -> Result<(), RegistryError> {
    let mut writer = store.ingest().map_err(store_error)?;
    writer
        .write_all(bytes)
        .map_err(|e| RegistryError::Store(e.to_string()))?;
    writer.commit(Some(digest)).map_err(store_error)?;
    Ok(())
}

/// Streams one blob into the store, retrying dropped downloads from the start; the store's commit
/// checks the digest, so a truncated or altered blob is never stored.
async fn fetch_blob(
    client: &RegistryClient,
    store: &Store,
    repo: &Repository,
    digest: &Digest,
) -> Result<(), RegistryError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_blob_once(client, store, repo, digest).await {
            Ok(()) => return Ok(()),
            Err(RegistryError::Connection { .. }) if attempt < ATTEMPTS => {
                tracing::debug!(%digest, attempt, "blob download dropped; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn fetch_blob_once(
    client: &RegistryClient,
    store: &Store,
    repo: &Repository,
    digest: &Digest,
) -> Result<(), RegistryError> {
    let mut response = client.get_blob(repo, digest, 0).await?;
    // The store's writer is blocking file I/O: it runs on a blocking thread fed by a channel. An
    // `Err` item tells it the download failed, so it drops the writer (removing the temp file).
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, ()>>(16);
    let writer_store = store.clone();
    let expected = digest.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<bool, RegistryError> {
        let mut writer = writer_store.ingest().map_err(store_error)?;
        while let Some(item) = receiver.blocking_recv() {
            match item {
                Ok(chunk) => writer
                    .write_all(&chunk)
                    .map_err(|e| RegistryError::Store(e.to_string()))?,
                Err(()) => return Ok(false),
            }
        }
        match writer.commit(Some(&expected)) {
            Ok(_) => Ok(true),
            Err(StoreError::DigestMismatch {
                expected, actual, ..
            }) => Err(RegistryError::DigestMismatch {
                what: format!("blob {expected}"),
                expected: expected.to_string(),
                actual: actual.to_string(),
            }),
            Err(other) => Err(store_error(other)),
        }
    });
    let mut download_error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if sender.send(Ok(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(None) => break,
            Err(error) => {
                let _ = sender.send(Err(())).await;
                download_error = Some(RegistryError::Connection {
                    registry: repo.registry.clone(),
                    message: format!("download of {digest} interrupted: {}", error_chain(&error)),
                });
                break;
            }
        }
    }
    drop(sender);
    let committed = writer
        .await
        .map_err(|e| RegistryError::Store(format!("blob writer task failed: {e}")))??;
    match download_error {
        Some(error) => Err(error),
        None if committed => Ok(()),
        None => Err(RegistryError::Store(format!(
            "blob {digest} was not stored"
        ))),
    }
}

/// Pushes the manifest `manifest_digest` from the store to `repo` under `tag`: blobs the
/// repository lacks are mounted from `mount_from` (other repositories of the same registry that
/// hold the image, e.g. where it was pulled from) or else uploaded (verified against their digest
/// first, so a damaged blob is never pushed), then the manifest. Returns the manifest digest.
///
/// # Errors
/// A blob is missing or damaged in the store, the registry refuses an upload or the manifest,
/// credentials are rejected, or it cannot be reached.
pub async fn push(
    client: &RegistryClient,
    store: &Store,
    manifest_digest: &Digest,
    repo: &Repository,
    tag: &str,
    mount_from: &[Repository],
    progress: &(dyn Fn(TransferEvent) + Sync),
) -> Result<Digest, RegistryError> {
    let mount_from: Vec<&Repository> = mount_from
        .iter()
        .filter(|from| from.registry == repo.registry && from.name != repo.name)
        .collect();
    let record = store
        .manifest(manifest_digest)
        .map_err(store_error)?
        .ok_or_else(|| {
            RegistryError::Store(format!("manifest {manifest_digest} is not in the store"))
        })?;
    let manifest_bytes = store
        .read_blob_to_vec(manifest_digest, 8 * 1024 * 1024)
        .map_err(store_error)?;
    let mut blobs = vec![record.config_digest.clone()];
    blobs.extend(record.layers.iter().map(|l| l.blob_digest.clone()));
    blobs.dedup();

    let store = Arc::new(store.clone());
    let mut pending = FuturesUnordered::new();
    let mut queue = blobs.into_iter();
    loop {
        while pending.len() < CONCURRENT_BLOBS {
            let Some(digest) = queue.next() else { break };
            let store = Arc::clone(&store);
            let mount_from = &mount_from;
            pending.push(async move {
                if client
                    .blob_size(repo, &digest, Access::Push)
                    .await?
                    .is_some()
                {
                    progress(TransferEvent::Skipped { digest });
                    return Ok::<(), RegistryError>(());
                }
                for from in mount_from {
                    if client.mount_blob(repo, &digest, from).await? {
                        progress(TransferEvent::Mounted { digest });
                        return Ok(());
                    }
                }
                let verify_store = Arc::clone(&store);
                let verify_digest = digest.clone();
                let info =
                    tokio::task::spawn_blocking(move || verify_store.verify_blob(&verify_digest))
                        .await
                        .map_err(|e| RegistryError::Store(format!("verifying {digest}: {e}")))?
                        .map_err(store_error)?;
                progress(TransferEvent::Started {
                    digest: digest.clone(),
                    size: info.size,
                });
                client
                    .upload_blob(repo, &digest, &store.blob_path(&digest))
                    .await?;
                progress(TransferEvent::Done {
                    digest,
                    size: info.size,
                });
                Ok(())
            });
        }
        match pending.next().await {
            Some(result) => result?,
            None => break,
        }
    }
    let pushed = client
        .put_manifest(repo, tag, &record.media_type, &manifest_bytes)
        .await?;
    if pushed != *manifest_digest {
        return Err(RegistryError::DigestMismatch {
            what: format!("manifest pushed to {repo}:{tag}"),
            expected: manifest_digest.to_string(),
            actual: pushed.to_string(),
        });
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> IndexDocument {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn platform_is_picked_exactly_then_without_variant() {
        let doc = index(
            r#"{"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1,"platform":{"os":"linux","architecture":"amd64"}}
        ]}"#,
        );
        let want = |arch: &str, variant: Option<&str>| WantedPlatform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        };
        assert_eq!(
            pick_platform(&doc, &want("amd64", None)).unwrap().digest,
            "sha256:cc"
        );
        assert_eq!(
            pick_platform(&doc, &want("arm64", Some("v8")))
                .unwrap()
                .digest,
            "sha256:bb"
        );
        assert_eq!(
            pick_platform(&doc, &want("arm", Some("v7")))
                .unwrap()
                .digest,
            "sha256:aa"
        );
        assert!(pick_platform(&doc, &want("arm", Some("v6"))).is_none());
        assert!(pick_platform(&doc, &want("s390x", None)).is_none());
    }
}

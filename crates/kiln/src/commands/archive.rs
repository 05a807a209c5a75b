//! `kiln save` and `kiln load`: images between the store and archive files.
//!
//! `save` writes what Docker 25+ `docker save` writes — an OCI image layout plus the legacy
//! `manifest.json` and `repositories` in one tar — so old and new Docker, skopeo and umoci all read
//! it. Every blob is read through the store's verifying reader, so a blob damaged on disk aborts the
//! save instead of being exported. The file is written next to its destination and renamed into
//! place only when complete.
//!
//! `load` reads Docker archives (the Docker 25+ form and the legacy one) and OCI layout tars,
//! optionally compressed, from a file or stdin. Blobs stream into the store, checked against their
//! digests; then each image's manifest is recorded and its names are tagged. The store's shared
//! lock is held throughout, so a concurrent prune cannot delete blobs that are written but not yet
//! tagged.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use kiln_image::{Digest, ImageConfig, Platform, Reference};
use kiln_oci::export::{ArchiveFormat, ExportImage, export_archive};
use kiln_oci::import::{LoadedImage, LoadedManifest, load_archive};
use kiln_oci::manifest::{descriptor, kiln_digest};
use kiln_store::{ManifestLayer, ManifestRecord, Store};

use super::images::{familiar, read_manifest, require_image};
use super::open_store;
use crate::cli::Global;
use crate::store_blobs::StoreBlobs;

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Names or image ids; several images go into one archive.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Read from this file instead of stdin.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One image of a save: its manifest and the names the user asked for.
struct SaveEntry {
    manifest_digest: Digest,
    media_type: String,
    names: Vec<String>,
}

/// Groups the requested images by manifest, keeping the user's order and the names they used
/// (an image named by id is saved without names, as Docker does).
fn plan_save(store: &Store, requested: &[String]) -> anyhow::Result<Vec<SaveEntry>> {
    let mut entries: Vec<SaveEntry> = Vec::new();
    for name in requested {
        let found = require_image(store, name)?;
        let manifest = read_manifest(store, &found.record)?;
        let index = match entries
            .iter()
            .position(|e| e.manifest_digest == found.record.manifest_digest)
        {
            Some(index) => index,
            None => {
                entries.push(SaveEntry {
                    manifest_digest: found.record.manifest_digest.clone(),
                    media_type: manifest.media_type.clone(),
                    names: Vec::new(),
                });
                entries.len() - 1
            }
        };
        if found.by_name && !entries[index].names.contains(&found.record.name) {
            entries[index].names.push(found.record.name.clone());
        }
    }
    Ok(entries)
}

/// A file written next to its destination and renamed over it on [`AtomicFile::commit`]; removed
/// if dropped before.
struct AtomicFile {
    temp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    fn create(target: &Path) -> anyhow::Result<AtomicFile> {
        let dir = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = target
            .file_name()
            .with_context(|| format!("{} names no file", target.display()))?;
        let temp = dir.join(format!(
            ".{}.kiln-{}.tmp",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        Ok(AtomicFile {
            temp,
            target: target.to_path_buf(),
            file: Some(BufWriter::new(file)),
        })
    }

    fn writer(&mut self) -> anyhow::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .with_context(|| format!("{} was already closed", self.temp.display()))
    }

    fn commit(mut self) -> anyhow::Result<()> {
        let writer = self
            .file
            .take()
            .with_context(|| format!("{} was already closed", self.temp.display()))?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.temp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", self.temp.display()))?;
        drop(file);
        std::fs::rename(&self.temp, &self.target).with_context(|| {
            format!(
                "moving {} to {}",
                self.temp.display(),
                self.target.display()
            )
        })?;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            // Best effort: the rename is durable once the directory is synced.
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

pub fn run_save(args: SaveArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if args.output.is_none() && io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal: use -o FILE or redirect stdout");
    }
    let store = open_store(global)?;
    // Reading only, but an image untagged meanwhile must not lose its blobs to a prune mid-save.
    let _lock = store.lock_shared().context("locking the store")?;
    let entries = plan_save(&store, &args.images)?;
    let mut images = Vec::new();
    for entry in &entries {
        let size = store
            .blob_size(&entry.manifest_digest)
            .with_context(|| format!("finding manifest {}", entry.manifest_digest))?;
        images.push(ExportImage {
            names: entry.names.clone(),
            descriptor: descriptor(
                entry.media_type.as_str().into(),
                &entry.manifest_digest,
                size,
            )
            .context("describing the manifest")?,
        });
    }
    let source = StoreBlobs::new(&store);
    match &args.output {
        Some(path) => {
            let mut file = AtomicFile::create(path)?;
            export_archive(
                &source,
                &images,
                ArchiveFormat::DockerArchive,
                file.writer()?,
            )
            .with_context(|| format!("writing {}", path.display()))?;
            file.commit()?;
        }
        None => {
            let stdout = io::stdout().lock();
            let mut out = export_archive(
                &source,
                &images,
                ArchiveFormat::DockerArchive,
                BufWriter::new(stdout),
            )
            .context("writing the archive to stdout")?;
            out.flush().context("writing the archive to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The manifest of `image` to keep: its only one, or the one for this machine's platform.
fn pick_manifest(image: &LoadedImage) -> anyhow::Result<&LoadedManifest> {
    if let [only] = image.manifests.as_slice() {
        return Ok(only);
    }
    let platforms: Vec<Platform> = image
        .manifests
        .iter()
        .map(|m| {
            m.descriptor
                .platform()
                .as_ref()
                .map(Platform::from)
                .unwrap_or_else(|| Platform::new("unknown", "unknown", None))
        })
        .collect();
    let host = Platform::host();
    let index = host.best_match(&platforms).with_context(|| {
        format!(
            "the archive has no image for {host} (it has: {})",
            platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok(&image.manifests[index])
}

/// Records the chosen manifest of `image` in the store; returns (manifest, config) digests.
fn record_loaded(store: &Store, loaded: &LoadedManifest) -> anyhow::Result<(Digest, Digest)> {
    let manifest_digest = kiln_digest(loaded.descriptor.digest())?;
    let config_digest = kiln_digest(loaded.manifest.config().digest())?;
    let config = ImageConfig::from_json(&loaded.config)
        .with_context(|| format!("parsing the config {config_digest}"))?;
    let layers = loaded.manifest.layers();
    if config.rootfs.diff_ids.len() != layers.len() {
        bail!(
            "image {manifest_digest}: the manifest has {} layers but the config lists {} diff ids",
            layers.len(),
            config.rootfs.diff_ids.len()
        );
    }
    let mut records = Vec::with_capacity(layers.len());
    for (layer, diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
        records.push(ManifestLayer {
            blob_digest: kiln_digest(layer.digest())?,
            diff_id: diff_id
                .parse()
                .with_context(|| format!("config {config_digest}: bad diff id {diff_id:?}"))?,
            media_type: layer.media_type().to_string(),
            size: layer.size(),
        });
    }
    store
        .record_manifest(&ManifestRecord {
            digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            media_type: loaded.descriptor.media_type().to_string(),
            layers: records,
        })
        .with_context(|| format!("recording manifest {manifest_digest}"))?;
    Ok((manifest_digest, config_digest))
}

/// The store name for a name found in an archive, or `None` for one that is not an image
/// reference (an OCI `ref.name` that is only a tag, like `latest`).
fn archive_name(name: &str) -> Option<String> {
    if !name.contains(':') && !name.contains('/') && !name.contains('@') {
        return None;
    }
    Reference::parse(name)
        .ok()
        .map(|r| r.with_default_tag().to_string())
}

pub fn run_load(args: LoadArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn io::Read> = match &args.input {
        Some(path) => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => {
            if io::stdin().is_terminal() {
                bail!("no archive to load: use -i FILE or pipe one to stdin");
            }
            Box::new(BufReader::new(io::stdin().lock()))
        }
    };
    let source_name = args
        .input
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let store = open_store(global)?;
    let _lock = store.lock_shared().context("locking the store")?;
    let archive = load_archive(reader, &StoreBlobs::new(&store))
        .with_context(|| format!("loading {source_name}"))?;
    if archive.images.is_empty() {
        bail!("{source_name} holds no images");
    }
    for image in &archive.images {
        let chosen = pick_manifest(image)?;
        let (manifest_digest, config_digest) = record_loaded(&store, chosen)?;
        let names: Vec<String> = image.names.iter().filter_map(|n| archive_name(n)).collect();
        for name in &names {
            store
                .tag(name, &manifest_digest, &config_digest)
                .with_context(|| format!("tagging {}", familiar(name)))?;
            if !args.quiet {
                println!("Loaded image: {}", familiar(name));
            }
        }
        if names.is_empty() {
            // The store keeps only named images: without a name the content is unreferenced.
            eprintln!(
                "warning: image {config_digest} has no name in the archive; it is not kept (load an archive with names)"
            );
            if !args.quiet {
                println!("Loaded image ID: {config_digest}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_become_store_names_and_bare_tags_are_skipped() {
        assert_eq!(
            archive_name("busybox:latest").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            archive_name("docker.io/library/alpine:3.19").as_deref(),
            Some("docker.io/library/alpine:3.19")
        );
        assert_eq!(
            archive_name("127.0.0.1:5000/app").as_deref(),
            Some("127.0.0.1:5000/app:latest")
        );
        assert_eq!(archive_name("latest"), None);
        assert_eq!(archive_name("Not A Name:x"), None);
    }

    #[test]
    fn an_atomic_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.tar");
        let mut file = AtomicFile::create(&target).unwrap();
        file.writer().unwrap().write_all(b"data").unwrap();
        assert!(!target.exists());
        file.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");

        let abandoned = dir.path().join("abandoned.tar");
        let mut file = AtomicFile::create(&abandoned).unwrap();
        file.writer().unwrap().write_all(b"partial").unwrap();
        drop(file);
        assert!(!abandoned.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

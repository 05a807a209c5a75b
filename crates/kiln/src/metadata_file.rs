//! `kiln build --metadata-file`: the JSON object `docker buildx build --metadata-file` writes after
//! a build, with BuildKit's key names (`containerimage.config.digest`, `containerimage.digest`,
//! `containerimage.descriptor`, `image.name`), so CI scripts that read it work unchanged. Keys kiln
//! cannot know are left out: `buildx.build.ref` (there is no builder), `buildx.build.provenance`
//! (no attestations are made).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// What a build made, for the metadata file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildMetadata {
    /// The image: absent for `type=local` and `type=tar`, which make none.
    pub image: Option<ImageMetadata>,
}

/// The image a build wrote, exported or pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMetadata {
    /// The config's digest (the image id).
    pub config_digest: String,
    /// The manifest's digest, media type and size.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    /// The names it was tagged, exported or pushed under.
    pub names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataFileError {
    #[error("writing the metadata file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serialising the build metadata: {0}")]
    Json(#[from] serde_json::Error),
}

impl BuildMetadata {
    /// The JSON object, keys as BuildKit names them.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(image) = &self.image {
            object.insert(
                "containerimage.config.digest".into(),
                json!(image.config_digest),
            );
            object.insert(
                "containerimage.descriptor".into(),
                json!({
                    "mediaType": image.manifest_media_type,
                    "digest": image.manifest_digest,
                    "size": image.manifest_size,
                }),
            );
            object.insert("containerimage.digest".into(), json!(image.manifest_digest));
            if !image.names.is_empty() {
                // BuildKit joins the names with commas, no spaces.
                object.insert("image.name".into(), json!(image.names.join(",")));
            }
        }
        Value::Object(object)
    }

    /// Writes the metadata to `path` atomically: a temp file beside it, fsynced, then renamed, so
    /// a reader never sees half a file.
    ///
    /// # Errors
    /// [`MetadataFileError::Io`] naming the file when creating, writing, syncing or renaming fails.
    pub fn write(&self, path: &Path) -> Result<(), MetadataFileError> {
        let mut bytes = serde_json::to_vec_pretty(&self.to_json())?;
        bytes.push(b'\n');
        let io_error = |source| MetadataFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.kiln-tmp-{}", std::process::id()));
        let result = (|| {
            let mut file = fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(names: &[&str]) -> ImageMetadata {
        ImageMetadata {
            config_digest: "sha256:c0".into(),
            manifest_digest: "sha256:m0".into(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest_size: 480,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn keys_are_buildkits() {
        let metadata = BuildMetadata {
            image: Some(image(&["docker.io/library/a:1", "docker.io/library/b:2"])),
        };
        assert_eq!(
            metadata.to_json(),
            json!({
                "containerimage.config.digest": "sha256:c0",
                "containerimage.descriptor": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:m0",
                    "size": 480,
                },
                "containerimage.digest": "sha256:m0",
                "image.name": "docker.io/library/a:1,docker.io/library/b:2",
            })
        );
    }

    #[test]
    fn unnamed_images_and_filesystem_outputs_leave_keys_out() {
        let unnamed = BuildMetadata {
            image: Some(image(&[])),
        }
        .to_json();
        assert!(unnamed.get("image.name").is_none());
        assert!(unnamed.get("containerimage.digest").is_some());
        assert_eq!(BuildMetadata::default().to_json(), json!({}));
    }

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        fs::write(
            &path,
            "old contents that are longer than the new ones, much longer",
        )
        .unwrap();
        BuildMetadata::default().write(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");

        let missing_dir = dir.path().join("nope/meta.json");
        let err = BuildMetadata::default().write(&missing_dir).unwrap_err();
        assert!(err.to_string().contains("nope/meta.json"), "{err}");
    }
}

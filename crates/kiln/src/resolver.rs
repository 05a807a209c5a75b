//! Base images for lowering: [`StoreResolver`] answers the frontend's "what is the config of this
//! image" from kiln's store, pulling the image first when the store does not have it (Docker's
//! behaviour: a local image wins). The manifest digest it returns pins the FROM to exactly that
//! image for the rest of the build. With `--pull` it asks the registry every time, as `docker build
//! --pull` does. Either way a reference is resolved once per build: every FROM of the same image sees
//! the same manifest, even if the tag moves during the build. A local image for another platform
//! than the one asked for (`--platform`, `FROM --platform`) does not count: as Docker, the
//! requested platform's image is pulled instead.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use kiln_frontend::lower::{ImageResolver, ResolveError, ResolvedImage};
use kiln_llb::Platform;
use kiln_solver::image::{
    ImageError, ImagePuller, RegistryTransport, find_image, read_config, resolve_image,
};
use kiln_store::{ManifestRecord, Store};

/// A registry puller created on first use, so builds that never pull never read Docker's
/// credentials or set up TLS.
#[derive(Default)]
pub struct LazyPuller {
    puller: OnceLock<Result<RegistryTransport, String>>,
}

impl ImagePuller for LazyPuller {
    fn pull(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
    ) -> Result<ManifestRecord, ImageError> {
        match self
            .puller
            .get_or_init(|| RegistryTransport::from_docker_config().map_err(|e| e.to_string()))
        {
            Ok(puller) => puller.pull(store, reference, platform),
            Err(message) => Err(ImageError::Client(message.clone())),
        }
    }
}

/// Resolves base images from the store, pulling missing ones (or every one, with `always_pull`).
pub struct StoreResolver {
    store: Store,
    puller: LazyPuller,
    always_pull: bool,
    /// (reference, platform) → what it resolved to in this build.
    resolved: Mutex<HashMap<(String, String), ResolvedImage>>,
}

impl StoreResolver {
    pub fn new(store: Store) -> StoreResolver {
        StoreResolver {
            store,
            puller: LazyPuller::default(),
            always_pull: false,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// `--pull`: resolve every base image from its registry even when the store has it.
    pub fn always_pull(mut self, always: bool) -> StoreResolver {
        self.always_pull = always;
        self
    }

    fn resolve_uncached(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, ResolveError> {
        let boxed = |error: ImageError| ResolveError(Box::new(error));
        // A reference pinned by digest names content, not a tag that may have moved: when the
        // store has it (an `oci-layout://` context is imported so), `--pull` has nothing to add.
        let pinned_and_stored =
            reference.contains('@') && find_image(&self.store, reference).map_err(boxed)?.is_some();
        let mut manifest = if self.always_pull && !pinned_and_stored {
            self.puller
                .pull(&self.store, reference, platform)
                .map_err(boxed)?
        } else {
            resolve_image(&self.store, reference, platform, Some(&self.puller)).map_err(boxed)?
        };
        let mut config = read_config(&self.store, &manifest).map_err(boxed)?;
        if !config_matches(&config, platform) {
            let found = config_platform(&config);
            manifest = self
                .puller
                .pull(&self.store, reference, platform)
                .map_err(|source| {
                    ResolveError(Box::new(PlatformMismatch {
                        reference: reference.to_string(),
                        found,
                        wanted: platform.to_string(),
                        source,
                    }))
                })?;
            config = read_config(&self.store, &manifest).map_err(boxed)?;
        }
        Ok(ResolvedImage {
            config,
            digest: Some(manifest.digest.to_string()),
        })
    }
}

impl ImageResolver for StoreResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let key = (reference.to_string(), platform.to_string());
        if let Some(found) = self
            .resolved
            .lock()
            .ok()
            .and_then(|memo| memo.get(&key).cloned())
        {
            return Ok(found);
        }
        let resolved = self.resolve_uncached(reference, platform)?;
        if let Ok(mut memo) = self.resolved.lock() {
            memo.insert(key, resolved.clone());
        }
        Ok(resolved)
    }
}

/// A local image for another platform whose requested platform could not be pulled.
#[derive(Debug, thiserror::Error)]
#[error(
    "image {reference} was found in the store but is for {found}, not {wanted}; pulling it for {wanted} failed: {source}"
)]
pub struct PlatformMismatch {
    pub reference: String,
    pub found: String,
    pub wanted: String,
    #[source]
    pub source: ImageError,
}

/// Whether an image config is for `platform`. An empty field matches anything; a variant counts
/// only when both name one (`arm64` and `arm64/v8` are one platform).
fn config_matches(config: &kiln_image::config::ImageConfig, platform: &Platform) -> bool {
    let same = |found: &str, wanted: &str| found.is_empty() || found.eq_ignore_ascii_case(wanted);
    let variant_matches = match platform.variant.as_deref() {
        Some(wanted) if !config.variant.is_empty() => {
            config.variant == wanted || (platform.architecture == "arm64" && config.variant == "v8")
        }
        _ => true,
    };
    same(&config.os, &platform.os)
        && same(&config.architecture, &platform.architecture)
        && variant_matches
}

fn config_platform(config: &kiln_image::config::ImageConfig) -> String {
    let mut text = format!("{}/{}", config.os, config.architecture);
    if !config.variant.is_empty() {
        text.push('/');
        text.push_str(&config.variant);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(os: &str, architecture: &str, variant: &str) -> kiln_image::config::ImageConfig {
        let mut config = kiln_image::config::ImageConfig::default();
        config.os = os.into();
        config.architecture = architecture.into();
        config.variant = variant.into();
        config
    }

    fn platform(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn configs_match_their_platform() {
        assert!(config_matches(
            &config("linux", "amd64", ""),
            &platform("amd64", None)
        ));
        assert!(!config_matches(
            &config("linux", "amd64", ""),
            &platform("arm64", None)
        ));
        assert!(config_matches(
            &config("linux", "arm64", "v8"),
            &platform("arm64", None)
        ));
        assert!(config_matches(
            &config("linux", "arm", "v7"),
            &platform("arm", Some("v7"))
        ));
        assert!(!config_matches(
            &config("linux", "arm", "v6"),
            &platform("arm", Some("v7"))
        ));
        assert!(config_matches(
            &config("", "", ""),
            &platform("s390x", None)
        ));
        assert_eq!(
            config_platform(&config("linux", "arm", "v7")),
            "linux/arm/v7"
        );
    }
}

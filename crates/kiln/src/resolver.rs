//! Base images for lowering: [`StoreResolver`] answers the frontend's "what is the config of this
//! image" from kiln's store, pulling the image first when the store does not have it (Docker's
//! behaviour: a local image wins). The manifest digest it returns pins the FROM to exactly that
//! image for the rest of the build. With `--pull` it asks the registry every time, as `docker build
//! --pull` does. Either way a reference is resolved once per build: every FROM of the same image sees
//! the same manifest, even if the tag moves during the build.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use kiln_frontend::lower::{ImageResolver, ResolveError, ResolvedImage};
use kiln_llb::Platform;
use kiln_solver::image::{ImageError, ImagePuller, RegistryTransport, read_config, resolve_image};
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
    ) -> Result<ResolvedImage, ImageError> {
        let manifest = if self.always_pull {
            self.puller.pull(&self.store, reference, platform)?
        } else {
            resolve_image(&self.store, reference, platform, Some(&self.puller))?
        };
        let config = read_config(&self.store, &manifest)?;
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
        let resolved = self
            .resolve_uncached(reference, platform)
            .map_err(|e| ResolveError(Box::new(e)))?;
        if let Ok(mut memo) = self.resolved.lock() {
            memo.insert(key, resolved.clone());
        }
        Ok(resolved)
    }
}

//! Base images for lowering: [`StoreResolver`] answers the frontend's "what is the config of this
//! image" from kiln's store, pulling the image first when the store does not have it (Docker's
//! behaviour: a local image wins). The manifest digest it returns pins the FROM to exactly that
//! image for the rest of the build.

use std::sync::OnceLock;

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

/// Resolves base images from the store, pulling missing ones.
pub struct StoreResolver {
    store: Store,
    puller: LazyPuller,
}

impl StoreResolver {
    pub fn new(store: Store) -> StoreResolver {
        StoreResolver {
            store,
            puller: LazyPuller::default(),
        }
    }
}

impl ImageResolver for StoreResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let manifest = resolve_image(&self.store, reference, platform, Some(&self.puller))
            .map_err(|e| ResolveError(Box::new(e)))?;
        let config = read_config(&self.store, &manifest).map_err(|e| ResolveError(Box::new(e)))?;
        Ok(ResolvedImage {
            config,
            digest: Some(manifest.digest.to_string()),
        })
    }
}

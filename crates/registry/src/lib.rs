//! Distribution client: resolve, pull and push images, authenticate (basic and bearer tokens, Docker's
//! config.json and credential helpers), retry.
//!
//! Our own thin client on `reqwest` + rustls rather than `oci-client`, which buffers whole layers in
//! memory and neither checks for blobs before pushing nor retries (DESIGN.md, Dependencies).
//! [`client::RegistryClient`] speaks the HTTP API; blob data always streams between the network and
//! files, never whole in memory.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod transfer;

pub use client::{
    Access, Anonymous, ClientOptions, CredentialSource, FetchedManifest, INSECURE_REGISTRIES_ENV,
    RegistryClient, Repository, parse_registry_list,
};
pub use error::RegistryError;
pub use transfer::{PulledImage, TransferEvent, WantedPlatform, pull, push};

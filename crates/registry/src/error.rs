//! The registry crate's errors: each says what failed and for which registry, repository or blob.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unauthorized at {registry}: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("{what} not found in {repository}")]
    NotFound { what: String, repository: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("cannot reach {registry}: {message}")]
    Connection { registry: String, message: String },
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("invalid manifest {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("no image for platform {platform} in {reference} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(String),
    #[error("HTTP client: {0}")]
    Client(String),
}

//! Plain image types, no I/O: the image config with Docker's extensions (ordered maps so digests are
//! stable), image references with Docker's naming rules, platforms and media types, and the magic
//! bytes that tell compressed streams and tar archives apart.

pub mod config;
pub mod digest;
pub mod magic;
pub mod media_types;
pub mod platform;
pub mod reference;
pub mod user;
pub use config::{ConfigError, ContainerConfig, Healthcheck, History, ImageConfig, RootFs};
pub use digest::{Digest, DigestError};
pub use magic::StreamCompression;
pub use media_types::LayerCompression;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};

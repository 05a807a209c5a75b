//! Formats: layer diff and apply (tar with whiteouts), compression, OCI image layout and docker-archive
//! export and import.

pub mod apply;
pub mod blobs;
pub mod compress;
pub mod diff;
pub mod export;
pub mod import;
pub mod manifest;
pub mod tar_writer;
mod xattrs;

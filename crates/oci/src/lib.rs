//! Formats: layer diff and apply (tar with whiteouts), compression, OCI image layout and docker-archive
//! export and import. This crate knows bytes on disk and in archives; it never talks to the store
//! directly: blobs come and go through the small [`blobs::BlobSource`] / [`blobs::BlobSink`] traits.
//!
//! - [`diff`]: a directory (plain, or an overlayfs upper dir) → a deterministic PAX layer tar.
//! - [`apply`]: a layer tar (plain or compressed) → a directory, confined with `openat2(RESOLVE_IN_ROOT)`,
//!   whiteouts in overlay lower-dir form or applied onto a merged tree.
//! - [`compress`]: diff id and blob digest in one streaming pass; parallel multi-member gzip; zstd;
//!   decompression of gzip, bzip2, xz and zstd told by magic bytes ([`kiln_image::magic`]).
//! - [`export`] / [`import`]: OCI layout tars and docker archives (Docker 25+ and legacy), several
//!   images per archive, every blob verified.
//! - [`manifest`]: media types (OCI or Docker), manifest building, deterministic JSON.
//! - [`tar_writer`]: the header writer behind all of the above (`tar` is used for reading only).

pub mod apply;
pub mod blobs;
pub mod compress;
pub mod diff;
pub mod export;
pub mod import;
pub mod manifest;
pub mod tar_writer;
mod xattrs;

//! Formats: layer diff and apply (tar with whiteouts), compression, OCI image layout and docker-archive
//! export and import.

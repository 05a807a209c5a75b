//! The image config (OCI plus Docker's extensions) and its history entries, with ordered maps.

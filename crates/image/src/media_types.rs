//! Media types of OCI and Docker manifests, indexes, configs and layers.

//! Image references with Docker's rules: `docker.io` and `library/` defaults, tags, digests, ports.

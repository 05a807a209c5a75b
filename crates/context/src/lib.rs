//! Build contexts: a directory walk honouring `.dockerignore` (Docker's pattern rules), a tar from
//! stdin, and content checksums of exactly the paths an operation selects.

//! The op vocabulary of kiln builds: a `Definition` is a list of ops (Source, Exec, File, Merge) in
//! dependency order; each op names its inputs by `(op digest, output index)`. The op digest is the
//! sha256 of the op's canonical encoding, so equal ops are one node.

//! Build contexts: a directory walk honouring `.dockerignore` (Docker's pattern rules), the choice
//! of ignore file, COPY/ADD source selection, and content checksums of exactly the paths an
//! operation selects.
//!
//! The crate works on plain directories and knows nothing about the store: the persistent stat
//! cache is the [`StatCache`] trait, implemented by the store and by [`MemoryStatCache`] in tests.
//!
//! - [`dockerignore`]: reading and matching `.dockerignore` patterns ([`IgnorePatterns`]).
//! - [`ignore_file`]: which ignore file applies (`<Dockerfile>.dockerignore` first).
//! - [`walk`]: the sorted, symlink-preserving context walk ([`walk_context`]).
//! - [`sources`]: COPY/ADD source resolution with wildcards, confined to a root ([`resolve_sources`]).
//! - [`mod@checksum`]: content checksums with per-path records ([`checksum()`]).
//! - [`stat_cache`]: the stat cache trait and its racy-entry rule.
//! - [`stdin_context`]: a context (or a Dockerfile) read from stdin ([`read_stdin_context`]).
//! - [`glob`]: Go's `filepath.Match` and `path.Clean`, the primitives under all of the above.

pub mod checksum;
pub mod dockerignore;
pub mod glob;
pub mod ignore_file;
pub mod sources;
pub mod stat_cache;
pub mod stdin_context;
pub mod walk;

pub use checksum::{
    ChecksumError, ChecksumOptions, ChecksumStats, ContentChecksum, EntryChange, EntryRecord,
    checksum, checksum_with_options, diff_entries, diff_entries_by,
};
pub use dockerignore::{DirMatch, IgnorePatterns, PatternError, read_ignore_lines};
pub use ignore_file::{ContextIgnore, IgnoreFileError, load_context_ignore};
pub use sources::{
    ResolvedSource, SelectedSource, SourceError, SourceOptions, resolve_sources, select_entries,
};
pub use stat_cache::{
    CachedDigest, CachedXattrs, MemoryStatCache, NoStatCache, StatCache, StatKey,
};
pub use stdin_context::{Compression, StdinContext, StdinContextError, read_stdin_context};
pub use walk::{Entry, FileKind, WalkError, walk_context};

//! File operations with Docker's semantics (COPY, ADD, WORKDIR, heredoc files, rm): applied in-process to
//! a mounted root filesystem, never in a sandbox.
//!
//! The solver mounts the step's root filesystem (overlay: the input layers plus a fresh upper dir, which
//! becomes the new layer) and calls [`copy`], [`mkdir`], [`mkfile`] or [`rm`] on that directory; removals
//! turn into whiteouts by themselves, so nothing here knows about layers. Every path — in the destination
//! root and in the source root (the build context or another stage's root) — is resolved confined to its
//! root with `openat2(RESOLVE_IN_ROOT)`: the image's own symlinks are followed, absolute ones relative to
//! the root, and nothing can reach outside (see `root`). Archive extraction for `ADD` is stricter still
//! (`RESOLVE_BENEATH` from the destination directory, see `archive`).
//!
//! Behaviour follows BuildKit (`solver/llbsolver/file`, `fsutil/copy`); where kiln differs it says so in
//! the module docs.
//!
//! ```no_run
//! use std::path::Path;
//! use kiln_fileop::{Chmod, Chown, CopyOptions, copy, mkdir};
//!
//! # fn main() -> kiln_fileop::Result<()> {
//! let rootfs = Path::new("/var/lib/kiln/tmp/step-4/merged");
//! // WORKDIR /app
//! mkdir(rootfs, "/app", 0o755, true, None, None)?;
//! // COPY --chown=app:app --chmod=0644 src/ config.toml ./
//! let mut opts = CopyOptions::new(vec!["src/".into(), "config.toml".into()], "./");
//! opts.workdir = "/app".into();
//! opts.chown = Some(Chown::Spec("app:app".into()));
//! opts.chmod = Some(Chmod::parse("0644")?);
//! let report = copy(Path::new("/home/me/project"), rootfs, &opts)?;
//! println!("{} files, {} bytes", report.files, report.bytes);
//! # Ok(())
//! # }
//! ```

mod archive;
mod copy;
mod error;
mod mode;
mod ops;
mod owner;
mod pattern;
mod root;
mod xattr;

pub use copy::{CopyOptions, CopyReport, copy};
pub use error::{FileOpError, Result};
pub use mode::Chmod;
pub use ops::{mkdir, mkfile, rm};
pub use owner::Chown;
pub use pattern::{PatternSet, glob_match, has_wildcards};

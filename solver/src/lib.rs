//! The solver: executes an LLB [`Definition`](kiln_llb::Definition) for a target and produces a layer
//! chain in the store, then assembles images from chains. It knows ops, layers and the store; it never
//! sees a Dockerfile (descriptions and locations arrive as op metadata).
//!
//! - [`solve`]: [`Solver::solve`] runs the ops the target needs, each once, in parallel as their
//!   inputs become ready, each through the build cache and then [`ops::execute_op`] — a pure "run
//!   one op given its inputs' results" function. [`Solver::explain`] reports hits and misses
//!   without running anything.
//! - [`ops`]: one module per op kind (sources, file ops, exec); [`layers`] turns snapshot diffs into
//!   committed layers and extracts image layers into `layers/`.
//! - [`image`]: finding and pulling base images, writing an image (config + manifest) from a chain,
//!   and the merged root filesystem for `type=local`/`type=tar` exports.
//! - [`cache`]: cache keys (op digest, input results, checksums of exactly what a COPY reads),
//!   records in the store, and miss explanations; [`schedule`] runs independent ops in parallel.
//! - [`progress`]: the events a display receives; [`error`]: [`SolveError`] naming the failing step.
//! - [`ssh`]: the proxy socket through which a RUN step reaches an SSH agent (`--mount=type=ssh`).
//!
//! Mounts happen only on short-lived threads in private mount namespaces (see `mount`), so a killed
//! kiln never leaves a mount behind; temporary dirs live in the store's session scratch dir.

pub mod cache;
pub mod error;
pub mod image;
pub mod layers;
mod mount;
pub mod ops;
pub mod progress;
pub mod result;
pub mod schedule;
pub mod scratch;
pub mod solve;
pub mod ssh;

pub use error::{OpError, SolveError};
pub use ops::{SecretSource, Secrets, SshAgents};
pub use progress::{NoProgress, Progress, ProgressEvent, StepId};
pub use result::{Layer, LocalDir, OpOutput};
pub use scratch::ScratchDir;
pub use solve::{LocalSource, SnapshotterKind, SolveOptions, Solver};

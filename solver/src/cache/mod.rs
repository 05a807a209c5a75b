//! The content-addressed build cache: what a step's cache key is made of ([`key`]), how a step's
//! result is recorded in and restored from the store ([`record`]), and why a step missed
//! ([`explain`]), and how records travel between stores ([`transfer`]: `--cache-to` and
//! `--cache-from`; [`local_dir`]: locking and cleaning a shared cache directory). `docs/cache-keys.md` and `docs/cache-export.md` explain the choices.
//!
//! A key is `sha256(op digest without inputs ‖ identity of each input ‖ checksum of what the op
//! reads from local sources)`, where the identity of a root-filesystem input is the chain id of
//! the layers it *produced* (not its own key): a step that re-ran but wrote identical bytes lets the
//! steps after it hit, and an image base is keyed by its diff-id chain whatever its tag or manifest.
//! Local sources are never keyed as a whole: a COPY from the context contributes the checksum of
//! exactly the paths it selects (kiln-context), with the store as stat cache.

pub mod explain;
pub mod key;
pub mod local_dir;
pub mod record;
pub mod transfer;

pub use explain::{StepPlan, explain_miss, format_plan};
pub use key::{
    ContentComponent, InputComponent, InputKind, KeyComponents, KeyError, OpSummary, compute_key,
};
pub use record::{CacheEntry, LayerRecord, RecordError, StoreStatCache};

//! The solve loop: the ops the target needs, each once (ops are deduplicated by digest in the
//! definition), in dependency order, one at a time for now. Each op goes through
//! [`crate::ops::execute_op`]; this module owns only ordering, bookkeeping and progress events, so a
//! parallel scheduler can replace the loop without touching the ops.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kiln_executor::{NativeSnapshotter, OverlaySnapshotter, Snapshotter};
use kiln_llb::{Definition, OpDigest, OpRef};
use kiln_store::Store;

use crate::error::{OpError, SolveError};
use crate::image::ImagePuller;
use crate::layers::LayerOptions;
use crate::ops::{OpContext, execute_op};
use crate::progress::{Progress, ProgressEvent};
use crate::result::OpOutput;
use crate::scratch::ScratchDir;

pub use crate::ops::LocalSource;

/// Which snapshotter RUN and file ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotterKind {
    /// overlayfs when it can be mounted here, else the copying snapshotter.
    #[default]
    Auto,
    Overlay,
    Native,
}

/// What a solve needs besides the definition.
#[derive(Debug, Clone, Default)]
pub struct SolveOptions {
    pub snapshotter: SnapshotterKind,
    pub layers: LayerOptions,
    /// Local sources by name.
    pub locals: BTreeMap<String, LocalSource>,
}

/// Executes definitions against a store.
pub struct Solver<'a> {
    store: Store,
    options: SolveOptions,
    progress: &'a dyn Progress,
    puller: Option<&'a dyn ImagePuller>,
    snapshotter: Box<dyn Snapshotter>,
}

impl<'a> Solver<'a> {
    /// A solver over `store`; picks the snapshotter now (probing overlayfs for
    /// [`SnapshotterKind::Auto`]).
    pub fn new(
        store: Store,
        options: SolveOptions,
        progress: &'a dyn Progress,
        puller: Option<&'a dyn ImagePuller>,
    ) -> Solver<'a> {
        let snapshotter: Box<dyn Snapshotter> = match options.snapshotter {
            SnapshotterKind::Overlay => Box::new(OverlaySnapshotter),
            SnapshotterKind::Native => Box::new(NativeSnapshotter),
            SnapshotterKind::Auto => {
                let usable = ScratchDir::new(&store, "probe")
                    .map(|dir| crate::mount::overlay_usable(dir.path()))
                    .unwrap_or(false);
                if usable {
                    Box::new(OverlaySnapshotter)
                } else {
                    tracing::info!("overlayfs is not usable here; using the copying snapshotter");
                    Box::new(NativeSnapshotter)
                }
            }
        };
        Solver {
            store,
            options,
            progress,
            puller,
            snapshotter,
        }
    }

    /// The snapshotter in use (`overlay` or `native`).
    pub fn snapshotter_name(&self) -> &'static str {
        self.snapshotter.name()
    }

    /// Computes `target` of `definition`.
    ///
    /// # Errors
    /// [`SolveError`] for the first op that fails, naming its description and location.
    pub fn solve(&self, definition: &Definition, target: &OpRef) -> Result<OpOutput, SolveError> {
        let needed = definition.restricted_to(std::slice::from_ref(target));
        let mut results: HashMap<OpDigest, OpOutput> = HashMap::new();
        let mut next_step = 0;
        for (digest, op, metadata) in needed.iter() {
            let description = metadata.and_then(|m| m.description.clone());
            let location = metadata.and_then(|m| m.location.clone());
            let fail = |kind: OpError| SolveError {
                description: description
                    .clone()
                    .unwrap_or_else(|| format!("{} op {}", op.kind_name(), digest.short())),
                location: location.clone(),
                kind: Box::new(kind),
            };
            let inputs = op
                .inputs
                .iter()
                .map(|input| {
                    if input.output != 0 {
                        return Err(OpError::Unsupported(format!(
                            "reading output {} of an op",
                            input.output
                        )));
                    }
                    results
                        .get(&input.digest)
                        .cloned()
                        .ok_or_else(|| OpError::MissingInput(input.digest.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;

            let step = description.as_ref().map(|text| {
                next_step += 1;
                self.progress.event(ProgressEvent::Started {
                    id: next_step,
                    description: text.clone(),
                });
                next_step
            });
            let started = Instant::now();
            let cx = OpContext {
                store: &self.store,
                snapshotter: self.snapshotter.as_ref(),
                layer_options: self.options.layers,
                locals: &self.options.locals,
                puller: self.puller,
                progress: self.progress,
                step,
            };
            match execute_op(&cx, op, &inputs) {
                Ok(output) => {
                    if let Some(id) = step {
                        self.progress.event(ProgressEvent::Done {
                            id,
                            elapsed: started.elapsed(),
                        });
                    }
                    results.insert(digest.clone(), output);
                }
                Err(kind) => {
                    if let Some(id) = step {
                        self.progress.event(ProgressEvent::Failed {
                            id,
                            elapsed: started.elapsed(),
                            error: kind.to_string(),
                        });
                    }
                    return Err(fail(kind));
                }
            }
        }
        results.remove(&target.digest).ok_or_else(|| SolveError {
            description: format!("target {}", target.digest.short()),
            location: None,
            kind: Box::new(OpError::MissingInput(target.digest.to_string())),
        })
    }
}

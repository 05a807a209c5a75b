//! Executing one op given the results of its inputs: [`execute_op`] is pure in that sense (it reads
//! the inputs' results and the store, writes new layers, and returns the op's output), which is what
//! lets a scheduler run independent ops in parallel and a cache skip them.

mod exec;
mod file;
mod git;
mod http;
pub mod mounts;
mod source;

use kiln_executor::Snapshotter;
use kiln_llb::{Op, OpKind};
use kiln_store::Store;

use crate::error::OpError;
use crate::image::ImagePuller;
use crate::layers::LayerOptions;
use crate::progress::{Progress, StepId};
use crate::result::{Layer, OpOutput};

pub use mounts::{SecretSource, Secrets, SshAgents};
pub(crate) use source::ContextIgnore;
pub use source::LocalSource;

/// Everything an op may use besides its inputs.
pub struct OpContext<'a> {
    pub store: &'a Store,
    pub snapshotter: &'a dyn Snapshotter,
    pub layer_options: LayerOptions,
    /// Local sources by name (`context`, named contexts).
    pub locals: &'a std::collections::BTreeMap<String, LocalSource>,
    /// Build secrets by id (`RUN --mount=type=secret`).
    pub secrets: &'a Secrets,
    /// SSH agent sockets by id (`RUN --mount=type=ssh`); never part of a cache key.
    pub ssh_agents: &'a SshAgents,
    /// Pulls base images missing from the store; `None` fails instead.
    pub puller: Option<&'a dyn ImagePuller>,
    pub progress: &'a dyn Progress,
    /// The step this op is shown as, for output lines (`None` for ops without a description).
    pub step: Option<StepId>,
    /// Resource limits for RUN sandboxes (never part of a cache key).
    pub limits: kiln_executor::ResourceLimits,
    /// `--add-host` lines for RUN sandboxes' `/etc/hosts`, as (name, address).
    pub extra_hosts: &'a [(String, String)],
}

impl OpContext<'_> {
    /// Sends an output line of this op to the display.
    pub(crate) fn output(&self, line: String) {
        if let Some(id) = self.step {
            crate::progress::emit(
                self.progress,
                crate::progress::ProgressEvent::Output { id, line },
            );
        }
    }

    /// Runs `work` as phase `name` of this op's step (see [`crate::progress::time_phase`]).
    pub(crate) fn phase<T>(&self, name: crate::progress::Phase, work: impl FnOnce() -> T) -> T {
        crate::progress::time_phase(self.progress, name, self.step, None, work)
    }
}

/// Runs `op` whose inputs produced `inputs` (in the order of `op.inputs`) and returns its output 0.
///
/// # Errors
/// [`OpError`] saying what failed: a missing image or context, a file operation, a failing command,
/// a store or snapshot failure, or an op feature not supported yet.
pub fn execute_op(cx: &OpContext<'_>, op: &Op, inputs: &[OpOutput]) -> Result<OpOutput, OpError> {
    match &op.kind {
        OpKind::Source(source) => source::run_source(cx, source),
        OpKind::File(file) => file::run_file(cx, file, inputs),
        OpKind::Exec(exec) => exec::run_exec(cx, exec, inputs),
        OpKind::Merge(_) => Ok(OpOutput::Chain(merge(inputs)?)),
    }
}

/// The identity a source's output will have when it is known before the source runs — a download
/// pinned by `--checksum`, a checkout of a full commit id — so that the steps reading it can hit
/// the cache without fetching anything. `None` for every other source.
pub(crate) fn pinned_source_identity(source: &kiln_llb::SourceOp) -> Option<String> {
    match source {
        kiln_llb::SourceOp::Http {
            url,
            checksum: Some(checksum),
            filename,
        } => http::pinned_identity(url, checksum, filename.as_deref()),
        kiln_llb::SourceOp::Git {
            url,
            reference,
            subdir,
            keep_git_dir,
        } => git::pinned_identity(&git::GitSpec {
            url,
            reference: reference.as_deref(),
            subdir: subdir.as_deref(),
            keep_git_dir: *keep_git_dir,
        }),
        _ => None,
    }
}

/// The layer chain of input `index`.
pub(crate) fn chain_input(inputs: &[OpOutput], index: u32) -> Result<&[Layer], OpError> {
    match inputs.get(index as usize) {
        Some(OpOutput::Chain(chain)) => Ok(chain),
        Some(OpOutput::Local(_)) => Err(OpError::BadInput {
            index,
            found: "a local directory",
            expected: "a root filesystem",
        }),
        None => Err(OpError::MissingInput(format!("#{index}"))),
    }
}

/// Stacks the inputs' chains (later ones on top). Layers keep their extracted dirs; chain ids are
/// recomputed for their new position.
fn merge(inputs: &[OpOutput]) -> Result<Vec<Layer>, OpError> {
    let mut merged: Vec<Layer> = Vec::new();
    for index in 0..inputs.len() {
        for layer in chain_input(inputs, index as u32)? {
            let parent = merged.last().map(|l| l.chain_id.clone());
            merged.push(Layer {
                chain_id: kiln_store::chain_id(parent.as_ref(), &layer.diff_id),
                ..layer.clone()
            });
        }
    }
    Ok(merged)
}

/// The extracted dirs of a chain, bottom first.
pub(crate) fn layer_dirs(chain: &[Layer]) -> Vec<std::path::PathBuf> {
    chain.iter().map(|layer| layer.dir.clone()).collect()
}

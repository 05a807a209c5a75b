//! Progress events: a step starts (with its description), prints output lines, finishes or fails.
//! The CLI turns them into BuildKit-style plain text or a terminal display; the solver only emits.

use std::time::Duration;

/// Identifies a step within one solve (1, 2, …, in the order steps start).
pub type StepId = usize;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A step started; `description` is the op's (`[2/3] COPY a /b`).
    Started { id: StepId, description: String },
    /// A line of output (a RUN's stdout or stderr, or a note such as "pulling ...").
    Output { id: StepId, line: String },
    /// The step finished successfully.
    Done { id: StepId, elapsed: Duration },
    /// The step's result came from the build cache; it did not run.
    Cached { id: StepId },
    /// The step missed the cache and is about to run; `reason` says why (`src/main.rs content
    /// changed`).
    CacheMiss { id: StepId, reason: String },
    /// The step failed with `error`.
    Failed {
        id: StepId,
        elapsed: Duration,
        error: String,
    },
}

/// Receives progress events; called from whichever thread runs the step.
pub trait Progress: Send + Sync {
    fn event(&self, event: ProgressEvent);
}

/// Drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: ProgressEvent) {}
}

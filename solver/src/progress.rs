//! Progress events: a step starts (with its description), prints output lines, finishes or fails;
//! the build's phases (parse, lower, cache keys, lookups, exec, file ops, layer commits, export)
//! report how long they took. The CLI turns them into BuildKit-style plain text, a terminal
//! display or a JSON stream; the solver only emits.
//!
//! Every event the solver sends carries the moment it was created ([`TimedEvent`]), so a display
//! that records times (the JSON stream) shows when things happened, not when the display got to
//! them. [`ProgressEvent`] itself stays free of times so that events compare by what happened.

use std::time::{Duration, Instant};

/// Identifies a step within one solve (1, 2, …, in the order steps start).
pub type StepId = usize;

/// A part of a build whose time is worth seeing on its own. Phases nest: [`Phase::Layer`] runs
/// inside [`Phase::Exec`] or [`Phase::File`], and steps in parallel overlap, so durations of one
/// build do not add up to its wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Reading and parsing the Dockerfile.
    Parse,
    /// Lowering the Dockerfile to LLB (the frontend, with base images resolved).
    Lower,
    /// Computing a step's cache key: scanning and checksumming the context paths it reads.
    CacheKey,
    /// Looking a step's key up in the cache and restoring the recorded layers on a hit.
    CacheLookup,
    /// A source op: pulling or extracting a base image, staging a local context.
    Source,
    /// A RUN step: sandbox, command and layer commit.
    Exec,
    /// A file op (COPY, ADD, WORKDIR's mkdir), layer commit included.
    File,
    /// Stacking layers of `COPY --link`.
    Merge,
    /// Turning a step's changes into a layer: diff tar, compression, writing the blob.
    Layer,
    /// Writing the image (config, manifest) and exporting it: tag, archive, directory, push.
    Export,
}

impl Phase {
    /// Every phase, in build order.
    pub const ALL: [Phase; 10] = [
        Phase::Parse,
        Phase::Lower,
        Phase::CacheKey,
        Phase::CacheLookup,
        Phase::Source,
        Phase::Exec,
        Phase::File,
        Phase::Merge,
        Phase::Layer,
        Phase::Export,
    ];

    /// The phase's name in machine-readable output (`cache-key`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Parse => "parse",
            Phase::Lower => "lower",
            Phase::CacheKey => "cache-key",
            Phase::CacheLookup => "cache-lookup",
            Phase::Source => "source",
            Phase::Exec => "exec",
            Phase::File => "file",
            Phase::Merge => "merge",
            Phase::Layer => "layer",
            Phase::Export => "export",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// A phase of the build ended after `elapsed`; `step` is the step it belongs to once that
    /// step has started, `description` the op's when known (cache keys are computed before a
    /// step starts, so they name the op instead).
    Phase {
        name: Phase,
        step: Option<StepId>,
        description: Option<String>,
        elapsed: Duration,
    },
    /// A note for the user that belongs to no step (a Dockerfile warning).
    Warning { message: String },
    /// The build wrote the image with this id (`sha256:…`, the config digest); the last event.
    Image { id: String },
}

/// An event with the moment it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedEvent {
    pub at: Instant,
    pub event: ProgressEvent,
}

impl TimedEvent {
    /// `event`, happening now.
    pub fn now(event: ProgressEvent) -> TimedEvent {
        TimedEvent {
            at: Instant::now(),
            event,
        }
    }
}

/// Receives progress events; called from whichever thread runs the step.
pub trait Progress: Send + Sync {
    /// Receives an event as it happens.
    fn event(&self, event: ProgressEvent);

    /// Receives an event with the moment it was created. The solver sends every event this way;
    /// displays that show times override it, the others get [`Progress::event`].
    fn timed_event(&self, event: TimedEvent) {
        self.event(event.event);
    }
}

/// Sends `event` to `progress`, stamped with the current time.
pub fn emit(progress: &dyn Progress, event: ProgressEvent) {
    progress.timed_event(TimedEvent::now(event));
}

/// Runs `work` and reports its duration as phase `name` (whatever `work` returns: time spent on a
/// failure was spent too). The phase event is sent before the caller reports the step's end, so a
/// step's phases arrive between its `Started` and its `Done` or `Failed`.
pub fn time_phase<T>(
    progress: &dyn Progress,
    name: Phase,
    step: Option<StepId>,
    description: Option<&str>,
    work: impl FnOnce() -> T,
) -> T {
    let started = Instant::now();
    let result = work();
    emit(
        progress,
        ProgressEvent::Phase {
            name,
            step,
            description: description.map(str::to_string),
            elapsed: started.elapsed(),
        },
    );
    result
}

/// Drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: ProgressEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps timed events as they arrive.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<TimedEvent>>);

    impl Progress for Recorder {
        fn event(&self, event: ProgressEvent) {
            self.timed_event(TimedEvent::now(event));
        }

        fn timed_event(&self, event: TimedEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    /// Keeps only the events, through the default `timed_event`.
    #[derive(Default)]
    struct Untimed(Mutex<Vec<ProgressEvent>>);

    impl Progress for Untimed {
        fn event(&self, event: ProgressEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn time_phase_reports_the_work_duration_after_the_work() {
        let recorder = Recorder::default();
        let before = Instant::now();
        let value = time_phase(
            &recorder,
            Phase::Layer,
            Some(4),
            Some("[2/2] RUN x"),
            || {
                std::thread::sleep(Duration::from_millis(20));
                7
            },
        );
        assert_eq!(value, 7);
        let events = recorder.0.lock().unwrap();
        assert_eq!(events.len(), 1);
        let TimedEvent { at, event } = &events[0];
        match event {
            ProgressEvent::Phase {
                name,
                step,
                description,
                elapsed,
            } => {
                assert_eq!(*name, Phase::Layer);
                assert_eq!(*step, Some(4));
                assert_eq!(description.as_deref(), Some("[2/2] RUN x"));
                assert!(*elapsed >= Duration::from_millis(20), "{elapsed:?}");
                // Stamped when the work ended, not when it began.
                assert!(at.duration_since(before) >= *elapsed);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    #[test]
    fn displays_without_times_get_the_plain_event() {
        let untimed = Untimed::default();
        emit(&untimed, ProgressEvent::Cached { id: 2 });
        assert_eq!(
            *untimed.0.lock().unwrap(),
            vec![ProgressEvent::Cached { id: 2 }]
        );
    }

    #[test]
    fn phase_names_are_distinct_and_kebab_case() {
        let mut names: Vec<&str> = Phase::ALL.iter().map(|phase| phase.name()).collect();
        assert!(
            names
                .iter()
                .all(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
        assert_eq!(Phase::CacheKey.to_string(), "cache-key");
    }
}

//! The build's progress display. `plain` prints BuildKit's plain format, one line per event, so logs
//! read the same as `docker build --progress=plain`:
//!
//! ```text
//! #1 [1/3] FROM docker.io/library/busybox:latest
//! #1 CACHED
//! #2 [2/3] COPY hello.txt /
//! #2 DONE 0.1s
//! #3 [3/3] RUN echo hi
//! #3 0.084 hi
//! #3 DONE 0.2s
//! ```
//!
//! `tty` (what `auto` picks when stderr is a terminal) shows a spinner per running step with
//! indicatif and prints output lines above them; `quiet` prints only warnings (the image id goes
//! to stdout in every mode). `json` is for tools: one JSON object per line, every event with its
//! time since the build started, including the build's phases (where the time went) and the
//! image id; `docs/progress-json.md` describes the format.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use kiln_solver::progress::TimedEvent;
use kiln_solver::{Progress, ProgressEvent};

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, `plain` otherwise.
    Auto,
    /// BuildKit's plain text: `#N [stage i/n] …`, output lines, `#N DONE 0.4s`, `#N CACHED`.
    Plain,
    /// A live display with a spinner per running step (plain text when not on a terminal).
    Tty,
    /// Nothing but warnings; the image id still goes to stdout.
    Quiet,
    /// One JSON object per line with timestamps and phase durations (docs/progress-json.md).
    Json,
}

impl ProgressMode {
    /// The display for this mode: `auto` and `tty` show the terminal display when stderr is a
    /// terminal, plain text otherwise. Times in `json` count from this call.
    pub fn display(self) -> Box<dyn Progress> {
        match self {
            ProgressMode::Quiet => Box::new(QuietProgress),
            ProgressMode::Json => Box::new(JsonProgress::new(std::io::stderr())),
            ProgressMode::Plain => Box::new(PlainProgress::new(std::io::stderr())),
            // indicatif draws nothing on a non-terminal, so `tty` falls back to plain there.
            ProgressMode::Tty | ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Box::new(TtyProgress::new(ProgressDrawTarget::stderr()))
            }
            ProgressMode::Tty | ProgressMode::Auto => {
                Box::new(PlainProgress::new(std::io::stderr()))
            }
        }
    }
}

/// Writes events in BuildKit's plain format to a writer (stderr in the CLI).
pub struct PlainProgress<W: Write + Send> {
    out: Mutex<W>,
    /// When each running step started, for output line offsets.
    started: Mutex<Vec<(usize, Instant)>>,
}

impl<W: Write + Send> PlainProgress<W> {
    pub fn new(out: W) -> PlainProgress<W> {
        PlainProgress {
            out: Mutex::new(out),
            started: Mutex::new(Vec::new()),
        }
    }

    fn write_line(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            // A closed stderr must not fail the build.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// How long after step `id` started `at` is.
    fn since_start(&self, id: usize, at: Instant) -> Duration {
        self.started
            .lock()
            .ok()
            .and_then(|started| {
                started
                    .iter()
                    .find(|(step, _)| *step == id)
                    .map(|(_, started)| at.saturating_duration_since(*started))
            })
            .unwrap_or_default()
    }
}

/// `0.4s`, as BuildKit prints durations of finished steps.
fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

impl<W: Write + Send> Progress for PlainProgress<W> {
    fn event(&self, event: ProgressEvent) {
        self.timed_event(TimedEvent::now(event));
    }

    fn timed_event(&self, event: TimedEvent) {
        let TimedEvent { at, event } = event;
        match event {
            ProgressEvent::Started { id, description } => {
                if let Ok(mut started) = self.started.lock() {
                    started.push((id, at));
                }
                self.write_line(&format!("#{id} {description}"));
            }
            ProgressEvent::Output { id, line } => {
                let offset = self.since_start(id, at).as_secs_f64();
                self.write_line(&format!("#{id} {offset:.3} {line}"));
            }
            ProgressEvent::Done { id, elapsed } => {
                self.write_line(&format!("#{id} DONE {}", seconds(elapsed)));
            }
            ProgressEvent::Cached { id } => self.write_line(&format!("#{id} CACHED")),
            ProgressEvent::CacheMiss { id, reason } => {
                self.write_line(&format!("#{id} cache miss: {reason}"));
            }
            ProgressEvent::Failed { id, error, .. } => {
                self.write_line(&format!("#{id} ERROR: {error}"));
            }
            ProgressEvent::Warning { message } => self.write_line(&format!("warning: {message}")),
            // BuildKit's plain output has no phase lines, and the id goes to stdout.
            ProgressEvent::Phase { .. } | ProgressEvent::Image { .. } => {}
        }
    }
}

/// A terminal display: one spinner line per running step, output lines printed above them, and a
/// summary line per finished step.
pub struct TtyProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, (ProgressBar, String)>>,
}

impl TtyProgress {
    pub fn new(target: ProgressDrawTarget) -> TtyProgress {
        TtyProgress {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, id: usize) -> Option<(ProgressBar, String)> {
        self.bars.lock().ok().and_then(|mut bars| bars.remove(&id))
    }
}

impl Progress for TtyProgress {
    fn event(&self, event: ProgressEvent) {
        match event {
            ProgressEvent::Started { id, description } => {
                let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = self.multi.add(ProgressBar::new_spinner().with_style(style));
                bar.set_message(format!("#{id} {description}"));
                bar.enable_steady_tick(Duration::from_millis(120));
                if let Ok(mut bars) = self.bars.lock() {
                    bars.insert(id, (bar, description));
                }
            }
            ProgressEvent::Output { id, line } => {
                // A display that cannot draw must not fail the build.
                let _ = self.multi.println(format!("#{id} {line}"));
            }
            ProgressEvent::Done { id, elapsed } => {
                if let Some((bar, description)) = self.take(id) {
                    bar.finish_and_clear();
                    let _ = self
                        .multi
                        .println(format!("#{id} {description} DONE {}", seconds(elapsed)));
                }
            }
            ProgressEvent::Cached { id } => {
                if let Some((bar, description)) = self.take(id) {
                    bar.finish_and_clear();
                    let _ = self.multi.println(format!("#{id} {description} CACHED"));
                }
            }
            ProgressEvent::CacheMiss { id, reason } => {
                let _ = self.multi.println(format!("#{id} cache miss: {reason}"));
            }
            ProgressEvent::Failed { id, error, .. } => {
                if let Some((bar, description)) = self.take(id) {
                    bar.finish_and_clear();
                    let _ = self
                        .multi
                        .println(format!("#{id} {description} ERROR: {error}"));
                }
            }
            ProgressEvent::Warning { message } => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            ProgressEvent::Phase { .. } | ProgressEvent::Image { .. } => {}
        }
    }
}

/// `--progress=quiet`: only warnings, which the user must see whatever the display.
struct QuietProgress;

impl Progress for QuietProgress {
    fn event(&self, event: ProgressEvent) {
        if let ProgressEvent::Warning { message } = event {
            eprintln!("warning: {message}");
        }
    }
}

/// Writes one JSON object per line per event (stderr in the CLI); times are nanoseconds since the
/// display was made, which the CLI does as the build starts.
pub struct JsonProgress<W: Write + Send> {
    out: Mutex<W>,
    origin: Instant,
}

/// One line of the JSON stream; `event` names the kind. Field names are the format's contract
/// (docs/progress-json.md): add fields, never rename them.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonLine<'a> {
    Started {
        step: usize,
        description: &'a str,
        time_ns: u64,
    },
    Output {
        step: usize,
        line: &'a str,
        time_ns: u64,
    },
    Done {
        step: usize,
        duration_ns: u64,
        time_ns: u64,
    },
    Cached {
        step: usize,
        time_ns: u64,
    },
    CacheMiss {
        step: usize,
        reason: &'a str,
        time_ns: u64,
    },
    Failed {
        step: usize,
        error: &'a str,
        duration_ns: u64,
        time_ns: u64,
    },
    Phase {
        name: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a str>,
        start_ns: u64,
        duration_ns: u64,
        time_ns: u64,
    },
    Warning {
        message: &'a str,
        time_ns: u64,
    },
    Image {
        id: &'a str,
        time_ns: u64,
    },
}

/// Nanoseconds in `duration`, saturating (u64 nanoseconds last 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<W: Write + Send> JsonProgress<W> {
    pub fn new(out: W) -> JsonProgress<W> {
        JsonProgress {
            out: Mutex::new(out),
            origin: Instant::now(),
        }
    }

    fn write(&self, line: &JsonLine<'_>) {
        let Ok(text) = serde_json::to_string(line) else {
            // Serialising these plain structs cannot fail; a display must not fail the build.
            return;
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }
}

impl<W: Write + Send> Progress for JsonProgress<W> {
    fn event(&self, event: ProgressEvent) {
        self.timed_event(TimedEvent::now(event));
    }

    fn timed_event(&self, event: TimedEvent) {
        let time_ns = nanos(event.at.saturating_duration_since(self.origin));
        let line = match &event.event {
            ProgressEvent::Started { id, description } => JsonLine::Started {
                step: *id,
                description,
                time_ns,
            },
            ProgressEvent::Output { id, line } => JsonLine::Output {
                step: *id,
                line,
                time_ns,
            },
            ProgressEvent::Done { id, elapsed } => JsonLine::Done {
                step: *id,
                duration_ns: nanos(*elapsed),
                time_ns,
            },
            ProgressEvent::Cached { id } => JsonLine::Cached { step: *id, time_ns },
            ProgressEvent::CacheMiss { id, reason } => JsonLine::CacheMiss {
                step: *id,
                reason,
                time_ns,
            },
            ProgressEvent::Failed { id, elapsed, error } => JsonLine::Failed {
                step: *id,
                error,
                duration_ns: nanos(*elapsed),
                time_ns,
            },
            ProgressEvent::Phase {
                name,
                step,
                description,
                elapsed,
            } => JsonLine::Phase {
                name: name.name(),
                step: *step,
                description: description.as_deref(),
                start_ns: time_ns.saturating_sub(nanos(*elapsed)),
                duration_ns: nanos(*elapsed),
                time_ns,
            },
            ProgressEvent::Warning { message } => JsonLine::Warning { message, time_ns },
            ProgressEvent::Image { id } => JsonLine::Image { id, time_ns },
        };
        self.write(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::progress::Phase;

    #[test]
    fn plain_format_matches_buildkit() {
        let progress = PlainProgress::new(Vec::new());
        progress.event(ProgressEvent::Started {
            id: 3,
            description: "[2/3] RUN echo hi".into(),
        });
        progress.event(ProgressEvent::Output {
            id: 3,
            line: "hi".into(),
        });
        progress.event(ProgressEvent::Done {
            id: 3,
            elapsed: Duration::from_millis(420),
        });
        progress.event(ProgressEvent::Failed {
            id: 4,
            elapsed: Duration::from_millis(10),
            error: "exit code 1".into(),
        });
        progress.event(ProgressEvent::Cached { id: 5 });
        progress.event(ProgressEvent::CacheMiss {
            id: 6,
            reason: "src/main.rs content changed".into(),
        });
        let text = String::from_utf8(progress.out.into_inner().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[4], "#5 CACHED");
        assert_eq!(lines[5], "#6 cache miss: src/main.rs content changed");
        assert_eq!(lines[0], "#3 [2/3] RUN echo hi");
        assert!(
            lines[1].starts_with("#3 0.0") && lines[1].ends_with(" hi"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "#3 DONE 0.4s");
        assert_eq!(lines[3], "#4 ERROR: exit code 1");
    }

    /// The JSON lines a display wrote.
    fn json_lines(progress: JsonProgress<Vec<u8>>) -> Vec<serde_json::Value> {
        String::from_utf8(progress.out.into_inner().unwrap())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_event_times_since_the_build_started() {
        let progress = JsonProgress::new(Vec::new());
        let origin = progress.origin;
        let at = |ms| origin + Duration::from_millis(ms);
        let send = |ms, event| progress.timed_event(TimedEvent { at: at(ms), event });
        send(
            5,
            ProgressEvent::Started {
                id: 3,
                description: "[2/4] RUN make".into(),
            },
        );
        send(
            6,
            ProgressEvent::CacheMiss {
                id: 3,
                reason: "src/main.rs content changed".into(),
            },
        );
        send(
            7,
            ProgressEvent::Output {
                id: 3,
                line: "cc -o app \"main.c\"".into(),
            },
        );
        send(
            40,
            ProgressEvent::Phase {
                name: Phase::Layer,
                step: Some(3),
                description: None,
                elapsed: Duration::from_millis(10),
            },
        );
        send(
            45,
            ProgressEvent::Done {
                id: 3,
                elapsed: Duration::from_millis(40),
            },
        );
        send(46, ProgressEvent::Cached { id: 4 });
        send(
            47,
            ProgressEvent::Failed {
                id: 5,
                elapsed: Duration::from_millis(1),
                error: "exit code: 2".into(),
            },
        );
        send(
            48,
            ProgressEvent::Warning {
                message: "empty continuation line".into(),
            },
        );
        send(
            50,
            ProgressEvent::Image {
                id: "sha256:abc".into(),
            },
        );
        let lines = json_lines(progress);
        assert_eq!(
            lines[0],
            serde_json::json!({"event": "started", "step": 3, "description": "[2/4] RUN make",
                               "time_ns": 5_000_000})
        );
        assert_eq!(lines[1]["event"], "cache_miss");
        assert_eq!(lines[1]["reason"], "src/main.rs content changed");
        assert_eq!(lines[2]["line"], "cc -o app \"main.c\"");
        assert_eq!(
            lines[3],
            serde_json::json!({"event": "phase", "name": "layer", "step": 3,
                               "start_ns": 30_000_000, "duration_ns": 10_000_000,
                               "time_ns": 40_000_000})
        );
        assert_eq!(lines[4]["event"], "done");
        assert_eq!(lines[4]["duration_ns"], 40_000_000);
        assert_eq!(
            lines[5],
            serde_json::json!({"event": "cached", "step": 4, "time_ns": 46_000_000})
        );
        assert_eq!(lines[6]["event"], "failed");
        assert_eq!(lines[6]["error"], "exit code: 2");
        assert_eq!(lines[7]["event"], "warning");
        assert_eq!(
            lines[8],
            serde_json::json!({"event": "image", "id": "sha256:abc", "time_ns": 50_000_000})
        );
    }

    #[test]
    fn json_phase_without_a_step_names_the_op() {
        let progress = JsonProgress::new(Vec::new());
        kiln_solver::progress::time_phase(
            &progress,
            Phase::CacheKey,
            None,
            Some("[2/2] COPY . /src"),
            || (),
        );
        let lines = json_lines(progress);
        assert_eq!(lines[0]["name"], "cache-key");
        assert_eq!(lines[0]["description"], "[2/2] COPY . /src");
        assert!(lines[0].get("step").is_none(), "{}", lines[0]);
        assert!(lines[0]["start_ns"].as_u64() <= lines[0]["time_ns"].as_u64());
    }

    #[test]
    fn plain_ignores_phases_and_measures_output_from_event_times() {
        let progress = PlainProgress::new(Vec::new());
        let start = Instant::now();
        progress.timed_event(TimedEvent {
            at: start,
            event: ProgressEvent::Started {
                id: 1,
                description: "[1/1] RUN x".into(),
            },
        });
        progress.event(ProgressEvent::Phase {
            name: Phase::Exec,
            step: Some(1),
            description: None,
            elapsed: Duration::from_millis(3),
        });
        progress.timed_event(TimedEvent {
            at: start + Duration::from_millis(1250),
            event: ProgressEvent::Output {
                id: 1,
                line: "late".into(),
            },
        });
        progress.event(ProgressEvent::Image {
            id: "sha256:abc".into(),
        });
        let text = String::from_utf8(progress.out.into_inner().unwrap()).unwrap();
        assert_eq!(text, "#1 [1/1] RUN x\n#1 1.250 late\n");
    }

    #[test]
    fn tty_display_tracks_running_steps() {
        let progress = TtyProgress::new(ProgressDrawTarget::hidden());
        progress.event(ProgressEvent::Started {
            id: 1,
            description: "[1/2] COPY a /".into(),
        });
        progress.event(ProgressEvent::Started {
            id: 2,
            description: "[2/2] RUN true".into(),
        });
        assert_eq!(progress.bars.lock().unwrap().len(), 2);
        progress.event(ProgressEvent::Done {
            id: 1,
            elapsed: Duration::from_millis(5),
        });
        progress.event(ProgressEvent::Failed {
            id: 2,
            elapsed: Duration::from_millis(5),
            error: "boom".into(),
        });
        assert!(progress.bars.lock().unwrap().is_empty());
    }
}

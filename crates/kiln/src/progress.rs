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
//! indicatif and prints output lines above them; `quiet` prints nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use kiln_solver::{Progress, ProgressEvent};

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
    Quiet,
}

impl ProgressMode {
    /// The display for this mode: `auto` and `tty` show the terminal display when stderr is a
    /// terminal, plain text otherwise.
    pub fn display(self) -> Box<dyn Progress> {
        match self {
            ProgressMode::Quiet => Box::new(kiln_solver::NoProgress),
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

    fn since_start(&self, id: usize) -> Duration {
        self.started
            .lock()
            .ok()
            .and_then(|started| {
                started
                    .iter()
                    .find(|(step, _)| *step == id)
                    .map(|(_, at)| at.elapsed())
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
        match event {
            ProgressEvent::Started { id, description } => {
                if let Ok(mut started) = self.started.lock() {
                    started.push((id, Instant::now()));
                }
                self.write_line(&format!("#{id} {description}"));
            }
            ProgressEvent::Output { id, line } => {
                let at = self.since_start(id).as_secs_f64();
                self.write_line(&format!("#{id} {at:.3} {line}"));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

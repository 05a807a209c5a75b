//! The build's progress display. `plain` prints BuildKit's plain format, one line per event, so logs
//! read the same as `docker build --progress=plain`:
//!
//! ```text
//! #2 [2/3] COPY hello.txt /
//! #2 DONE 0.1s
//! #3 [3/3] RUN echo hi
//! #3 0.084 hi
//! #3 DONE 0.2s
//! ```
//!
//! `quiet` prints nothing; `auto` is plain (a terminal display with indicatif is still to come).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_solver::{Progress, ProgressEvent};

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
    Quiet,
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
            ProgressEvent::Failed { id, error, .. } => {
                self.write_line(&format!("#{id} ERROR: {error}"));
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
        let text = String::from_utf8(progress.out.into_inner().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#3 [2/3] RUN echo hi");
        assert!(
            lines[1].starts_with("#3 0.0") && lines[1].ends_with(" hi"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "#3 DONE 0.4s");
        assert_eq!(lines[3], "#4 ERROR: exit code 1");
    }
}

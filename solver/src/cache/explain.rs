//! Why a step missed the cache, in words: the components of the new key are compared with those
//! of the previous build of the same step (found through its position record). The reasons name
//! what a user changed — a file (via kiln-context's `diff_entries`), an environment variable or
//! build arg, the command, the base image — or say that an earlier step's result changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_context::diff_entries;

use crate::cache::key::{InputKind, KeyComponents};

/// How many changed files a reason names before "and N more".
const NAMED_FILES: usize = 3;

/// One line of `kiln build --explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// The step's description (`[2/4] RUN make`).
    pub description: String,
    /// Whether a cached result will be used.
    pub cached: bool,
    /// Why the step runs (for a miss).
    pub reason: Option<String>,
}

/// Explains a miss of `new` given the previous components at the same position (`None` when the
/// step was never built). `ignore_cache` is `--no-cache`/`--no-cache-filter`.
pub fn explain_miss(
    previous: Option<&KeyComponents>,
    new: &KeyComponents,
    ignore_cache: bool,
) -> String {
    if ignore_cache {
        return "cache disabled for this step (--no-cache)".to_string();
    }
    let Some(previous) = previous else {
        return "no earlier build of this step".to_string();
    };
    let mut reasons: Vec<String> = Vec::new();
    if previous.op_digest != new.op_digest {
        reasons.push(explain_op_change(previous, new));
    }
    if previous.layer_settings != new.layer_settings {
        reasons.push("layer settings changed (compression or SOURCE_DATE_EPOCH)".to_string());
    }
    for (index, input) in new.inputs.iter().enumerate() {
        let Some(before) = previous.inputs.get(index) else {
            reasons.push("the step reads more inputs".to_string());
            break;
        };
        if before.identity == input.identity {
            continue;
        }
        reasons.push(match input.kind {
            InputKind::Image => "base image changed".to_string(),
            InputKind::Step | InputKind::Scratch => match &input.description {
                Some(description) => {
                    format!("an earlier step re-ran with a new result: {description}")
                }
                None => "an earlier step re-ran with a new result".to_string(),
            },
            InputKind::Local => "a different build context".to_string(),
        });
    }
    for content in &new.contents {
        let Some(before) = previous.contents.iter().find(|c| c.reads == content.reads) else {
            continue;
        };
        if before.checksum.digest == content.checksum.digest {
            continue;
        }
        let changes = diff_entries(&before.checksum.entries, &content.checksum.entries);
        if changes.is_empty() {
            reasons.push(format!("{}: the selected paths changed", content.reads));
            continue;
        }
        let mut text = changes
            .iter()
            .take(NAMED_FILES)
            .map(|change| change.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if changes.len() > NAMED_FILES {
            let _ = write!(text, " and {} more", changes.len() - NAMED_FILES);
        }
        reasons.push(text);
    }
    if reasons.is_empty() {
        "the cached result is no longer in the store".to_string()
    } else {
        reasons.join("; ")
    }
}

fn explain_op_change(previous: &KeyComponents, new: &KeyComponents) -> String {
    let (old, now) = (&previous.op, &new.op);
    if old.kind != now.kind {
        return "the step changed".to_string();
    }
    let env_changes = changed_variables(&old.env, &now.env);
    if !env_changes.is_empty() {
        return format!("build arg/ENV {} changed", env_changes.join(", "));
    }
    if old.args != now.args {
        return "the command changed".to_string();
    }
    if old.user != now.user {
        return "USER changed".to_string();
    }
    if old.cwd != now.cwd {
        return "WORKDIR changed".to_string();
    }
    "the step's options changed".to_string()
}

/// Names of variables added, removed or given another value.
fn changed_variables(old: &[String], new: &[String]) -> Vec<String> {
    let parse = |env: &[String]| -> BTreeMap<String, String> {
        env.iter()
            .map(|entry| match entry.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => (entry.clone(), String::new()),
            })
            .collect()
    };
    let (old, new) = (parse(old), parse(new));
    let mut names: Vec<String> = new
        .iter()
        .filter(|(name, value)| old.get(*name) != Some(value))
        .map(|(name, _)| name.clone())
        .collect();
    names.extend(old.keys().filter(|name| !new.contains_key(*name)).cloned());
    names
}

/// The `--explain` table: one line per step, `CACHED` or `RUN` with its reason.
pub fn format_plan(plan: &[StepPlan]) -> String {
    let mut text = String::new();
    let width = plan
        .iter()
        .map(|step| step.description.len())
        .max()
        .unwrap_or(0);
    for step in plan {
        let status = if step.cached { "CACHED" } else { "RUN" };
        let _ = write!(text, "{:<width$}  {status}", step.description);
        if let Some(reason) = &step.reason {
            let _ = write!(text, "  ({reason})");
        }
        text.push('\n');
    }
    let runs = plan.iter().filter(|step| !step.cached).count();
    let _ = writeln!(text, "{} step(s) cached, {runs} to run", plan.len() - runs);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{ContentComponent, InputComponent, OpSummary};
    use kiln_context::{ContentChecksum, EntryRecord, FileKind};

    fn record(path: &str, content: &str) -> EntryRecord {
        EntryRecord {
            path: path.into(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            content: content.into(),
            xattrs: String::new(),
            digest: format!("{path}:{content}"),
        }
    }

    fn components(env: &[&str], files: &[(&str, &str)], base: &str) -> KeyComponents {
        let entries: Vec<EntryRecord> = files.iter().map(|(p, c)| record(p, c)).collect();
        KeyComponents {
            op_digest: format!("{env:?}"),
            op: OpSummary {
                kind: "exec".into(),
                args: vec!["make".into()],
                env: env.iter().map(|e| e.to_string()).collect(),
                ..OpSummary::default()
            },
            layer_settings: String::new(),
            inputs: vec![InputComponent {
                kind: InputKind::Image,
                identity: base.into(),
                key: None,
                description: None,
                local_excludes: Vec::new(),
            }],
            contents: vec![ContentComponent {
                reads: "COPY src -> /src".into(),
                checksum: ContentChecksum {
                    digest: format!("{files:?}"),
                    entries,
                    stats: Default::default(),
                },
            }],
        }
    }

    #[test]
    fn a_miss_names_the_changed_file_arg_and_base() {
        let old = components(&["A=1"], &[("src/main.rs", "x")], "chain:1");
        let file = components(&["A=1"], &[("src/main.rs", "y")], "chain:1");
        assert_eq!(
            explain_miss(Some(&old), &file, false),
            "src/main.rs content changed"
        );
        let arg = components(&["A=2"], &[("src/main.rs", "x")], "chain:1");
        assert_eq!(
            explain_miss(Some(&old), &arg, false),
            "build arg/ENV A changed"
        );
        let base = components(&["A=1"], &[("src/main.rs", "x")], "chain:2");
        assert_eq!(explain_miss(Some(&old), &base, false), "base image changed");
        assert_eq!(
            explain_miss(None, &base, false),
            "no earlier build of this step"
        );
        assert!(explain_miss(Some(&old), &old, true).contains("--no-cache"));
    }

    #[test]
    fn many_changed_files_are_summarised() {
        let old = components(&[], &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")], "c");
        let new = components(&[], &[("a", "2"), ("b", "2"), ("c", "2"), ("d", "2")], "c");
        let text = explain_miss(Some(&old), &new, false);
        assert!(
            text.starts_with("a content changed, b content changed"),
            "{text}"
        );
        assert!(text.ends_with("and 1 more"), "{text}");
    }

    #[test]
    fn the_plan_table_lists_every_step() {
        let text = format_plan(&[
            StepPlan {
                description: "[1/2] COPY a /".into(),
                cached: true,
                reason: None,
            },
            StepPlan {
                description: "[2/2] RUN make".into(),
                cached: false,
                reason: Some("a content changed".into()),
            },
        ]);
        assert!(text.contains("[1/2] COPY a /  CACHED"), "{text}");
        assert!(
            text.contains("[2/2] RUN make  RUN  (a content changed)"),
            "{text}"
        );
        assert!(text.contains("1 step(s) cached, 1 to run"), "{text}");
    }
}

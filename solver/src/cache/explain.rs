//! Why a step missed the cache, in words: the components of the new key are compared with those
//! of the previous build of the same step (found through its position record). The reasons name
//! what a user changed — a file (via kiln-context's `diff_entries`), an environment variable or
//! build arg, the command, the base image — or say that an earlier step's result changed.
//!
//! A large context's previous entry lists are compared as they lie in their stored JSON (strings
//! borrowed, fields compared directly) rather than as loaded records: for 20,000 files that skips
//! 80,000 allocations and 20,000 digest computations on the way to naming one changed file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_context::{EntryChange, EntryRecord, FileKind, diff_entries, diff_entries_by};
use serde::Deserialize;

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
    explain_miss_with_stored_lists(previous, new, ignore_cache, || None)
}

/// [`explain_miss`] for a previous build whose per-path entry lists were left in the store:
/// `stored_lists` returns their JSON (see `PreviousBuild::entry_lists_json`) and is called only
/// when a read's checksum changed and `previous` holds no entries of its own. The stored lists
/// are compared field by field as they lie in the JSON buffer: no record is built and no digest
/// recomputed for the thousands of entries that did not change.
pub fn explain_miss_with_stored_lists(
    previous: Option<&KeyComponents>,
    new: &KeyComponents,
    ignore_cache: bool,
    stored_lists: impl FnOnce() -> Option<Vec<u8>>,
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
    let mut stored_lists = Some(stored_lists);
    let mut stored_json: Option<Vec<u8>> = None;
    for content in &new.contents {
        let Some((index, before)) = previous
            .contents
            .iter()
            .enumerate()
            .find(|(_, c)| c.reads == content.reads)
        else {
            continue;
        };
        if before.checksum.digest == content.checksum.digest {
            continue;
        }
        let changes = if before.checksum.entries.is_empty() {
            if let Some(load) = stored_lists.take() {
                stored_json = load();
            }
            stored_json
                .as_deref()
                .and_then(|json| stored_list(json, index, previous.contents.len()))
                .map(|old| diff_stored_entries(&old, &content.checksum.entries))
                .unwrap_or_default()
        } else {
            diff_entries(&before.checksum.entries, &content.checksum.entries)
        };
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

/// An entry record as it lies in the stored JSON: the compact array (or the older object form),
/// strings borrowed from the buffer where they need no unescaping.
#[derive(Debug, Deserialize)]
struct StoredEntry<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default, borrow)]
    xattrs: Cow<'a, str>,
}

/// List `index` of the stored entry lists `json`, if it decodes and holds `expected` lists.
fn stored_list(json: &[u8], index: usize, expected: usize) -> Option<Vec<StoredEntry<'_>>> {
    match serde_json::from_slice::<Vec<Vec<StoredEntry<'_>>>>(json) {
        Ok(mut lists) if lists.len() == expected => Some(lists.swap_remove(index)),
        Ok(_) => {
            tracing::debug!("cache record entry lists do not match the record");
            None
        }
        Err(error) => {
            tracing::debug!(%error, "ignoring undecodable cache record entry lists");
            None
        }
    }
}

/// [`diff_entries`] of a stored list against new records: the same changes in the same order
/// (path order of the new records, removed paths last).
fn diff_stored_entries(old: &[StoredEntry<'_>], new: &[EntryRecord]) -> Vec<EntryChange> {
    diff_entries_by(old, new, |entry| entry.path.as_ref(), stored_entry_change)
}

/// What changed between the stored and the new record of one path, named as kiln-context's
/// `diff_entries` names it (the digest covers exactly these fields, so comparing them is
/// comparing digests).
fn stored_entry_change(before: &StoredEntry<'_>, record: &EntryRecord) -> Option<EntryChange> {
    let mut what = Vec::new();
    if before.kind != record.kind {
        what.push("type");
    } else if before.content != record.content.as_str() || before.size != record.size {
        what.push(if record.kind == FileKind::Symlink {
            "link target"
        } else {
            "content"
        });
    }
    if before.mode != record.mode {
        what.push("mode");
    }
    if (before.uid, before.gid) != (record.uid, record.gid) {
        what.push("owner");
    }
    if before.xattrs != record.xattrs.as_str() {
        what.push("xattrs");
    }
    (!what.is_empty()).then(|| EntryChange::Changed {
        path: record.path.clone(),
        what,
    })
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

#[cfg(test)]
mod stored_list_tests {
    use super::*;
    use kiln_context::{ContentChecksum, EntryRecord, FileKind};

    use crate::cache::key::{ContentComponent, OpSummary};

    fn entry(path: &str, kind: FileKind, mode: u32, owner: u32, content: &str) -> EntryRecord {
        EntryRecord::new(
            path.into(),
            kind,
            mode,
            owner,
            owner,
            content.len() as u64,
            content.into(),
            String::new(),
        )
    }

    fn reading(entries: Vec<EntryRecord>) -> KeyComponents {
        KeyComponents {
            op_digest: "op".into(),
            op: OpSummary::default(),
            layer_settings: String::new(),
            inputs: Vec::new(),
            contents: vec![ContentComponent {
                reads: "COPY . -> /".into(),
                checksum: ContentChecksum {
                    digest: format!("{entries:?}"),
                    entries,
                    stats: Default::default(),
                },
            }],
        }
    }

    #[test]
    fn stored_lists_explain_exactly_as_loaded_records_do() {
        let old = vec![
            entry("a", FileKind::File, 0o644, 0, "1"),
            entry("b", FileKind::File, 0o644, 0, "1"),
            entry("c", FileKind::Symlink, 0o777, 0, "x"),
            entry("d", FileKind::File, 0o644, 0, "1"),
            entry("gone", FileKind::File, 0o644, 0, "1"),
            entry("quoted \"name\"\n", FileKind::File, 0o644, 0, "1"),
            entry("z", FileKind::File, 0o644, 0, "1"),
        ];
        let new = vec![
            entry("a", FileKind::File, 0o644, 0, "1"),
            entry("b", FileKind::File, 0o600, 1, "22"),
            entry("c", FileKind::Symlink, 0o777, 0, "y"),
            entry("added", FileKind::File, 0o644, 0, "1"),
            entry("d", FileKind::Dir, 0o755, 0, ""),
            entry("quoted \"name\"\n", FileKind::File, 0o644, 0, "2"),
            entry("z", FileKind::File, 0o644, 0, "1"),
        ];
        let expected = diff_entries(&old, &new);
        assert_eq!(expected.len(), 6, "{expected:?}");

        // The stored form: the entry lists' JSON as a cache record keeps it.
        let json = serde_json::to_vec(&vec![&old]).unwrap();
        let stored = stored_list(&json, 0, 1).unwrap();
        assert_eq!(diff_stored_entries(&stored, &new), expected);

        let (before, after) = (reading(old.clone()), reading(new));
        let with_records = explain_miss(Some(&before), &after, false);
        let without_entries = KeyComponents {
            contents: vec![ContentComponent {
                checksum: ContentChecksum {
                    entries: Vec::new(),
                    ..before.contents[0].checksum.clone()
                },
                ..before.contents[0].clone()
            }],
            ..before.clone()
        };
        let from_json =
            explain_miss_with_stored_lists(Some(&without_entries), &after, false, || {
                Some(json.clone())
            });
        assert_eq!(from_json, with_records);
        assert!(
            from_json.starts_with("b content, mode, owner changed, c link target changed"),
            "{from_json}"
        );
        assert!(from_json.ends_with("and 3 more"), "{from_json}");
    }

    #[test]
    fn stored_lists_are_read_only_when_a_read_changed_and_may_be_missing() {
        let files = vec![entry("a", FileKind::File, 0o644, 0, "1")];
        let mut before = reading(files.clone());
        before.contents[0].checksum.entries.clear();
        let mut other_op = reading(files);
        other_op.op_digest = "other".into();
        let explained = explain_miss_with_stored_lists(Some(&before), &other_op, false, || {
            panic!("the reads did not change")
        });
        assert_eq!(explained, "the step's options changed");

        let changed = reading(vec![entry("a", FileKind::File, 0o644, 0, "2")]);
        let explained = explain_miss_with_stored_lists(Some(&before), &changed, false, || None);
        assert_eq!(explained, "COPY . -> /: the selected paths changed");
        // Lists that do not match the record (another number of reads) name no paths either.
        let two_lists = serde_json::to_vec(&vec![Vec::<EntryRecord>::new(), Vec::new()]).unwrap();
        let explained =
            explain_miss_with_stored_lists(Some(&before), &changed, false, || Some(two_lists));
        assert_eq!(explained, "COPY . -> /: the selected paths changed");
    }
}

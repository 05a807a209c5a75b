//! The build cache end to end with the real binary: what a rebuild re-runs after each kind of
//! change, the `#N CACHED` / `#N cache miss: …` lines of `--progress=plain`, `--no-cache`,
//! `--no-cache-filter`, `--explain`, and two builds sharing one store at once.
//!
//! Whether a step ran is read from the plain progress output: a step that ran ends with `#N DONE`,
//! a step restored from the cache with `#N CACHED`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{Kiln, build_busybox_with_kiln, stderr, stdout};

/// What plain progress says about one step.
#[derive(Debug, Clone, Default)]
struct Step {
    status: &'static str,
    miss: Option<String>,
}

/// Steps by description (`[2/4] RUN …`), from `--progress=plain` output.
fn steps(output: &Output) -> BTreeMap<String, Step> {
    let text = stderr(output);
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    let mut steps: BTreeMap<String, Step> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if let Some(description) = by_id.get(id) {
            let step = steps.entry(description.clone()).or_default();
            if text.starts_with("DONE") {
                step.status = "DONE";
            } else if text == "CACHED" {
                step.status = "CACHED";
            } else if let Some(reason) = text.strip_prefix("cache miss: ") {
                step.miss = Some(reason.to_string());
            }
        } else {
            by_id.insert(id.to_string(), text.to_string());
            steps.insert(text.to_string(), Step::default());
        }
    }
    // Only the Dockerfile's own steps: the context transfer and FROM are not build steps.
    steps.retain(|description, _| {
        description.starts_with('[')
            && !description.starts_with("[internal]")
            && !description.contains(" FROM ")
    });
    steps
}

fn ran(steps: &BTreeMap<String, Step>) -> Vec<&str> {
    steps
        .iter()
        .filter(|(_, step)| step.status == "DONE")
        .map(|(description, _)| description.as_str())
        .collect()
}

fn cached(steps: &BTreeMap<String, Step>) -> Vec<&str> {
    steps
        .iter()
        .filter(|(_, step)| step.status == "CACHED")
        .map(|(description, _)| description.as_str())
        .collect()
}

/// The miss reason of the step `description`; panics with the whole output when there is none.
fn miss(steps: &BTreeMap<String, Step>, description: &str, output: &Output) -> String {
    steps
        .get(description)
        .and_then(|step| step.miss.clone())
        .unwrap_or_else(|| panic!("no cache miss for {description:?} in\n{}", stderr(output)))
}

fn build(kiln: &Kiln, context: &Path, extra: &[&str]) -> Output {
    let output = kiln
        .command()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--progress=plain"])
        .args(extra)
        .arg(context)
        .output()
        .expect("run kiln build");
    assert!(
        output.status.success(),
        "kiln build failed:\n{}",
        stderr(&output)
    );
    output
}

const TWO_FILES: &str = "FROM busybox\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /a.copy\n\
COPY b.txt /b.txt\n\
RUN cat /b.txt > /b.copy\n";

fn two_files(kiln: &Kiln) -> std::path::PathBuf {
    build_busybox_with_kiln(kiln);
    kiln.context(
        "app",
        &[
            ("Dockerfile", TWO_FILES),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            ("unrelated.txt", "u\n"),
        ],
    )
}

#[test]
fn second_identical_build_executes_nothing_and_gives_the_same_image_id() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    // No SOURCE_DATE_EPOCH: the image's time comes from the cache records, as in BuildKit.
    let plain_build = || {
        let output = kiln
            .command()
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["build", "--progress=plain"])
            .arg(&context)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        output
    };
    let first = plain_build();
    let first_steps = steps(&first);
    assert_eq!(ran(&first_steps).len(), 4, "{first_steps:?}");
    for step in first_steps.values() {
        assert_eq!(step.miss.as_deref(), Some("no earlier build of this step"));
    }
    let second = plain_build();
    let second_steps = steps(&second);
    assert_eq!(
        ran(&second_steps),
        Vec::<&str>::new(),
        "{}",
        stderr(&second)
    );
    assert_eq!(cached(&second_steps).len(), 4, "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("load build context"),
        "a fully cached build does not even stage the context:\n{}",
        stderr(&second)
    );
    assert_eq!(stdout(&first), stdout(&second), "same image id");
}

#[test]
fn changing_one_context_file_reruns_only_the_steps_that_read_it_and_those_after() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    build(&kiln, &context, &[]);
    std::fs::write(context.join("unrelated.txt"), "changed\n").unwrap();
    std::fs::write(context.join("b.txt"), "B\n").unwrap();
    let output = build(&kiln, &context, &[]);
    let steps = steps(&output);
    assert_eq!(
        cached(&steps),
        vec!["[2/5] COPY a.txt /a.txt", "[3/5] RUN cat /a.txt > /a.copy"],
        "{}",
        stderr(&output)
    );
    assert_eq!(
        ran(&steps),
        vec!["[4/5] COPY b.txt /b.txt", "[5/5] RUN cat /b.txt > /b.copy"]
    );
    // The miss explanations name the changed file, then the step it fed.
    assert_eq!(
        miss(&steps, "[4/5] COPY b.txt /b.txt", &output),
        "b.txt content changed"
    );
    let after = miss(&steps, "[5/5] RUN cat /b.txt > /b.copy", &output);
    assert!(
        after.contains("an earlier step re-ran") && after.contains("COPY b.txt"),
        "{after}"
    );
}

#[test]
fn touching_a_file_without_changing_it_reruns_nothing() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    build(&kiln, &context, &[]);
    // New mtime and ctime, same bytes (a rewrite, as editors and `git checkout` do).
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(context.join("a.txt"), "a\n").unwrap();
    std::fs::write(context.join("b.txt"), "b\n").unwrap();
    let output = build(&kiln, &context, &[]);
    let steps = steps(&output);
    assert_eq!(ran(&steps), Vec::<&str>::new(), "{}", stderr(&output));
    assert_eq!(cached(&steps).len(), 4);
}

#[test]
fn a_build_arg_change_reruns_only_from_the_first_step_that_uses_it() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo base > /base\nARG FLAVOUR=plain\nRUN echo $FLAVOUR > /flavour\nRUN cat /flavour\n",
        )],
    );
    build(&kiln, &context, &["--build-arg", "FLAVOUR=one"]);
    let same = build(&kiln, &context, &["--build-arg", "FLAVOUR=one"]);
    assert_eq!(ran(&steps(&same)), Vec::<&str>::new(), "{}", stderr(&same));
    let output = build(&kiln, &context, &["--build-arg", "FLAVOUR=two"]);
    let steps = steps(&output);
    assert_eq!(
        cached(&steps),
        vec!["[2/4] RUN echo base > /base"],
        "{}",
        stderr(&output)
    );
    assert_eq!(ran(&steps).len(), 2, "{}", stderr(&output));
    // Descriptions show the command with build args expanded.
    let reason = miss(&steps, "[3/4] RUN echo two > /flavour", &output);
    assert!(
        reason.contains("FLAVOUR"),
        "the miss names the arg: {reason}"
    );
}

#[test]
fn no_cache_reruns_every_step_and_still_records() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    build(&kiln, &context, &[]);
    let output = build(&kiln, &context, &["--no-cache"]);
    let all = steps(&output);
    assert_eq!(ran(&all).len(), 4, "{}", stderr(&output));
    assert!(all.values().all(|step| {
        step.miss
            .as_deref()
            .is_some_and(|m| m.contains("--no-cache"))
    }));
    let again = build(&kiln, &context, &[]);
    assert_eq!(
        ran(&steps(&again)),
        Vec::<&str>::new(),
        "{}",
        stderr(&again)
    );
}

const TWO_STAGES: &str = "FROM busybox AS tools\n\
RUN echo tool > /tool\n\
FROM busybox AS app\n\
RUN echo app > /app\n\
COPY --from=tools /tool /tool\n\
FROM busybox AS unused\n\
RUN echo never > /never\n";

#[test]
fn no_cache_filter_reruns_only_that_stage() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("app", &[("Dockerfile", TWO_STAGES)]);
    build(&kiln, &context, &["--target", "app"]);
    let output = build(
        &kiln,
        &context,
        &["--target", "app", "--no-cache-filter", "tools"],
    );
    let steps = steps(&output);
    assert_eq!(
        ran(&steps),
        vec!["[tools 2/2] RUN echo tool > /tool"],
        "{}",
        stderr(&output)
    );
    // The tools step re-ran and wrote identical bytes (SOURCE_DATE_EPOCH), so the COPY that reads
    // its result still hits: keys follow results, not the keys of inputs.
    assert_eq!(
        cached(&steps),
        vec![
            "[app 2/3] RUN echo app > /app",
            "[app 3/3] COPY --from=tools /tool /tool"
        ],
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unused_stage_never_runs() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("app", &[("Dockerfile", TWO_STAGES)]);
    let output = build(&kiln, &context, &["--target", "app"]);
    let text = stderr(&output);
    assert!(!text.contains("never"), "{text}");
    assert_eq!(ran(&steps(&output)).len(), 3, "{text}");
}

#[test]
fn explain_prints_hits_and_misses_without_running_anything() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    build(&kiln, &context, &[]);
    std::fs::write(context.join("a.txt"), "A\n").unwrap();
    let output = kiln
        .command()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--explain"])
        .arg(&context)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let line = |needle: &str| {
        table
            .lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{table}"))
            .to_string()
    };
    assert!(
        line("COPY a.txt").contains("RUN  (a.txt content changed)"),
        "{table}"
    );
    assert!(
        line("RUN cat /a.txt").contains("an earlier step re-runs"),
        "{table}"
    );
    assert!(line("FROM").contains("CACHED"), "{table}");
    assert!(table.contains("1 step(s) cached, 4 to run"), "{table}");
    // Nothing ran: the real build still has all four steps to do.
    let build = build(&kiln, &context, &[]);
    assert_eq!(ran(&steps(&build)).len(), 4, "{}", stderr(&build));
}

#[test]
fn two_concurrent_builds_on_one_store_both_succeed_and_both_record() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let contexts: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            kiln.context(
                name,
                &[
                    (
                        "Dockerfile",
                        &format!("FROM busybox\nCOPY f /f\nRUN sleep 1 && echo {name} > /out\nRUN cat /out\n"),
                    ),
                    ("f", name),
                ],
            )
        })
        .collect();
    let children: Vec<_> = contexts
        .iter()
        .map(|context| {
            kiln.command()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["build", "--progress=plain"])
                .arg(context)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(ran(&steps(&output)).len(), 3, "{}", stderr(&output));
    }
    for context in &contexts {
        let again = build(&kiln, context, &[]);
        assert_eq!(
            ran(&steps(&again)),
            Vec::<&str>::new(),
            "{}",
            stderr(&again)
        );
    }
}

#[test]
fn a_base_with_the_same_layers_still_hits_and_a_changed_base_is_named() {
    let kiln = Kiln::new();
    let context = two_files(&kiln);
    build(&kiln, &context, &[]);
    // The base again under a new config (another label): a new manifest, the same layers.
    let base = kiln.work.path().join("busybox-base");
    let rebuilt = kiln.run(&[
        "build",
        "-q",
        "--label",
        "rebuilt=yes",
        "-t",
        "busybox",
        base.to_str().unwrap(),
    ]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    let same_layers = build(&kiln, &context, &[]);
    assert_eq!(
        ran(&steps(&same_layers)),
        Vec::<&str>::new(),
        "{}",
        stderr(&same_layers)
    );

    std::fs::write(base.join("rootfs/etc/motd"), "new base\n").unwrap();
    let changed = kiln.run(&["build", "-q", "-t", "busybox", base.to_str().unwrap()]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    let output = build(&kiln, &context, &[]);
    let steps = steps(&output);
    assert_eq!(ran(&steps).len(), 4, "{}", stderr(&output));
    assert_eq!(
        miss(&steps, "[2/5] COPY a.txt /a.txt", &output),
        "base image changed"
    );
}

//! `kiln build --cache-to/--cache-from` end to end with the real binary: a build on one store
//! exported to a directory makes the same build on a fresh store run nothing and give the same
//! image id — through a directory and through a real registry (`docker-registry` on 127.0.0.1),
//! where a second export uploads no blob again; `mode=min` leaves the builder stage out while `mode=max` covers it; a missing or
//! corrupt cache is a warning and a normal build.
//!
//! Whether a step ran is read from `--progress=plain`: `#N DONE` ran, `#N CACHED` did not.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Kiln, TestRegistry, busybox_rootfs, stderr, stdout};

/// Outcome (`DONE` / `CACHED`) per Dockerfile step, from plain progress.
fn steps(output: &Output) -> BTreeMap<String, &'static str> {
    let text = stderr(output);
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut steps = BTreeMap::new();
    for line in text.lines() {
        let Some((id, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        match names.get(id) {
            Some(name) if rest.starts_with("DONE") => {
                steps.insert(name.clone(), "DONE");
            }
            Some(name) if rest == "CACHED" => {
                steps.insert(name.clone(), "CACHED");
            }
            Some(_) => {}
            None => {
                names.insert(id.to_string(), rest.to_string());
            }
        }
    }
    steps.retain(|name: &String, _| {
        name.starts_with('[') && !name.starts_with("[internal]") && !name.contains(" FROM ")
    });
    steps
}

fn build(kiln: &Kiln, context: &Path, extra: &[&str]) -> Output {
    build_with_epoch(kiln, context, extra, None)
}

/// A build with `SOURCE_DATE_EPOCH` set to `epoch` (or unset).
fn build_with_epoch(kiln: &Kiln, context: &Path, extra: &[&str], epoch: Option<&str>) -> Output {
    let mut command = kiln.command();
    // No credentials: the test registry is anonymous.
    command.env("DOCKER_CONFIG", kiln.work.path());
    match epoch {
        Some(epoch) => command.env("SOURCE_DATE_EPOCH", epoch),
        None => command.env_remove("SOURCE_DATE_EPOCH"),
    };
    let output = command
        .args(["build", "--progress=plain"])
        .args(extra)
        .arg(context)
        .output()
        .expect("run kiln build");
    assert!(
        output.status.success(),
        "kiln build {extra:?} failed:\n{}",
        stderr(&output)
    );
    output
}

/// The busybox base image `busybox` built on `kiln`'s store, from a rootfs dir shared by both
/// stores (`base_context`), through the cache at `base_cache` (exported on the first store,
/// imported on the second), so both stores get the very same base layers.
fn busybox_base(kiln: &Kiln, base_context: &Path, base_cache: &Path, export: bool) {
    let spec = if export {
        format!("--cache-to=type=local,dest={}", base_cache.display())
    } else {
        format!("--cache-from=type=local,src={}", base_cache.display())
    };
    build(kiln, base_context, &["-q", "-t", "busybox", &spec]);
}

struct Shared {
    _dir: tempfile::TempDir,
    base_context: PathBuf,
    base_cache: PathBuf,
    cache: PathBuf,
}

fn shared() -> Shared {
    let dir = tempfile::tempdir().expect("temp dir");
    let base_context = dir.path().join("busybox-base");
    busybox_rootfs(&base_context.join("rootfs"));
    std::fs::write(
        base_context.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
    )
    .expect("write busybox Dockerfile");
    Shared {
        base_cache: dir.path().join("base-cache"),
        cache: dir.path().join("cache"),
        base_context,
        _dir: dir,
    }
}

const APP: &str = "FROM busybox\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /a.copy && echo ran-$((40+2))\n\
RUN echo two > /two\n";

const MULTI_STAGE: &str = "FROM busybox AS builder\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /built && echo built-$((40+2))\n\
FROM busybox\n\
COPY --from=builder /built /built\n\
RUN cat /built > /final\n";

fn app_context(kiln: &Kiln, dockerfile: &str) -> PathBuf {
    kiln.context("app", &[("Dockerfile", dockerfile), ("a.txt", "a\n")])
}

#[test]
fn a_max_cache_makes_a_fresh_store_run_nothing_and_give_the_same_image() {
    let shared = shared();
    let cache_to = format!(
        "--cache-to=type=local,dest={},mode=max",
        shared.cache.display()
    );
    let cache_from = format!("--cache-from=type=local,src={}", shared.cache.display());

    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    let first = build(&a, &app_context(&a, APP), &[&cache_to]);
    let first_steps = steps(&first);
    assert_eq!(first_steps.len(), 3, "{first_steps:?}");
    assert!(
        first_steps.values().all(|s| *s == "DONE"),
        "{first_steps:?}"
    );
    assert!(shared.cache.join("index.json").is_file());

    let b = Kiln::new();
    busybox_base(&b, &shared.base_context, &shared.base_cache, false);
    let second = build(&b, &app_context(&b, APP), &[&cache_from]);
    let second_steps = steps(&second);
    assert_eq!(second_steps.len(), 3, "{second_steps:?}");
    assert!(
        second_steps.values().all(|s| *s == "CACHED"),
        "{second_steps:?}\n{}",
        stderr(&second)
    );
    // The RUN prints ran-42 (its description says ran-$((40+2))).
    assert!(!stderr(&second).contains("ran-42"), "no RUN executed");
    assert_eq!(
        stdout(&first).trim(),
        stdout(&second).trim(),
        "same image id"
    );
}

/// The files under `dir/blobs/sha256`, by name.
fn blob_names(dir: &Path) -> std::collections::BTreeSet<String> {
    match std::fs::read_dir(dir.join("blobs/sha256")) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Default::default(),
    }
}

#[test]
fn explain_reports_steps_an_imported_cache_has_without_fetching_them() {
    let shared = shared();
    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    build(
        &a,
        &app_context(&a, APP),
        &[&format!(
            "--cache-to=type=local,dest={},mode=max",
            shared.cache.display()
        )],
    );

    let b = Kiln::new();
    busybox_base(&b, &shared.base_context, &shared.base_cache, false);
    let context = app_context(&b, APP);
    let blobs_before = blob_names(b.root.path());
    let cache_from = format!("--cache-from=type=local,src={}", shared.cache.display());
    let explained = build(&b, &context, &["--explain", &cache_from]);
    let table = stdout(&explained);
    let imported = format!("CACHED  (imported from {})", shared.cache.display());
    // The base image is in the store (`CACHED` without a source); the steps come from the cache.
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with('[') && !l.contains(" FROM "))
        .collect();
    assert_eq!(lines.len(), 3, "{table}");
    for line in &lines {
        assert!(line.ends_with(&imported), "{line:?} in\n{table}");
    }
    assert!(table.contains("4 step(s) cached, 0 to run"), "{table}");
    assert_eq!(
        blob_names(b.root.path()),
        blobs_before,
        "an explain fetches no blob"
    );

    // Without the cache the same explain says the steps would run.
    let alone = stdout(&build(&b, &context, &["--explain"]));
    assert!(alone.contains("1 step(s) cached, 3 to run"), "{alone}");

    // And the build it predicted runs nothing.
    let built = steps(&build(&b, &context, &[&cache_from]));
    assert!(built.values().all(|s| *s == "CACHED"), "{built:?}");
}

/// The blobs `dir/index.json` references through its manifests (config and layers).
fn referenced_blobs(dir: &Path) -> std::collections::BTreeSet<String> {
    let read = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    let hex = |descriptor: &serde_json::Value| {
        descriptor["digest"].as_str().unwrap()["sha256:".len()..].to_string()
    };
    let mut names = std::collections::BTreeSet::new();
    for manifest in read(dir.join("index.json"))["manifests"]
        .as_array()
        .unwrap()
    {
        names.insert(hex(manifest));
        let manifest = read(dir.join("blobs/sha256").join(hex(manifest)));
        names.insert(hex(&manifest["config"]));
        for layer in manifest["layers"].as_array().unwrap() {
            names.insert(hex(layer));
        }
    }
    names
}

#[test]
fn a_local_cache_dir_keeps_only_what_its_index_references() {
    let shared = shared();
    let kiln = Kiln::new();
    busybox_base(&kiln, &shared.base_context, &shared.base_cache, true);
    let cache_to = format!(
        "--cache-to=type=local,dest={},mode=max",
        shared.cache.display()
    );
    let context = app_context(&kiln, APP);
    build(&kiln, &context, &[&cache_to]);
    let first = blob_names(&shared.cache);
    assert_eq!(first, referenced_blobs(&shared.cache));
    // As if that export ran an hour ago: an export removes only files older than its start.
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for name in &first {
        std::fs::File::options()
            .write(true)
            .open(shared.cache.join("blobs/sha256").join(name))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(an_hour_ago))
            .unwrap();
    }

    // A changed file changes every step's result: the old blobs are not referenced any more.
    std::fs::write(context.join("a.txt"), "b\n").unwrap();
    build(&kiln, &context, &[&cache_to]);
    let second = blob_names(&shared.cache);
    assert_eq!(
        second,
        referenced_blobs(&shared.cache),
        "nothing else is left"
    );
    assert!(
        first.difference(&second).count() >= 3,
        "the old manifest, config and layers went: {first:?} -> {second:?}"
    );

    // `reset=false` (BuildKit's default) keeps them.
    std::fs::write(context.join("a.txt"), "c\n").unwrap();
    build(&kiln, &context, &[&format!("{cache_to},reset=false")]);
    assert!(blob_names(&shared.cache).is_superset(&second));
    assert!(blob_names(&shared.cache).len() > referenced_blobs(&shared.cache).len());
}

#[test]
fn the_builder_stage_hits_only_with_mode_max() {
    // SOURCE_DATE_EPOCH clamps file times, so a re-run builder writes identical bytes.
    const EPOCH: Option<&str> = Some("1700000000");
    let shared = shared();
    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    let min_cache = shared.cache.with_file_name("min-cache");
    build_with_epoch(
        &a,
        &app_context(&a, MULTI_STAGE),
        &[
            &format!(
                "--cache-to=type=local,dest={},mode=min",
                min_cache.display()
            ),
            &format!(
                "--cache-to=type=local,dest={},mode=max",
                shared.cache.display()
            ),
        ],
        EPOCH,
    );
    let by_stage = |outcome: &BTreeMap<String, &'static str>, stage: &str| -> Vec<&'static str> {
        outcome
            .iter()
            .filter(|(name, _)| name.starts_with(stage))
            .map(|(_, s)| *s)
            .collect()
    };

    let with_min = Kiln::new();
    busybox_base(&with_min, &shared.base_context, &shared.base_cache, false);
    let output = build_with_epoch(
        &with_min,
        &app_context(&with_min, MULTI_STAGE),
        &[&format!(
            "--cache-from=type=local,src={}",
            min_cache.display()
        )],
        EPOCH,
    );
    let outcome = steps(&output);
    assert_eq!(
        by_stage(&outcome, "[builder"),
        ["DONE", "DONE"],
        "{outcome:?}"
    );
    // The builder re-ran into identical bytes, so the final stage's steps hit.
    assert_eq!(
        by_stage(&outcome, "[stage-1"),
        ["CACHED", "CACHED"],
        "{outcome:?}"
    );

    let with_max = Kiln::new();
    busybox_base(&with_max, &shared.base_context, &shared.base_cache, false);
    let output = build_with_epoch(
        &with_max,
        &app_context(&with_max, MULTI_STAGE),
        &[&format!(
            "--cache-from=type=local,src={}",
            shared.cache.display()
        )],
        EPOCH,
    );
    let outcome = steps(&output);
    assert_eq!(
        by_stage(&outcome, "[builder"),
        ["CACHED", "CACHED"],
        "{outcome:?}"
    );
    assert_eq!(
        by_stage(&outcome, "[stage-1"),
        ["CACHED", "CACHED"],
        "{outcome:?}"
    );
    assert!(!stderr(&output).contains("built-42"));
}

#[test]
fn a_missing_or_corrupt_cache_is_a_warning_and_a_normal_build() {
    let shared = shared();
    let kiln = Kiln::new();
    busybox_base(&kiln, &shared.base_context, &shared.base_cache, true);
    let context = app_context(&kiln, APP);
    let missing = format!(
        "--cache-from=type=local,src={}",
        shared.cache.with_file_name("nowhere").display()
    );
    let output = build(&kiln, &context, &[&missing, "--no-cache"]);
    assert!(
        stderr(&output).contains("warning: --cache-from"),
        "{}",
        stderr(&output)
    );
    assert!(steps(&output).values().all(|s| *s == "DONE"));

    // A cache whose config does not decode.
    build(
        &kiln,
        &context,
        &[&format!(
            "--cache-to=type=local,dest={},mode=max",
            shared.cache.display()
        )],
    );
    let index = std::fs::read_to_string(shared.cache.join("index.json")).expect("index");
    std::fs::write(shared.cache.join("index.json"), &index[..index.len() / 2]).expect("truncate");
    let fresh = Kiln::new();
    busybox_base(&fresh, &shared.base_context, &shared.base_cache, false);
    let output = build(
        &fresh,
        &app_context(&fresh, APP),
        &[&format!(
            "--cache-from=type=local,src={}",
            shared.cache.display()
        )],
    );
    assert!(
        stderr(&output).contains("warning: --cache-from"),
        "{}",
        stderr(&output)
    );
    assert!(steps(&output).values().all(|s| *s == "DONE"));

    // A bad option is a usage error, before any work.
    let output = kiln.run(&[
        "build",
        "--cache-to=type=local",
        context.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("dest=DIR"), "{}", stderr(&output));
}

#[test]
fn a_registry_cache_makes_a_fresh_store_run_nothing_and_uploads_blobs_once() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let shared = shared();
    let reference = format!("{}/app:buildcache", registry.host());
    let cache_to = format!("--cache-to=type=registry,ref={reference},mode=max");
    let cache_from = format!("--cache-from=type=registry,ref={reference}");

    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    let context = app_context(&a, APP);
    let first = build(&a, &context, &[&cache_to]);
    assert!(steps(&first).values().all(|s| *s == "DONE"));
    let uploads = registry.log_count("PUT /v2/app/blobs/uploads/");
    assert!(
        uploads >= 4,
        "base, COPY and RUN layers and the config: {uploads}"
    );
    // The same build exported again: every blob is already there.
    build(&a, &context, &[&cache_to]);
    assert_eq!(registry.log_count("PUT /v2/app/blobs/uploads/"), uploads);

    let b = Kiln::new();
    busybox_base(&b, &shared.base_context, &shared.base_cache, false);
    let second = build(&b, &app_context(&b, APP), &[&cache_from]);
    let outcome = steps(&second);
    assert_eq!(outcome.len(), 3, "{outcome:?}");
    assert!(
        outcome.values().all(|s| *s == "CACHED"),
        "{outcome:?}\n{}",
        stderr(&second)
    );
    assert!(!stderr(&second).contains("ran-42"), "no RUN executed");
    assert_eq!(
        stdout(&first).trim(),
        stdout(&second).trim(),
        "same image id"
    );

    // A tag that does not exist is a warning.
    let missing = format!(
        "--cache-from=type=registry,ref={}/app:nothing",
        registry.host()
    );
    let output = build(&b, &app_context(&b, APP), &[&missing]);
    assert!(
        stderr(&output).contains("warning: --cache-from"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_inline_cache_travels_with_the_pushed_image() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let shared = shared();
    let image = format!("{}/app:inline", registry.host());

    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    let first = build(
        &a,
        &app_context(&a, APP),
        &["--cache-to=type=inline", "--push", "-t", &image],
    );
    assert!(steps(&first).values().all(|s| *s == "DONE"));

    let b = Kiln::new();
    busybox_base(&b, &shared.base_context, &shared.base_cache, false);
    let second = build(
        &b,
        &app_context(&b, APP),
        &["--cache-to=type=inline", "--cache-from", &image],
    );
    let outcome = steps(&second);
    assert_eq!(outcome.len(), 3, "{outcome:?}");
    assert!(
        outcome.values().all(|s| *s == "CACHED"),
        "{outcome:?}\n{}",
        stderr(&second)
    );
    assert!(!stderr(&second).contains("ran-42"), "no RUN executed");
    // The same records inlined, the same times: the same image.
    assert_eq!(
        stdout(&first).trim(),
        stdout(&second).trim(),
        "same image id"
    );

    // An image without an inline cache is a warning.
    let plain = format!("{}/app:plain", registry.host());
    build(&a, &app_context(&a, APP), &["--push", "-t", &plain]);
    let output = build(&b, &app_context(&b, APP), &["--cache-from", &plain]);
    assert!(
        stderr(&output).contains("no inline cache"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn cache_mounts_travel_with_a_max_cache() {
    let shared = shared();
    let a = Kiln::new();
    busybox_base(&a, &shared.base_context, &shared.base_cache, true);
    let warm = a.context(
        "warm",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/cache echo warm > /cache/state\n",
        )],
    );
    build(
        &a,
        &warm,
        &[&format!(
            "--cache-to=type=local,dest={},mode=max",
            shared.cache.display()
        )],
    );

    let b = Kiln::new();
    busybox_base(&b, &shared.base_context, &shared.base_cache, false);
    let reader = b.context(
        "reader",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/cache cp /cache/state /state\n",
        )],
    );
    let out = b.work.path().join("out");
    build(
        &b,
        &reader,
        &[
            &format!("--cache-from=type=local,src={}", shared.cache.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("state")).expect("the RUN saw the imported cache"),
        "warm\n"
    );
}

//! `kiln build --progress=json`: every stderr line is one JSON object; steps start and then end
//! (`done`, `cached`, `failed`) with times that only grow; the build's phases are reported; the
//! last event names the image that `--iidfile` names; a failing RUN's `failed` event carries the
//! exit code. The plain display keeps BuildKit's format next to it.

mod common;

use std::collections::BTreeMap;

use common::{Kiln, build_busybox_with_kiln, stderr, stdout};
use serde_json::Value;

/// Every line of `text` as JSON; panics naming the first line that is not.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n--- all\n{text}"));
            assert!(value.is_object(), "not an object: {line}");
            assert!(value["event"].is_string(), "no event: {line}");
            assert!(value["time_ns"].is_u64(), "no time_ns: {line}");
            value
        })
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Per step: its description, when it started, how it ended and when.
fn steps(events: &[Value]) -> BTreeMap<u64, (String, u64, String, u64)> {
    let mut started = BTreeMap::new();
    let mut ended = BTreeMap::new();
    for event in events {
        let kind = event["event"].as_str().unwrap();
        let time = event["time_ns"].as_u64().unwrap();
        match kind {
            "started" => {
                let step = event["step"].as_u64().unwrap();
                let description = event["description"].as_str().unwrap().to_string();
                assert!(
                    started.insert(step, (description, time)).is_none(),
                    "step {step} started twice"
                );
            }
            "done" | "cached" | "failed" => {
                let step = event["step"].as_u64().unwrap();
                assert!(
                    started.contains_key(&step),
                    "step {step} ended before it started"
                );
                assert!(
                    ended.insert(step, (kind.to_string(), time)).is_none(),
                    "step {step} ended twice"
                );
            }
            "output" | "cache_miss" => {
                let step = event["step"].as_u64().unwrap();
                assert!(started.contains_key(&step), "{event} before its step");
                assert!(!ended.contains_key(&step), "{event} after its step ended");
            }
            _ => {}
        }
    }
    started
        .into_iter()
        .map(|(step, (description, start))| {
            let (how, end) = ended
                .get(&step)
                .cloned()
                .unwrap_or_else(|| panic!("step {step} ({description}) never ended"));
            assert!(end >= start, "step {step} ended before it started");
            (step, (description, start, how, end))
        })
        .collect()
}

fn phase_names(events: &[Value]) -> Vec<String> {
    of_kind(events, "phase")
        .iter()
        .map(|phase| {
            let duration = phase["duration_ns"].as_u64().expect("duration_ns");
            let start = phase["start_ns"].as_u64().expect("start_ns");
            assert_eq!(start + duration, phase["time_ns"].as_u64().unwrap());
            phase["name"].as_str().expect("name").to_string()
        })
        .collect()
}

#[test]
fn a_build_streams_json_lines_with_steps_phases_and_the_image_id() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "app",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN echo from-run; cat /a.txt > /b\n",
            ),
            ("a.txt", "data\n"),
        ],
    );
    let iidfile = kiln.work.path().join("iid");
    let args = [
        "build",
        "--progress=json",
        "--iidfile",
        iidfile.to_str().unwrap(),
        context.to_str().unwrap(),
    ];

    // Cold: every step runs.
    let output = kiln.ok(&args);
    let events = json_lines(&stderr(&output));
    let ran = steps(&events);
    let run = ran
        .values()
        .find(|(description, ..)| description == "[3/3] RUN echo from-run; cat /a.txt > /b")
        .unwrap_or_else(|| panic!("no RUN step in {ran:?}"));
    assert_eq!(run.2, "done");
    assert!(
        of_kind(&events, "done")
            .iter()
            .all(|done| done["duration_ns"].is_u64())
    );
    let output_line = of_kind(&events, "output")
        .into_iter()
        .find(|line| line["line"] == "from-run")
        .expect("the RUN's output line");
    let output_time = output_line["time_ns"].as_u64().unwrap();
    assert!(run.1 <= output_time && output_time <= run.3);
    assert!(
        of_kind(&events, "cache_miss")
            .iter()
            .all(|miss| miss["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    let phases = phase_names(&events);
    for name in [
        "parse",
        "lower",
        "cache-key",
        "cache-lookup",
        "file",
        "exec",
        "layer",
        "export",
    ] {
        assert!(
            phases.iter().any(|p| p == name),
            "no {name} phase in {phases:?}"
        );
    }
    // A step's phases belong to steps that were started.
    for phase in of_kind(&events, "phase") {
        if let Some(step) = phase["step"].as_u64() {
            assert!(ran.contains_key(&step), "{phase}");
        }
    }
    let iid = std::fs::read_to_string(&iidfile).unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "image");
    assert_eq!(last["id"], iid.as_str());
    assert_eq!(stdout(&output).trim(), iid);
    let times: Vec<u64> = of_kind(&events, "started")
        .iter()
        .map(|e| e["time_ns"].as_u64().unwrap())
        .collect();
    assert!(last["time_ns"].as_u64().unwrap() >= *times.iter().max().unwrap());

    // Cached: the steps are cached, the image is the same.
    let output = kiln.ok(&args);
    let events = json_lines(&stderr(&output));
    let cached = steps(&events);
    assert!(
        cached.values().any(
            |(description, _, how, _)| description.starts_with("[3/3] RUN") && how == "cached"
        ),
        "{cached:?}"
    );
    assert!(of_kind(&events, "done").is_empty(), "{events:?}");
    let phases = phase_names(&events);
    assert!(phases.iter().any(|p| p == "cache-lookup"), "{phases:?}");
    assert!(!phases.iter().any(|p| p == "exec"), "{phases:?}");
    assert_eq!(events.last().unwrap()["id"], iid.as_str());
}

#[test]
fn a_failing_run_ends_with_a_failed_event_carrying_the_exit_code() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "fail",
        &[("Dockerfile", "FROM busybox\nRUN echo before; exit 3\n")],
    );
    let output = kiln.run(&["build", "--progress=json", context.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    // The events come first, one JSON object per line; kiln's error report follows them as text.
    let json: String = text
        .lines()
        .take_while(|line| line.starts_with('{'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(text[json.len()..].starts_with("error: "), "{text}");
    let events = json_lines(&json);
    let failed = of_kind(&events, "failed");
    assert_eq!(failed.len(), 1, "{events:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("exit code 3"), "{error}");
    assert!(failed[0]["duration_ns"].is_u64());
    let ran = steps(&events);
    let step = failed[0]["step"].as_u64().unwrap();
    assert_eq!(ran[&step].0, "[2/2] RUN echo before; exit 3");
    assert!(of_kind(&events, "image").is_empty());
}

#[test]
fn plain_progress_still_reads_like_buildkit() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("app", &[("Dockerfile", "FROM busybox\nRUN echo hi\n")]);
    let output = kiln.ok(&["build", "--progress=plain", context.to_str().unwrap()]);
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().all(|line| line.starts_with('#')), "{text}");
    assert!(
        lines.contains(&"#1 [1/2] FROM docker.io/library/busybox:latest"),
        "{text}"
    );
    assert!(lines.contains(&"#1 CACHED"), "{text}");
    assert!(lines.contains(&"#2 [2/2] RUN echo hi"), "{text}");
    // `#2 0.008 hi`: seconds since the step started, then the line.
    let offset = lines
        .iter()
        .filter_map(|line| line.strip_prefix("#2 ")?.strip_suffix(" hi"))
        .find(|offset| offset.parse::<f64>().is_ok())
        .unwrap_or_else(|| panic!("no output line in:\n{text}"));
    assert!(
        offset.split_once('.').is_some_and(|(_, ms)| ms.len() == 3),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("#2 DONE ") && line.ends_with('s')),
        "{text}"
    );
}

#[test]
fn quiet_prints_only_the_image_id() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("app", &[("Dockerfile", "FROM busybox\nRUN echo hi\n")]);
    for flag in ["-q", "--progress=quiet"] {
        let output = kiln.ok(&["build", flag, context.to_str().unwrap()]);
        assert_eq!(stderr(&output), "", "{flag}");
        let id = stdout(&output);
        assert!(
            id.starts_with("sha256:") && id.trim().len() == 71 && id.lines().count() == 1,
            "{flag}: {id:?}"
        );
    }
}

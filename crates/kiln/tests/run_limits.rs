//! `kiln run --memory/--pids-limit` and `kiln build --memory` end to end on real cgroups: a command
//! allocating past the limit is killed and reported as out of memory (exit code 137, as Docker),
//! a fork loop hits the pids limit, the cgroups are gone after the run, limits stay out of the
//! build cache key, and bad values are errors naming the flag. Tests needing cgroups return early
//! where they cannot run (not root, or no memory/pids controller on the host).

mod common;

use std::path::PathBuf;

use common::{Kiln, build_busybox_with_kiln, kiln_with_busybox, stderr, stdout};
use kiln_executor::cgroup::{CgroupLayout, CgroupVersion};

/// Really allocates: busybox `tail` holds the last "line" of /dev/zero (100 MiB, no newline).
const ALLOCATE_100M: &str = "head -c 100m /dev/zero | tail > /dev/null";

/// The host's cgroup layout where the tests can use it.
fn layout() -> Option<CgroupLayout> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    CgroupLayout::detect().ok()
}

/// Groups made by the kiln process `pid` that still exist.
fn groups_of(layout: &CgroupLayout, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("kiln-{pid}-");
    let mut parents = Vec::new();
    for hierarchy in [&layout.memory, &layout.pids].into_iter().flatten() {
        parents.push(hierarchy.own_dir.clone());
        if hierarchy.version == CgroupVersion::V2
            && let Some(parent) = hierarchy.own_dir.parent()
        {
            parents.push(parent.to_path_buf());
        }
    }
    parents
        .iter()
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

/// Runs kiln with `args`, returning its output and its pid (whose groups the test then looks for).
fn run_with_pid(kiln: &Kiln, args: &[&str]) -> (std::process::Output, u32) {
    let child = kiln
        .command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kiln");
    let pid = child.id();
    (child.wait_with_output().expect("wait for kiln"), pid)
}

#[test]
fn run_memory_limit_kills_the_hog_and_says_out_of_memory() {
    let Some(layout) = layout() else { return };
    if layout.memory.is_none() {
        return;
    }
    let kiln = kiln_with_busybox();

    let unlimited = kiln.run(&["run", "--rm", "busybox", "sh", "-c", ALLOCATE_100M]);
    assert_eq!(unlimited.status.code(), Some(0), "{}", stderr(&unlimited));

    let (limited, pid) = run_with_pid(
        &kiln,
        &[
            "run",
            "--rm",
            "-m",
            "32m",
            "busybox",
            "sh",
            "-c",
            ALLOCATE_100M,
        ],
    );
    assert_eq!(limited.status.code(), Some(137), "{}", stderr(&limited));
    assert!(
        stderr(&limited).contains("killed: out of memory (limit 32 MiB)"),
        "{}",
        stderr(&limited)
    );
    assert!(
        groups_of(&layout, pid).is_empty(),
        "{:?}",
        groups_of(&layout, pid)
    );
}

#[test]
fn run_pids_limit_stops_a_fork_loop() {
    let Some(layout) = layout() else { return };
    if layout.pids.is_none() {
        return;
    }
    let kiln = kiln_with_busybox();
    // Every `sleep` lives on (until the container ends), so each round needs one more pid.
    let script = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo forked-all";

    let unlimited = kiln.run(&["run", "busybox", "sh", "-c", script]);
    assert_eq!(stdout(&unlimited), "forked-all\n", "{}", stderr(&unlimited));

    let (limited, pid) = run_with_pid(
        &kiln,
        &["run", "--pids-limit", "10", "busybox", "sh", "-c", script],
    );
    assert_ne!(limited.status.code(), Some(0));
    assert_eq!(stdout(&limited), "");
    assert!(stderr(&limited).contains("fork"), "{}", stderr(&limited));
    assert!(
        groups_of(&layout, pid).is_empty(),
        "{:?}",
        groups_of(&layout, pid)
    );
}

#[test]
fn build_memory_applies_to_run_steps_and_stays_out_of_the_cache_key() {
    let Some(layout) = layout() else { return };
    if layout.memory.is_none() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);

    let hog = kiln.context(
        "hog",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN {ALLOCATE_100M}\n"),
        )],
    );
    let failed = kiln.run(&["build", "--memory", "32m", hog.to_str().unwrap()]);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("killed: out of memory (limit 32 MiB)"),
        "{}",
        stderr(&failed)
    );
    kiln.ok(&["build", "-q", hog.to_str().unwrap()]);

    // Built with a limit, rebuilt without one (and with another): the step is cached.
    let small = kiln.context(
        "small",
        &[("Dockerfile", "FROM busybox\nRUN echo small > /f\n")],
    );
    let small = small.to_str().unwrap();
    kiln.ok(&["build", "-m", "64m", small]);
    for extra in [&[][..], &["--memory", "128m"][..]] {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(small);
        let again = kiln.ok(&args);
        assert!(stderr(&again).contains("CACHED"), "{}", stderr(&again));
    }
}

#[test]
fn bad_limit_values_are_errors_naming_the_flag() {
    let kiln = Kiln::new();
    for (args, flag) in [
        (&["run", "-m", "64x", "busybox", "true"][..], "--memory"),
        (
            &["run", "--memory", "1k", "busybox", "true"][..],
            "--memory",
        ),
        (
            &["run", "--pids-limit", "lots", "busybox", "true"][..],
            "--pids-limit",
        ),
        (&["build", "--memory", "lots", "."][..], "--memory"),
    ] {
        let output = kiln.run(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(flag),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

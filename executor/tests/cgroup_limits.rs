//! Resource limits on real cgroups (v1 on the CI machine, v2 where the host has it): a memory hog is
//! killed and reported as out of memory, a fork loop hits the pids limit, the sandbox joins a group in
//! every hierarchy, and the groups are gone afterwards — also after a failure — along with stale ones.
//! Each test returns early where it cannot run (not root, or no controllers at all).

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

use common::{Fixture, is_root, run_capture};
use kiln_executor::cgroup::{self, CgroupLayout, CgroupVersion, SandboxCgroup};
use kiln_executor::{ExitStatus, OverlaySnapshotter, ResourceLimits, SandboxError};

/// The tests look for this process's groups in shared parents: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A script that really allocates: busybox `tail` keeps the last lines in memory, and /dev/zero
/// has no newline, so it holds all 100 MiB.
const ALLOCATE_100M: &str = "head -c 100m /dev/zero | tail > /dev/null && echo survived";

/// The detected layout, or `None` where these tests cannot run.
fn layout() -> Option<CgroupLayout> {
    if !is_root() {
        return None;
    }
    CgroupLayout::detect().ok()
}

/// The dirs where this process's sandbox groups are made (own cgroup per hierarchy; on cgroup2 its
/// parent too, as a group may go beside our own cgroup).
fn group_parents(layout: &CgroupLayout) -> Vec<PathBuf> {
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
}

/// This process's `kiln-<pid>-*` groups that exist right now.
fn my_groups(layout: &CgroupLayout) -> Vec<PathBuf> {
    let prefix = format!("kiln-{}-", std::process::id());
    group_parents(layout)
        .iter()
        .filter_map(|parent| fs::read_dir(parent).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

fn memory_limit(bytes: u64) -> ResourceLimits {
    ResourceLimits {
        memory_bytes: Some(bytes),
        pids_max: None,
    }
}

#[test]
fn memory_hog_is_killed_and_reported_as_out_of_memory() {
    let Some(layout) = layout() else { return };
    if layout.memory.is_none() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new(&OverlaySnapshotter);

    // Without a limit the same script runs to the end: it is the limit that kills it.
    let (status, stdout, _) = run_capture(&fixture.spec(ALLOCATE_100M));
    assert!(status.success(), "{status}");
    assert_eq!(stdout, "survived\n");

    let mut spec = fixture.spec(ALLOCATE_100M);
    spec.limits = memory_limit(32 << 20);
    let (status, stdout, stderr) = run_capture(&spec);
    assert_eq!(
        status,
        ExitStatus::OutOfMemory {
            code: 137,
            limit_bytes: 32 << 20
        },
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert_eq!(status.code(), 137);
    assert_eq!(status.to_string(), "killed: out of memory (limit 32 MiB)");
    assert!(my_groups(&layout).is_empty(), "{:?}", my_groups(&layout));
}

#[test]
fn fork_loop_hits_the_pids_limit() {
    let Some(layout) = layout() else { return };
    if layout.pids.is_none() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new(&OverlaySnapshotter);
    // Each `sleep` stays alive (it ends with the sandbox), so every loop round needs one more pid.
    let script = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo forked-all";

    let (status, stdout, _) = run_capture(&fixture.spec(script));
    assert!(status.success(), "{status}");
    assert_eq!(stdout, "forked-all\n");

    let mut spec = fixture.spec(script);
    spec.limits = ResourceLimits {
        memory_bytes: None,
        pids_max: Some(10),
    };
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(!status.success(), "{status}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("fork"), "{stderr}");
    assert!(my_groups(&layout).is_empty(), "{:?}", my_groups(&layout));
}

#[test]
fn the_sandbox_joins_a_group_in_every_hierarchy_and_they_are_removed() {
    let Some(layout) = layout() else { return };
    if layout.memory.is_none() || layout.pids.is_none() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("cat /proc/self/cgroup");
    spec.limits = ResourceLimits {
        memory_bytes: Some(64 << 20),
        pids_max: Some(64),
    };
    let (status, stdout, _) = run_capture(&spec);
    assert!(status.success(), "{status}");
    let group = format!("/kiln-{}-", std::process::id());
    let in_group = |controller: &str| {
        stdout.lines().any(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let listed =
                controllers.is_some_and(|c| c.is_empty() || c.split(',').any(|c| c == controller));
            listed && path.is_some_and(|p| p.contains(&group))
        })
    };
    assert!(in_group("memory"), "{stdout}");
    assert!(in_group("pids"), "{stdout}");
    assert!(my_groups(&layout).is_empty(), "{:?}", my_groups(&layout));
}

#[test]
fn groups_are_removed_when_the_setup_fails() {
    let Some(layout) = layout() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("unused");
    spec.args = vec!["no-such-command".into()];
    spec.limits = ResourceLimits {
        memory_bytes: Some(64 << 20),
        pids_max: Some(64),
    };
    let error = kiln_executor::run(&spec, kiln_executor::SandboxIo::default()).unwrap_err();
    assert!(
        matches!(error, SandboxError::CommandNotFound { .. }),
        "{error}"
    );
    assert!(my_groups(&layout).is_empty(), "{:?}", my_groups(&layout));
}

#[test]
fn limits_are_written_in_each_hierarchy() {
    let Some(layout) = layout() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limits = ResourceLimits {
        memory_bytes: Some(48 << 20),
        pids_max: Some(17),
    };
    let cgroup = SandboxCgroup::create(&layout, &limits)
        .unwrap()
        .expect("a controller is available");
    let dirs = cgroup.dirs();
    assert_eq!(cgroup.procs_fds().len(), dirs.len());
    let read = |file: &str| {
        dirs.iter()
            .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
            .map(|text| text.trim().to_string())
    };
    if let Some(memory) = &layout.memory {
        match memory.version {
            CgroupVersion::V1 => {
                assert_eq!(read("memory.limit_in_bytes").unwrap(), "50331648");
                if let Some(memsw) = read("memory.memsw.limit_in_bytes") {
                    assert_eq!(
                        memsw, "100663296",
                        "as Docker: as much swap again as memory"
                    );
                }
            }
            CgroupVersion::V2 => assert_eq!(read("memory.max").unwrap(), "50331648"),
        }
    }
    if layout.pids.is_some() {
        assert_eq!(read("pids.max").unwrap(), "17");
    }
    assert!(!cgroup.oom_killed());
    drop(cgroup);
    assert!(dirs.iter().all(|dir| !dir.exists()), "{dirs:?}");
}

#[test]
fn stale_groups_from_a_crashed_kiln_are_removed_next_time() {
    let Some(layout) = layout() else { return };
    let Some(memory) = &layout.memory else { return };
    if memory.version != CgroupVersion::V1 {
        // On cgroup2 the group may go beside our own cgroup, where we may not create dirs at will.
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A pid beyond pid_max (2^22): its owner is certainly gone.
    let stale = memory.own_dir.join("kiln-999999999-7");
    fs::create_dir_all(&stale).unwrap();
    let cgroup = SandboxCgroup::create(&layout, &memory_limit(64 << 20)).unwrap();
    let stale_exists = stale.exists();
    drop(cgroup);
    let _ = fs::remove_dir(&stale);
    assert!(!stale_exists, "{} was left", stale.display());
}

#[test]
fn detection_agrees_with_the_layout() {
    match cgroup::detect() {
        cgroup::CgroupSupport::Unavailable(reason) => {
            assert!(CgroupLayout::detect().is_err(), "{reason}")
        }
        support => assert_eq!(CgroupLayout::detect().unwrap().support(), support),
    }
}

//! Docker's default confinement, for real (as root): capabilities, `nodev` everywhere a command can
//! write, masked and read-only paths under /proc and /sys, and the ways to loosen it.

mod common;

use common::{Fixture, is_root, run_capture};
use kiln_executor::{
    CapabilitySet, Confinement, ExitStatus, ExtraMount, NativeSnapshotter, OverlaySnapshotter,
    Snapshotter, mount_stubs,
};

/// Docker's default bounding set as /proc/self/status shows it.
const DOCKER_CAPS: &str = "00000000a80425fb";

fn cap_line<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn root_keeps_exactly_dockers_default_capabilities() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let (status, stdout, stderr) = run_capture(&fixture.spec("grep Cap /proc/self/status"));
    assert!(status.success(), "{stderr}");
    assert_eq!(cap_line(&stdout, "CapBnd:"), DOCKER_CAPS);
    assert_eq!(cap_line(&stdout, "CapEff:"), DOCKER_CAPS);
    assert_eq!(cap_line(&stdout, "CapPrm:"), DOCKER_CAPS);
    assert_eq!(cap_line(&stdout, "CapInh:"), "0000000000000000");
    assert_eq!(cap_line(&stdout, "CapAmb:"), "0000000000000000");
}

#[test]
fn non_root_user_has_no_effective_capabilities() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("id -u; grep Cap /proc/self/status");
    spec.user = "app".into();
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("1000\n"), "{stdout}");
    assert_eq!(cap_line(&stdout, "CapEff:"), "0000000000000000");
    assert_eq!(cap_line(&stdout, "CapPrm:"), "0000000000000000");
    assert_eq!(cap_line(&stdout, "CapBnd:"), DOCKER_CAPS);
}

#[test]
fn mounting_is_refused() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let (status, _, stderr) = run_capture(&fixture.spec("mkdir -p /mnt && mount -t tmpfs x /mnt"));
    assert_ne!(status, ExitStatus::Exited(0), "mount worked: {stderr}");
    assert!(
        stderr.contains("ermission denied") || stderr.contains("not permitted"),
        "{stderr}"
    );
}

#[test]
fn device_nodes_made_in_the_sandbox_cannot_be_opened() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    // mknod itself is allowed (package installs make nodes), as in Docker; opening is not, on the
    // root, on the /dev tmpfs and on a writable bind (a cache mount is a host dir).
    let host_dir = fixture.tmp.path().join("cache");
    std::fs::create_dir_all(&host_dir).unwrap();
    let mounts = vec![ExtraMount::Bind {
        source: host_dir.clone(),
        target: "/cache".into(),
        read_only: false,
    }];
    let snapshot = OverlaySnapshotter
        .prepare(
            &fixture.layers,
            &fixture.tmp.path().join("snapshot-cache"),
            &mount_stubs(&mounts),
        )
        .unwrap();
    let mut spec = fixture.spec(
        "for node in /tmp/sda /dev/sda /cache/sda; do \
           mknod $node b 8 0 || echo mknod-failed; \
           head -c1 $node >/dev/null 2>&1 && echo $node-opened || echo $node-refused; \
         done; \
         mknod /tmp/null c 1 3 && (echo x > /tmp/null) 2>/dev/null && echo null-opened || echo null-refused",
    );
    spec.rootfs = snapshot.mount().clone();
    spec.mounts = mounts;
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "/tmp/sda-refused\n/dev/sda-refused\n/cache/sda-refused\nnull-refused\n"
    );
    let (_, stderr_of_head, _) =
        run_capture(&fixture.spec("mknod /tmp/sda b 8 0 && head -c1 /tmp/sda 2>&1"));
    assert!(
        stderr_of_head.contains("Permission denied"),
        "{stderr_of_head}"
    );
}

#[test]
fn the_minimal_dev_still_works() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let (status, stdout, stderr) = run_capture(&fixture.spec(
        "echo gone > /dev/null && head -c4 /dev/zero | wc -c && head -c4 /dev/urandom | wc -c \
         && head -c4 /dev/random | wc -c && (echo x > /dev/full) 2>/dev/null || echo full; \
         ls /dev/ptmx /dev/pts/ptmx >/dev/null && echo pts",
    ));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "4\n4\n4\nfull\npts\n");
}

#[test]
fn proc_and_sys_are_masked_like_docker() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    // Which masked files this kernel has (e.g. no /proc/kcore without CONFIG_PROC_KCORE): each one
    // there must read as empty.
    let masked_files: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/latency_stats",
    ]
    .into_iter()
    .filter(|path| std::path::Path::new(path).exists())
    .collect();
    let mut script = String::new();
    for path in &masked_files {
        script.push_str(&format!("echo {path} $(wc -c < {path}); "));
    }
    script.push_str(
        "(echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-writable || echo sys-ro; \
         (echo b > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-writable || echo sysrq-ro; \
         grep -c ' /proc/sys ' /proc/self/mountinfo; \
         if [ -e /sys/firmware ]; then ls -A /sys/firmware | wc -l; else echo 0; fi",
    );
    let (status, stdout, stderr) = run_capture(&fixture.spec(&script));
    assert!(status.success(), "{stderr}");
    let mut expected: String = masked_files.iter().map(|p| format!("{p} 0\n")).collect();
    expected.push_str("sys-ro\nsysrq-ro\n1\n0\n");
    assert_eq!(stdout, expected);
}

#[test]
fn cap_add_sys_admin_lets_mount_work() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("mkdir -p /mnt && mount -t tmpfs x /mnt && echo mounted");
    spec.confinement.capabilities =
        CapabilitySet::docker_default_with(&["SYS_ADMIN".into()], &[]).unwrap();
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "mounted\n");
}

#[test]
fn cap_drop_chown_refuses_chown() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("touch /tmp/f && chown 1000 /tmp/f 2>/dev/null || echo refused");
    spec.confinement.capabilities =
        CapabilitySet::docker_default_with(&[], &["CAP_CHOWN".into()]).unwrap();
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "refused\n");
}

#[test]
fn privileged_has_every_capability_no_masks_and_usable_devices() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec(
        "mkdir -p /mnt && mount -t tmpfs x /mnt && echo mounted; \
         mknod /tmp/null c 1 3 && echo x > /tmp/null && echo node-opened; \
         grep -c -e ' /proc/kcore ' -e ' /proc/sys ' /proc/self/mountinfo; \
         grep CapBnd /proc/self/status",
    );
    spec.confinement = Confinement::privileged();
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    let host_bounding = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        stdout,
        format!(
            "mounted\nnode-opened\n0\nCapBnd:\t{}\n",
            cap_line(&host_bounding, "CapBnd:")
        )
    );
}

#[test]
fn a_bind_root_from_the_copying_snapshotter_is_nodev_too() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&NativeSnapshotter);
    let (status, stdout, stderr) = run_capture(&fixture.spec(
        "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda >/dev/null 2>&1 && echo opened || echo refused",
    ));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "refused\n");
}

/// What confinement costs per run (masks, capabilities, `nodev`): default against privileged,
/// interleaved. Prints only; run with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_confinement_cost() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut confined = fixture.spec("");
    confined.args = vec!["/bin/true".into()];
    let mut all_caps = confined.clone();
    all_caps.confinement.capabilities = CapabilitySet::all();
    let mut privileged = confined.clone();
    privileged.confinement = Confinement::privileged();
    let mut samples: [Vec<std::time::Duration>; 3] = Default::default();
    const RUNS: usize = 200;
    for _ in 0..RUNS {
        for (times, spec) in samples.iter_mut().zip([&confined, &all_caps, &privileged]) {
            let started = std::time::Instant::now();
            assert!(run_capture(spec).0.success());
            times.push(started.elapsed());
        }
    }
    // Medians: the machine is shared, so means follow other people's work.
    let median = |times: &mut Vec<std::time::Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let [confined, all_caps, privileged] = &mut samples;
    println!(
        "per run of `true` (median of {RUNS}): confined {:.2} ms, masks without capability \
         changes {:.2} ms, privileged {:.2} ms",
        median(confined),
        median(all_caps),
        median(privileged)
    );
}

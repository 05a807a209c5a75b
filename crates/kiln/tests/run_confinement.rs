//! Docker's default confinement through the CLI: `kiln run` and `RUN` keep Docker's 14
//! capabilities, cannot mount or open device nodes they make, see /proc masked; `kiln run
//! --privileged/--cap-add/--cap-drop` and `RUN --security=insecure` (with `kiln build --allow
//! security.insecure` only) loosen it.

mod common;

use common::{Kiln, build_busybox_with_kiln, kiln_with_busybox, run_busybox_sh, stderr, stdout};

/// Docker's default bounding set as /proc/self/status shows it.
const DOCKER_CAPS: &str = "00000000a80425fb";

#[test]
fn kiln_run_is_confined_like_docker() {
    let kiln = kiln_with_busybox();
    let output = run_busybox_sh(
        &kiln,
        &[],
        "grep -e CapBnd -e CapEff /proc/self/status; \
         mkdir -p /mnt; mount -t tmpfs x /mnt 2>/dev/null && echo mounted || echo no-mount; \
         mknod /tmp/sda b 8 0 && (head -c1 /tmp/sda) 2>&1 | grep -q 'Permission denied' && echo no-device; \
         (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-writable || echo sys-ro",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("CapEff:\t{DOCKER_CAPS}\nCapBnd:\t{DOCKER_CAPS}\nno-mount\nno-device\nsys-ro\n")
    );
}

#[test]
fn non_root_user_gets_no_effective_capabilities() {
    let kiln = kiln_with_busybox();
    let output = run_busybox_sh(&kiln, &["--user", "1000"], "grep CapEff /proc/self/status");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "CapEff:\t0000000000000000\n");
}

#[test]
fn cap_add_and_privileged_let_mount_work() {
    let kiln = kiln_with_busybox();
    let script = "mkdir -p /mnt && mount -t tmpfs x /mnt && echo mounted";
    for flags in [
        &["--cap-add", "SYS_ADMIN"][..],
        &["--cap-add", "cap_sys_admin"][..],
        &["--cap-add", "ALL"][..],
        &["--privileged"][..],
    ] {
        let output = run_busybox_sh(&kiln, flags, script);
        assert!(output.status.success(), "{flags:?}: {}", stderr(&output));
        assert_eq!(stdout(&output), "mounted\n", "{flags:?}");
    }
    // --privileged also unmasks /proc/sys and lets a node made inside be used.
    let output = run_busybox_sh(
        &kiln,
        &["--privileged"],
        "grep -c ' /proc/sys ' /proc/self/mountinfo; mknod /tmp/n c 1 3 && echo x > /tmp/n && echo node-ok",
    );
    assert_eq!(stdout(&output), "0\nnode-ok\n", "{}", stderr(&output));
}

#[test]
fn cap_drop_removes_from_the_default() {
    let kiln = kiln_with_busybox();
    let output = run_busybox_sh(
        &kiln,
        &["--cap-drop", "CHOWN", "--cap-drop", "CAP_KILL"],
        "grep CapBnd /proc/self/status",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // Docker's default without CHOWN (bit 0) and KILL (bit 5).
    assert_eq!(stdout(&output), "CapBnd:\t00000000a80425da\n");
    let output = run_busybox_sh(
        &kiln,
        &["--cap-drop", "ALL", "--cap-add", "NET_RAW"],
        "grep CapBnd /proc/self/status",
    );
    assert_eq!(stdout(&output), "CapBnd:\t0000000000002000\n");
}

#[test]
fn unknown_capability_is_refused_before_running() {
    let kiln = kiln_with_busybox();
    let output = run_busybox_sh(&kiln, &["--cap-add", "SYS_WIZARD"], "true");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("SYS_WIZARD"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn build_run_is_confined_and_insecure_needs_the_entitlement() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let confined = kiln.context(
        "confined",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN grep CapBnd /proc/self/status > /caps; \
             mkdir -p /mnt; mount -t tmpfs x /mnt 2>/dev/null && echo mounted > /mount || echo refused > /mount\n",
        )],
    );
    let out = kiln.build_rootfs(&confined, "confined-out", &[]);
    assert_eq!(
        std::fs::read_to_string(out.join("caps")).unwrap(),
        format!("CapBnd:\t{DOCKER_CAPS}\n")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("mount")).unwrap(),
        "refused\n"
    );

    let insecure = kiln.context(
        "insecure",
        &[(
            "Dockerfile",
            "FROM busybox\n\nRUN --security=insecure mkdir -p /mnt && mount -t tmpfs x /mnt && \
             grep CapEff /proc/self/status > /caps\n",
        )],
    );
    let dest = kiln.work.path().join("insecure-out");
    let output_flag = format!("type=local,dest={}", dest.display());
    let refused = kiln.run(&[
        "build",
        "-q",
        "--output",
        &output_flag,
        insecure.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("Dockerfile:3") && message.contains("--allow security.insecure"),
        "{message}"
    );

    let out = kiln.build_rootfs(&insecure, "insecure-out", &["--allow", "security.insecure"]);
    let caps = std::fs::read_to_string(out.join("caps")).unwrap();
    assert_ne!(caps, format!("CapEff:\t{DOCKER_CAPS}\n"), "{caps}");

    let bad = kiln.run(&["build", "--allow", "device", insecure.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("invalid --allow"), "{}", stderr(&bad));
}

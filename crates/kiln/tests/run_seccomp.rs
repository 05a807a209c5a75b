//! Docker's default seccomp filter through the CLI: `kiln run` and `RUN` run filtered (`Seccomp: 2`,
//! `unshare` refused with EPERM); `--security-opt seccomp=unconfined`, `--privileged`,
//! `--cap-add SYS_ADMIN` and `RUN --security=insecure` lift it as Docker's do.

mod common;

use common::{Kiln, build_busybox_with_kiln, kiln_with_busybox, run_busybox_sh, stderr, stdout};

/// The filter state, then whether a user namespace (which needs no capability) can be made.
const PROBE: &str = "grep Seccomp: /proc/self/status; \
     unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-refused";

fn filtered_here() -> bool {
    kiln_executor::seccomp::default_program(kiln_executor::CapabilitySet::docker_default())
        .unwrap()
        .is_some()
}

#[test]
fn kiln_run_is_filtered_and_the_flags_lift_it() {
    if !filtered_here() {
        return;
    }
    let kiln = kiln_with_busybox();
    let output = run_busybox_sh(&kiln, &[], PROBE);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "Seccomp:\t2\nunshare-refused\n");

    for (flags, expected) in [
        (
            &["--security-opt", "seccomp=unconfined"][..],
            "Seccomp:\t0\nunshare-ok\n",
        ),
        (&["--privileged"][..], "Seccomp:\t0\nunshare-ok\n"),
        // Still filtered, but the SYS_ADMIN rules are lifted.
        (&["--cap-add", "SYS_ADMIN"][..], "Seccomp:\t2\nunshare-ok\n"),
    ] {
        let output = run_busybox_sh(&kiln, flags, PROBE);
        assert!(output.status.success(), "{flags:?}: {}", stderr(&output));
        assert_eq!(stdout(&output), expected, "{flags:?}");
    }

    // A normal workload: forks, files, signals, ps.
    let output = run_busybox_sh(
        &kiln,
        &[],
        "for i in 1 2 3; do (echo $i > /tmp/$i) & done; wait; cat /tmp/1 /tmp/3; \
         sleep 30 & kill $!; wait $! || echo killed; ps -o comm | grep -qx ps && echo ps-ok",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "1\n3\nkilled\nps-ok\n");
}

#[test]
fn unsupported_security_options_are_refused() {
    let kiln = kiln_with_busybox();
    for option in ["seccomp=/tmp/profile.json", "apparmor=unconfined"] {
        let output = run_busybox_sh(&kiln, &["--security-opt", option], "true");
        assert!(!output.status.success(), "{option}");
        assert!(
            stderr(&output).contains("--security-opt"),
            "{option}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn build_run_is_filtered_unless_insecure() {
    if !filtered_here() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "seccomp",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nRUN ({PROBE}) > /confined\n\
                 RUN --security=insecure ({PROBE}) > /insecure\n"
            ),
        )],
    );
    let out = kiln.build_rootfs(&context, "seccomp-out", &["--allow", "security.insecure"]);
    assert_eq!(
        std::fs::read_to_string(out.join("confined")).unwrap(),
        "Seccomp:\t2\nunshare-refused\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("insecure")).unwrap(),
        "Seccomp:\t0\nunshare-ok\n"
    );
}

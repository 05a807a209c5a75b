//! The default seccomp filter, for real: installed in a forked test process (what each rule answers,
//! syscall by syscall) and in sandboxes as root (what a RUN sees, and how `--privileged`,
//! `--cap-add SYS_ADMIN` and `seccomp=unconfined` lift it).

mod common;

use common::{Fixture, is_root, run_capture};
use kiln_executor::seccomp::{SeccompProgram, default_program};
use kiln_executor::syscall::{LinuxSyscall, Syscall};
use kiln_executor::{CapabilitySet, Confinement, ExitStatus, OverlaySnapshotter};

/// A raw syscall's errno (0 when it succeeded).
fn errno_of(result: libc::c_long) -> i32 {
    if result == -1 {
        // SAFETY: reads this thread's errno.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// Forks; the child installs `program` (with `no_new_privs`, so this needs no capability), runs
/// `probe` and exits with the code it returns. Only raw syscalls run after the fork.
fn in_filtered_child(program: &SeccompProgram, probe: fn() -> i32) -> i32 {
    // SAFETY: the child makes only raw syscalls (no allocation, no locks) and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain prctl; then the installed program is read by the kernel only.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
        }
        if LinuxSyscall
            .install_seccomp_filter(program.instructions())
            .is_err()
        {
            // SAFETY: ends the child.
            unsafe { libc::_exit(101) };
        }
        let code = probe();
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "the probe child died: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

fn default_filter() -> Option<std::sync::Arc<SeccompProgram>> {
    default_program(CapabilitySet::docker_default()).unwrap()
}

/// Each check answers 0 when the filter did what Docker's profile does, else its own number.
fn probe_default_rules() -> i32 {
    // SAFETY: raw syscalls with harmless or invalid arguments; the filter answers before the
    // kernel acts, and the allowed ones change nothing that outlives this child.
    unsafe {
        if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS)) != libc::EPERM {
            return 1;
        }
        if errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)) != libc::EPERM {
            return 2;
        }
        if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) != libc::ENOSYS {
            return 3;
        }
        let target = c"/".as_ptr();
        if errno_of(libc::syscall(libc::SYS_mount, target, target, 0, 0, 0)) != libc::EPERM {
            return 4;
        }
        // Namespace flags in clone are refused; the rest of clone is not (fork below).
        let new_net = (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong;
        if errno_of(libc::syscall(libc::SYS_clone, new_net, 0, 0, 0, 0)) != libc::EPERM {
            return 5;
        }
        let child = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
        if child == 0 {
            libc::_exit(0);
        }
        if child < 0 {
            return 6;
        }
        let mut status = 0;
        if libc::waitpid(child as libc::pid_t, &mut status, 0) != child as libc::pid_t {
            return 7;
        }
        // Querying the persona is allowed; READ_IMPLIES_EXEC (0x0400000) is not.
        if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) < 0 {
            return 8;
        }
        if errno_of(libc::syscall(libc::SYS_personality, 0x0400000u64)) != libc::EPERM {
            return 9;
        }
        if errno_of(libc::syscall(libc::SYS_socket, 40, libc::SOCK_STREAM, 0)) != libc::EPERM {
            return 10;
        }
        #[cfg(target_arch = "x86_64")]
        if errno_of(libc::syscall(libc::SYS_getpid | 0x4000_0000)) != libc::ENOSYS {
            return 11;
        }
        if libc::syscall(libc::SYS_getpid) <= 0 {
            return 12;
        }
        if errno_of(libc::syscall(libc::SYS_init_module, 0, 0, 0)) != libc::EPERM {
            return 13;
        }
    }
    0
}

#[test]
fn the_default_filter_answers_as_dockers_profile() {
    let Some(program) = default_filter() else {
        return; // no filter on this architecture
    };
    assert_eq!(in_filtered_child(&program, probe_default_rules), 0);
}

/// With SYS_ADMIN, clone3 reaches the kernel (EFAULT/EINVAL for the bad arguments, not ENOSYS) and
/// unshare is the kernel's to judge (no_new_privs does not grant anything: EPERM from the
/// capability check, or success for a root test run; either way not seccomp's ENOSYS/EPERM split).
fn probe_sys_admin_rules() -> i32 {
    // SAFETY: clone3 with a null, zero-sized argument fails in the kernel before doing anything.
    unsafe {
        if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) == libc::ENOSYS {
            return 1;
        }
        if errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)) != libc::EPERM {
            return 2;
        }
    }
    0
}

#[test]
fn sys_admin_lifts_its_rules_only() {
    let admin = CapabilitySet::from_bits(CapabilitySet::docker_default().bits() | 1 << 21);
    let Some(program) = default_program(admin).unwrap() else {
        return;
    };
    assert_eq!(in_filtered_child(&program, probe_sys_admin_rules), 0);
}

const PROBE: &str = "grep Seccomp: /proc/self/status; \
     if unshare -U true 2>/tmp/err; then echo unshare-ok; else cat /tmp/err; fi";

#[test]
fn a_sandbox_runs_filtered_and_unshare_is_refused() {
    if !is_root() || default_filter().is_none() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let (status, stdout, stderr) = run_capture(&fixture.spec(PROBE));
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(!stdout.contains("unshare-ok"), "{stdout}");
    assert!(stdout.contains("not permitted"), "{stdout}");
    let (status, _, stderr) = run_capture(&fixture.spec("unshare -m true"));
    assert_ne!(status, ExitStatus::Exited(0), "{stderr}");
}

#[test]
fn ordinary_workloads_still_work_under_the_filter() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let script = "set -e; \
        for i in 1 2 3 4 5 6 7 8; do (echo $i > /tmp/f$i) & done; wait; \
        cat /tmp/f1 /tmp/f8; mkdir -p /tmp/d/e; mv /tmp/f2 /tmp/d/e/g; ln -s g /tmp/d/e/h; \
        cat /tmp/d/e/h; rm -r /tmp/d; \
        sleep 30 & kill $!; wait $! || echo killed; \
        ps -o comm | grep -qx sleep && echo still-there || echo gone; \
        chroot / true && echo chroot-ok; echo done";
    let (status, stdout, stderr) = run_capture(&fixture.spec(script));
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout, "1\n8\n2\nkilled\ngone\nchroot-ok\ndone\n",
        "{stderr}"
    );

    // --init forks its command with a plain clone(SIGCHLD).
    let mut spec = fixture.spec("grep Seccomp: /proc/self/status; echo child");
    spec.init = true;
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert!(stdout.ends_with("child\n"), "{stdout}");
}

#[test]
fn privileged_cap_add_and_unconfined_lift_the_filter() {
    if !is_root() || default_filter().is_none() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let run = |confinement: Confinement| {
        let mut spec = fixture.spec(PROBE);
        spec.confinement = confinement;
        let (status, stdout, stderr) = run_capture(&spec);
        assert!(status.success(), "{stderr}");
        stdout
    };

    let privileged = run(Confinement::privileged());
    assert!(privileged.contains("Seccomp:\t0"), "{privileged}");
    assert!(privileged.contains("unshare-ok"), "{privileged}");

    let mut unconfined = Confinement::docker_default();
    unconfined.seccomp = false;
    let unconfined = run(unconfined);
    assert!(unconfined.contains("Seccomp:\t0"), "{unconfined}");
    // No filter: creating a user namespace needs no capability.
    assert!(unconfined.contains("unshare-ok"), "{unconfined}");

    // SYS_ADMIN: still filtered, but Docker's SYS_ADMIN rules are lifted.
    let mut admin = Confinement::docker_default();
    admin.capabilities = CapabilitySet::from_bits(admin.capabilities.bits() | 1 << 21);
    let admin = run(admin);
    assert!(admin.contains("Seccomp:\t2"), "{admin}");
    assert!(admin.contains("unshare-ok"), "{admin}");
}

/// Prints what the filter costs (no assertion on time: the machine is shared):
/// `cargo test --release -p kiln-executor --test seccomp -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_filter_cost() {
    let median = |mut samples: Vec<std::time::Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    // Compiling: each capability set is a cache miss the first time.
    let compiles: Vec<_> = (0..40u32)
        .map(|bit| {
            let set = CapabilitySet::from_bits(CapabilitySet::docker_default().bits() ^ 1 << bit);
            let start = std::time::Instant::now();
            default_program(set).unwrap();
            start.elapsed()
        })
        .collect();
    println!("compile (cold, per capability set): {:?}", median(compiles));
    let Some(program) = default_filter() else {
        return;
    };
    println!("program: {} instructions", program.instructions().len());
    // Per-syscall cost: 200k getppid (allowed, so it walks the whole filter) with and without it.
    fn getppid_loop() -> i32 {
        for _ in 0..200_000 {
            // SAFETY: getppid has no arguments and no effect.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        0
    }
    let start = std::time::Instant::now();
    getppid_loop();
    let plain = start.elapsed();
    let start = std::time::Instant::now();
    in_filtered_child(&program, getppid_loop);
    let filtered = start.elapsed();
    println!("200k getppid: {plain:?} unfiltered, {filtered:?} filtered (with a fork and a wait)");
}

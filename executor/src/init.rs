//! `kiln run --init`: a minimal init (Docker's `--init` runs tini) built into the sandbox child
//! itself, since kiln has no static init binary to mount and its own binary is dynamically linked.
//!
//! After setup the sandbox child — PID 1 of its PID namespace — forks ([`fork_init`]). The new
//! process (PID 2) becomes its own process group, takes the terminal's foreground (so ^C reaches
//! it, as with tini) and goes on to exec the command. PID 1 stays behind in [`supervise`]: it waits
//! for signals with every signal blocked, forwards each one to the command, reaps every process
//! that ends (orphans are re-parented to it) and, once the command itself has ended, exits with its
//! status (128 + N when signal N killed it). Its exit ends every other process of the namespace.
//!
//! Everything here runs in the forked sandbox child of a possibly multi-threaded parent: raw
//! syscalls on stack data only, no allocation, no lock (see the `sandbox` module doc). The fork is
//! the raw `clone` syscall, not glibc's `fork`, whose atfork handlers take locks.
//!
//! PID 1 is a copy of kiln, so it would show kiln's command line in `/proc/1/cmdline` and kiln's
//! environment (the host's, CI tokens included) in `/proc/1/environ` to every process of the
//! container. Before it waits, PID 1 zeroes both areas (their bounds are read from
//! `/proc/self/stat` by the parent: [`record_inherited_areas`]) and makes itself non-dumpable, so
//! its memory cannot be read through `/proc/1/mem` without `CAP_SYS_PTRACE`.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;

/// The name PID 1 shows in `ps` (`/proc/1/comm`).
const INIT_NAME: &std::ffi::CStr = c"kiln-init";

/// `[arg_start, arg_end, env_start, env_end]` of this process, 0 until recorded.
static INHERITED_AREAS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// Reads where this process's argv and environment strings live (fields 48–51 of
/// `/proc/self/stat`, Linux ≥ 3.5), so that the init can wipe its copies of them. Call it in the
/// parent before cloning a sandbox with an init; without it the areas stay as they are.
pub fn record_inherited_areas() {
    if INHERITED_AREAS[0].load(Ordering::Relaxed) != 0 {
        return;
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    if let Some(areas) = parse_inherited_areas(&stat) {
        for (slot, value) in INHERITED_AREAS.iter().zip(areas) {
            slot.store(value, Ordering::Relaxed);
        }
    }
}

/// Fields 48–51 of a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so counting starts after its last `)`.
fn parse_inherited_areas(stat: &str) -> Option<[usize; 4]> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name, field 3 (state) is the first word: field N is word N - 3.
    let mut words = after_name.split_ascii_whitespace().skip(48 - 3);
    let mut areas = [0usize; 4];
    for area in &mut areas {
        *area = words.next()?.parse().ok()?;
    }
    (areas[0] < areas[1] && areas[2] < areas[3]).then_some(areas)
}

/// Zeroes this process's argv and environment strings (as recorded) and names it `kiln-init` in
/// `/proc/self/cmdline`.
///
/// # Safety
/// Only in the forked init: the areas must be the recorded ones of the process this one is a copy
/// of, and nothing may read `argv`/`environ` afterwards.
unsafe fn wipe_inherited_areas() {
    let [arg_start, arg_end, env_start, env_end] =
        [0, 1, 2, 3].map(|i| INHERITED_AREAS[i].load(Ordering::Relaxed));
    if arg_start == 0 {
        return;
    }
    // SAFETY: both ranges are this process's initial-stack strings (see the caller's contract).
    unsafe {
        std::ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start);
        std::ptr::write_bytes(arg_start as *mut u8, 0, arg_end - arg_start);
        let name = INIT_NAME.to_bytes();
        if name.len() < arg_end - arg_start {
            std::ptr::copy_nonoverlapping(name.as_ptr(), arg_start as *mut u8, name.len());
        }
    }
}

/// A full signal set (every signal blocked or waited for).
fn full_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the stack value it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

fn set_mask(set: &libc::sigset_t) -> Result<(), Errno> {
    // SAFETY: a valid set on the stack; the raw syscall, so that glibc keeps none of them back.
    let result = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            set as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            size_of::<libc::c_ulong>(),
        )
    };
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Forks the command's process. Returns `Ok` in the new process, with its signal mask empty, in a
/// process group of its own that is the terminal's foreground group when `tty`. In the calling
/// process (PID 1) it never returns: it runs [`supervise`] and exits with the command's status.
///
/// # Errors
/// A failing fork or signal mask (in the calling process, before anything was forked), or a
/// failing `setpgid`/`tcsetpgrp` (in the new process).
pub fn fork_init(tty: bool) -> Result<(), Errno> {
    // Blocked before the fork so that no signal meant for the command slips by before PID 1 waits
    // for it; the new process also needs SIGTTOU blocked for tcsetpgrp from a background group.
    set_mask(&full_set())?;
    // SAFETY: the raw clone syscall without CLONE_VM is fork: the new process gets a copy of this
    // one's memory (and stack) and returns 0 here.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid == 0 {
        // SAFETY: plain integer syscalls on this process and its standard input.
        unsafe {
            if libc::setpgid(0, 0) < 0 {
                return Err(Errno::last());
            }
            if tty && libc::tcsetpgrp(0, libc::getpid()) < 0 {
                return Err(Errno::last());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            set_mask(&empty)?;
        }
        return Ok(());
    }
    supervise(pid as libc::pid_t)
}

/// PID 1's loop: forwards signals to `command`, reaps every child, and exits with `command`'s
/// status once it has ended. Expects every signal blocked (see [`fork_init`]).
pub fn supervise(command: libc::pid_t) -> ! {
    // SAFETY: plain syscalls on integers and stack values; _exit ends this process only.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            INIT_NAME.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // Nothing of kiln's memory is the container's business: no core dumps, no /proc/1/mem
        // or /proc/1/environ for processes without CAP_SYS_PTRACE, no host environment at all.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        wipe_inherited_areas();
        // Our copies of the setup pipe, the terminal socket and the cgroup fds: the parent waits
        // for EOF on the setup pipe, which must come when the command has exec'd.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        let waited = full_set();
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let signal = libc::sigwaitinfo(&waited, &mut info);
            if signal < 0 {
                // EINTR is the only error with a valid set; wait again.
                continue;
            }
            if signal != libc::SIGCHLD {
                // Ignored if the command is gone already; the coming SIGCHLD ends the loop.
                libc::kill(command, signal);
                continue;
            }
            // SIGCHLDs merge: reap everything that has ended, not just one.
            loop {
                let mut status: libc::c_int = 0;
                let reaped = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if reaped <= 0 {
                    break;
                }
                if reaped == command {
                    libc::_exit(exit_code(status));
                }
            }
        }
    }
}

/// The shell's view of a wait status: the exit code, or 128 + the signal that killed it.
fn exit_code(status: libc::c_int) -> libc::c_int {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_areas_are_read_after_the_command_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "1000".into();
        fields[49 - 3] = "1100".into();
        fields[50 - 3] = "1100".into();
        fields[51 - 3] = "1500".into();
        let line = format!("42 (a (weird) name) {}", fields.join(" "));
        assert_eq!(parse_inherited_areas(&line), Some([1000, 1100, 1100, 1500]));
        assert_eq!(parse_inherited_areas("42 (short) S 1 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let [arg_start, arg_end, ..] = parse_inherited_areas(&own).unwrap();
        assert!(arg_end - arg_start >= std::env::args_os().map(|a| a.len() + 1).sum::<usize>());
    }

    #[test]
    fn exit_codes_are_the_shells() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }
}

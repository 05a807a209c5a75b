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

use nix::errno::Errno;

/// The name PID 1 shows in `ps` (`/proc/1/comm`).
const INIT_NAME: &std::ffi::CStr = c"kiln-init";

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
    fn exit_codes_are_the_shells() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }
}

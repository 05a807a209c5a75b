//! Entering a running sandbox: [`enter`] runs one more process inside it (`kiln exec`). The
//! sandbox's PID 1 comes from [`crate::SandboxIo::on_started`] of the run that started it.
//!
//! Process model: the caller prepares everything first (namespace fds, the container's user
//! resolved from its own `/etc/passwd`, the environment, the cgroups to join, and the steps of the
//! process's setup as a [`Step`] list), then forks. The child joins the sandbox's IPC, UTS, network,
//! PID and mount namespaces with `setns(2)` and forks again, because joining a PID namespace only
//! applies to children. The grandchild walks the step list with [`plan::execute`] (the same
//! confinement steps as the sandbox: bounding set, identity, capabilities) and execs; the child
//! waits for it and reports its raw wait status over a pipe. Between fork and exec both only make
//! raw syscalls — no allocation, no lock — as the sandbox module requires, since the caller may be
//! multi-threaded. Joining the mount namespace sets the root and working directory to the
//! sandbox's root (the kernel does so for `setns(CLONE_NEWNS)`), so no chroot is needed: a `chdir`
//! to the working directory follows.
//!
//! With `tty`, the grandchild opens a pty from the sandbox's own devpts and sends the master back
//! over a socketpair, as the sandbox does for `kiln run -t`; the caller relays it.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use kiln_image::user::{UserError, resolve_exec_user};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::pipe2;
use thiserror::Error;

use crate::confinement::{Confinement, identity_steps};
use crate::plan::{ExecArgs, PlanError, Step, cstr};
use crate::sandbox::{DEFAULT_PATH, ExitStatus, receive_fd};
use crate::syscall::LinuxSyscall;

/// The namespaces a process joins, in the order it joins them: the mount namespace last, since
/// joining it changes what paths mean (the fds are opened before anyway).
const NAMESPACES: [&str; 5] = ["ipc", "uts", "net", "pid", "mnt"];
/// The step index reported when joining a namespace fails (before any step runs).
const JOIN_FAILED: u32 = u32::MAX;
/// The step index reported when the fork into the joined PID namespace fails.
const FORK_FAILED: u32 = JOIN_FAILED - NAMESPACES.len() as u32;

/// Errors of [`enter`]; each says what failed and where.
#[derive(Debug, Error)]
pub enum EnterError {
    #[error("the container's process {pid} is gone")]
    Gone { pid: i32 },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("resolving user {user:?} in the container: {source}")]
    User { user: String, source: UserError },
    #[error("invalid exec spec: {0}")]
    Plan(#[from] PlanError),
    #[error("{action}: {source}")]
    Sys { action: &'static str, source: Errno },
    #[error("joining the container's {namespace} namespace: {errno}")]
    Join {
        namespace: &'static str,
        errno: Errno,
    },
    #[error("exec: {step}: {errno}")]
    Setup { step: String, errno: Errno },
    #[error(
        "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{command}\": executable file not found in $PATH"
    )]
    CommandNotFound { command: String },
}

fn sys_err(action: &'static str) -> impl FnOnce(Errno) -> EnterError {
    move |source| EnterError::Sys { action, source }
}

/// What to run in a sandbox and as whom.
#[derive(Debug, Clone)]
pub struct EnterSpec {
    /// The sandbox's PID 1 as seen from the host.
    pub pid: i32,
    pub args: Vec<String>,
    /// KEY=VALUE; HOME is added from the user's passwd entry when missing.
    pub env: Vec<String>,
    /// `USER[:GROUP]`, resolved in the sandbox's `/etc/passwd` and `/etc/group` ("" is root).
    pub user: String,
    /// Absolute, inside the sandbox; must exist.
    pub cwd: String,
    pub confinement: Confinement,
    /// Keep the caller's stdin (`-i`); otherwise the process reads `/dev/null`.
    pub stdin: bool,
    /// Run on a pty from the sandbox's devpts (`-t`).
    pub tty: bool,
}

/// A started process in a sandbox.
#[derive(Debug)]
pub struct Entered {
    /// The intermediate process (in the caller's PID namespace) that reports the status.
    helper: libc::pid_t,
    status_pipe: OwnedFd,
    /// The pty master with `tty`.
    pub terminal: Option<fs::File>,
}

impl Entered {
    /// Waits for the process and returns how it ended.
    ///
    /// # Errors
    /// [`EnterError::Sys`] when the status cannot be read.
    pub fn wait(self) -> Result<ExitStatus, EnterError> {
        let mut raw = [0u8; 4];
        let mut file = fs::File::from(self.status_pipe);
        let read = file.read_exact(&mut raw);
        wait_pid(self.helper);
        read.map_err(|e| EnterError::Sys {
            action: "read the exec status",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        let status = i32::from_ne_bytes(raw);
        Ok(if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        })
    }
}

fn wait_pid(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a stack status.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && Errno::last() == Errno::EINTR {}
    status
}

/// Starts `spec.args` inside the running sandbox whose PID 1 is `spec.pid`, with the
/// sandbox's confinement, and returns once it has exec'd.
///
/// # Errors
/// [`EnterError::Gone`] when the sandbox process does not exist; [`EnterError::User`] for a user
/// the sandbox does not know; [`EnterError::Join`] when a namespace cannot be joined;
/// [`EnterError::CommandNotFound`] or [`EnterError::Setup`] when the process cannot be started.
pub fn enter(spec: &EnterSpec) -> Result<Entered, EnterError> {
    let proc_dir = PathBuf::from(format!("/proc/{}", spec.pid));
    if !proc_dir.exists() {
        return Err(EnterError::Gone { pid: spec.pid });
    }
    let mut namespace_fds = Vec::with_capacity(NAMESPACES.len());
    for namespace in NAMESPACES {
        let path = proc_dir.join("ns").join(namespace);
        let file = fs::File::open(&path).map_err(|source| EnterError::Open { path, source })?;
        namespace_fds.push(OwnedFd::from(file));
    }
    let raw_namespaces: Vec<RawFd> = namespace_fds.iter().map(AsRawFd::as_raw_fd).collect();

    let root = proc_dir.join("root");
    let read_optional = |path: &str| fs::read_to_string(root.join(path)).ok();
    let user = resolve_exec_user(
        &spec.user,
        read_optional("etc/passwd").as_deref(),
        read_optional("etc/group").as_deref(),
    )
    .map_err(|source| EnterError::User {
        user: spec.user.clone(),
        source,
    })?;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();

    let cgroup_procs = cgroups_to_join(spec.pid)?;
    let dev_null = if spec.stdin || spec.tty {
        None
    } else {
        let file = fs::File::open("/dev/null").map_err(|source| EnterError::Open {
            path: "/dev/null".into(),
            source,
        })?;
        Some(OwnedFd::from(file))
    };
    let pty_socket = if spec.tty {
        Some(
            socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(sys_err("create socketpair"))?,
        )
    } else {
        None
    };

    let mut steps = vec![Step::SetParentDeathSignal, Step::ResetSignals];
    if let Some(null) = &dev_null {
        steps.push(Step::Dup2 {
            from: null.as_raw_fd(),
            to: 0,
        });
    }
    for procs in &cgroup_procs {
        steps.push(Step::JoinCgroup {
            procs_fd: procs.as_raw_fd(),
        });
    }
    if let Some((_, child)) = &pty_socket {
        steps.push(Step::Setsid);
        steps.push(Step::Pty {
            ptmx: c"/dev/pts/ptmx".to_owned(),
            socket: child.as_raw_fd(),
        });
    }
    steps.push(Step::Chdir(cstr(&spec.cwd)?));
    steps.extend(identity_steps(
        &spec.confinement,
        user.uid,
        user.gid,
        &user.additional_gids,
    )?);
    steps.push(Step::CloexecFrom(3));
    steps.push(Step::Exec(ExecArgs::new(&spec.args, &env, &path_var)?));

    let (error_read, error_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(sys_err("create the error pipe"))?;
    let (status_read, status_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(sys_err("create the status pipe"))?;
    let error_fd = error_write.as_raw_fd();
    let status_fd = status_write.as_raw_fd();

    // SAFETY: after fork the child only makes raw syscalls (setns, fork, waitpid, write, _exit)
    // and walks the prepared steps with the allocation-free plan executor.
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(EnterError::Sys {
            action: "fork",
            source: Errno::last(),
        });
    }
    if helper == 0 {
        // SAFETY: see above; every buffer was prepared before the fork.
        unsafe { helper_main(&raw_namespaces, &steps, error_fd, status_fd) }
    }
    drop(error_write);
    drop(status_write);
    drop(namespace_fds);

    if let Some(report) = read_report(error_read) {
        wait_pid(helper);
        return Err(decode_report(report, &steps));
    }
    let terminal = match &pty_socket {
        Some((parent, _)) => Some(fs::File::from(
            receive_fd(parent).map_err(|(action, source)| EnterError::Sys { action, source })?,
        )),
        None => None,
    };
    Ok(Entered {
        helper,
        status_pipe: status_read,
        terminal,
    })
}

/// The error for an 8-byte failure report (step index, errno) of the helper or the process.
fn decode_report(report: [u8; 8], steps: &[Step]) -> EnterError {
    let index = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = Errno::from_raw(i32::from_ne_bytes([
        report[4], report[5], report[6], report[7],
    ]));
    if index == FORK_FAILED {
        return EnterError::Sys {
            action: "fork into the container's PID namespace",
            source: errno,
        };
    }
    if index > FORK_FAILED {
        let namespace = NAMESPACES[(JOIN_FAILED - index) as usize];
        return EnterError::Join { namespace, errno };
    }
    match steps.get(index as usize) {
        Some(Step::Exec(args)) if errno == Errno::ENOENT => EnterError::CommandNotFound {
            command: args.program(),
        },
        step => EnterError::Setup {
            step: step.map_or_else(|| format!("step {index}"), ToString::to_string),
            errno,
        },
    }
}

/// The forked helper: joins the namespaces, forks the process that runs `steps`, reports its wait
/// status on `status_fd` and exits. Never returns.
///
/// # Safety
/// Call only in a freshly forked child; it makes raw syscalls only.
unsafe fn helper_main(
    namespaces: &[RawFd],
    steps: &[Step],
    error_fd: RawFd,
    status_fd: RawFd,
) -> ! {
    let report = |index: u32, errno: i32| {
        let mut buffer = [0u8; 8];
        buffer[..4].copy_from_slice(&index.to_ne_bytes());
        buffer[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write to a pipe we own, from a stack buffer.
        unsafe { libc::write(error_fd, buffer.as_ptr().cast(), buffer.len()) };
    };
    // SAFETY: raw syscalls on fds prepared before the fork.
    unsafe {
        for (position, fd) in namespaces.iter().enumerate() {
            if libc::setns(*fd, 0) != 0 {
                report(JOIN_FAILED - position as u32, Errno::last_raw());
                libc::_exit(127);
            }
        }
        let child = libc::fork();
        if child < 0 {
            report(FORK_FAILED, Errno::last_raw());
            libc::_exit(127);
        }
        if child == 0 {
            if let Err(failure) = crate::plan::execute(steps, &LinuxSyscall, &mut []) {
                report(failure.index as u32, failure.errno as i32);
            }
            libc::_exit(127);
        }
        // Our copy of the error pipe must close for the caller to see EOF once the process execs.
        libc::close(error_fd);
        let mut status = 0;
        while libc::waitpid(child, &mut status, 0) < 0 && Errno::last() == Errno::EINTR {}
        let bytes = status.to_ne_bytes();
        libc::write(status_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// The 8-byte failure report, or `None` at EOF (the process exec'd).
fn read_report(pipe: OwnedFd) -> Option<[u8; 8]> {
    let mut file = fs::File::from(pipe);
    let mut report = [0u8; 8];
    file.read_exact(&mut report).ok().map(|()| report)
}

/// `cgroup.procs` of every cgroup the sandbox is in and this process is not (the sandbox's own
/// memory/pids cgroups from `--memory`/`--pids-limit`), opened for writing.
fn cgroups_to_join(pid: i32) -> Result<Vec<fs::File>, EnterError> {
    let read = |path: &str| {
        fs::read_to_string(path).map_err(|source| EnterError::Open {
            path: path.into(),
            source,
        })
    };
    let theirs = match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => text,
        Err(_) => return Err(EnterError::Gone { pid }),
    };
    let ours = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    let mut files = Vec::new();
    for dir in cgroup_dirs_to_join(&theirs, &ours, &mountinfo) {
        let path = dir.join("cgroup.procs");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| EnterError::Open { path, source })?;
        files.push(file);
    }
    Ok(files)
}

/// The host directories of the cgroups listed in `theirs` (a `/proc/<pid>/cgroup`) that differ
/// from `ours`, found through the cgroup mounts of `mountinfo`. Lines without a mount here are
/// skipped.
fn cgroup_dirs_to_join(theirs: &str, ours: &str, mountinfo: &str) -> Vec<PathBuf> {
    // (hierarchy id:controllers) → path
    let parse = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| {
                let (key, path) = line.rsplit_once(':')?;
                let (_, controllers) = key.split_once(':')?;
                Some((controllers.to_string(), path.to_string()))
            })
            .collect()
    };
    let ours = parse(ours);
    let mut dirs = Vec::new();
    for (controllers, path) in parse(theirs) {
        if ours.iter().any(|(c, p)| *c == controllers && *p == path) {
            continue;
        }
        if let Some(mount) = cgroup_mount(mountinfo, &controllers) {
            let dir = mount.join(path.trim_start_matches('/'));
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The mount point of the hierarchy holding `controllers` ("" for cgroup2), mounted at its root.
fn cgroup_mount(mountinfo: &str, controllers: &str) -> Option<PathBuf> {
    let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        if *root != "/" {
            return None;
        }
        let fstype = *fields.get(separator + 1)?;
        let matches = match fstype {
            "cgroup2" => wanted.is_empty(),
            "cgroup" => {
                let options: Vec<&str> = fields.get(separator + 3)?.split(',').collect();
                !wanted.is_empty() && wanted.iter().all(|c| options.contains(c))
            }
            _ => false,
        };
        matches.then(|| PathBuf::from(mount_point))
    })
}

/// Copies `from` into `to` until EOF or an error (a pty master reports EIO once the slave side
/// has closed); used to relay a terminal.
///
/// # Errors
/// A write error.
pub fn relay(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buffer = [0u8; 8192];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()),
        };
        to.write_all(&buffer[..read])?;
        to.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 1 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 1 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 1 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
33 1 0:29 /sub /elsewhere rw - cgroup cgroup rw,pids
";

    #[test]
    fn only_the_sandboxs_own_cgroups_are_joined() {
        let ours = "4:memory:/user\n3:cpu,cpuacct:/user\n0::/user\n";
        let theirs = "4:memory:/user/kiln-1\n3:cpu,cpuacct:/user\n0::/user/kiln-1\n";
        assert_eq!(
            cgroup_dirs_to_join(theirs, ours, MOUNTINFO),
            [
                PathBuf::from("/sys/fs/cgroup/memory/user/kiln-1"),
                PathBuf::from("/sys/fs/cgroup/unified/user/kiln-1"),
            ]
        );
        // A hierarchy mounted only as a sub-tree here cannot be joined: skipped.
        assert_eq!(
            cgroup_dirs_to_join("5:pids:/x\n", "5:pids:/\n", MOUNTINFO),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            cgroup_dirs_to_join(ours, ours, MOUNTINFO),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn confinement_steps_drop_capabilities_for_non_root_users() {
        let unconfined = Confinement {
            seccomp: false,
            ..Confinement::docker_default()
        };
        let steps = identity_steps(&unconfined, 1000, 1000, &[50, 1000]).unwrap();
        let described: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(
            described[0].starts_with("limit the capability bounding set"),
            "{described:?}"
        );
        assert!(matches!(&steps[1], Step::SetGroups(groups) if *groups == [1000, 50]));
        assert!(matches!(
            steps.last(),
            Some(Step::SetCapabilities {
                effective: 0,
                permitted: 0,
                inheritable: 0
            })
        ));
        let privileged = identity_steps(&Confinement::privileged(), 0, 0, &[]).unwrap();
        assert_eq!(privileged.len(), 3, "no capability steps when privileged");
    }

    fn report(index: u32, errno: Errno) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&index.to_ne_bytes());
        bytes[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
        bytes
    }

    #[test]
    fn failure_reports_name_the_namespace_or_the_step() {
        let steps = vec![
            Step::Chdir(c"/nowhere".to_owned()),
            Step::Exec(ExecArgs::new(&["nope".into()], &[], "/bin").unwrap()),
        ];
        let message = |index, errno| decode_report(report(index, errno), &steps).to_string();
        assert_eq!(
            message(JOIN_FAILED, Errno::EPERM),
            "joining the container's ipc namespace: EPERM: Operation not permitted"
        );
        assert!(message(JOIN_FAILED - 4, Errno::EINVAL).contains("mnt namespace"));
        assert!(message(FORK_FAILED, Errno::EAGAIN).starts_with("fork into"));
        assert!(message(0, Errno::ENOENT).contains("/nowhere"));
        assert!(message(1, Errno::ENOENT).contains("\"nope\": executable file not found"));
        assert!(matches!(
            decode_report(report(1, Errno::EACCES), &steps),
            EnterError::Setup { .. }
        ));
    }

    #[test]
    fn entering_a_missing_process_fails_clearly() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let spec = EnterSpec {
            pid,
            args: vec!["true".into()],
            env: Vec::new(),
            user: String::new(),
            cwd: "/".into(),
            confinement: Confinement::docker_default(),
            stdin: false,
            tty: false,
        };
        assert!(matches!(enter(&spec), Err(EnterError::Gone { .. })));
    }
}
